"""Conversations API through `client.conversations.*`, and responses that read and extend a
conversation (`conversation=...`)."""

from __future__ import annotations

import openai
import pytest

from _util import error_body


def _text(item) -> str:
    assert item.type == "message", item
    return "".join(getattr(c, "text", "") for c in item.content)


def _new_conv(client, *texts, metadata=None):
    items = [{"type": "message", "role": "user", "content": t} for t in texts]
    kw = {"metadata": metadata} if metadata is not None else {}
    return client.conversations.create(items=items, **kw)


def test_create_retrieve_update(client):
    conv = client.conversations.create(items=[{"type": "message", "role": "user", "content": "first"}], metadata={"k": "v"})
    assert conv.id.startswith("conv_"), conv.id
    assert conv.object == "conversation"
    assert conv.metadata == {"k": "v"}
    assert isinstance(conv.created_at, int) and conv.created_at > 1_600_000_000

    got = client.conversations.retrieve(conv.id)
    assert got.id == conv.id
    assert got.metadata == {"k": "v"}
    assert got.created_at == conv.created_at

    upd = client.conversations.update(conv.id, metadata={"k": "v2", "other": "x"})
    assert upd.id == conv.id
    assert upd.metadata == {"k": "v2", "other": "x"}
    assert client.conversations.retrieve(conv.id).metadata == {"k": "v2", "other": "x"}


def test_create_empty(client):
    conv = client.conversations.create()
    assert conv.id.startswith("conv_")
    page = client.conversations.items.list(conv.id)
    assert page.data == []
    assert page.has_more is False


def test_response_in_conversation_sees_and_extends_it(client):
    conv = _new_conv(client, "first")
    r = client.responses.create(model="scripted", input="history", conversation=conv.id)
    assert r.status == "completed"
    assert r.output_text == "history: first"
    assert r.conversation is not None and r.conversation.id == conv.id
    # The response's input and output were appended to the conversation.
    items = list(client.conversations.items.list(conv.id, order="asc"))
    assert [(i.role, _text(i)) for i in items] == [
        ("user", "first"),
        ("user", "history"),
        ("assistant", "history: first"),
    ]
    # A second response in the same conversation sees all of it, also in object form.
    r2 = client.responses.create(model="scripted", input="history", conversation={"id": conv.id})
    assert r2.output_text == "history: first | history"


def test_items_list_order_and_pagination(client):
    conv = _new_conv(client, "i1", "i2", "i3", "i4", "i5")
    asc = client.conversations.items.list(conv.id, order="asc")
    assert [_text(i) for i in asc.data] == ["i1", "i2", "i3", "i4", "i5"]
    assert all(i.id for i in asc.data) and len({i.id for i in asc.data}) == 5
    desc = client.conversations.items.list(conv.id, order="desc")
    assert [_text(i) for i in desc.data] == ["i5", "i4", "i3", "i2", "i1"]
    # Default order is descending, as in OpenAI's API.
    assert [_text(i) for i in client.conversations.items.list(conv.id).data] == ["i5", "i4", "i3", "i2", "i1"]

    p1 = client.conversations.items.list(conv.id, order="asc", limit=2)
    assert [_text(i) for i in p1.data] == ["i1", "i2"]
    assert p1.has_more is True
    assert p1.last_id == p1.data[-1].id
    raw = client.conversations.items.with_raw_response.list(conv.id, order="asc", limit=2).http_response.json()
    assert raw["object"] == "list" and raw["first_id"] == p1.data[0].id and raw["last_id"] == p1.data[-1].id
    p2 = client.conversations.items.list(conv.id, order="asc", limit=2, after=p1.last_id)
    assert [_text(i) for i in p2.data] == ["i3", "i4"]
    p3 = p2.get_next_page()
    assert [_text(i) for i in p3.data] == ["i5"]
    assert p3.has_more is False
    # Auto-pagination both ways.
    assert [_text(i) for i in client.conversations.items.list(conv.id, order="asc", limit=2)] == ["i1", "i2", "i3", "i4", "i5"]
    assert [_text(i) for i in client.conversations.items.list(conv.id, order="desc", limit=2)] == ["i5", "i4", "i3", "i2", "i1"]
    d1 = client.conversations.items.list(conv.id, order="desc", limit=3)
    d2 = client.conversations.items.list(conv.id, order="desc", limit=3, after=d1.last_id)
    assert [_text(i) for i in d2.data] == ["i2", "i1"]


def test_items_create_retrieve_delete(client):
    conv = _new_conv(client, "first")
    r = client.responses.create(model="scripted", input="history", conversation=conv.id)
    assert r.output_text == "history: first"

    created = client.conversations.items.create(
        conv.id,
        items=[
            {"type": "message", "role": "user", "content": "second"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "third"}]},
        ],
    )
    assert created.object == "list"
    assert [_text(i) for i in created.data] == ["second", "third"]
    second = created.data[0]
    assert second.id and second.role == "user"

    got = client.conversations.items.retrieve(second.id, conversation_id=conv.id)
    assert got.id == second.id
    assert _text(got) == "second"
    assert got.role == "user"

    first = client.conversations.items.list(conv.id, order="asc").data[0]
    assert _text(first) == "first"
    after_delete = client.conversations.items.delete(first.id, conversation_id=conv.id)
    assert after_delete.id == conv.id
    assert after_delete.object == "conversation"

    texts = [_text(i) for i in client.conversations.items.list(conv.id, order="asc")]
    assert texts == ["history", "history: first", "second", "third"]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(first.id, conversation_id=conv.id)

    # The next response does not see the deleted item.
    r2 = client.responses.create(model="scripted", input="history", conversation=conv.id)
    assert r2.output_text == "history: history | second | third"


def test_delete_conversation(client):
    conv = _new_conv(client, "bye")
    d = client.conversations.delete(conv.id)
    assert d.id == conv.id
    assert d.deleted is True
    assert d.object == "conversation.deleted"
    with pytest.raises(openai.NotFoundError) as e:
        client.conversations.retrieve(conv.id)
    error_body(e.value)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(conv.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="scripted", input="x", conversation=conv.id)


def test_conversation_with_function_call_round_trip(client):
    from _util import WEATHER_TOOL

    conv = client.conversations.create()
    r1 = client.responses.create(
        model="scripted", input='call get_weather {"city":"Oslo"}', tools=[WEATHER_TOOL], conversation=conv.id
    )
    fc = [o for o in r1.output if o.type == "function_call"][0]
    r2 = client.responses.create(
        model="scripted",
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "snow"}],
        tools=[WEATHER_TOOL],
        conversation=conv.id,
    )
    assert r2.output_text == "get_weather returned: snow"
    types = [i.type for i in client.conversations.items.list(conv.id, order="asc")]
    assert types == ["message", "function_call", "function_call_output", "message"], types


def test_conversation_and_previous_response_are_exclusive(client):
    conv = client.conversations.create()
    r1 = client.responses.create(model="scripted", input="a")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input="b", conversation=conv.id, previous_response_id=r1.id)
    error_body(e.value)


def test_unknown_conversation(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.conversations.retrieve("conv_doesnotexist")
    error_body(e.value)
    with pytest.raises(openai.NotFoundError):
        client.conversations.update("conv_doesnotexist", metadata={"a": "b"})
    with pytest.raises(openai.NotFoundError):
        client.conversations.delete("conv_doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="scripted", input="x", conversation="conv_doesnotexist")
