"""Live mode's upstream: it answers nothing, it watches the real traffic.

Offline, the mock upstream both answers the SDK and counts what it saw; the lessons print those
counts as evidence ("20 calls, max 20 in flight", "3 × 429"). In live mode a real server answers
(the OpenAI API, or any OpenAI-compatible server at `OPENAI_BASE_URL`), so `ObservedUpstream`
keeps only the second job: it records every call the process sends to that API, with the same
`UpstreamStats` and `UpstreamCall` types, so the same notebook cells print real evidence.

How it sees the calls: every HTTP client the SDK (httpx2 → httpcore2) or a learner (httpx →
httpcore) builds sends its requests through a connection pool's `handle_request` (sync) or
`handle_async_request` (async). While the observer is on, those two methods of both libraries
are wrapped: a call starts when the request enters the pool, and ends when the client closes the
response body, which is when the answer has been read (or abandoned). The status is the one the
server sent; None when no answer came (a timeout, a refused connection, a cancelled task).

A streamed answer (`text/event-stream`) is read as it arrives: the observer notes when each event
carrying a piece of the answer reached the process (`UpstreamCall.token_times`), and a body closed
before its end, after some pieces, counts as `abandoned`, as the offline upstream counts a
client that stopped reading. So `stats.tokens_sent_after(moment)` works live too: the pieces the
API sent that this process received after `moment`.

Only POSTs to `BASE/chat/completions` and `BASE/responses` are counted, as the mock counts them;
everything else (the lab's own servers on 127.0.0.1, `GET /models`) passes by unrecorded.

A real API cannot be scripted: `configure(faults=…, rate_limit=…, latency=…)` says so in one line
and changes nothing, so a notebook's fault demos run through against the real upstream.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, Self, Unpack

import httpcore
import httpcore2
import httpx
import httpx2
from openai import OpenAI

from ..switch import Switch
from ..validation import check_seconds
from .addresses import origin, origin_and_path
from .settings import SettingsChanges, UpstreamSettings, combine
from .stats import UpstreamCall, UpstreamStats
from .wire import prompt_of

__all__ = ["LIVE_CONFIGURE_NOTE", "ObservedUpstream"]

#: Printed when a notebook asks the live upstream for behaviour only the offline one can script.
LIVE_CONFIGURE_NOTE = (
    "Live mode: a real API cannot be scripted (faults, rate limits, latency), so this demo runs "
    "against it unchanged."
)

_ENDPOINTS = ("chat/completions", "responses")
# Request bodies the observer may read to learn the prompt: in-memory bytes, re-iterable. Any
# other body (a generator, a file) is left untouched, since reading it would consume it.
_BYTE_STREAMS = (httpx.ByteStream, httpx2.ByteStream)
# (class, method name, client kind) for every connection pool the observer wraps.
_POOL_METHODS: tuple[tuple[type, str, str], ...] = (
    (httpcore2.ConnectionPool, "handle_request", "sync"),
    (httpcore2.AsyncConnectionPool, "handle_async_request", "async"),
    (httpcore.ConnectionPool, "handle_request", "sync"),
    (httpcore.AsyncConnectionPool, "handle_async_request", "async"),
)


_EVENT_END = re.compile(rb"\r?\n\r?\n")
_DELTA_EVENTS = ("response.output_text.delta", "response.function_call_arguments.delta")


def _carries_piece(event: bytes) -> bool:
    """Whether one SSE event carries a piece of the answer: text or a tool call's arguments in a
    chat chunk's delta, or a Responses API delta event; not the role's chunk, the finish, the
    usage or `[DONE]`. What the offline upstream counts as one token of a stream."""
    for line in event.splitlines():
        if not line.startswith(b"data:"):
            continue
        try:
            data = json.loads(line.removeprefix(b"data:"))
        except ValueError:  # "[DONE]"
            return False
        if not isinstance(data, dict):
            return False
        if data.get("type") in _DELTA_EVENTS:
            return bool(data.get("delta"))
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            calls = delta.get("tool_calls") or ()
            if delta.get("content") or any(c.get("function", {}).get("arguments") for c in calls):
                return True
    return False


class _PieceClock:
    """When each piece of a streamed answer arrived, read from its SSE bytes as they come."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._pending = b""

    def feed(self, part: bytes) -> None:
        now = time.perf_counter()
        *events, self._pending = _EVENT_END.split(self._pending + part)
        self.times.extend(now for event in events if _carries_piece(event))


