"""The OpenAI Agents SDK (`openai-agents`), unchanged, on Stead's Responses and Conversations
APIs: plain runs, function tools it runs itself, streaming, server-side chaining
(previous_response_id, conversation_id) and its conversation-backed session."""

from __future__ import annotations

import asyncio

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIConversationsSession,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ToolCallItem, ToolCallOutputItem

# No internet: the tracing exporter must never try to upload.
set_tracing_disabled(True)


@pytest.fixture
def aclient(server):
    return server.async_client()


def make_agent(aclient, tools=(), **kw) -> Agent:
    return Agent(
        name="compat",
        instructions="You are a test agent.",
        model=OpenAIResponsesModel(model="scripted", openai_client=aclient),
        tools=list(tools),
        **kw,
    )


calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Current weather in a city.

    Args:
        city: The city.
    """
    calls.append(city)
    return f"sunny in {city}"


def run(aclient, coro):
    """Runs the test's coroutine on a fresh event loop and closes the client on that loop."""

    async def wrapper():
        try:
            return await coro
        finally:
            await aclient.close()

    return asyncio.run(wrapper())


def test_run_plain(aclient):
    async def main():
        return await Runner.run(make_agent(aclient), "hello")

    result = run(aclient, main())
    assert result.final_output == "echo: hello"
    assert result.last_response_id and result.last_response_id.startswith("resp_")
    assert len(result.raw_responses) == 1
    assert result.raw_responses[0].usage.input_tokens > 0


def test_run_with_function_tool(aclient):
    calls.clear()

    async def main():
        return await Runner.run(make_agent(aclient, tools=[get_weather]), 'call get_weather {"city":"Paris"}')

    result = run(aclient, main())
    assert calls == ["Paris"], "the agent ran the tool with the model's arguments"
    assert result.final_output == "get_weather returned: sunny in Paris"
    assert any(isinstance(i, ToolCallItem) for i in result.new_items)
    outs = [i for i in result.new_items if isinstance(i, ToolCallOutputItem)]
    assert len(outs) == 1 and outs[0].output == "sunny in Paris"
    assert len(result.raw_responses) == 2


def test_run_streamed(aclient):
    async def main():
        result = Runner.run_streamed(make_agent(aclient), "hello stream")
        deltas = []
        async for ev in result.stream_events():
            if ev.type == "raw_response_event" and ev.data.type == "response.output_text.delta":
                deltas.append(ev.data.delta)
        return result, deltas

    result, deltas = run(aclient, main())
    assert result.final_output == "echo: hello stream"
    assert "".join(deltas) == "echo: hello stream"


def test_run_streamed_with_function_tool(aclient):
    calls.clear()

    async def main():
        result = Runner.run_streamed(make_agent(aclient, tools=[get_weather]), 'call get_weather {"city":"Rome"}')
        kinds = []
        async for ev in result.stream_events():
            if ev.type == "run_item_stream_event":
                kinds.append(ev.name)
        return result, kinds

    result, kinds = run(aclient, main())
    assert calls == ["Rome"]
    assert result.final_output == "get_weather returned: sunny in Rome"
    assert "tool_called" in kinds and "tool_output" in kinds, kinds


def test_previous_response_id_chaining(aclient):
    async def main():
        agent = make_agent(aclient)
        r1 = await Runner.run(agent, "a")
        r2 = await Runner.run(agent, "history", previous_response_id=r1.last_response_id)
        return r1, r2

    r1, r2 = run(aclient, main())
    assert r1.final_output == "echo: a"
    assert r2.final_output == "history: a"


def test_auto_previous_response_id_with_tool(aclient):
    """With auto_previous_response_id the SDK chains its own turns (function output sent with
    previous_response_id instead of replaying the items)."""
    calls.clear()

    async def main():
        return await Runner.run(
            make_agent(aclient, tools=[get_weather]), 'call get_weather {"city":"Lima"}', auto_previous_response_id=True
        )

    result = run(aclient, main())
    assert calls == ["Lima"]
    assert result.final_output == "get_weather returned: sunny in Lima"


