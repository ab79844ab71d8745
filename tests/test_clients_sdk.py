"""The client matrix, part 1: the openai SDK's calls a learner makes after the course (chat,
streaming, parse, tools, embeddings, the Responses API plain and streamed), sync and async (on
httpx2, the SDK's default, and on aiohttp, its `DefaultAioHttpClient`), on the three surfaces
of `clients_matrix`: in process via setup(), mock_openai() alone, and the TCP fake server."""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from types import SimpleNamespace
from typing import Any, List, Literal, Union  # noqa: UP035 (List: as the example spells it)

import httpx2
import openai
import pytest
from clients_matrix import SURFACES, on_surface, verdict
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

from labsupport import NetworkBlockedError

MODEL = "gpt-4o-mini"
PROMPT = "Sentiment (one word): The new release is fast and reliable."
MESSAGES: Any = [{"role": "user", "content": PROMPT}]


class Verdict(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    topics: list[str]


class Lookup(BaseModel):
    city: str


TOOLS = [openai.pydantic_function_tool(Lookup, name="weather", description="Weather in a city")]
WEATHER: Any = [{"role": "user", "content": "What is the weather in Tokyo?"}]


@pytest.fixture(params=SURFACES)
def surface(request: pytest.FixtureRequest) -> str:
    """Where the case runs: in process via setup(), mock_openai() alone, or FakeServer."""
    return str(request.param)


@pytest.fixture
def base_url(surface: str) -> Iterator[str | None]:
    """None in process (the mock answers the SDK's default base URL); else the fake server's."""
    with on_surface(surface) as url:
        yield url


# What every call must come back with, sync or async: (call, check of the result).
def check(call: str, result: Any) -> None:
    if call == "chat":
        assert result.choices[0].message.content == "Positive"
    elif call == "streaming":
        assert result == "Positive"
    elif call in ("parse", "parse_stream"):
        verdict = result.choices[0].message.parsed
        assert verdict.sentiment == "positive" and "new release" in verdict.topics
    elif call == "tools":
        (tool_call,) = result.choices[0].message.tool_calls
        assert tool_call.function.parsed_arguments == Lookup(city="Tokyo")
    elif call == "embeddings":
        assert [len(d.embedding) for d in result.data] == [64, 64]
    elif call in ("responses", "responses_stream"):
        assert result.output_text == "Positive"
    elif call == "responses_parse":
        assert result.output_parsed.sentiment == "positive"
    else:
        raise AssertionError(call)


CALLS = [
    "chat",
    "streaming",
    "parse",
    "parse_stream",
    "tools",
    "embeddings",
    "responses",
    "responses_stream",
    "responses_parse",
]


def call_sync(client: OpenAI, call: str) -> Any:
    chat = client.chat.completions
    if call == "chat":
        return chat.create(model=MODEL, messages=MESSAGES)
    if call == "streaming":
        chunks = chat.create(model=MODEL, messages=MESSAGES, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if call == "parse":
        return chat.parse(model=MODEL, messages=MESSAGES, response_format=Verdict)
    if call == "parse_stream":
        with chat.stream(model=MODEL, messages=MESSAGES, response_format=Verdict) as stream:
            return stream.get_final_completion()
    if call == "tools":
        return chat.parse(model=MODEL, messages=WEATHER, tools=TOOLS)
    if call == "embeddings":
        return client.embeddings.create(
            model="text-embedding-3-small", input=["a", "b"], dimensions=64
        )
    if call == "responses":
        return client.responses.create(model=MODEL, input=PROMPT)
    if call == "responses_stream":
        with client.responses.stream(model=MODEL, input=PROMPT) as events:
            return events.get_final_response()
    return client.responses.parse(model=MODEL, input=PROMPT, text_format=Verdict)


async def call_async(client: AsyncOpenAI, call: str) -> Any:
    chat = client.chat.completions
    if call == "chat":
        return await chat.create(model=MODEL, messages=MESSAGES)
    if call == "streaming":
        chunks = await chat.create(model=MODEL, messages=MESSAGES, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    if call == "parse":
        return await chat.parse(model=MODEL, messages=MESSAGES, response_format=Verdict)
    if call == "parse_stream":
        async with chat.stream(model=MODEL, messages=MESSAGES, response_format=Verdict) as stream:
            return await stream.get_final_completion()
    if call == "tools":
        return await chat.parse(model=MODEL, messages=WEATHER, tools=TOOLS)
    if call == "embeddings":
        return await client.embeddings.create(
            model="text-embedding-3-small", input=["a", "b"], dimensions=64
        )
    if call == "responses":
        return await client.responses.create(model=MODEL, input=PROMPT)
    if call == "responses_stream":
        async with client.responses.stream(model=MODEL, input=PROMPT) as events:
            return await events.get_final_response()
    return await client.responses.parse(model=MODEL, input=PROMPT, text_format=Verdict)


@pytest.mark.parametrize("call", CALLS)
def test_sync_client(base_url: str | None, call: str) -> None:
    with OpenAI(api_key="test-key", base_url=base_url, max_retries=0) as client:
        check(call, call_sync(client, call))


@pytest.mark.anyio
@pytest.mark.parametrize("call", CALLS)
async def test_async_client(base_url: str | None, call: str) -> None:
    async with AsyncOpenAI(api_key="test-key", base_url=base_url, max_retries=0) as client:
        check(call, await call_async(client, call))


@pytest.mark.anyio
@pytest.mark.parametrize("call", CALLS)
async def test_async_client_on_aiohttp(base_url: str | None, call: str) -> None:
    """The SDK's aiohttp backend, as its README recommends for async concurrency."""
    http_client = openai.DefaultAioHttpClient()
    async with AsyncOpenAI(
        api_key="test-key", base_url=base_url, max_retries=0, http_client=http_client
    ) as client:
        check(call, await call_async(client, call))


def test_the_verdicts_tell_a_clear_refusal_from_a_timeout() -> None:
    request = httpx2.Request("GET", "https://api.openai.com/v1/models")
    blocked = NetworkBlockedError("The offline lab blocked a request to https://example.org")
    behind_a_timeout = openai.APITimeoutError(request=request)
    behind_a_timeout.__cause__ = blocked
    behind_a_connection_error = openai.APIConnectionError(request=request)
    behind_a_connection_error.__cause__ = blocked
    assert verdict(None) == "works"
    assert verdict(blocked) == verdict(behind_a_connection_error) == "refused clearly"
    assert verdict(behind_a_timeout).startswith("wrong: a timeout")
    assert verdict(AssertionError()) == "wrong: AssertionError"


def test_the_matrix_checks_what_it_claims() -> None:
    """A reply that is not what `check` expects fails it (so a green matrix means something)."""
    with pytest.raises(AssertionError):
        check("streaming", "Negative")
    with pytest.raises(AssertionError):
        check("embeddings", SimpleNamespace(data=[SimpleNamespace(embedding=[0.0] * 1536)] * 2))


# -- openai-python's own examples of tools and parsing, run unchanged but for the client ----------
# The models below are copied from openai-python's examples/parsing_tools.py (identical in
# examples/responses/structured_outputs_tools.py); the calls and assertions follow each file,
# with `rich.print` left out. A clearly tool-shaped request with one strict function tool and
# `tool_choice` left to the model: a model calls the tool.


class Table(str, Enum):  # noqa: UP042 (as the example spells it)
    orders = "orders"
    customers = "customers"
    products = "products"


class Column(str, Enum):  # noqa: UP042 (as the example spells it)
    id = "id"
    status = "status"
    expected_delivery_date = "expected_delivery_date"
    delivered_at = "delivered_at"
    shipped_at = "shipped_at"
    ordered_at = "ordered_at"
    canceled_at = "canceled_at"


class Operator(str, Enum):  # noqa: UP042 (as the example spells it)
    eq = "="
    gt = ">"
    lt = "<"
    le = "<="
    ge = ">="
    ne = "!="


class OrderBy(str, Enum):  # noqa: UP042 (as the example spells it)
    asc = "asc"
    desc = "desc"


class DynamicValue(BaseModel):
    column_name: str


class Condition(BaseModel):
    column: str
    operator: Operator
    value: Union[str, int, DynamicValue]  # noqa: UP007 (as the example spells it)


class Query(BaseModel):
    table_name: Table
    columns: List[Column]  # noqa: UP006 (as the example spells it)
    conditions: List[Condition]  # noqa: UP006
    order_by: OrderBy


LOOK_UP = (
    "look up all my orders in november of last year that were fulfilled but not delivered on time"
)


def test_example_parsing_tools(base_url: str | None) -> None:
    """examples/parsing_tools.py"""
    client = OpenAI(api_key="test-key", base_url=base_url)

    completion = client.chat.completions.parse(
        model="gpt-4o-2024-08-06",
        messages=[
            {
                "role": "system",
                "content": "You are a helpful assistant. The current date is August 6, 2024. You help users query for the data they are looking for by calling the query function.",  # noqa: E501
            },
            {
                "role": "user",
                "content": LOOK_UP,
            },
        ],
        tools=[
            openai.pydantic_function_tool(Query),
        ],
    )

    tool_call = (completion.choices[0].message.tool_calls or [])[0]
    assert isinstance(tool_call.function.parsed_arguments, Query)
    assert tool_call.function.parsed_arguments.table_name == Table.orders


def test_example_responses_structured_outputs_tools(base_url: str | None) -> None:
    """examples/responses/structured_outputs_tools.py"""
    client = OpenAI(api_key="test-key", base_url=base_url)

    response = client.responses.parse(
        model="gpt-4o-2024-08-06",
        input=LOOK_UP,
        tools=[
            openai.pydantic_function_tool(Query),
        ],
    )

    function_call = response.output[0]
    assert function_call.type == "function_call"
    assert isinstance(function_call.parsed_arguments, Query)
    assert function_call.parsed_arguments.table_name == Table.orders


def test_a_request_that_asks_for_nothing_a_tool_does_gets_prose(base_url: str | None) -> None:
    client = OpenAI(api_key="test-key", base_url=base_url)
    completion = client.chat.completions.parse(
        model=MODEL, messages=MESSAGES, tools=[openai.pydantic_function_tool(Query)]
    )
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].message.content == "Positive"


@pytest.mark.anyio
@pytest.mark.parametrize("stack", ["httpx2", "aiohttp"])
async def test_a_host_off_this_machine_is_refused(
    base_url: str | None, stack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused clearly (the table's verdict), with the SDK's default retries: never a timeout."""
    if base_url is not None:
        pytest.skip("over TCP alone no mock runs, so nothing refuses: the case is in-process")
    http_client = openai.DefaultAioHttpClient() if stack == "aiohttp" else None
    async with AsyncOpenAI(
        api_key="test-key", base_url="https://example.org/v1", http_client=http_client
    ) as client:
        await client.models.list()
    pytest.fail("a request to example.org was answered")
