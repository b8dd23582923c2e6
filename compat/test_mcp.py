"""Remote MCP tools (`{"type": "mcp", ...}`), run by Stead against the reference MCP server
@modelcontextprotocol/server-everything over Streamable HTTP, with and without approval.

The model-facing name of MCP tool `echo` of server label `everything` is `everything__echo`, so
the scripted command `call everything__echo {"message":"hi"}` calls it. The echo tool answers
`Echo: <message>`."""

from __future__ import annotations

import json
import re

import openai
import pytest

from _util import error_body, items_of

CALL_ECHO = 'call everything__echo {"message":"hi"}'


def mcp_tool(url: str, **kw) -> dict:
    return {"type": "mcp", "server_label": "everything", "server_url": url, **kw}


def _approval_request(client, url):
    r1 = client.responses.create(model="scripted", input=CALL_ECHO, tools=[mcp_tool(url, require_approval="always")])
    assert r1.status == "completed", (r1.status, r1.error)
    reqs = items_of(r1, "mcp_approval_request")
    assert len(reqs) == 1, r1.output
    return r1, reqs[0]


def test_approval_request(client, mcp_url):
    r1, req = _approval_request(client, mcp_url)
    assert req.id
    assert req.server_label == "everything"
    assert req.name == "echo"
    assert json.loads(req.arguments) == {"message": "hi"}
    # Nothing has been called yet.
    assert not items_of(r1, "mcp_call")
    # If Stead lists the server's tools (OpenAI emits mcp_list_tools first), echo is among them.
    lists = items_of(r1, "mcp_list_tools")
    for lt in lists:
        assert lt.server_label == "everything"
        assert "echo" in [t.name for t in lt.tools]
    # The request is stored with the response.
    got = client.responses.retrieve(r1.id)
    assert [o.type for o in got.output] == [o.type for o in r1.output]


def test_approve(client, mcp_url):
    r1, req = _approval_request(client, mcp_url)
    r2 = client.responses.create(
        model="scripted",
        input=[{"type": "mcp_approval_response", "approval_request_id": req.id, "approve": True}],
        previous_response_id=r1.id,
        tools=[mcp_tool(mcp_url, require_approval="always")],
    )
    assert r2.status == "completed", (r2.status, r2.error)
    calls = items_of(r2, "mcp_call")
    assert len(calls) == 1, r2.output
    call = calls[0]
    assert call.server_label == "everything"
    assert call.name == "echo"
    assert json.loads(call.arguments) == {"message": "hi"}
    assert call.error is None, call.error
    assert call.output is not None and "hi" in call.output, call.output
    assert "Echo: hi" in call.output
    if getattr(call, "approval_request_id", None) is not None:
        assert call.approval_request_id == req.id
    # The final message comes after the call and carries the tool's output.
    types = [o.type for o in r2.output]
    assert types[-1] == "message", types
    assert types.index("mcp_call") < len(types) - 1
    assert "Echo: hi" in r2.output_text, r2.output_text


def test_deny(client, mcp_url):
    r1, req = _approval_request(client, mcp_url)
    r2 = client.responses.create(
        model="scripted",
        input=[{"type": "mcp_approval_response", "approval_request_id": req.id, "approve": False, "reason": "not today"}],
        previous_response_id=r1.id,
        tools=[mcp_tool(mcp_url, require_approval="always")],
    )
    assert r2.status == "completed", (r2.status, r2.error)
    for call in items_of(r2, "mcp_call"):
        assert not (call.output and "Echo: hi" in call.output), "a denied call must not run"
    assert "Echo: hi" not in r2.output_text
    assert re.search(r"den(y|ied)|declin|reject|not approved", r2.output_text, re.I), r2.output_text


def test_never_requires_approval(client, mcp_url):
    r = client.responses.create(model="scripted", input=CALL_ECHO, tools=[mcp_tool(mcp_url, require_approval="never")])
    assert r.status == "completed", (r.status, r.error)
    assert not items_of(r, "mcp_approval_request")
    calls = items_of(r, "mcp_call")
    assert len(calls) == 1, r.output
    assert calls[0].name == "echo" and calls[0].server_label == "everything"
    assert "Echo: hi" in (calls[0].output or "")
    assert r.output[-1].type == "message"
    assert "Echo: hi" in r.output_text