def _prompt_of(stream: object) -> str:
    """The last user message of a chat or Responses request body ("" if it cannot be read)."""
    if not isinstance(stream, _BYTE_STREAMS):
        return ""
    try:
        request = json.loads(b"".join(stream))
    except ValueError:
        return ""
    if not isinstance(request, dict):
        return ""
    source = request.get("messages", request.get("input", ""))
    if isinstance(source, str):
        return source
    return prompt_of(source) if isinstance(source, list) else ""


class ObservedUpstream(Switch):
    """Records the calls this process makes to a real OpenAI-compatible API at `base_url`.

    It has the offline upstream's reading side, `stats`, `reset()` and `latency`, plus a
    `configure()` that explains why it does nothing. `latency` is whatever the caller measured
    (`labsupport.setup()` times one tiny call), since a real API's latency cannot be set.

        with ObservedUpstream("http://127.0.0.1:8100/v1") as upstream:
            await AsyncOpenAI(base_url=...).chat.completions.create(...)
        print(upstream.stats)  # upstream: 1 calls (1 × 200), max 1 in flight
    """

    def __init__(self, base_url: str, *, latency: float = 0.0) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL; got {base_url!r}")
        self.base_url = base_url
        self.latency = check_seconds("latency", latency)
        self._origin, self._path = origin_and_path(base_url)
        self._lock = threading.Lock()
        self._originals: list[tuple[type, str, Any]] = []
        self.reset()

    # -- reading ---------------------------------------------------------------------------
    @property
    def stats(self) -> UpstreamStats:
        """A snapshot of the calls seen since the last reset."""
        with self._lock:
            return UpstreamStats(
                calls=len(self._timeline),
                in_flight=self._in_flight,
                max_in_flight=self._max_in_flight,
                status_counts=dict(self._status_counts),
                timeline=tuple(self._timeline),
            )

    def reset(self) -> None:
        """Forget all calls. A call still in flight is not counted when it ends."""
        with self._lock:
            self._generation = getattr(self, "_generation", 0) + 1
            self._in_flight = 0
            self._max_in_flight = 0
            self._status_counts: dict[int | None, int] = {}
            self._timeline: list[UpstreamCall] = []

    @property
    def settings(self) -> UpstreamSettings:
        """The real API's settings as far as they are known: its measured `latency`."""
        return UpstreamSettings(latency=self.latency)

    def configure(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> UpstreamSettings:
        """Accept the offline upstream's arguments, change nothing, and reset the counters.

        When the arguments ask for something only the offline upstream can do (a latency, faults,
        a rate limit), print `LIVE_CONFIGURE_NOTE` once for this call, so the reader knows the
        demo's evidence comes from the real API as it is. Clearing (`faults=[]`,
        `rate_limit=None`) asks for nothing and prints nothing. Bad arguments raise as offline.
        """
        current = self.settings
        requested = combine(current, settings, changes)
        if requested.scripted or requested.jitter or requested.latency != current.latency:
            print(LIVE_CONFIGURE_NOTE)
        self.reset()
        return current

    @contextmanager
    def configured(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> Iterator[Self]:
        """`configure()` for a `with` block: live, that is the note and a reset, nothing to undo."""
        self.configure(settings, **changes)
        yield self

    def measure_latency(self, *, model: str = "gpt-4o-mini") -> float:
        """Time one tiny call (`max_tokens=1`) to the API, store it as `latency`, and return it.

        A first, untimed call pays for the connection (TCP, TLS) and the SDK's lazy setup, which
        a lesson's calls on a warm client do not pay. The key and base URL come from the
        environment, as for any SDK client. The counters are reset afterwards.
        """
        with OpenAI(base_url=self.base_url) as client:
            for _ in range(2):
                start = time.perf_counter()
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Say OK."}], max_tokens=1
                )
                self.latency = time.perf_counter() - start
        self.reset()
        return self.latency

    # -- switching on and off --------------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self._originals)

    def start(self) -> Self:
        """Start recording (wrap the connection pools). Idempotent."""
        if self.active:
            return self
        for pool_class, name, kind in _POOL_METHODS:
            original = getattr(pool_class, name)
            wrapper = (
                self._sync_wrapper(original) if kind == "sync" else self._async_wrapper(original)
            )
            self._originals.append((pool_class, name, original))
            setattr(pool_class, name, wrapper)
        return self

    def stop(self) -> None:
        """Stop recording and put the connection pools back. Idempotent."""
        while self._originals:
            pool_class, name, original = self._originals.pop()
            setattr(pool_class, name, original)

    # -- recording -------------------------------------------------------------------------
    def _begin(self, request: Any, client: str) -> _End | None:
        """Record the start of `request` if it is an API call; return what ends it, or None."""
        url = request.url
        request_origin = origin(url.scheme.decode(), url.host.decode(), url.port)
        path = url.target.decode().split("?", 1)[0]
        if request.method != b"POST" or request_origin != self._origin:
            return None
        if path.removeprefix(self._path + "/") not in _ENDPOINTS:
            return None
        prompt = _prompt_of(request.stream)
        start = time.perf_counter()
        with self._lock:
            generation = self._generation
            index = len(self._timeline) + 1
            self._timeline.append(UpstreamCall(index, start, start, None, client, prompt))
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        ended = False

        def end(
            status: int | None, token_times: tuple[float, ...] = (), *, abandoned: bool = False
        ) -> None:
            nonlocal ended
            finish = time.perf_counter()
            with self._lock:
                if ended or generation != self._generation:
                    return
                ended = True
                call = self._timeline[index - 1]
                self._timeline[index - 1] = call.ended(
                    finish, status, client, token_times, abandoned=abandoned
                )
                self._status_counts[status] = self._status_counts.get(status, 0) + 1
                self._in_flight -= 1

        return end

    def _sync_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        observer = self

        def handle_request(pool: Any, request: Any) -> Any:
            end = observer._begin(request, "sync")
            if end is None:
                return original(pool, request)
            try:
                response = original(pool, request)
            except BaseException:
                end(None)
                raise
            response.stream = _ObservedStream(response, end)
            return response

        return handle_request

    def _async_wrapper(self, original: Callable[..., Any]) -> Callable[..., Any]:
        observer = self

        async def handle_async_request(pool: Any, request: Any) -> Any:
            end = observer._begin(request, "async")
            if end is None:
                return await original(pool, request)
            try:
                response = await original(pool, request)
            except BaseException:
                end(None)
                raise
            response.stream = _ObservedStream(response, end)
            return response

        return handle_async_request


class _End(Protocol):
    """Ends a recorded call: its status (None: no answer), and for a stream its pieces' times
    and whether the client closed it after some pieces, before its end."""

    def __call__(
        self, status: int | None, token_times: tuple[float, ...] = (), *, abandoned: bool = False
    ) -> None: ...


class _ObservedStream:
    """A response body that reports when it is closed: with the status if it was read to the
    end without error, with None if reading failed (a timeout, a dropped connection). A
    streamed answer's pieces are timed as they pass."""

    def __init__(self, response: Any, end: _End) -> None:
        self._inner = response.stream
        self._status: int | None = response.status
        self._end = end
        self._read_to_the_end = False
        streamed = any(
            name.lower() == b"content-type" and value.startswith(b"text/event-stream")
            for name, value in response.headers
        )
        self._clock = _PieceClock() if streamed else None

    def _seen(self, part: bytes) -> bytes:
        if self._clock is not None:
            self._clock.feed(part)
        return part

    def _ended(self) -> None:
        times = tuple(self._clock.times) if self._clock is not None else ()
        stopped = not self._read_to_the_end and self._status is not None
        self._end(self._status, times, abandoned=stopped and bool(times))

    def _stopped(self) -> None:
        """Reading stopped by the reader (its task cancelled, the body closed): a stream that
        had begun keeps its status, as the offline upstream's abandoned streams do."""
        if self._clock is None or not self._clock.times:
            self._status = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            for part in self._inner:
                yield self._seen(part)
        except GeneratorExit:
            self._stopped()
            raise
        except BaseException:
            self._status = None
            raise
        self._read_to_the_end = True

    def close(self) -> None:
        try:
            if hasattr(self._inner, "close"):
                self._inner.close()
        finally:
            self._ended()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        inner: AsyncIterable[bytes] = self._inner
        try:
            async for part in inner:
                yield self._seen(part)
        except (GeneratorExit, asyncio.CancelledError):
            self._stopped()
            raise
        except BaseException:
            self._status = None
            raise
        self._read_to_the_end = True

    async def aclose(self) -> None:
        try:
            if hasattr(self._inner, "aclose"):
                await self._inner.aclose()
        finally:
            self._ended()