def test_server_conversation_id(aclient):
    async def main():
        conv = await aclient.conversations.create()
        agent = make_agent(aclient)
        r1 = await Runner.run(agent, "first", conversation_id=conv.id)
        r2 = await Runner.run(agent, "history", conversation_id=conv.id)
        items = [i async for i in aclient.conversations.items.list(conv.id, order="asc")]
        return r1, r2, items

    r1, r2, items = run(aclient, main())
    assert r1.final_output == "echo: first"
    assert r2.final_output == "history: first"
    assert [i.role for i in items] == ["user", "assistant", "user", "assistant"]


def test_conversations_session(aclient):
    async def main():
        session = OpenAIConversationsSession(openai_client=aclient)
        agent = make_agent(aclient)
        r1 = await Runner.run(agent, "first", session=session)
        r2 = await Runner.run(agent, "history", session=session)
        items = await session.get_items()
        last = await session.get_items(limit=1)
        return session, r1, r2, items, last

    session, r1, r2, items, last = run(aclient, main())
    assert session.session_id.startswith("conv_")
    assert r1.final_output == "echo: first"
    assert r2.final_output == "history: first"
    assert len(items) == 4, items
    assert [i.get("role") for i in items] == ["user", "assistant", "user", "assistant"]
    assert len(last) == 1 and last[0].get("role") == "assistant"


def test_conversations_session_with_tool_and_pop(aclient):
    calls.clear()

    async def main():
        session = OpenAIConversationsSession(openai_client=aclient)
        agent = make_agent(aclient, tools=[get_weather])
        r1 = await Runner.run(agent, 'call get_weather {"city":"Kyiv"}', session=session)
        types = [i.get("type") for i in await session.get_items()]
        popped = await session.pop_item()
        after_pop = await session.get_items()
        r2 = await Runner.run(agent, "history", session=session)
        await session.clear_session()
        return r1, types, popped, after_pop, r2

    r1, types, popped, after_pop, r2 = run(aclient, main())
    assert calls == ["Kyiv"]
    assert r1.final_output == "get_weather returned: sunny in Kyiv"
    assert types == ["message", "function_call", "function_call_output", "message"], types
    assert popped is not None and popped.get("role") == "assistant"
    assert len(after_pop) == 3
    assert r2.final_output == 'history: call get_weather {"city":"Kyiv"}'


def test_model_settings_pass_through(aclient):
    async def main():
        agent = make_agent(
            aclient, model_settings=ModelSettings(temperature=0.3, top_p=0.8, max_tokens=64, metadata={"a": "b"}, store=True)
        )
        result = await Runner.run(agent, "settings")
        stored = await aclient.responses.retrieve(result.last_response_id)
        return result, stored

    result, stored = run(aclient, main())
    assert result.final_output == "echo: settings"
    # (exact float echo is checked in test_responses.py::test_parameters_are_echoed)
    assert stored.temperature == pytest.approx(0.3)
    assert stored.top_p == pytest.approx(0.8)
    assert stored.max_output_tokens == 64
    assert stored.metadata == {"a": "b"}
    assert stored.instructions == "You are a test agent."


def test_chat_completions_model_with_tool(aclient):
    """The Agents SDK on Stead's Chat Completions endpoint, including a tool round trip."""
    from agents import OpenAIChatCompletionsModel

    calls.clear()

    async def main():
        agent = Agent(
            name="compat-chat",
            instructions="You are a test agent.",
            model=OpenAIChatCompletionsModel(model="scripted", openai_client=aclient),
            tools=[get_weather],
        )
        plain = await Runner.run(agent, "hello")
        tooled = await Runner.run(agent, 'call get_weather {"city":"Bern"}')
        return plain, tooled

    plain, tooled = run(aclient, main())
    assert plain.final_output == "echo: hello"
    assert calls == ["Bern"]
    assert tooled.final_output == "get_weather returned: sunny in Bern"
