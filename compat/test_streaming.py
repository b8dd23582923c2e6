"""Streaming: the SDK's `responses.stream(...)` helper (which rebuilds the response from the
events and checks their consistency), raw `create(stream=True)`, and the SSE wire format."""

from __future__ import annotations

import json
import time

import pytest

from _util import words


def _check_sequence(events):
    seqs = [e.sequence_number for e in events]
    assert all(isinstance(n, int) for n in seqs), seqs
    assert seqs == sorted(set(seqs)), f"sequence numbers not strictly increasing: {seqs}"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"sequence numbers have gaps: {seqs}"


def _check_text_message_events(events, expected_text: str):
    types = [e.type for e in events]
    assert types[0] == "response.created", types
    assert types[-1] == "response.completed", types
    assert "response.in_progress" in types, types
    _check_sequence(events)

    created = events[0]
    assert created.response.id.startswith("resp_")
    assert created.response.status in ("queued", "in_progress"), created.response.status
    assert created.response.output == []

    for t in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert t in types, f"no {t} event in {types}"
    first = {t: types.index(t) for t in set(types)}
    last = {t: len(types) - 1 - types[::-1].index(t) for t in set(types)}
    assert first["response.output_item.added"] < first["response.content_part.added"] < first["response.output_text.delta"]
    assert last["response.output_text.delta"] < first["response.output_text.done"] < first["response.content_part.done"]
    assert first["response.content_part.done"] < first["response.output_item.done"] < first["response.completed"]

    added = next(e for e in events if e.type == "response.output_item.added")
    assert added.item.type == "message"
    assert added.item.role == "assistant"
    assert added.item.status == "in_progress"
    item_id = added.item.id
    assert item_id

    part_added = next(e for e in events if e.type == "response.content_part.added")
    assert part_added.item_id == item_id
    assert part_added.part.type == "output_text"
    assert part_added.part.text == ""

    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all(d.item_id == item_id and d.output_index == added.output_index and d.content_index == 0 for d in deltas)
    assert "".join(d.delta for d in deltas) == expected_text, f"{len(deltas)} deltas: {[d.delta for d in deltas]!r}"

    text_done = next(e for e in events if e.type == "response.output_text.done")
    assert text_done.text == expected_text
    assert text_done.item_id == item_id
    part_done = next(e for e in events if e.type == "response.content_part.done")
    assert part_done.part.text == expected_text
    item_done = next(e for e in events if e.type == "response.output_item.done")
    assert item_done.item.id == item_id
    assert item_done.item.status == "completed"
    assert item_done.item.content[0].text == expected_text

    completed = events[-1]
    assert completed.response.id == created.response.id
    assert completed.response.status == "completed"
    assert completed.response.output_text == expected_text
    assert completed.response.usage is not None and completed.response.usage.input_tokens > 0
    return created.response.id


def test_stream_helper(client):
    with client.responses.stream(model="scripted", input="hello there") as s:
        events = list(s)
        final = s.get_final_response()
    rid = _check_text_message_events(events, "echo: hello there")
    assert final.id == rid
    assert final.status == "completed"
    assert final.output_text == "echo: hello there"
    # The helper's snapshot text for the last delta is the full text.
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas[-1].snapshot == "echo: hello there"
    # A streamed response is stored like any other.
    assert client.responses.retrieve(rid).output_text == "echo: hello there"


def test_stream_helper_text_deltas_and_until_done(client):
    with client.responses.stream(model="scripted", input="one two three", instructions="x", metadata={"m": "1"}) as s:
        s.until_done()
        final = s.get_final_response()
    assert final.output_text == "echo: one two three"
    assert final.metadata == {"m": "1"}
    assert final.instructions == "x"


def test_raw_stream(client):
    stream = client.responses.create(model="scripted", input="raw stream please", stream=True)
    events = list(stream)
    _check_text_message_events(events, "echo: raw stream please")


def test_foreground_stream_is_live(client):
    """Deltas are sent as the model produces them (model `slow`: ~200 ms per word)."""
    text = "echo: " + words(8)
    arrivals = []
    for e in client.responses.create(model="slow", input=words(8), stream=True):
        if e.type == "response.output_text.delta":
            arrivals.append((time.monotonic(), e.delta))
    assert "".join(d for _, d in arrivals) == text, [d for _, d in arrivals]
    assert len(arrivals) >= 2, f"the whole text came as {len(arrivals)} delta(s)"
    assert arrivals[-1][0] - arrivals[0][0] >= 0.8, "the deltas were not spread over the model's run"


@pytest.mark.parametrize("attempt", range(5))
def test_no_delta_is_lost(client, attempt):
    """A longer answer, streamed several times: every chunk must arrive as a delta (the scripted
    model sends one chunk per word), and the deltas must add up to the final text."""
    text = "echo: " + words(20)
    events = list(client.responses.create(model="scripted", input=words(20), stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == text
    assert "".join(deltas) == text, f"{len(deltas)} deltas: {deltas!r}"


def test_stream_with_previous_response(client):
    r1 = client.responses.create(model="scripted", input="a")
    with client.responses.stream(model="scripted", input="history", previous_response_id=r1.id) as s:
        for _ in s:
            pass
        final = s.get_final_response()
    assert final.output_text == "history: a"
    assert final.previous_response_id == r1.id


def test_stream_store_false(client):
    import openai

    with client.responses.stream(model="scripted", input="not kept", store=False) as s:
        events = list(s)
        final = s.get_final_response()
    assert final.output_text == "echo: not kept"
    _check_text_message_events(events, "echo: not kept")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(final.id)


def test_sse_wire_format(client):
    """Server-sent events as OpenAI sends them: `event: <type>` then `data: <json>` whose
    `type` matches, with Content-Type text/event-stream."""
    with client.responses.with_streaming_response.create(model="scripted", input="wire", stream=True) as resp:
        assert resp.http_response.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers["content-type"]
        body = resp.read().decode()
    blocks = [b for b in body.replace("\r\n", "\n").split("\n\n") if b.strip()]
    assert blocks, body
    types = []
    for block in blocks:
        fields = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            k, _, v = line.partition(":")
            fields.setdefault(k, []).append(v[1:] if v.startswith(" ") else v)
        if fields.get("data") == ["[DONE]"]:
            continue
        assert "data" in fields, block
        data = json.loads("\n".join(fields["data"]))
        if "event" in fields:
            assert fields["event"] == [data["type"]], block
        types.append(data["type"])
    assert types[0] == "response.created" and types[-1] == "response.completed", types
