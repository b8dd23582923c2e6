"""Errors: status codes map to the SDK's exception classes, and the body has OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import openai
import pytest

from _util import error_body, raw_request


def test_unknown_response(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve("resp_doesnotexist")
    assert e.value.status_code == 404
    err = error_body(e.value)
    assert err["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete("resp_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_doesnotexist")


def test_unknown_conversation(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.conversations.retrieve("conv_doesnotexist")
    assert e.value.status_code == 404
    error_body(e.value)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list("conv_doesnotexist")


def test_unknown_conversation_item(client):
    conv = client.conversations.create()
    with pytest.raises(openai.NotFoundError) as e:
        client.conversations.items.retrieve("msg_doesnotexist", conversation_id=conv.id)
    error_body(e.value)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete("msg_doesnotexist", conversation_id=conv.id)


def test_temperature_out_of_range(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input="x", temperature=5)
    assert e.value.status_code == 400
    err = error_body(e.value)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == "temperature", err


def test_wrong_type_parameter(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input="x", max_output_tokens="many")  # type: ignore[arg-type]
    assert error_body(e.value)["param"] == "max_output_tokens"


def test_unsupported_tool_type(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input="x", tools=[{"type": "web_search_preview"}])
    err = error_body(e.value)
    assert err["param"] is None or err["param"].startswith("tools"), err


def test_unknown_body_parameter(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input="x", extra_body={"bogus": 1})
    err = error_body(e.value)
    assert err["param"] == "bogus", err
    assert "bogus" in err["message"]


def test_missing_model(server):
    status, body, text = raw_request(server.base_url, "POST", "/responses", b'{"input": "x"}', {"content-type": "application/json"})
    assert status == 400, text
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    assert body["error"]["param"] == "model", body


def test_bad_input_item(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input=[{"type": "no_such_item"}])  # type: ignore[list-item]
    error_body(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input=[{"role": "wizard", "content": "x"}])  # type: ignore[list-item]
    error_body(e.value)


def test_model_without_route(client):
    with pytest.raises((openai.NotFoundError, openai.BadRequestError)) as e:
        client.responses.create(model="nope", input="x")
    err = error_body(e.value)
    assert "nope" in err["message"], err


def test_malformed_json(server):
    status, body, text = raw_request(server.base_url, "POST", "/responses", b"{not json", {"content-type": "application/json"})
    assert status == 400, text
    assert body is not None, text
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body


def test_unknown_route_is_json_404(server):
    status, body, text = raw_request(server.base_url, "GET", "/no_such_endpoint")
    assert status == 404, text
    assert body is not None, text
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body


def test_bad_pagination_parameters(client):
    r = client.responses.create(model="scripted", input="x")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.input_items.list(r.id, order="sideways")  # type: ignore[arg-type]
    assert error_body(e.value)["param"] == "order"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.input_items.list(r.id, limit=0)
    assert error_body(e.value)["param"] == "limit"


def test_metadata_limits(client):
    """OpenAI's metadata limits: at most 16 pairs, keys up to 64 chars, values up to 512."""
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input="x", metadata={f"k{i}": "v" for i in range(17)})
    assert error_body(e.value)["param"] == "metadata"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="scripted", input="x", metadata={"k" * 65: "v"})
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="scripted", input="x", metadata={"k": "v" * 513})
    ok = client.responses.create(model="scripted", input="x", metadata={f"k{i}": "v" * 512 for i in range(16)})
    assert len(ok.metadata) == 16
