"""Background responses that survive a SIGKILL of the server, and resuming their event stream
with `starting_after`.

Model `slow` routes to the scripted model with 200 ms between streamed chunks, so echoing 40
words takes about 8 s: long enough to kill the server in the middle."""

from __future__ import annotations

import time

from _util import wait_terminal, words

N_WORDS = 40


def _read_until(stream, type_: str):
    """Events of a raw stream up to and including the first of type `type_`."""
    events = []
    for e in stream:
        events.append(e)
        if e.type == type_:
            return events
    raise AssertionError(f"stream ended without {type_}: {[e.type for e in events]}")


def test_background_survives_sigkill(own_server):
    client = own_server.client()
    text = words(N_WORDS)
    r = client.responses.create(model="slow", input=text, background=True)
    assert r.background is True
    assert r.status in ("queued", "in_progress"), r.status
    got = client.responses.retrieve(r.id)
    assert got.status in ("queued", "in_progress"), got.status
    time.sleep(1.0)  # let it get going
    assert client.responses.retrieve(r.id).status in ("queued", "in_progress")

    own_server.kill()
    client.close()
    own_server.start()
    client = own_server.client()

    after = client.responses.retrieve(r.id)
    assert after.id == r.id
    assert after.status in ("queued", "in_progress", "completed"), after.status
    final = wait_terminal(client, r.id, timeout=60)
    assert final.status == "completed", (final.status, final.error)
    assert final.output_text == f"echo: {text}"
    assert final.background is True
    assert final.usage is not None and final.usage.input_tokens > 0


def test_background_stream_is_live(client):
    """background=True with stream=True streams the deltas as the model produces them (the
    slow model takes ~200 ms per word), not all at once when it is done."""
    text = words(12)
    arrivals = []
    for e in client.responses.create(model="slow", input=text, background=True, stream=True):
        if e.type == "response.output_text.delta":
            arrivals.append((time.monotonic(), e.delta))
    assert "".join(d for _, d in arrivals) == f"echo: {text}"
    assert len(arrivals) >= 2, f"the whole text came as {len(arrivals)} delta(s): {arrivals!r}"
    assert arrivals[-1][0] - arrivals[0][0] >= 1.0, "the deltas were not spread over the model's run"


def test_resume_stream_of_running_background_response(client):
    """Disconnect early (after response.in_progress), then resume with retrieve(stream=True, starting_after=N): the
    events after N, contiguous, ending with response.completed, and together with those already
    seen they make up the whole text."""
    text = words(12)
    stream = client.responses.create(model="slow", input=text, background=True, stream=True)
    seen = _read_until(stream, "response.in_progress")
    stream.close()
    assert seen[0].type == "response.created"
    rid = seen[0].response.id
    n = seen[-1].sequence_number
    assert client.responses.retrieve(rid).status in ("queued", "in_progress")

    rest = list(client.responses.retrieve(rid, stream=True, starting_after=n))
    assert rest, "nothing after starting_after"
    seqs = [e.sequence_number for e in rest]
    assert seqs[0] == n + 1, (n, seqs[:3])
    assert seqs == list(range(n + 1, n + 1 + len(seqs))), seqs
    assert rest[-1].type == "response.completed", [e.type for e in rest]
    deltas = [e.delta for e in seen + rest if e.type == "response.output_text.delta"]
    assert "".join(deltas) == f"echo: {text}"
    assert rest[-1].response.output_text == f"echo: {text}"


def test_resume_after_a_delta(client):
    """Same, cut after the first text delta; the SDK's stream helper resumes too."""
    text = words(12)
    stream = client.responses.create(model="slow", input=text, background=True, stream=True)
    seen = _read_until(stream, "response.output_text.delta")
    stream.close()
    rid = seen[0].response.id
    n = seen[-1].sequence_number
    rest = list(client.responses.retrieve(rid, stream=True, starting_after=n))
    assert rest and rest[0].sequence_number == n + 1 and rest[-1].type == "response.completed", [
        (e.sequence_number, e.type) for e in rest
    ]
    deltas = [e.delta for e in seen + rest if e.type == "response.output_text.delta"]
    assert "".join(deltas) == f"echo: {text}"
    with client.responses.stream(response_id=rid, starting_after=n) as s:
        events = list(s)
        final = s.get_final_response()
    assert [e.sequence_number for e in events] == [e.sequence_number for e in rest]
    assert final.output_text == f"echo: {text}"


def test_replay_stream_of_finished_background_response(client):
    """The whole event stream of a finished background response can be fetched again, and the
    SDK's stream helper rebuilds the response from it (it always fetches from the start and
    drops the events up to starting_after itself)."""
    text = words(5)
    r = client.responses.create(model="scripted", input=text, background=True, stream=True)
    first = list(r)
    rid = first[0].response.id
    assert first[-1].type == "response.completed"

    replay = list(client.responses.retrieve(rid, stream=True))
    assert [(e.type, e.sequence_number) for e in replay] == [(e.type, e.sequence_number) for e in first]

    cut = first[3].sequence_number
    with client.responses.stream(response_id=rid, starting_after=cut) as s:
        events = list(s)
        final = s.get_final_response()
    assert events and all(e.sequence_number > cut for e in events)
    assert events[-1].type == "response.completed"
    assert final.output_text == f"echo: {text}"


def test_resume_stream_after_sigkill(own_server):
    client = own_server.client()
    text = words(20)
    stream = client.responses.create(model="slow", input=text, background=True, stream=True)
    seen = _read_until(stream, "response.in_progress")
    rid = seen[0].response.id
    n = seen[-1].sequence_number
    assert client.responses.retrieve(rid).status in ("queued", "in_progress")

    own_server.kill()
    stream.close()
    client.close()
    own_server.start()
    client = own_server.client()

    rest = list(client.responses.retrieve(rid, stream=True, starting_after=n))
    assert rest, "nothing after starting_after"
    seqs = [e.sequence_number for e in rest]
    assert all(s > n for s in seqs), (n, seqs)
    assert seqs == sorted(set(seqs)), seqs
    assert rest[-1].type == "response.completed", [e.type for e in rest]
    assert rest[-1].response.output_text == f"echo: {text}"
    assert wait_terminal(client, rid).output_text == f"echo: {text}"


def test_cancel_after_restart(own_server):
    client = own_server.client()
    r = client.responses.create(model="slow", input=words(N_WORDS), background=True)
    own_server.restart()
    client = own_server.client()
    c = client.responses.cancel(r.id)
    assert c.status == "cancelled", c.status
    time.sleep(0.5)
    assert wait_terminal(client, r.id).status == "cancelled"


def test_stored_state_survives_sigkill(own_server):
    """Responses, chains and conversations written before a SIGKILL are all there after it."""
    client = own_server.client()
    r1 = client.responses.create(model="scripted", input="a", metadata={"m": "1"})
    r2 = client.responses.create(model="scripted", input="b", previous_response_id=r1.id)
    conv = client.conversations.create(items=[{"type": "message", "role": "user", "content": "first"}], metadata={"k": "v"})
    client.responses.create(model="scripted", input="second", conversation=conv.id)

    own_server.restart()
    client = own_server.client()

    got = client.responses.retrieve(r1.id)
    assert got.output_text == "echo: a" and got.metadata == {"m": "1"}
    r3 = client.responses.create(model="scripted", input="history", previous_response_id=r2.id)
    assert r3.output_text == "history: a | b"
    assert client.conversations.retrieve(conv.id).metadata == {"k": "v"}
    r4 = client.responses.create(model="scripted", input="history", conversation=conv.id)
    assert r4.output_text == "history: first | second"
