"""Live mode's upstream: it records the real calls, with the offline upstream's counters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

import labsupport
from labsupport import FakeServer, Fault, RateLimit
from labsupport.checks._common import reference_latency, upstream_or_none
from labsupport.upstream.observed import LIVE_CONFIGURE_NOTE, ObservedUpstream

MESSAGES = [{"role": "user", "content": "Sentiment (one word): great"}]
LONG_REPLY: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Explain to a new engineer why streaming replies matter"}
]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer(latency=0.05) as fake:
        yield fake


@pytest.fixture
def observer(server: FakeServer) -> Iterator[ObservedUpstream]:
    with ObservedUpstream(server.base_url) as watching:
        yield watching


def test_async_calls_are_recorded_with_timeline_and_concurrency(
    server: FakeServer, observer: ObservedUpstream
) -> None:
    async def main() -> None:
        async with AsyncOpenAI(base_url=server.base_url, api_key="dummy") as client:
            await asyncio.gather(
                *(
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
                    for _ in range(5)
                )
            )

    asyncio.run(main())
    stats = observer.stats
    assert (stats.calls, stats.in_flight, stats.max_in_flight) == (5, 0, 5)
    assert stats.status_counts == {200: 5}
    assert [call.index for call in stats.timeline] == [1, 2, 3, 4, 5]
    assert {call.client for call in stats.timeline} == {"async"}
    assert {call.prompt for call in stats.timeline} == {MESSAGES[0]["content"]}
    # A call ends when its answer has been read: after the server's latency, not before.
    assert all(call.duration >= 0.05 for call in stats.timeline)
    assert server.stats.calls == 5  # the server really answered them


def test_sync_and_streaming_calls_end_when_the_body_is_closed(
    server: FakeServer, observer: ObservedUpstream
) -> None:
    with OpenAI(base_url=server.base_url, api_key="dummy") as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        chunks = list(
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        )
    assert chunks
    stats = observer.stats
    assert (stats.calls, stats.in_flight, stats.count(200)) == (2, 0, 2)
    assert [call.client for call in stats.timeline] == ["sync", "sync"]


def test_a_streams_pieces_are_timed_as_they_arrive(
    server: FakeServer, observer: ObservedUpstream
) -> None:
    async def main() -> list[str | None]:
        async with AsyncOpenAI(base_url=server.base_url, api_key="dummy") as client:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=LONG_REPLY,
                stream=True,
                stream_options={"include_usage": True},
            )
            return [c.choices[0].delta.content async for c in stream if c.choices]

    pieces = [piece for piece in asyncio.run(main()) if piece]
    (call,) = observer.stats.timeline
    # The role's chunk, the finish and the usage carry no piece: one time per piece, in order.
    assert call.tokens == len(pieces) == server.stats.tokens > 1
    assert list(call.token_times) == sorted(call.token_times)
    assert (call.status, call.abandoned) == (200, False)


@pytest.mark.parametrize("stop", ["close", "cancel"])
def test_a_stream_its_reader_stopped_is_abandoned_with_the_pieces_it_got(
    server: FakeServer, observer: ObservedUpstream, stop: str
) -> None:
    """As a relay whose client left stops: it closes the stream, or its task is cancelled
    while it waits for the next piece; the offline upstream counts both as abandoned."""
    server.configure(time_per_token=0.2)  # the rest of the answer: seconds away

    async def main() -> None:
        async with AsyncOpenAI(base_url=server.base_url, api_key="dummy") as client:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=LONG_REPLY,
                stream=True,
            )
            async with stream:
                pieces = 0
                async for chunk in stream:
                    pieces += bool(chunk.choices and chunk.choices[0].delta.content)
                    if pieces == 2:
                        break
                if stop == "cancel":
                    reading = asyncio.ensure_future(anext(aiter(stream)))
                    await asyncio.sleep(0.05)
                    reading.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await reading

    asyncio.run(main())
    (call,) = observer.stats.timeline
    assert (call.status, call.abandoned, call.tokens) == (200, True, 2)
    assert observer.stats.abandoned == 1


def test_real_429s_and_timeouts_are_counted(server: FakeServer, observer: ObservedUpstream) -> None:
    server.configure(rate_limit=RateLimit(max_concurrent=1, retry_after=0.01))

    async def main() -> None:
        async with AsyncOpenAI(base_url=server.base_url, api_key="d", max_retries=0) as client:
            results = await asyncio.gather(
                *(
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
                    for _ in range(3)
                ),
                return_exceptions=True,
            )
        assert sum(isinstance(r, openai.RateLimitError) for r in results) == 2

    asyncio.run(main())
    assert observer.stats.status_counts == {200: 1, 429: 2}

    observer.reset()
    server.configure(rate_limit=None, faults=[Fault.on_call(1, delay=1.0)])
    with (
        OpenAI(base_url=server.base_url, api_key="d", max_retries=0, timeout=0.2) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert observer.stats.status_counts == {None: 1}
    assert observer.stats.in_flight == 0


def test_other_traffic_is_not_counted(server: FakeServer, observer: ObservedUpstream) -> None:
    with OpenAI(base_url=server.base_url, api_key="dummy") as client:
        client.models.list()  # not a completion
    with httpx.Client() as plain:  # another loopback server, like the lab's own `serve(app)`
        plain.get(server.base_url.replace("/v1", "/elsewhere"))
    assert observer.stats.calls == 0


def test_reset_forgets_calls_even_in_flight_ones(
    server: FakeServer, observer: ObservedUpstream
) -> None:
    async def main() -> None:
        async with AsyncOpenAI(base_url=server.base_url, api_key="dummy") as client:
            call = asyncio.ensure_future(
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
            )
            await asyncio.sleep(0.02)
            assert observer.stats.in_flight == 1
            observer.reset()
            await call

    asyncio.run(main())
    assert (observer.stats.calls, observer.stats.in_flight, observer.stats.status_counts) == (
        0,
        0,
        {},
    )


def test_stop_puts_the_connection_pools_back(server: FakeServer) -> None:
    import httpcore2

    before = httpcore2.AsyncConnectionPool.handle_async_request
    observer = ObservedUpstream(server.base_url).start()
    assert httpcore2.AsyncConnectionPool.handle_async_request is not before
    observer.start()  # idempotent
    observer.stop()
    observer.stop()
    assert httpcore2.AsyncConnectionPool.handle_async_request is before
    assert not observer.active


def test_configure_explains_once_and_changes_nothing(
    observer: ObservedUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    observer.latency = 0.3
    observer.configure(faults=[Fault.on_call(1, status=500)], rate_limit=RateLimit(2), latency=1)
    assert capsys.readouterr().out == LIVE_CONFIGURE_NOTE + "\n"
    observer.configure(faults=[], rate_limit=None)  # clearing asks for nothing
    assert capsys.readouterr().out == ""
    assert observer.latency == 0.3
    with pytest.raises(TypeError, match=r"faults must be labsupport\.Fault"):
        observer.configure(faults=["500"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="latency"):
        observer.configure(latency=-1)
    with pytest.raises(ValueError, match="base_url must be an http"):
        ObservedUpstream("api.example")


def test_live_setup_returns_the_observer_with_a_measured_latency(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LAB_MODE", "live")
    monkeypatch.setenv("OPENAI_API_KEY", "real-looking-secret-123")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    try:
        upstream = labsupport.setup(latency=0.1, faults=(Fault.on_call(1, status=500),))
        assert isinstance(upstream, ObservedUpstream)
        assert upstream.latency >= 0.05  # measured (the server's), not the 0.1 asked for
        assert upstream.stats.calls == 0  # the measuring calls are not counted
        out = capsys.readouterr().out
        assert f"Live mode: calls go to {server.base_url}" in out and "secret" not in out
        assert LIVE_CONFIGURE_NOTE in out
        assert labsupport.current_upstream() is upstream
        assert upstream_or_none() is upstream
        assert asyncio.run(reference_latency()) == upstream.latency
        assert not labsupport.guard_active()
    finally:
        labsupport.teardown()
    assert labsupport.current_upstream() is None and not upstream.active


def test_live_setup_says_what_to_check_when_the_api_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeServer() as gone:
        url = gone.base_url
    monkeypatch.setenv("LAB_MODE", "live")
    monkeypatch.setenv("OPENAI_API_KEY", "dummy")
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with pytest.raises(RuntimeError, match="Check OPENAI_API_KEY and OPENAI_BASE_URL"):
        labsupport.setup()
    assert labsupport.current_upstream() is None
