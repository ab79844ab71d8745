"""The offline upstream, in process: the real `openai` SDK talks to it over its own HTTP stack.

How the interception works, and why it cannot leak:

* The SDK (3.x) sends HTTP through httpx2 → httpcore2; plain httpx goes through httpcore. Every
  request of either passes through a connection pool's public `handle_request` or
  `handle_async_request`; while a mock runs, those methods are wrapped (see `pools`), so every
  client the SDK builds, or a learner builds, is seen. A request for the mock's API is answered
  straight from the pool's own request and response types.
* It answers requests to the OpenAI API base (and to whatever `OPENAI_BASE_URL` points at),
  lets loopback traffic (127.0.0.1, localhost, ::1) through to the lab's own servers, and
  refuses anything else with `NetworkBlockedError`: fail closed. A refusal is raised at once, and
  when the SDK is loaded it is also the SDK's `APIConnectionError`, which the SDK neither retries
  nor reports as a timeout (see `refusal`).
* aiohttp (the SDK's `DefaultAioHttpClient`, litellm's async calls) is answered by the same
  upstream, through aioresponses (see `aiohttp_mock`). While the mock runs, a socket guard
  (`labsupport.guard`) refuses every other way out too, for libraries that use neither.
* The answer's body is a stream that waits before it yields. The sync client reads it with a
  plain iterator, so `time.sleep` blocks its thread, as a real network read does; the async client
  reads it with an async iterator, so `asyncio.sleep` lets the event loop run other work. The same
  object serves both, so the mock never has to guess which client called.
* A slow answer past the client's read timeout (from the request's `extensions["timeout"]`) raises
  the transport's `ReadTimeout`, which the SDK turns into `APITimeoutError`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from typing import Any, Self, Unpack
from urllib.parse import unquote

import httpcore
import httpcore2
import httpx
from multidict import CIMultiDict
from yarl import URL

from ..guard import NetworkGuard
from ..network import NetworkBlockedError, check_port, client_kind
from ..switch import Switch
from . import aiohttp_mock, pools
from .addresses import origin, origin_and_path
from .core import Answer, Upstream
from .refusal import blocked_request
from .settings import SettingsChanges, UpstreamSettings

__all__ = [
    "OPENAI_API_BASE",
    "PLACEHOLDER_KEY",
    "MockUpstream",
    "NetworkBlockedError",
    "mock_openai",
]

OPENAI_API_BASE = "https://api.openai.com/v1"
#: Given to the SDK while a mock runs and no key is set. Not a secret, and not shaped like one.
PLACEHOLDER_KEY = "offline-lab-placeholder-key"
KEY_VARIABLE = "OPENAI_API_KEY"

# The placeholder is process-wide, like the environment: set while any mock that found no key
# runs, removed when the last of them stops (unless someone replaced it with a real key).
_key_lock = threading.Lock()
_key_holders: set[MockUpstream] = set()


class _ReadTimeout(httpcore2.ReadTimeout, httpcore.ReadTimeout):
    """A read timeout both transports recognise, so httpx2 and httpx both map it to theirs."""


class _AnswerStream:
    """A response body that arrives `answer.wait` seconds late (a stream: event by event, as
    the answer spaces them): blocking when read by a sync client, awaiting when read by an
    async one (so it serves httpcore's sync and async responses alike, and aiohttp's through
    `aiohttp_body.PacedBody`).

    A client that closes a stream it has begun to read has abandoned it (a disconnect): the
    rest is never sent, and the upstream counts it apart from a timeout."""

    def __init__(
        self,
        upstream: Upstream,
        answer: Answer,
        read_timeout: float | None,
        timeout_error: Callable[[str], Exception] = _ReadTimeout,
    ) -> None:
        self._upstream = upstream
        self._timeout_error = timeout_error
        self._answer = answer
        self._read_timeout = read_timeout
        self._delivered = False
        self._sent_at: list[float] = []  # when each part was handed over
        self._sync_parts: Generator[bytes, None, None] | None = None
        self._async_parts: AsyncGenerator[bytes, None] | None = None

    def _steps(self) -> list[tuple[float, bytes]]:
        answer = self._answer
        if not answer.streaming:
            return [(answer.wait, answer.body)]
        return list(zip(answer.gaps(), answer.chunks, strict=True))

    def _check_timeout(self, wait: float) -> float:
        """How long to wait before the next part; raise-time if the client gives up first."""
        if self._read_timeout is not None and wait > self._read_timeout:
            return self._read_timeout
        return wait

    def _timed_out(self) -> Exception:
        self._finish(None, timed_out=True)
        return self._timeout_error(f"offline upstream: no answer within {self._read_timeout:g} s")

    def _handed_over(self, number: int, total: int) -> None:
        # Delivered once the last part is handed over: a client may close the stream right
        # after it (the SDK stops at "[DONE]") without asking for more.
        self._sent_at.append(time.perf_counter())
        self._delivered = number == total

    def _finish(self, client: str | None, *, timed_out: bool = False) -> None:
        self._upstream.finish(
            self._answer,
            delivered=self._delivered,
            client=client,
            sent_at=self._sent_at,
            abandoned=not timed_out,
            cancelled=not timed_out,
        )

    def __iter__(self) -> Iterator[bytes]:
        if self._sync_parts is None:
            self._sync_parts = self._parts()
        return self._sync_parts

    def _parts(self) -> Generator[bytes, None, None]:
        try:
            steps = self._steps()
            for number, (wait, part) in enumerate(steps, start=1):
                if wait:
                    time.sleep(self._check_timeout(wait))
                if self._check_timeout(wait) < wait:
                    raise self._timed_out()
                self._handed_over(number, len(steps))
                yield part
        finally:
            self._finish("sync")

    def __aiter__(self) -> AsyncIterator[bytes]:
        # One pass only: a client that iterates again (the SDK drains a stream after "[DONE]")
        # must get the rest of this body, not a second copy of it.
        if self._async_parts is None:
            self._async_parts = self._aparts()
        return self._async_parts

    # Reading stopped before the answer was delivered, and not by `_timed_out()` (which counts
    # first): the client stopped reading, its task cancelled. Counted as cancelled, not timed out.
    async def _aparts(self) -> AsyncGenerator[bytes, None]:
        try:
            steps = self._steps()
            for number, (wait, part) in enumerate(steps, start=1):
                if wait:
                    await asyncio.sleep(self._check_timeout(wait))
                if self._check_timeout(wait) < wait:
                    raise self._timed_out()
                self._handed_over(number, len(steps))
                yield part
        finally:
            self._finish("async")

    def client_left(self) -> None:
        """An async client closed the body (aiohttp's response): count the answer now, as
        `aclose()` does; the parts not yet asked for are never sent."""
        self._finish("async")

    def close(self) -> None:
        if self._sync_parts is not None:
            self._sync_parts.close()
        self._finish("sync")

    async def aclose(self) -> None:
        if self._async_parts is not None:
            await self._async_parts.aclose()
        self._finish("async")


class MockUpstream(Upstream, Switch):
    """The offline OpenAI upstream, intercepting the SDK in this process.

    Use it as a context manager (`with mock_openai(latency=0.1) as upstream: …`), or turn it on
    with `start()` and off with `stop()`, as a notebook's first cell does.
    """

    def __init__(
        self,
        settings: UpstreamSettings | None = None,
        /,
        *,
        base_urls: Iterable[str] = (),
        **changes: Unpack[SettingsChanges],
    ) -> None:
        super().__init__(settings, **changes)
        if isinstance(base_urls, str):
            raise TypeError("base_urls must be a list of URLs, not one string")
        self._extra_bases = tuple(base_urls)
        self._bases: tuple[tuple[str, str], ...] = ()
        self._intercepting = False
        self._guard: NetworkGuard | None = None
        self._tunnel_port: int | None = None

    @property
    def active(self) -> bool:
        return self._intercepting

    @property
    def tunnel_port(self) -> int | None:
        """The loopback port the API's requests go to while `tunnel()` is on, else None."""
        return self._tunnel_port

    @contextmanager
    def tunnel(self, port: int) -> Iterator[None]:
        """Inside the block, send the requests this mock would answer over real TCP to
        `http://127.0.0.1:<port>/v1/…` instead (a `FakeServer`'s port), through each client's
        own connection pool.

        In process the mock answers inside the connection pool, so what only a pool does never
        happens: `httpx2.Limits(max_connections=5)` bounds nothing, and a connection used from
        two event loops never breaks. Through the tunnel, clients built before the block (a
        learner's app, say) open, reuse and share real connections, unchanged."""
        if not self.active:
            raise RuntimeError("the mock is not running: start() it before tunnel()")
        port = check_port(port)
        if port == 0 or self._tunnel_port is not None:
            raise ValueError(f"tunnel() needs a server's port (and is not reentrant); got {port}")
        self._tunnel_port = port
        try:
            yield
        finally:
            self._tunnel_port = None

    def _through_tunnel(self, request: Any, endpoint: str) -> bool:
        """While `tunnel()` is on, point a pool's `request` for this mock's API (at `endpoint`)
        at the tunnel's loopback port, and say so: the pool then sends it over real TCP."""
        port = self._tunnel_port
        if port is None:
            return False
        url = request.url
        query = url.target.partition(b"?")[1:]
        target = b"/v1/" + endpoint.encode() + b"".join(query)
        # httpcore's or httpcore2's URL, as the pool that sends it expects.
        request.url = type(url)(scheme=b"http", host=b"127.0.0.1", port=port, target=target)
        return True

    @property
    def base_urls(self) -> tuple[str, ...]:
        """The API bases this mock answers for (as origin + path)."""
        return tuple(origin + path for origin, path in self._bases)

    def start(self) -> Self:
        """Turn the offline lab on: intercept the SDK, switch the socket guard on (nothing else
        leaves this machine) and, if `OPENAI_API_KEY` is unset, set it to `PLACEHOLDER_KEY`, so
        `AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))` works unchanged. Idempotent.

        Reads `OPENAI_BASE_URL` now, so a base URL set in the environment is answered by the
        mock too instead of being reached."""
        if self.active:
            return self
        bases = [OPENAI_API_BASE, *self._extra_bases]
        if os.environ.get("OPENAI_BASE_URL"):
            bases.append(os.environ["OPENAI_BASE_URL"])
        for url in bases:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"base URLs must be http(s) URLs; got {url!r}")
        self._bases = tuple(dict.fromkeys(origin_and_path(url) for url in bases))
        self._guard = NetworkGuard(api_hosts=(httpx.URL(url).host for url in bases)).start()
        with _key_lock:
            if not os.environ.get(KEY_VARIABLE):
                os.environ[KEY_VARIABLE] = PLACEHOLDER_KEY
            _key_holders.add(self)
        pools.register(self._answer_pool_request, self._answer_async_pool_request)
        aiohttp_mock.register(self._answer_aiohttp, self._refuse_url)
        self._intercepting = True
        return self

    def stop(self) -> None:
        """Turn interception, this mock's guard and its placeholder key off. Idempotent."""
        if self._intercepting:
            aiohttp_mock.unregister(self._answer_aiohttp)
            pools.unregister(self._answer_pool_request)
            self._intercepting = False
        with _key_lock:
            if self in _key_holders:
                _key_holders.discard(self)
                if not _key_holders and os.environ.get(KEY_VARIABLE) == PLACEHOLDER_KEY:
                    del os.environ[KEY_VARIABLE]
        if self._guard is not None:
            self._guard.stop()
            self._guard = None

    # -- routing ---------------------------------------------------------------------------
    # `pools` offers every httpcore and httpcore2 request to the running mocks (see its
    # docstring); `aiohttp_mock` every aiohttp request. A mock answers those for its API bases.
    def _endpoint(self, request_origin: str, path: str) -> str | None:
        """The path after the API base this mock answers for ("chat/completions"), or None if
        the request is not for one of its bases."""
        for base_origin, base_path in self._bases:
            if request_origin == base_origin and path.startswith(base_path + "/"):
                return path[len(base_path) + 1 :]
        return None

    def _pool_endpoint(self, request: Any) -> str | None:
        """`_endpoint` of an httpcore or httpcore2 request."""
        url = request.url
        path = unquote(url.target.split(b"?", 1)[0].decode("ascii"))  # as httpx's URL.path
        return self._endpoint(origin(url.scheme.decode(), url.host.decode(), url.port), path)

    @staticmethod
    def _refuse_url(url: URL) -> NetworkBlockedError:
        return blocked_request(f"{url.scheme}://{url.host}{url.path}")

    def _answer_pool_request(self, request: Any, response: type) -> Any:
        """The answer to a sync pool's request (httpcore or httpcore2, as `response` says) for
        one of this mock's API bases; None for any other URL."""
        endpoint = self._pool_endpoint(request)
        if endpoint is None or self._through_tunnel(request, endpoint):
            return None
        stream = request.stream
        assert isinstance(stream, Iterable)  # the sync pools' requests stream so
        return self._pool_response(request, endpoint, b"".join(stream), response)

    async def _answer_async_pool_request(self, request: Any, response: type) -> Any:
        """`_answer_pool_request` for the async pools."""
        endpoint = self._pool_endpoint(request)
        if endpoint is None or self._through_tunnel(request, endpoint):
            return None
        stream = request.stream
        assert isinstance(stream, AsyncIterable)  # the async pools' requests stream so
        content = b"".join([part async for part in stream])
        return self._pool_response(request, endpoint, content, response)

    def _pool_response(self, request: Any, endpoint: str, content: bytes, response: type) -> Any:
        answer, body = self._answer_and_body(
            request.method.decode("ascii"), endpoint, content, request.headers, request.extensions
        )
        headers = [(name.encode(), value.encode()) for name, value in answer.headers.items()]
        if isinstance(body, bytes):
            headers.append((b"content-length", b"%d" % len(body)))
        return response(answer.status, headers=headers, content=body)

    async def _answer_aiohttp(
        self, method: str, url: URL, request: dict[str, Any]
    ) -> tuple[int, dict[str, str], bytes | _AnswerStream] | None:
        """The answer to an aiohttp request (its `ClientSession.request` keyword arguments) for
        one of this mock's API bases: a whole answer's body after its latency, or a streamed
        answer's parts, sent as the client reads (see `aiohttp_body`); None for any other
        URL."""
        endpoint = self._endpoint(origin(url.scheme, url.host or "", url.port), url.path)
        if endpoint is None:
            return None
        import aiohttp

        timeout = request.get("timeout")
        read = None
        if isinstance(timeout, aiohttp.ClientTimeout):
            read = timeout.sock_read or timeout.total
        answer, body = self._answer_and_body(
            method,
            endpoint,
            _aiohttp_content(request),
            CIMultiDict(request.get("headers") or {}),
            {"timeout": {"read": read}},
            timeout_error=aiohttp.SocketTimeoutError,
        )
        if isinstance(body, _AnswerStream) and not answer.streaming:
            # A whole answer comes whole, status and body together after its latency, as a
            # server sends one: a client that checks the status before it reads the body
            # (aiohttp's `raise_for_status`) still gets the answer counted as delivered.
            whole = body
            try:
                body = b"".join([part async for part in whole])
            finally:
                await whole.aclose()  # a timeout or a cancelled task: counted as on httpx
        return answer.status, answer.headers, body

    def _answer_and_body(
        self,
        method: str,
        endpoint: str,
        content: bytes,
        headers: Mapping[str, str] | Sequence[tuple[bytes, bytes]],
        extensions: Mapping[str, Any],
        timeout_error: Callable[[str], Exception] = _ReadTimeout,
    ) -> tuple[Answer, bytes | _AnswerStream]:
        """Plan the answer; its body as bytes if nothing is left to wait for, else a stream
        that waits as the answer says."""
        answer = self.answer(method, endpoint, content, client_kind(headers))
        if answer.finished:
            return answer, answer.body
        if not answer.wait and not answer.streaming:
            # Nothing to wait for: the answer is delivered as it is handed over, no stream needed.
            self.finish(answer)
            return answer, answer.body
        timeout = (extensions.get("timeout") or {}).get("read")
        return answer, _AnswerStream(self, answer, timeout, timeout_error)


def _aiohttp_content(request: dict[str, Any]) -> bytes:
    """The body of an aiohttp request, from its `data` or `json` argument."""
    data = request.get("data")
    if data is None and request.get("json") is not None:
        return json.dumps(request["json"]).encode()
    if isinstance(data, str):
        return data.encode()
    return bytes(data or b"")


def mock_openai(
    settings: UpstreamSettings | None = None,
    /,
    *,
    base_urls: Iterable[str] = (),
    **changes: Unpack[SettingsChanges],
) -> MockUpstream:
    """An offline OpenAI upstream that the real SDK talks to, not yet started.

    Its behaviour is `settings` with `changes` on top (see `labsupport.UpstreamSettings`):
    `latency` is how long each call takes (seconds); `jitter` adds a seeded random ± spread;
    `faults` and `rate_limit` script failures (see `labsupport.Fault`, `labsupport.RateLimit`).
    `base_urls` adds API bases to answer for, besides the OpenAI API and `OPENAI_BASE_URL`.

        with mock_openai(latency=0.2) as upstream:
            reply = await AsyncOpenAI().chat.completions.create(...)
        print(upstream.stats)
    """
    return MockUpstream(settings, base_urls=base_urls, **changes)
