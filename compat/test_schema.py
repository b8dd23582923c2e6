"""Strict schema checks: the raw JSON Stead sends must validate against the SDK's own pydantic
models. The Python SDK itself is lenient (it builds its objects without validation), but typed
SDKs in other languages are not, so a missing required field or a wrong type here is a real
incompatibility even when the other tests pass. Each test collects every problem it finds."""

from __future__ import annotations

import typing

import pydantic
from openai.types import Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.conversations import Conversation, ConversationDeletedResource, ConversationItem, ConversationItemList
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent

from _util import WEATHER_TOOL

ITEM = pydantic.TypeAdapter(ResponseItem)
CONV_ITEM = pydantic.TypeAdapter(ConversationItem)


def _event_classes() -> dict[str, type]:
    """Event `type` -> the SDK's pydantic class for it."""
    union = typing.get_args(ResponseStreamEvent)[0]
    out = {}
    for cls in typing.get_args(union):
        for lit in typing.get_args(cls.model_fields["type"].annotation):
            out[lit] = cls
    return out


EVENT_CLASSES = _event_classes()


class Problems:
    def __init__(self):
        self.found: list[str] = []

    def check(self, what: str, validator, value) -> None:
        try:
            validator(value)
        except pydantic.ValidationError as e:
            self.found.append(f"{what}: {e}")

    def assert_none(self) -> None:
        assert not self.found, "\n\n".join(self.found)


def test_response_objects(client):
    p = Problems()
    plain = client.responses.with_raw_response.create(model="scripted", input="hello").http_response.json()
    p.check("plain response", Response.model_validate, plain)
    fc = client.responses.with_raw_response.create(
        model="scripted", input='call get_weather {"city":"Paris"}', tools=[WEATHER_TOOL]
    ).http_response.json()
    p.check("function_call response", Response.model_validate, fc)
    call_id = next(o for o in fc["output"] if o["type"] == "function_call")["call_id"]
    back = client.responses.with_raw_response.create(
        model="scripted",
        input=[{"type": "function_call_output", "call_id": call_id, "output": "sunny"}],
        previous_response_id=fc["id"],
        tools=[WEATHER_TOOL],
    ).http_response.json()
    p.check("function output response", Response.model_validate, back)
    got = client.responses.with_raw_response.retrieve(plain["id"]).http_response.json()
    p.check("retrieved response", Response.model_validate, got)
    bg = client.responses.with_raw_response.create(model="slow", input="w1 w2 w3", background=True).http_response.json()
    p.check("queued background response", Response.model_validate, bg)
    cancelled = client.responses.with_raw_response.cancel(bg["id"]).http_response.json()
    p.check("cancelled response", Response.model_validate, cancelled)
    items = client.responses.input_items.with_raw_response.list(back["id"]).http_response.json()
    for i, item in enumerate(items["data"]):
        p.check(f"input item {i} ({item.get('type')})", ITEM.validate_python, item)
    p.assert_none()


def test_mcp_response_objects(client, mcp_url):
    p = Problems()
    tool = {"type": "mcp", "server_label": "everything", "server_url": mcp_url, "require_approval": "always"}
    r1 = client.responses.with_raw_response.create(
        model="scripted", input='call everything__echo {"message":"hi"}', tools=[tool]
    ).http_response.json()
    p.check("mcp approval request response", Response.model_validate, r1)
    req = next(o for o in r1["output"] if o["type"] == "mcp_approval_request")
    r2 = client.responses.with_raw_response.create(
        model="scripted",
        input=[{"type": "mcp_approval_response", "approval_request_id": req["id"], "approve": True}],
        previous_response_id=r1["id"],
        tools=[tool],
    ).http_response.json()
    p.check("mcp call response", Response.model_validate, r2)
    p.assert_none()


def test_stream_events(client):
    p = Problems()
    for label, kw in [
        ("text", dict(input="validate me")),
        ("function call", dict(input='call get_weather {"city":"Paris"}', tools=[WEATHER_TOOL])),
    ]:
        for e in client.responses.create(model="scripted", stream=True, **kw):
            cls = EVENT_CLASSES.get(e.type)
            if cls is None:
                p.found.append(f"{label}: {e.type} is not an event type of the SDK")
                continue
            p.check(f"{label} stream: {e.type} (seq {e.sequence_number})", cls.model_validate, e.to_dict())
    p.assert_none()


def test_conversation_objects(client):
    p = Problems()
    conv = client.conversations.with_raw_response.create(
        items=[{"type": "message", "role": "user", "content": "first"}], metadata={"k": "v"}
    ).http_response.json()
    p.check("conversation", Conversation.model_validate, conv)
    client.responses.create(model="scripted", input="history", conversation=conv["id"])
    listed = client.conversations.items.with_raw_response.list(conv["id"]).http_response.json()
    p.check("conversation item list", ConversationItemList.model_validate, listed)
    for i, item in enumerate(listed["data"]):
        p.check(f"conversation item {i}", CONV_ITEM.validate_python, item)
    created = client.conversations.items.with_raw_response.create(
        conv["id"], items=[{"type": "message", "role": "user", "content": "x"}]
    ).http_response.json()
    p.check("items.create result", ConversationItemList.model_validate, created)
    one = client.conversations.items.with_raw_response.retrieve(created["data"][0]["id"], conversation_id=conv["id"]).http_response.json()
    p.check("items.retrieve result", CONV_ITEM.validate_python, one)
    after_delete = client.conversations.items.with_raw_response.delete(
        created["data"][0]["id"], conversation_id=conv["id"]
    ).http_response.json()
    p.check("items.delete result", Conversation.model_validate, after_delete)
    deleted = client.conversations.with_raw_response.delete(conv["id"]).http_response.json()
    p.check("conversations.delete result", ConversationDeletedResource.model_validate, deleted)
    p.assert_none()


def test_chat_objects(client):
    p = Problems()
    c = client.chat.completions.with_raw_response.create(
        model="scripted", messages=[{"role": "user", "content": "hello"}]
    ).http_response.json()
    p.check("chat completion", ChatCompletion.model_validate, c)
    for ch in client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hello"}], stream=True, stream_options={"include_usage": True}
    ):
        p.check("chat chunk", ChatCompletionChunk.model_validate, ch.to_dict())
    p.assert_none()


def test_model_objects(client):
    p = Problems()
    for m in client.models.with_raw_response.list().http_response.json()["data"]:
        p.check(f"model {m.get('id')}", Model.model_validate, m)
    p.check("models.retrieve", Model.model_validate, client.models.with_raw_response.retrieve("scripted").http_response.json())
    p.assert_none()
