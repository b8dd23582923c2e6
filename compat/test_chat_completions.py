"""Chat Completions (`client.chat.completions.*`) and Models (`client.models.*`)."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from _util import CHAT_WEATHER_TOOL, error_body


def test_chat_completion(client):
    c = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hello"}])
    assert isinstance(c, ChatCompletion)
    assert c.object == "chat.completion"
    assert c.id
    assert c.model.startswith("scripted")
    assert isinstance(c.created, int) and c.created > 1_600_000_000
    assert len(c.choices) == 1
    ch = c.choices[0]
    assert ch.index == 0
    assert ch.finish_reason == "stop"
    assert ch.message.role == "assistant"
    assert ch.message.content == "echo: hello"
    assert not ch.message.tool_calls
    assert c.usage is not None
    assert c.usage.prompt_tokens > 0 and c.usage.completion_tokens > 0
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens


def test_chat_multi_turn_and_system(client):
    c = client.chat.completions.create(
        model="scripted",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "echo: a"},
            {"role": "developer", "content": "Still brief."},
            {"role": "user", "content": [{"type": "text", "text": "history"}]},
        ],
        temperature=0.2,
        max_tokens=50,
    )
    assert c.choices[0].message.content == "history: a"


def test_chat_stream(client):
    stream = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hello stream"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks
    for ch in chunks:
        assert isinstance(ch, ChatCompletionChunk)
        assert ch.object == "chat.completion.chunk"
    assert len({ch.id for ch in chunks}) == 1, "all chunks share the completion id"
    content_chunks = [ch for ch in chunks if ch.choices]
    text = "".join(ch.choices[0].delta.content or "" for ch in content_chunks)
    assert text == "echo: hello stream"
    assert sum(1 for ch in content_chunks if ch.choices[0].delta.content) >= 2, "text should arrive in more than one chunk"
    assert content_chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch.choices[0].finish_reason for ch in content_chunks if ch.choices[0].finish_reason]
    assert finishes == ["stop"], finishes
    # include_usage: the last chunk has no choices and carries the usage.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0


def test_chat_stream_helper(client):
    with client.chat.completions.stream(model="scripted", messages=[{"role": "user", "content": "helper"}]) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    assert final.choices[0].message.content == "echo: helper"
    assert final.choices[0].finish_reason == "stop"


def test_chat_tool_round_trip(client):
    c1 = client.chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": 'call get_weather {"city":"Paris"}'}],
        tools=[CHAT_WEATHER_TOOL],
    )
    ch = c1.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert ch.message.content is None or ch.message.content == ""
    assert len(ch.message.tool_calls) == 1
    tc = ch.message.tool_calls[0]
    assert tc.type == "function"
    assert tc.id
    assert tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == {"city": "Paris"}

    c2 = client.chat.completions.create(
        model="scripted",
        messages=[
            {"role": "user", "content": 'call get_weather {"city":"Paris"}'},
            ch.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": tc.id, "content": "sunny"},
        ],
        tools=[CHAT_WEATHER_TOOL],
    )
    assert c2.choices[0].message.content == "get_weather returned: sunny"
    assert c2.choices[0].finish_reason == "stop"


def test_chat_tool_call_streamed(client):
    stream = client.chat.completions.create(
        model="scripted",
        messages=[{"role": "user", "content": 'call get_weather {"city":"Paris"}'}],
        tools=[CHAT_WEATHER_TOOL],
        stream=True,
    )
    chunks = [ch for ch in stream if ch.choices]
    calls: dict[int, dict] = {}
    for ch in chunks:
        for d in ch.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                slot["id"] = d.id
            if d.function and d.function.name:
                slot["name"] += d.function.name
            if d.function and d.function.arguments:
                slot["arguments"] += d.function.arguments
    assert list(calls) == [0], calls
    assert calls[0]["id"] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_chat_empty_messages_is_rejected(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="scripted", messages=[])
    assert error_body(e.value)["param"] == "messages"


def test_chat_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert error_body(e.value)["param"] == "temperature"
    with pytest.raises((openai.NotFoundError, openai.BadRequestError)) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    error_body(e.value)


def test_models_list(client):
    models = client.models.list()
    data = list(models)
    assert isinstance(data, list)
    for m in data:
        assert m.id and m.object == "model"
        assert isinstance(m.created, int)
        assert isinstance(m.owned_by, str)
    raw = client.models.with_raw_response.list().http_response.json()
    assert raw["object"] == "list"
    assert isinstance(raw["data"], list)


def test_models_retrieve(client):
    m = client.models.retrieve("scripted")
    assert m.id == "scripted"
    assert m.object == "model"
    assert isinstance(m.owned_by, str)
    m2 = client.models.retrieve("slow-model")
    assert m2.id == "slow-model"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    error_body(e.value)
