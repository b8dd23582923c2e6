"""Function tools: the model calls a client-side function, the client sends the output back.

Scripted model: `call TOOL {json}` makes it call TOOL with those arguments; once the result is
in, it replies `TOOL returned: RESULT`."""

from __future__ import annotations

import json

import openai
import pytest

from _util import WEATHER_TOOL, args_of, error_body, items_of

CALL = 'call get_weather {"city":"Paris"}'


def _first_call(client, **kw):
    r1 = client.responses.create(model="scripted", input=CALL, tools=[WEATHER_TOOL], **kw)
    assert r1.status == "completed", r1.status
    calls = items_of(r1, "function_call")
    assert len(calls) == 1, r1.output
    return r1, calls[0]


def test_function_call_item(client):
    r1, fc = _first_call(client)
    assert fc.name == "get_weather"
    assert args_of(fc) == {"city": "Paris"}
    assert fc.call_id
    assert fc.id and fc.id.startswith("fc_"), fc.id
    assert fc.status == "completed"
    assert r1.output_text == ""
    assert [o.type for o in r1.output] == ["function_call"]
    # The tool definition is echoed back.
    assert len(r1.tools) == 1
    assert r1.tools[0].type == "function"
    assert r1.tools[0].name == "get_weather"
    assert r1.tools[0].parameters["required"] == ["city"]


def test_round_trip_with_previous_response(client):
    r1, fc = _first_call(client)
    r2 = client.responses.create(
        model="scripted",
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "sunny"}],
        previous_response_id=r1.id,
        tools=[WEATHER_TOOL],
    )
    assert r2.status == "completed"
    assert r2.output_text == "get_weather returned: sunny"
    # The output item is an input item of r2.
    items = list(client.responses.input_items.list(r2.id))
    outs = [i for i in items if i.type == "function_call_output"]
    assert len(outs) == 1 and outs[0].call_id == fc.call_id and outs[0].output == "sunny", items


def test_round_trip_without_tools_repeated(client):
    """Tools are per request; the output can be sent back without repeating them."""
    r1, fc = _first_call(client)
    r2 = client.responses.create(
        model="scripted",
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "rain"}],
        previous_response_id=r1.id,
    )
    assert r2.output_text == "get_weather returned: rain"


def test_round_trip_stateless(client):
    """Without previous_response_id: the client replays the call item and its output inline (as
    the Agents SDK does)."""
    r1, fc = _first_call(client, store=False)
    r2 = client.responses.create(
        model="scripted",
        input=[
            {"role": "user", "content": CALL},
            fc.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": fc.call_id, "output": "foggy"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert r2.output_text == "get_weather returned: foggy"


def test_round_trip_with_structured_output(client):
    """function_call_output.output may also be a list of content parts."""
    r1, fc = _first_call(client)
    r2 = client.responses.create(
        model="scripted",
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": [{"type": "input_text", "text": "windy"}]}],
        previous_response_id=r1.id,
        tools=[WEATHER_TOOL],
    )
    assert r2.output_text == "get_weather returned: windy"


def test_missing_function_output_is_rejected(client):
    r1, fc = _first_call(client)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input="what now?", previous_response_id=r1.id, tools=[WEATHER_TOOL])
    err = error_body(e.value)
    assert fc.call_id in err["message"] or "output" in err["message"].lower(), err


def test_output_for_unknown_call_is_rejected(client):
    r1, _ = _first_call(client)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(
            model="scripted",
            input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}],
            previous_response_id=r1.id,
            tools=[WEATHER_TOOL],
        )
    error_body(e.value)


def test_streamed_function_call(client):
    with client.responses.stream(model="scripted", input=CALL, tools=[WEATHER_TOOL]) as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    added = [e for e in events if e.type == "response.output_item.added"]
    assert len(added) == 1 and added[0].item.type == "function_call", added
    assert added[0].item.name == "get_weather"
    assert added[0].item.call_id
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas, types
    assert all(d.item_id == added[0].item.id for d in deltas)
    assert json.loads("".join(d.delta for d in deltas)) == {"city": "Paris"}
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0].arguments) == {"city": "Paris"}
    assert done[0].item_id == added[0].item.id
    item_done = [e for e in events if e.type == "response.output_item.done"]
    assert len(item_done) == 1 and item_done[0].item.type == "function_call"
    assert item_done[0].item.status == "completed"
    assert json.loads(item_done[0].item.arguments) == {"city": "Paris"}
    assert types.index("response.function_call_arguments.done") < types.index("response.output_item.done")
    calls = items_of(final, "function_call")
    assert len(calls) == 1 and args_of(calls[0]) == {"city": "Paris"}

    # And the streamed round trip.
    with client.responses.stream(
        model="scripted",
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        previous_response_id=final.id,
        tools=[WEATHER_TOOL],
    ) as s2:
        s2.until_done()
        final2 = s2.get_final_response()
    assert final2.output_text == "get_weather returned: sunny"


def test_tool_choice_and_parallel_tool_calls_echoed(client):
    r = client.responses.create(
        model="scripted", input="no tool needed", tools=[WEATHER_TOOL], tool_choice="auto", parallel_tool_calls=False
    )
    assert r.output_text == "echo: no tool needed"
    assert r.tool_choice == "auto"
    assert r.parallel_tool_calls is False


TIME_TOOL = {
    "type": "function",
    "name": "get_time",
    "description": "Current time.",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
}


def test_parallel_calls_round_trip(client):
    """Two calls in one response; both outputs sent back in one request."""
    r1 = client.responses.create(model="scripted", input="parallel get_weather get_time", tools=[WEATHER_TOOL, TIME_TOOL])
    calls = items_of(r1, "function_call")
    assert [c.name for c in calls] == ["get_weather", "get_time"], r1.output
    assert len({c.call_id for c in calls}) == 2
    r2 = client.responses.create(
        model="scripted",
        input=[
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
            {"type": "function_call_output", "call_id": calls[1].call_id, "output": "noon"},
        ],
        previous_response_id=r1.id,
        tools=[WEATHER_TOOL, TIME_TOOL],
    )
    assert r2.output_text == "results: get_weather: sunny; get_time: noon"


def test_parallel_calls_need_every_output(client):
    r1 = client.responses.create(model="scripted", input="parallel get_weather get_time", tools=[WEATHER_TOOL, TIME_TOOL])
    calls = items_of(r1, "function_call")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(
            model="scripted",
            input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
            previous_response_id=r1.id,
            tools=[WEATHER_TOOL, TIME_TOOL],
        )
    error_body(e.value)


def test_tool_choice_none(client):
    """tool_choice "none": the model must not call tools (the scripted model then echoes)."""
    r = client.responses.create(model="scripted", input=CALL, tools=[WEATHER_TOOL], tool_choice="none")
    assert r.tool_choice == "none"
    assert not items_of(r, "function_call"), r.output
    assert r.output_text == f"echo: {CALL}"


def test_tool_choice_forced_function_echoed(client):
    r = client.responses.create(
        model="scripted", input=CALL, tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "get_weather"}
    )
    assert r.tool_choice.type == "function" and r.tool_choice.name == "get_weather", r.tool_choice
    assert [c.name for c in items_of(r, "function_call")] == ["get_weather"]


def test_tool_choice_naming_an_unknown_function_is_rejected(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="scripted", input="x", tools=[WEATHER_TOOL], tool_choice={"type": "function", "name": "nope"})
    error_body(e.value)
