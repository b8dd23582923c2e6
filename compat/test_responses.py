"""Responses API basics through `client.responses.*`: create, parameters echoed back, input
forms, retrieve, delete, input items with pagination, background + cancel, store=false."""

from __future__ import annotations

import time

import openai
import pytest
from openai.types.responses import Response

from _util import TERMINAL, error_body, words


def test_create_plain_text(client):
    r = client.responses.create(model="scripted", input="hello")
    assert isinstance(r, Response)
    assert r.id.startswith("resp_"), r.id
    assert r.object == "response"
    assert r.status == "completed"
    assert r.output_text == "echo: hello"
    assert r.model.startswith("scripted"), r.model
    assert r.error is None
    assert isinstance(r.created_at, (int, float)) and r.created_at > 1_600_000_000
    # One assistant message with one output_text part.
    assert len(r.output) == 1, r.output
    msg = r.output[0]
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.status == "completed"
    assert msg.id.startswith("msg_"), msg.id
    assert [c.type for c in msg.content] == ["output_text"]
    assert msg.content[0].text == "echo: hello"
    assert msg.content[0].annotations == []
    # Usage is counted.
    assert r.usage is not None
    assert r.usage.input_tokens > 0
    assert r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


def test_response_is_json(client):
    raw = client.responses.with_raw_response.create(model="scripted", input="hello")
    assert raw.http_response.status_code == 200
    assert raw.http_response.headers["content-type"].startswith("application/json")
    body = raw.http_response.json()
    for key in ("id", "object", "created_at", "status", "model", "output", "parallel_tool_calls", "tool_choice", "tools", "usage"):
        assert key in body, f"response JSON lacks `{key}`"
    # (strict validation against the SDK's models: test_schema.py)


def test_parameters_are_echoed(client):
    r = client.responses.create(
        model="scripted",
        input="hello",
        instructions="Answer briefly.",
        metadata={"ticket": "T-1", "who": "compat"},
        temperature=0.5,
        top_p=0.9,
        max_output_tokens=100,
    )
    assert r.status == "completed"
    assert r.output_text == "echo: hello"
    assert r.instructions == "Answer briefly."
    assert r.metadata == {"ticket": "T-1", "who": "compat"}
    assert r.temperature == 0.5
    assert r.top_p == 0.9
    assert r.max_output_tokens == 100
    # And they are stored: retrieve gives them back too.
    again = client.responses.retrieve(r.id)
    assert again.instructions == "Answer briefly."
    assert again.metadata == {"ticket": "T-1", "who": "compat"}
    assert again.temperature == 0.5
    assert again.max_output_tokens == 100


def test_instructions_reach_no_user_turn(client):
    """Instructions are a system/developer message, not a user message."""
    r = client.responses.create(model="scripted", input="history", instructions="Be terse.")
    assert r.output_text == "history: "


@pytest.mark.parametrize(
    "input_items",
    [
        [{"role": "user", "content": "hi"}],
        [{"type": "message", "role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        [{"role": "developer", "content": "Be kind."}, {"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}],
        [{"role": "system", "content": [{"type": "input_text", "text": "Be kind."}]}, {"role": "user", "content": "hi"}],
    ],
    ids=["easy", "typed", "parts", "typed-parts", "developer", "system", "system-parts"],
)
def test_input_as_message_items(client, input_items):
    r = client.responses.create(model="scripted", input=input_items)
    assert r.status == "completed"
    assert r.output_text == "echo: hi"


def test_input_with_assistant_turns(client):
    """Earlier turns given inline (stateless multi-turn), including an assistant message in
    output_text form as a client replays it."""
    r = client.responses.create(
        model="scripted",
        input=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "echo: a"},
            {"role": "user", "content": "b"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "echo: b", "annotations": []}],
            },
            {"role": "user", "content": "history"},
        ],
    )
    assert r.output_text == "history: a | b"


def test_output_items_can_be_replayed_as_input(client):
    """A previous response's output items, dumped by the SDK, are valid input."""
    r1 = client.responses.create(model="scripted", input="one")
    replay = [{"role": "user", "content": "one"}]
    replay += [o.model_dump(exclude_none=True) for o in r1.output]
    replay += [{"role": "user", "content": "history"}]
    r2 = client.responses.create(model="scripted", input=replay)
    assert r2.output_text == "history: one"


def test_retrieve(client):
    r = client.responses.create(model="scripted", input="keep me", metadata={"x": "1"})
    got = client.responses.retrieve(r.id)
    assert got.id == r.id
    assert got.status == "completed"
    assert got.output_text == "echo: keep me"
    assert got.metadata == {"x": "1"}
    assert got.created_at == r.created_at
    assert [o.id for o in got.output] == [o.id for o in r.output]
    assert got.usage.input_tokens == r.usage.input_tokens


