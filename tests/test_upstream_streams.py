"""The offline upstream, for streams: time to first token and pace as settings, usage chunks
when asked for, and a stream the client finished told from one it abandoned and from a timeout —
through the real SDK on every stack (sync and async, httpx2 and httpx, aiohttp) and over TCP.

No test here reads a wall clock against a bound that load could break: timings are checked as
lower bounds (a sleep never ends early) or as the upstream's plan."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from labsupport import FakeServer, Fault, UpstreamSettings, mock_openai
from labsupport.upstream import Upstream
from labsupport.upstream.settings import LabUpstream

MODEL = "gpt-4o-mini"
PROMPT = "Summarize in one sentence: The new release is fast and reliable, and users love it."
MESSAGES: Any = [{"role": "user", "content": PROMPT}]
CHAT = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi there"}]}'
SLACK = 0.005  # timer resolution: a sleep may end this much before its time


def test_the_settings_plan_a_streams_first_token_and_pace() -> None:
    """`latency` keeps its meaning for whole answers; the stream settings plan streams."""
    upstream = Upstream(latency=0.4, time_to_first_token=0.05, time_per_token=0.01)
    streamed = upstream.answer("POST", "chat/completions", CHAT, "async")
    whole = upstream.answer("POST", "chat/completions", CHAT.replace(b"true", b"false"), "async")
    assert (streamed.wait, streamed.chunk_gap) == (0.05, 0.01)
    assert whole.wait == 0.4
    # Left at None, a stream takes its share of the latency, as before the settings existed.
    default = Upstream(latency=0.4).answer("POST", "chat/completions", CHAT, "async")
    assert default.wait == pytest.approx(0.1)
    assert default.chunk_gap * (len(default.chunks) - 1) == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"time_to_first_token": -1}, "time_to_first_token must be a finite number"),
        ({"time_per_token": "fast"}, "time_per_token must be a number of seconds"),
    ],
)
def test_bad_stream_settings_are_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        UpstreamSettings(**changes)


# -- the stacks ---------------------------------------------------------------------------------

STACKS = [
    "httpx2-sync",
    "httpx2-async",
    "httpx-sync",
    "httpx-async",
    "aiohttp",
    "tcp-sync",
    "tcp-async",
]


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> Iterator[tuple[str, LabUpstream, str | None]]:
    """(stack, the upstream that answers it, the base URL to give the SDK)."""
    settings = UpstreamSettings(latency=0.2, time_to_first_token=0.03, time_per_token=0.005)
    if request.param.startswith("tcp"):
        with FakeServer(settings) as server:
            yield request.param, server, server.base_url
    else:
        with mock_openai(settings) as upstream:
            yield request.param, upstream, None


def sync_client(name: str, base_url: str | None) -> OpenAI:
    http_client = httpx.Client() if name.startswith("httpx-") else None
    return OpenAI(api_key="test-key", base_url=base_url, http_client=http_client, max_retries=0)  # type: ignore[arg-type]


def async_client(name: str, base_url: str | None) -> AsyncOpenAI:
    if name == "aiohttp":
        http_client: Any = openai.DefaultAioHttpClient()
    else:
        http_client = httpx.AsyncClient() if name.startswith("httpx-") else None
    return AsyncOpenAI(
        api_key="test-key", base_url=base_url, http_client=http_client, max_retries=0
    )


def read(name: str, base_url: str | None, *, events: int | None, **options: Any) -> list[Any]:
    """Stream the answer to PROMPT; stop reading after `events` (None: read it all)."""
    if name.endswith("-sync"):
        with sync_client(name, base_url) as client:
            stream = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, **options
            )
            with stream:
                return [chunk for _, chunk in zip(range(events or 10**6), stream, strict=False)]

    async def read_async() -> list[Any]:
        async with async_client(name, base_url) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, **options
            )
            async with stream:
                taken = []
                async for chunk in stream:
                    taken.append(chunk)
                    if len(taken) == events:
                        break
                return taken

    return asyncio.run(read_async())


def settle(upstream: LabUpstream) -> None:
    if isinstance(upstream, FakeServer):
        upstream.wait_idle()


def test_a_finished_stream_counts_its_tokens_and_usage(
    stack: tuple[str, LabUpstream, str | None],
) -> None:
    name, upstream, base_url = stack
    chunks = read(name, base_url, events=None, stream_options={"include_usage": True})
    settle(upstream)
    stats = upstream.stats
    (call,) = stats.timeline
    usage = chunks[-1].usage
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The new release is fast and reliable, and users love it."
    assert usage is not None and usage.completion_tokens > 0
    assert (stats.count(200), stats.abandoned, call.tokens) == (1, 0, len(text.split(" ")))
    # Paced as set: the first token no sooner than time_to_first_token, then one per
    # time_per_token at the soonest.
    assert call.token_times[0] - call.start >= 0.03 - SLACK
    gaps = [b - a for a, b in zip(call.token_times, call.token_times[1:], strict=False)]
    assert min(gaps) >= 0.005 - SLACK


def test_a_stream_the_client_leaves_is_abandoned_not_timed_out(
    stack: tuple[str, LabUpstream, str | None],
) -> None:
    name, upstream, base_url = stack
    taken = read(name, base_url, events=3)
    settle(upstream)
    stats = upstream.stats
    (call,) = stats.timeline
    assert len(taken) == 3 and stats.count(None) == 0
    if name == "aiohttp":
        # aiohttp is answered whole (see labsupport.upstream.aiohttp_mock): the stream was sent
        # to its end before the client read its first event.
        assert (stats.abandoned, stats.count(200)) == (0, 1)
        return
    assert (stats.abandoned, stats.count(200), call.abandoned) == (1, 1, True)
    # The role event, then two tokens; the rest of the answer was never sent.
    assert call.tokens == 2
    assert "1 abandoned" in str(stats)
    assert stats.tokens_sent_after(call.token_times[-1]) == 0


@pytest.mark.anyio
async def test_a_responses_stream_left_early_is_abandoned() -> None:
    with mock_openai(time_to_first_token=0.0, time_per_token=0.001) as upstream:
        async with AsyncOpenAI(api_key="test-key") as client:
            stream = await client.responses.create(model=MODEL, input=PROMPT, stream=True)
            async with stream:
                kinds = []
                async for event in stream:
                    kinds.append(event.type)
                    if event.type == "response.output_text.delta":
                        break
    stats = upstream.stats
    assert kinds[-1] == "response.output_text.delta"
    assert (stats.abandoned, stats.tokens, stats.count(None)) == (1, 1, 0)


def test_a_stream_past_its_read_timeout_is_a_timeout_not_abandoned() -> None:
    with mock_openai(time_to_first_token=1.0) as upstream:
        client = OpenAI(api_key="test-key", max_retries=0, timeout=0.05)
        with pytest.raises(openai.APITimeoutError):
            list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert (upstream.stats.count(None), upstream.stats.abandoned) == (1, 0)


def test_tokens_sent_after_a_moment_are_counted() -> None:
    """What a relay whose own client left at `moment` kept paying for."""
    with mock_openai(time_to_first_token=0.0, time_per_token=0.001) as upstream:
        read("httpx2-sync", None, events=None)
    (call,) = upstream.stats.timeline
    moment = call.token_times[4]
    assert upstream.stats.tokens_sent_after(moment) == call.tokens - 5
    assert upstream.stats.tokens_sent_after(call.start) == call.tokens


# -- a stream that fails mid-way (Fault(..., after=N)) -----------------------------------------


async def pieces_until_failure(client: AsyncOpenAI) -> tuple[list[str], BaseException | None]:
    pieces: list[str] = []
    try:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
    except openai.APIError as error:
        return pieces, error
    return pieces, None


@pytest.mark.anyio
@pytest.mark.parametrize("over_tcp", [False, True], ids=["in-process", "FakeServer"])
async def test_a_500_after_n_pieces_is_an_error_event_the_sdk_raises(over_tcp: bool) -> None:
    fault = Fault.on_call(1, status=500, after=3)
    settings = UpstreamSettings(time_to_first_token=0.0, time_per_token=0.001, faults=(fault,))
    if over_tcp:
        with FakeServer(settings) as server:
            client = AsyncOpenAI(api_key="k", base_url=server.base_url, max_retries=0)
            async with client:
                pieces, error = await pieces_until_failure(client)
            stats = server.stats
    else:
        with mock_openai(settings) as upstream:
            async with AsyncOpenAI(api_key="k", max_retries=0) as client:
                pieces, error = await pieces_until_failure(client)
            stats = upstream.stats
    assert len(pieces) == 3
    assert type(error) is openai.APIError and "HTTP 500 mid-stream" in str(error)
    assert (stats.count(500), stats.tokens) == (1, 3)


@pytest.mark.anyio
async def test_a_stall_after_n_pieces_past_the_read_timeout_is_a_timeout() -> None:
    fault = Fault.on_call(1, delay=5.0, after=2)
    with mock_openai(time_to_first_token=0.0, time_per_token=0.001, faults=[fault]) as upstream:
        async with AsyncOpenAI(api_key="k", max_retries=0, timeout=0.1) as client:
            pieces, error = await pieces_until_failure(client)
    assert len(pieces) == 2 and isinstance(error, openai.APITimeoutError)
    assert (upstream.stats.count(None), upstream.stats.tokens) == (1, 2)


def test_after_applies_to_streams_only_and_is_checked() -> None:
    fault = Fault.on_call(1, status=500, after=3)
    whole = Upstream(faults=[fault]).answer(
        "POST", "chat/completions", CHAT.replace(b"true", b"false"), "a"
    )
    assert whole.status == 500  # an answer that is not streamed fails at once
    with pytest.raises(ValueError, match="after must be an int"):
        Fault.on_call(1, status=500, after=-1)
