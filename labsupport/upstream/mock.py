"""The offline upstream, in process: the real `openai` SDK talks to it through respx.

How the interception works, and why it cannot leak:

* The SDK (3.x) sends HTTP through httpx2 → httpcore2; plain httpx goes through httpcore. respx
  patches the connection pools of *both* (its own "httpcore" mocker, and an "httpcore2" mocker
  registered here unless pytest-httpx2 already did), so every client the SDK builds, or a
  learner builds, is seen. The mock registers itself with both mockers and sees each request.
  The SDK's async requests take a shortcut: httpcore2's async pools answer a request for the
  mock's API straight from httpcore2's own request and response types, without respx turning
  each into an httpx.Request and httpx.Response and back (most of the mock's cost per call);
  every other request, and any router registered before the mock, goes through respx.
* It answers requests to the OpenAI API base (and to whatever `OPENAI_BASE_URL` points at),
  lets loopback traffic (127.0.0.1, localhost, ::1) through to the lab's own servers, and
  refuses anything else with `NetworkBlockedError`: fail closed. While it runs, a socket guard
  (`labsupport.guard`) refuses every other way out too, for libraries that do not use httpx.
* The answer's body is a stream that waits before it yields. The sync client reads it with a
  plain iterator, so `time.sleep` blocks its thread, as a real network read does; the async client
  reads it with an async iterator, so `asyncio.sleep` lets the event loop run other work. The same
  object serves both, so the mock never has to guess which client called.
* A slow answer past the client's read timeout (from the request's `extensions["timeout"]`) raises
  the transport's `ReadTimeout`, which the SDK turns into `APITimeoutError`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from typing import Any, ClassVar, Self, Unpack
from urllib.parse import unquote

import httpcore
import httpcore2
import httpx
from respx.mocks import HTTPCoreMocker, Mocker
from respx.models import PassThrough
from respx.patterns import parse_url

from ..guard import NetworkGuard
from ..network import NetworkBlockedError, check_port, client_kind, is_loopback
from ..switch import Switch
from .addresses import origin, origin_and_path
from .core import Answer, Upstream
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


def _register_httpcore2_mocker() -> None:
    """Teach respx to patch httpcore2, unless someone (pytest-httpx2) already did.

    respx keeps a registry of mockers by name and raises TypeError on a second "httpcore2".
    """
    if "httpcore2" in Mocker.registry:
        return

    class HTTPCore2Mocker(HTTPCoreMocker):
        name = "httpcore2"
        targets: ClassVar[list[str]] = [
            "httpcore2._sync.connection.HTTPConnection",
            "httpcore2._sync.connection_pool.ConnectionPool",
            "httpcore2._sync.http_proxy.HTTPProxy",
            "httpcore2._async.connection.AsyncHTTPConnection",
            "httpcore2._async.connection_pool.AsyncConnectionPool",
            "httpcore2._async.http_proxy.AsyncHTTPProxy",
        ]

        @classmethod
        def mock(cls, spec: Any) -> Any:
            """respx's stand-in for `spec`; for the async pools' `handle_async_request`, one
            that answers a request for a running mock's API straight from httpcore2's request,
            and leaves everything else (loopback pass-through, blocked hosts, other routers) to
            respx. respx would turn each request into an httpx.Request and each answer into an
            httpx.Response and back: three quarters of the mock's cost per call."""
            respx_mock = super().mock(spec)
            if spec.__name__ != "handle_async_request":
                return respx_mock

            async def handle_async_request(self: Any, request: httpcore2.Request) -> Any:
                first = cls.routers[0] if cls.routers else None
                if isinstance(first, MockUpstream) and first.tunnel_port is None:
                    answered = await first._answer_httpcore2(request)
                    if answered is not None:
                        return answered
                return await respx_mock(self, request)

            return handle_async_request

        @classmethod
        def to_httpx_request(cls, **kwargs: Any) -> httpx.Request:
            # respx parses the URL afresh for every request; the lab sends the same few URLs
            # over and over, so remember them (this is most of the mock's cost per call).
            request = kwargs["request"]
            first = cls.routers[0] if cls.routers else None
            if isinstance(first, MockUpstream) and first.tunnel_port is not None:
                first._send_through_tunnel(request)
            url = request.url
            return httpx.Request(
                request.method.decode("ascii"),
                _parsed_url(url.scheme, url.host, url.port, url.target),
                headers=request.headers,
                stream=request.stream,
                extensions=request.extensions,
            )

        @classmethod
        def from_sync_httpx_response(
            cls, httpx_response: httpx.Response, target: Any, **kwargs: Any
        ) -> httpcore2.Response:
            return httpcore2.Response(
                status=httpx_response.status_code,
                headers=httpx_response.headers.raw,
                content=httpx_response.stream,
                extensions=httpx_response.extensions,
            )