def test_never_streamed(client, mcp_url):
    with client.responses.stream(model="scripted", input=CALL_ECHO, tools=[mcp_tool(mcp_url, require_approval="never")]) as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert "mcp_call" in added, added
    done_calls = [e.item for e in events if e.type == "response.output_item.done" and e.item.type == "mcp_call"]
    assert len(done_calls) == 1 and "Echo: hi" in (done_calls[0].output or "")
    assert "Echo: hi" in final.output_text


def test_approval_per_tool_name(client, mcp_url):
    """require_approval as an object: `never` for the tools named, so echo runs at once."""
    tool = mcp_tool(mcp_url, require_approval={"never": {"tool_names": ["echo"]}})
    r = client.responses.create(model="scripted", input=CALL_ECHO, tools=[tool])
    assert r.status == "completed", (r.status, r.error)
    assert not items_of(r, "mcp_approval_request"), r.output
    assert "Echo: hi" in r.output_text


def test_allowed_tools(client, mcp_url):
    tool = mcp_tool(mcp_url, require_approval="never", allowed_tools=["echo"])
    r = client.responses.create(model="scripted", input=CALL_ECHO, tools=[tool])
    assert r.status == "completed", (r.status, r.error)
    assert "Echo: hi" in r.output_text
    for lt in items_of(r, "mcp_list_tools"):
        assert [t.name for t in lt.tools] == ["echo"], [t.name for t in lt.tools]
    # A tool outside allowed_tools is not available: it is never called.
    r2 = client.responses.create(model="scripted", input='call everything__get-sum {"a":1,"b":2}', tools=[tool])
    for call in items_of(r2, "mcp_call"):
        assert call.name != "get-sum" or call.output is None or "3" not in call.output, call


def test_approval_then_chain_continues(client, mcp_url):
    """After an approved call the conversation goes on from the new response."""
    r1, req = _approval_request(client, mcp_url)
    r2 = client.responses.create(
        model="scripted",
        input=[{"type": "mcp_approval_response", "approval_request_id": req.id, "approve": True}],
        previous_response_id=r1.id,
        tools=[mcp_tool(mcp_url, require_approval="always")],
    )
    r3 = client.responses.create(model="scripted", input="history", previous_response_id=r2.id)
    assert r3.output_text == f"history: {CALL_ECHO}"


def test_tool_error_is_an_error_object(client, mcp_url):
    """A failing MCP call (echo without its required `message`) is reported on the mcp_call
    item: `error` is set, in the SDK's shape (an object typed mcp_protocol_error,
    mcp_tool_execution_error or http_error), and the response still completes."""
    import pydantic
    from openai.types.responses.mcp_tool_call_error import McpToolCallError

    raw = client.responses.with_raw_response.create(
        model="scripted", input='call everything__echo {"wrong":1}', tools=[mcp_tool(mcp_url, require_approval="never")]
    ).http_response.json()
    assert raw["status"] == "completed", raw
    calls = [o for o in raw["output"] if o["type"] == "mcp_call"]
    assert len(calls) == 1, raw["output"]
    assert calls[0]["error"], calls[0]
    assert not calls[0].get("output"), calls[0]
    pydantic.TypeAdapter(McpToolCallError).validate_python(calls[0]["error"])


def test_unreachable_mcp_server_is_an_error(client):
    """An MCP server that cannot be reached fails the request (OpenAI: HTTP 424, "Error
    retrieving tool list from MCP server"), instead of a response whose model was silently given
    no tools."""
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(openai.APIStatusError) as e:
        client.responses.create(model="scripted", input=CALL_ECHO, tools=[mcp_tool(url, require_approval="never")])
    assert 400 <= e.value.status_code < 600
    err = error_body(e.value)
    assert "everything" in err["message"], err


def test_list_tools_item(client, mcp_url):
    """OpenAI puts an `mcp_list_tools` item (the server's tools, after allowed_tools) first in
    the output of a response that imports an MCP server's tools."""
    r = client.responses.create(
        model="scripted", input="no call", tools=[mcp_tool(mcp_url, require_approval="never", allowed_tools=["echo", "get-sum"])]
    )
    assert r.output_text == "echo: no call"
    lists = items_of(r, "mcp_list_tools")
    assert len(lists) == 1, [o.type for o in r.output]
    assert r.output[0].type == "mcp_list_tools"
    assert lists[0].server_label == "everything"
    assert sorted(t.name for t in lists[0].tools) == ["echo", "get-sum"]
    assert all(isinstance(t.input_schema, dict) for t in lists[0].tools)
