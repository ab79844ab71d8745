"""The offline upstream, for streams: time to first token and pace as settings, usage chunks
when asked for, and a stream the client finished told from one it abandoned and from a timeout —
through the real SDK on every stack (sync and async, httpx2 and httpx, aiohttp) and over TCP.

No test here reads a wall clock against a bound that load could break: timings are checked as
lower bounds (a sleep never ends early) or as the upstream's plan."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from labsupport import FakeServer, Fault, UpstreamSettings, mock_openai
from labsupport.upstream import Upstream, UpstreamStats
from labsupport.upstream.settings import LabUpstream

MODEL = "gpt-4o-mini"
PROMPT = "Summarize in one sentence: The new release is fast and reliable, and users love it."
MESSAGES: Any = [{"role": "user", "content": PROMPT}]
SUMMARY = "The new release is fast and reliable, and users love it."  # the reply to PROMPT
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
    assert text == SUMMARY
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


# -- the same stream on every stack in process: the same pace, order and counters ---------------

IN_PROCESS = ["httpx2-sync", "httpx2-async", "httpx-sync", "httpx-async", "aiohttp"]


def arrivals(name: str, *, stop_at: int | None, read_on: bool = False) -> tuple[list[float], float]:
    """Stream the answer to PROMPT in process on `name`: when each event arrived, and when the
    reader's own consumer stopped at event `stop_at` (None: it did not). At that moment the
    reader closes the stream, or with `read_on` reads it to the end anyway (a relay's mistake)."""
    times: list[float] = []
    stopped = float("inf")

    def arrived() -> bool:
        """Note an event's arrival; whether to stop reading."""
        nonlocal stopped
        times.append(time.perf_counter())
        if len(times) == stop_at:
            stopped = time.perf_counter()
            return not read_on
        return False

    if name.endswith("-sync"):
        with sync_client(name, None) as client:
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            with stream:
                for _ in stream:
                    if arrived():
                        break
        return times, stopped

    async def read_async() -> None:
        async with async_client(name, None) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True
            )
            async with stream:
                async for _ in stream:
                    if arrived():
                        break

    asyncio.run(read_async())
    return times, stopped


def outcome(stats: UpstreamStats) -> tuple[Any, ...]:
    """What the upstream counted, without the moments: equal for equal scenarios."""
    calls = [(call.status, call.tokens, call.abandoned) for call in stats.timeline]
    return (stats.calls, stats.in_flight, stats.status_counts, stats.cancelled, calls)


PACED = UpstreamSettings(time_to_first_token=0.03, time_per_token=0.005)


def test_each_event_is_sent_at_its_pace_and_only_when_the_client_reads() -> None:
    """Sent, received, sent, received: the first token reaches the client before the upstream
    sends the next, on every stack (aiohttp's used to arrive together, after the last)."""
    seen = {}
    for name in IN_PROCESS:
        with mock_openai(PACED) as upstream:
            times, _ = arrivals(name, stop_at=None)
        (call,) = upstream.stats.timeline
        sent = call.token_times
        # Event 0 is the role; events 1..n carry the n tokens, then the finish event.
        received = times[1 : len(sent) + 1]
        assert len(sent) > 5 and len(received) == len(sent), name
        assert all(s <= r for s, r in zip(sent, received, strict=True)), name
        assert all(r < s for r, s in zip(received, sent[1:], strict=False)), name
        assert call.token_times[0] - call.start >= 0.03 - SLACK, name
        seen[name] = outcome(upstream.stats)
    assert len(set(map(repr, seen.values()))) == 1, seen


@pytest.mark.parametrize(
    ("stop_at", "read_on", "tokens", "abandoned"),
    [
        (None, False, 11, False),  # read to the end: 200, not abandoned
        (1, False, 0, True),  # left after the role event: no token sent
        (4, False, 3, True),  # left after three tokens: the rest never sent
        (4, True, 11, False),  # its consumer left, the reader read on: all sent, 8 after
    ],
)
def test_a_finished_or_abandoned_stream_counts_the_same_on_every_stack(
    stop_at: int | None, read_on: bool, tokens: int, abandoned: bool
) -> None:
    seen = {}
    for name in IN_PROCESS:
        with mock_openai(PACED) as upstream:
            _, stopped = arrivals(name, stop_at=stop_at, read_on=read_on)
        stats = upstream.stats
        (call,) = stats.timeline
        assert (call.status, call.tokens, call.abandoned) == (200, tokens, abandoned), name
        after = stats.tokens_sent_after(stopped)
        # What was sent after the reader's consumer stopped: nothing if the reader stopped too.
        assert after == (tokens - (stop_at - 1) if read_on and stop_at else 0), name
        seen[name] = (outcome(stats), after)
    assert len(set(map(repr, seen.values()))) == 1, seen


def test_a_stream_past_its_read_timeout_counts_the_same_on_every_stack() -> None:
    seen = {}
    for name in IN_PROCESS:
        with (
            mock_openai(time_to_first_token=1.0) as upstream,
            pytest.raises(openai.APITimeoutError),
        ):
            read(name, None, events=None, timeout=0.05)
        seen[name] = outcome(upstream.stats)
    assert seen["aiohttp"] == (1, 0, {None: 1}, 0, [(None, 0, False)])
    assert len(set(map(repr, seen.values()))) == 1, seen


@pytest.mark.anyio
async def test_aiohttp_read_by_hand_is_paced_and_a_late_answer_comes_whole() -> None:
    """aiohttp on its own (no SDK): a stream read line by line is sent as it is read; a late
    answer that is not streamed is read whole, after its latency."""
    import aiohttp

    url = "https://api.openai.com/v1/chat/completions"
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    headers = {"authorization": "Bearer test-key"}
    with mock_openai(PACED) as upstream:
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(url, json=body) as response:
                events = []
                async for line in response.content:
                    if line.startswith(b"data: "):
                        events.append((time.perf_counter(), line))
            streamed = upstream.stats
            upstream.reset()
            with upstream.configured(latency=0.05):
                async with session.post(url, json={**body, "stream": False}) as response:
                    reply = await response.json()
    (call,) = streamed.timeline
    assert events[-1][1] == b"data: [DONE]\n"
    assert (streamed.count(200), streamed.abandoned, call.tokens) == (1, 0, 11)
    # The first token arrived before the upstream sent the second.
    assert events[1][0] < call.token_times[1]
    assert reply["choices"][0]["message"]["content"] == SUMMARY
    assert upstream.stats.count(200) == 1


def test_a_reader_cancelled_mid_stream_counts_the_same_on_every_async_stack() -> None:
    """■ on the cell while a stream is read: the stream the SDK closes on the way out is
    abandoned after the events sent so far, on every stack (nothing is sent after it)."""

    async def cancelled_after_the_first_event(name: str) -> None:
        first = asyncio.Event()

        async def consume() -> None:
            async with async_client(name, None) as client:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=MESSAGES, stream=True
                )
                async for _ in stream:
                    first.set()

        reading = asyncio.create_task(consume())
        await first.wait()
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    seen = {}
    for name in [name for name in IN_PROCESS if not name.endswith("-sync")]:
        # The second event would come 60 s later: only the cancellation ends the stream.
        with mock_openai(time_to_first_token=0.0, time_per_token=60.0) as upstream:
            asyncio.run(cancelled_after_the_first_event(name))
            seen[name] = outcome(upstream.stats)
    assert seen["aiohttp"] == (1, 0, {200: 1}, 0, [(200, 0, True)])
    assert len(set(map(repr, seen.values()))) == 1, seen


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