@functools.lru_cache(maxsize=256)
def _parsed_url(scheme: bytes, host: bytes, port: int | None, target: bytes) -> httpx.URL:
    return parse_url((scheme, host, port, target))


class _AnswerStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that arrives `answer.wait` seconds late: blocking when read by a sync
    client, awaiting when read by an async one (so it is both of httpx's stream types)."""

    def __init__(self, upstream: Upstream, answer: Answer, read_timeout: float | None) -> None:
        self._upstream = upstream
        self._answer = answer
        self._read_timeout = read_timeout
        self._delivered = False
        self._sync_parts: Generator[bytes, None, None] | None = None
        self._async_parts: AsyncGenerator[bytes, None] | None = None

    def _steps(self) -> list[tuple[float, bytes]]:
        answer = self._answer
        if not answer.streaming:
            return [(answer.wait, answer.body)]
        gaps = [answer.wait] + [answer.chunk_gap] * (len(answer.chunks) - 1)
        return list(zip(gaps, answer.chunks, strict=True))

    def _check_timeout(self, wait: float) -> float:
        """How long to wait before the next part; raise-time if the client gives up first."""
        if self._read_timeout is not None and wait > self._read_timeout:
            return self._read_timeout
        return wait

    def _timed_out(self) -> _ReadTimeout:
        self._upstream.finish(self._answer, delivered=False)
        return _ReadTimeout(f"offline upstream: no answer within {self._read_timeout:g} s")

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
                # Delivered once the last part is handed over: a client may close the stream
                # right after it (the SDK stops at "[DONE]") without asking for more.
                self._delivered = number == len(steps)
                yield part
        finally:
            self._upstream.finish(self._answer, delivered=self._delivered, client="sync")

    def __aiter__(self) -> AsyncIterator[bytes]:
        # One pass only: a client that iterates again (the SDK drains a stream after "[DONE]")
        # must get the rest of this body, not a second copy of it.
        if self._async_parts is None:
            self._async_parts = self._aparts()
        return self._async_parts

    async def _aparts(self) -> AsyncGenerator[bytes, None]:
        try:
            steps = self._steps()
            for number, (wait, part) in enumerate(steps, start=1):
                if wait:
                    await asyncio.sleep(self._check_timeout(wait))
                if self._check_timeout(wait) < wait:
                    raise self._timed_out()
                # Delivered once the last part is handed over: a client may close the stream
                # right after it (the SDK stops at "[DONE]") without asking for more.
                self._delivered = number == len(steps)
                yield part
        finally:
            self._upstream.finish(self._answer, delivered=self._delivered, client="async")

    def close(self) -> None:
        if self._sync_parts is not None:
            self._sync_parts.close()
        self._upstream.finish(self._answer, delivered=self._delivered, client="sync")

    async def aclose(self) -> None:
        if self._async_parts is not None:
            await self._async_parts.aclose()
        self._upstream.finish(self._answer, delivered=self._delivered, client="async")


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
        self._mockers: list[type[Mocker]] = []
        self._guard: NetworkGuard | None = None
        self._tunnel_port: int | None = None

    @property
    def active(self) -> bool:
        return bool(self._mockers)

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

    def _send_through_tunnel(self, request: httpcore2.Request) -> None:
        """Point `request`, if it is for this mock's API, at the tunnel's loopback port."""
        url, port = request.url, self._tunnel_port
        path = unquote(url.target.split(b"?", 1)[0].decode("ascii"))
        endpoint = self._endpoint(origin(url.scheme.decode(), url.host.decode(), url.port), path)
        if endpoint is None or port is None:
            return
        query = url.target.partition(b"?")[1:]
        target = b"/v1/" + endpoint.encode() + b"".join(query)
        request.url = httpcore2.URL(scheme=b"http", host=b"127.0.0.1", port=port, target=target)

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
        _register_httpcore2_mocker()
        for name in ("httpcore2", "httpcore"):
            mocker = Mocker.registry[name]
            mocker.register(self)  # type: ignore[arg-type]
            mocker.start()
            self._mockers.append(mocker)
        return self

    def stop(self) -> None:
        """Turn interception, this mock's guard and its placeholder key off. Idempotent."""
        while self._mockers:
            mocker = self._mockers.pop()
            mocker.unregister(self)  # type: ignore[arg-type]
            mocker.stop()
        with _key_lock:
            if self in _key_holders:
                _key_holders.discard(self)
                if not _key_holders and os.environ.get(KEY_VARIABLE) == PLACEHOLDER_KEY:
                    del os.environ[KEY_VARIABLE]
        if self._guard is not None:
            self._guard.stop()
            self._guard = None

    # -- routing ---------------------------------------------------------------------------
    # respx's mockers patch the connection pools and hand each request, as an httpx.Request,
    # to the "routers" registered with them. The mock registers itself as one: it answers every
    # request directly instead of going through a respx Router's route matching and call
    # recording, which cost more than the answer itself and would grow a list of every request.
    def handler(self, request: httpx.Request) -> httpx.Response:
        return self._dispatch(request)

    async def async_handler(self, request: httpx.Request) -> httpx.Response:
        return self._dispatch(request)

    def _endpoint(self, request_origin: str, path: str) -> str | None:
        """The path after the API base this mock answers for ("chat/completions"), or None if
        the request is not for one of its bases."""
        for base_origin, base_path in self._bases:
            if request_origin == base_origin and path.startswith(base_path + "/"):
                return path[len(base_path) + 1 :]
        return None

    def _dispatch(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        path = url.path
        endpoint = self._endpoint(origin(url.scheme, url.host, url.port), path)
        if endpoint is not None:
            return self._respond(request, endpoint)
        if is_loopback(url.host):
            # respx sends the request on to the real connection pool: the lab's own servers.
            raise PassThrough(f"loopback: {url}", request=request, origin=None)  # type: ignore[arg-type]
        raise NetworkBlockedError(
            f"The offline lab blocked a request to {url.scheme}://{url.host}{path}: while the "
            "mock upstream is on, nothing leaves this machine. To reach a real server, set "
            "LAB_MODE=live (see the README)."
        )

    def _respond(self, request: httpx.Request, endpoint: str) -> httpx.Response:
        answer, body = self._answer_and_body(
            request.method, endpoint, request.content, request.headers, request.extensions
        )
        if isinstance(body, bytes):
            return httpx.Response(answer.status, headers=answer.headers, content=body)
        return httpx.Response(answer.status, headers=answer.headers, stream=body)

    async def _answer_httpcore2(self, request: httpcore2.Request) -> httpcore2.Response | None:
        """The answer to an httpcore2 request for one of this mock's API bases, built from it
        directly; None for any other URL (respx's path decides: pass through or block)."""
        url = request.url
        path = unquote(url.target.split(b"?", 1)[0].decode("ascii"))  # as httpx's URL.path
        endpoint = self._endpoint(origin(url.scheme.decode(), url.host.decode(), url.port), path)
        if endpoint is None:
            return None
        stream = request.stream
        assert isinstance(stream, AsyncIterable)  # the async pools' requests stream so
        content = b"".join([part async for part in stream])
        answer, body = self._answer_and_body(
            request.method.decode("ascii"),
            endpoint,
            content,
            request.headers,
            request.extensions,
        )
        headers = [(name.encode(), value.encode()) for name, value in answer.headers.items()]
        if isinstance(body, bytes):
            headers.append((b"content-length", b"%d" % len(body)))
        return httpcore2.Response(answer.status, headers=headers, content=body)

    def _answer_and_body(
        self,
        method: str,
        endpoint: str,
        content: bytes,
        headers: Mapping[str, str] | Sequence[tuple[bytes, bytes]],
        extensions: Mapping[str, Any],
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
        return answer, _AnswerStream(self, answer, timeout)


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
