"""Chaining and branching with `previous_response_id`.

The scripted model's `history` command replies `history: ` followed by every earlier user
message of its context, joined by ` | `: what it prints is exactly what context it was given."""

from __future__ import annotations

import openai
import pytest

from _util import error_body


def test_chain(client):
    r1 = client.responses.create(model="scripted", input="a")
    r2 = client.responses.create(model="scripted", input="b", previous_response_id=r1.id)
    assert r2.output_text == "echo: b"
    assert r2.previous_response_id == r1.id
    r3 = client.responses.create(model="scripted", input="history", previous_response_id=r2.id)
    assert r3.output_text == "history: a | b"


def test_branches_do_not_see_each_other(client):
    r1 = client.responses.create(model="scripted", input="a")
    r2 = client.responses.create(model="scripted", input="b", previous_response_id=r1.id)
    r3 = client.responses.create(model="scripted", input="history", previous_response_id=r2.id)
    # Branch off r1.
    r4 = client.responses.create(model="scripted", input="c", previous_response_id=r1.id)
    r5 = client.responses.create(model="scripted", input="history", previous_response_id=r4.id)
    assert r5.output_text == "history: a | c"
    # The first branch is unaffected, both as stored and when continued again.
    assert client.responses.retrieve(r3.id).output_text == "history: a | b"
    r6 = client.responses.create(model="scripted", input="history", previous_response_id=r2.id)
    assert r6.output_text == "history: a | b"
    # Two siblings off the same parent.
    r7 = client.responses.create(model="scripted", input="history", previous_response_id=r1.id)
    assert r7.output_text == "history: a"


def test_chain_carries_assistant_turns_and_instructions_do_not_carry(client):
    """Instructions apply to one response only (OpenAI: not carried over with
    previous_response_id); the history of messages is."""
    r1 = client.responses.create(model="scripted", input="a", instructions="first instructions")
    r2 = client.responses.create(model="scripted", input="history", previous_response_id=r1.id)
    assert r2.output_text == "history: a"
    assert r2.instructions is None


def test_chain_with_message_list_input(client):
    r1 = client.responses.create(model="scripted", input=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    r2 = client.responses.create(
        model="scripted",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "history"}]}],
        previous_response_id=r1.id,
    )
    assert r2.output_text == "history: a | b"


def test_long_chain(client):
    prev = None
    for w in ["p", "q", "r", "s", "t"]:
        prev = client.responses.create(model="scripted", input=w, previous_response_id=prev.id if prev else None)
    last = client.responses.create(model="scripted", input="history", previous_response_id=prev.id)
    assert last.output_text == "history: p | q | r | s | t"


def test_unknown_previous_response(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="scripted", input="x", previous_response_id="resp_doesnotexist")
    err = error_body(e.value)
    assert err["param"] == "previous_response_id", err


def test_previous_response_that_was_deleted(client):
    r1 = client.responses.create(model="scripted", input="a")
    client.responses.delete(r1.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="scripted", input="b", previous_response_id=r1.id)


def test_previous_response_that_was_not_stored(client):
    r1 = client.responses.create(model="scripted", input="a", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="scripted", input="history", previous_response_id=r1.id)