def test_delete(client):
    r = client.responses.create(model="scripted", input="delete me")
    assert client.responses.delete(r.id) is None
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.retrieve(r.id)
    error_body(e.value)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(r.id)


def test_delete_does_not_break_a_chain_built_on_other_responses(client):
    r1 = client.responses.create(model="scripted", input="x")
    other = client.responses.create(model="scripted", input="y")
    client.responses.delete(other.id)
    r2 = client.responses.create(model="scripted", input="history", previous_response_id=r1.id)
    assert r2.output_text == "history: x"


def _five_message_response(client):
    texts = ["m1", "m2", "m3", "m4", "m5"]
    r = client.responses.create(model="scripted", input=[{"role": "user", "content": t} for t in texts])
    assert r.output_text == "echo: m5"
    return r, texts


def _text_of(item) -> str:
    assert item.type == "message", item
    return "".join(c.text for c in item.content if c.type == "input_text")


def test_input_items_list_orders(client):
    r, texts = _five_message_response(client)
    asc = client.responses.input_items.list(r.id, order="asc")
    assert [_text_of(i) for i in asc.data] == texts
    assert all(i.role == "user" for i in asc.data)
    assert all(i.id for i in asc.data), "input items need ids (the cursor)"
    assert len({i.id for i in asc.data}) == 5
    desc = client.responses.input_items.list(r.id, order="desc")
    assert [_text_of(i) for i in desc.data] == texts[::-1]
    # The default order is descending, as in OpenAI's API.
    default = client.responses.input_items.list(r.id)
    assert [_text_of(i) for i in default.data] == texts[::-1]


def test_input_items_pagination(client):
    r, texts = _five_message_response(client)
    page1 = client.responses.input_items.list(r.id, order="asc", limit=2)
    assert [_text_of(i) for i in page1.data] == ["m1", "m2"]
    assert page1.has_more is True
    raw = client.responses.input_items.with_raw_response.list(r.id, order="asc", limit=2).http_response.json()
    assert raw["object"] == "list"
    assert raw["first_id"] == page1.data[0].id
    assert raw["last_id"] == page1.data[-1].id
    page2 = client.responses.input_items.list(r.id, order="asc", limit=2, after=page1.data[-1].id)
    assert [_text_of(i) for i in page2.data] == ["m3", "m4"]
    assert page2.has_more is True
    page3 = page2.get_next_page()
    assert [_text_of(i) for i in page3.data] == ["m5"]
    assert page3.has_more is False
    assert not page3.has_next_page()
    # The SDK's auto-pagination walks all pages.
    assert [_text_of(i) for i in client.responses.input_items.list(r.id, order="asc", limit=2)] == texts
    assert [_text_of(i) for i in client.responses.input_items.list(r.id, order="desc", limit=2)] == texts[::-1]
    # `after` in descending order.
    d1 = client.responses.input_items.list(r.id, order="desc", limit=3)
    d2 = client.responses.input_items.list(r.id, order="desc", limit=3, after=d1.data[-1].id)
    assert [_text_of(i) for i in d2.data] == ["m2", "m1"]
    assert d2.has_more is False


def test_background_create_then_poll(client):
    r = client.responses.create(model="scripted", input="in the background", background=True)
    assert r.id.startswith("resp_")
    assert r.background is True
    assert r.status in ("queued", "in_progress", "completed"), r.status
    deadline = time.monotonic() + 30
    while r.status not in TERMINAL:
        assert time.monotonic() < deadline, r.status
        time.sleep(0.1)
        r = client.responses.retrieve(r.id)
    assert r.status == "completed"
    assert r.output_text == "echo: in the background"


def test_cancel_background(client):
    r = client.responses.create(model="slow", input=words(40), background=True)
    assert r.status in ("queued", "in_progress"), r.status
    cancelled = client.responses.cancel(r.id)
    assert cancelled.id == r.id
    assert cancelled.status == "cancelled", cancelled.status
    time.sleep(0.5)
    got = client.responses.retrieve(r.id)
    assert got.status == "cancelled"
    # Cancelling again is idempotent: still cancelled.
    again = client.responses.cancel(r.id)
    assert again.status == "cancelled"


def test_cancel_of_a_foreground_response_is_refused(client):
    r = client.responses.create(model="scripted", input="done already")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.cancel(r.id)
    error_body(e.value)
    assert client.responses.retrieve(r.id).status == "completed"


def test_store_false(client):
    r = client.responses.create(model="scripted", input="ephemeral", store=False)
    assert r.status == "completed"
    assert r.output_text == "echo: ephemeral"
    assert r.id.startswith("resp_")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)

