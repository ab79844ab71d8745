"""The client matrix, part 2: the higher-level clients a learner reaches for next, each with one
sync and one async call, unchanged, on the three surfaces of `clients_matrix` (in process via
setup(), mock_openai() alone, and the TCP fake server).

langchain-openai, pydantic-ai, instructor (TOOLS and JSON modes), openai-agents and litellm all
speak to the offline upstream as they would to the real API: structured answers come back as the
library's own parsed objects, tool calls are made, run and answered from.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import pytest
from clients_matrix import SURFACES, on_surface
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

# litellm fetches a model price list at import; offline it falls back to its bundled copy after
# three retries (seconds of waiting). Its documented switch goes straight to the bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# openai-agents exports traces to the real API in the background; the lab has no use for them.
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

# Five client libraries imported and driven (litellm's import alone takes seconds): a system
# test of the upstream, for `make check` and `make drift`.
pytestmark = pytest.mark.slow

MODEL = "gpt-4o-mini"
KEY = "test-key"
REVIEW = "Review this: The new release is fast and reliable."
SENTIMENT = "Sentiment (one word): The new release is fast and reliable."
WEATHER = "What is the weather in Paris?"


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    topics: list[str]


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}"


@pytest.fixture(params=SURFACES)
def surface(request: pytest.FixtureRequest) -> str:
    """Where the case runs: in process via setup(), mock_openai() alone, or FakeServer."""
    return str(request.param)


@pytest.fixture
def base_url(surface: str) -> Iterator[str | None]:
    """None in process (the mock answers the SDK's default base URL); else the fake server's."""
    with on_surface(surface) as url:
        yield url


@contextmanager
def on_the_threads_loop(base_url: str | None) -> Iterator[AsyncOpenAI]:
    """An async client for a library's sync call (pydantic-ai's run_sync, the agents SDK's
    Runner.run_sync): those run on the thread's default event loop and leave it open, by design,
    for the next call. Close the client and that loop after it, so nothing is left for the
    garbage collector to warn about during a later test."""
    client = AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0)
    try:
        yield client
    finally:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        loop.run_until_complete(client.close())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


def good_review(review: Any) -> bool:
    return isinstance(review, Review) and review.sentiment == "positive" and bool(review.topics)


# -- langchain-openai -------------------------------------------------------------------------


def test_langchain_sync(base_url: str | None) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, api_key=KEY, base_url=base_url, max_retries=0)  # type: ignore[arg-type]
    assert llm.invoke(SENTIMENT).content == "Positive"
    assert "".join(str(chunk.content) for chunk in llm.stream(SENTIMENT)) == "Positive"
    assert good_review(llm.with_structured_output(Review).invoke(REVIEW))
    (call,) = llm.bind_tools([get_weather]).invoke(WEATHER).tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})


@pytest.mark.anyio
async def test_langchain_async(base_url: str | None) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, api_key=KEY, base_url=base_url, max_retries=0)  # type: ignore[arg-type]
    assert (await llm.ainvoke(SENTIMENT)).content == "Positive"
    assert "".join([str(chunk.content) async for chunk in llm.astream(SENTIMENT)]) == "Positive"


# -- pydantic-ai ------------------------------------------------------------------------------


def pydantic_ai_model(client: AsyncOpenAI) -> Any:
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    return OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))


def test_pydantic_ai_sync(base_url: str | None) -> None:
    from pydantic_ai import Agent

    with on_the_threads_loop(base_url) as client:
        agent = Agent(pydantic_ai_model(client), output_type=Review)
        assert good_review(agent.run_sync(REVIEW).output)


@pytest.mark.anyio
async def test_pydantic_ai_async_runs_a_tool_and_answers_from_it(base_url: str | None) -> None:
    from pydantic_ai import Agent

    async with AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0) as client:
        agent = Agent(pydantic_ai_model(client), tools=[get_weather])
        result = await agent.run(WEATHER)
    assert result.output == "According to get_weather: sunny in Paris."


# -- instructor -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["TOOLS", "JSON"])
def test_instructor_sync(base_url: str | None, mode: str) -> None:
    import instructor

    with OpenAI(api_key=KEY, base_url=base_url, max_retries=0) as client:
        patched = instructor.from_openai(client, mode=instructor.Mode[mode])
        review = patched.chat.completions.create(
            model=MODEL, response_model=Review, messages=[{"role": "user", "content": REVIEW}]
        )
    assert good_review(review)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["TOOLS", "JSON"])
async def test_instructor_async(base_url: str | None, mode: str) -> None:
    import instructor

    async with AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0) as client:
        patched = instructor.from_openai(client, mode=instructor.Mode[mode])
        review = await patched.chat.completions.create(
            model=MODEL, response_model=Review, messages=[{"role": "user", "content": REVIEW}]
        )
    assert good_review(review)


class Label(BaseModel):
    label: str


@pytest.mark.parametrize("mode", ["TOOLS", "JSON"])
def test_instructor_fills_a_label_as_the_chat_reply_would(base_url: str | None, mode: str) -> None:
    """One request, no retry: the schema carries what the chat reply says."""
    import httpx2
    import instructor

    sent: list[object] = []
    http_client = httpx2.Client(event_hooks={"request": [sent.append]})
    with OpenAI(api_key=KEY, base_url=base_url, max_retries=0, http_client=http_client) as client:
        patched = instructor.from_openai(client, mode=instructor.Mode[mode])
        answer = patched.chat.completions.create(
            model=MODEL,
            response_model=Label,
            messages=[{"role": "user", "content": "Sentiment (one word): I love this course"}],
        )
    assert isinstance(answer, Label) and answer.label == "Positive"
    assert len(sent) == 1


# -- openai-agents (the Responses API) --------------------------------------------------------


def weather_agent(client: AsyncOpenAI) -> Any:
    from agents import Agent, OpenAIResponsesModel, function_tool

    model = OpenAIResponsesModel(MODEL, openai_client=client)
    return Agent(name="weather", model=model, tools=[function_tool(get_weather)])


def test_openai_agents_sync_runs_a_tool_and_answers_from_it(base_url: str | None) -> None:
    from agents import Runner

    with on_the_threads_loop(base_url) as client:
        result = Runner.run_sync(weather_agent(client), WEATHER)
    assert result.final_output == "According to get_weather: sunny in Paris."


@pytest.mark.anyio
async def test_openai_agents_async_structured_output(base_url: str | None) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner

    async with AsyncOpenAI(api_key=KEY, base_url=base_url, max_retries=0) as client:
        model = OpenAIResponsesModel(MODEL, openai_client=client)
        result = await Runner.run(Agent(name="critic", model=model, output_type=Review), REVIEW)
    assert good_review(result.final_output)


# -- litellm ----------------------------------------------------------------------------------


def litellm_options(base_url: str | None) -> dict[str, Any]:
    return {"api_key": KEY, "api_base": base_url} if base_url else {"api_key": KEY}


def test_litellm_sync(base_url: str | None) -> None:
    import litellm

    messages = [{"role": "user", "content": SENTIMENT}]
    reply: Any = litellm.completion(
        model=f"openai/{MODEL}", messages=messages, **litellm_options(base_url)
    )
    assert reply.choices[0].message.content == "Positive"


@pytest.mark.anyio
async def test_litellm_async(base_url: str | None) -> None:
    """litellm's default async path (aiohttp), unchanged: the mock answers aiohttp too."""
    import litellm

    messages = [{"role": "user", "content": SENTIMENT}]
    reply: Any = await litellm.acompletion(
        model=f"openai/{MODEL}", messages=messages, **litellm_options(base_url)
    )
    assert reply.choices[0].message.content == "Positive"


# litellm's streaming code warns about pydantic's deprecations and its own TypedDicts on every
# stack and surface (FakeServer too): its own warnings, not the lab's, so not errors here.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211")
@pytest.mark.filterwarnings("ignore:Item .* is using the .ReadOnly. qualifier:UserWarning")
@pytest.mark.anyio
async def test_litellm_async_streaming(base_url: str | None) -> None:
    """litellm's default async path (aiohttp), streamed: the chunks come as the upstream sends
    them, in process as over TCP."""
    import litellm

    messages = [{"role": "user", "content": SENTIMENT}]
    chunks: Any = await litellm.acompletion(
        model=f"openai/{MODEL}", messages=messages, stream=True, **litellm_options(base_url)
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in chunks])
    assert text == "Positive"
