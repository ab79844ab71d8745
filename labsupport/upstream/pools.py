"""httpx and httpx2, answered in process: the connection pools' request methods, wrapped.

Every request httpx sends goes through an httpcore connection pool (`ConnectionPool` and its
subclasses, the proxies, as `handle_request`; `AsyncConnectionPool` as `handle_async_request`),
and every request httpx2 — the SDK's stack — sends through httpcore2's. These four methods are
public; while any mock runs, each is wrapped by one that offers the request to the running
mocks first:

* a mock answers it (a request for its API base), with an httpcore(2) `Response`;
* a request no mock answers is refused (`refusal`) unless it is for loopback, which the real
  pool sends on to the lab's own servers.

The first mock to start wraps the methods, the last to stop puts the originals back, unless
something wrapped the same method after it (respx, a test's own patch): that patch is left in
place, and ours, under it, passes every request through once no mock runs.

In Pyodide (the course's JupyterLite site) httpx2 has no pool: its transports,
`httpx2.HTTPTransport` and `httpx2.AsyncHTTPTransport`, are httpx2-jsfetch's, which send through
the browser's `fetch`. There (`WRAP_TRANSPORTS`) those two public methods are wrapped too: each
request is offered to the same routes as an httpcore2 request, and an answer is handed back as
the httpx2 response httpx2's own pooled transport would build from it.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpcore
import httpcore2
import httpx2

from ..browser import in_browser
from ..network import is_loopback
from .refusal import blocked_request

__all__ = ["AsyncRoute", "Route", "register", "unregister"]

#: A mock's answer to one pool request (given with the Response class to build), or None when
#: the request is not for the mock's API.
Route = Callable[[Any, type], Any]
AsyncRoute = Callable[[Any, type], Awaitable[Any]]

_POOLS = (
    (httpcore.ConnectionPool, "handle_request", httpcore.Response),
    (httpcore.AsyncConnectionPool, "handle_async_request", httpcore.Response),
    (httpcore2.ConnectionPool, "handle_request", httpcore2.Response),
    (httpcore2.AsyncConnectionPool, "handle_async_request", httpcore2.Response),
)

#: Whether httpx2's transports are wrapped as well as the pools: where they have no pool under them.
WRAP_TRANSPORTS = in_browser()

_lock = threading.Lock()
_routes: list[tuple[Route, AsyncRoute]] = []
_wrappers: dict[tuple[type, str], tuple[Callable[..., Any], Callable[..., Any]]] = {}


def register(route: Route, async_route: AsyncRoute) -> None:
    """Offer every pool request to `route` (sync pools) and `async_route` (async pools), after
    the mocks registered before; wrap the pools' methods if no mock has yet."""
    with _lock:
        _routes.append((route, async_route))
        for pool, name, response in _POOLS:
            if (pool, name) not in _wrappers:
                original = getattr(pool, name)
                wrapper = _wrap(original, response, is_async=name.endswith("async_request"))
                _wrappers[pool, name] = (original, wrapper)
                setattr(pool, name, wrapper)
        if WRAP_TRANSPORTS:
            for transport, name in (
                (httpx2.HTTPTransport, "handle_request"),
                (httpx2.AsyncHTTPTransport, "handle_async_request"),
            ):
                if (transport, name) not in _wrappers:
                    original = getattr(transport, name)
                    is_async = name.endswith("async_request")
                    wrapper = _wrap_transport(original, is_async=is_async)
                    _wrappers[transport, name] = (original, wrapper)
                    setattr(transport, name, wrapper)


def unregister(route: Route) -> None:
    """Stop offering requests to `route`; put the originals back once no mock is left."""
    with _lock:
        _routes[:] = [pair for pair in _routes if pair[0] != route]
        if _routes:
            return
        for (pool, name), (original, wrapper) in list(_wrappers.items()):
            if getattr(pool, name) is wrapper:  # else a later patch wraps ours: leave both
                setattr(pool, name, original)
                del _wrappers[pool, name]


def _wrap(original: Callable[..., Any], response: type, *, is_async: bool) -> Callable[..., Any]:
    if is_async:

        async def handle_async_request(pool: Any, request: Any) -> Any:
            for _, async_route in list(_routes):
                answered = await async_route(request, response)
                if answered is not None:
                    return answered
            _let_through_or_refuse(request)
            return await original(pool, request)

        return handle_async_request

    def handle_request(pool: Any, request: Any) -> Any:
        for route, _ in list(_routes):
            answered = route(request, response)
            if answered is not None:
                return answered
        _let_through_or_refuse(request)
        return original(pool, request)

    return handle_request


def _let_through_or_refuse(request: Any) -> None:
    """Raise unless the request may reach the real network: it is for loopback, or no mock
    runs (our wrapper was left under a later patch)."""
    url = request.url
    host = url.host.decode("ascii")
    if _routes and not is_loopback(host):
        path = url.target.split(b"?", 1)[0].decode("ascii")
        raise blocked_request(f"{url.scheme.decode('ascii')}://{host}{path}")


def _wrap_transport(original: Callable[..., Any], *, is_async: bool) -> Callable[..., Any]:
    """A transport's request method offering each request to the routes first (`_wrap`'s, for
    httpx2's requests and responses)."""
    if is_async:

        async def handle_async_request(transport: Any, request: httpx2.Request) -> Any:
            core_request = _core_request(request, await request.aread())
            for _, async_route in list(_routes):
                answered = await async_route(core_request, httpcore2.Response)
                if answered is not None:
                    return _httpx2_response(answered)
            _let_through_or_refuse(core_request)
            return await original(transport, request)

        return handle_async_request

    def handle_request(transport: Any, request: httpx2.Request) -> Any:
        core_request = _core_request(request, request.read())
        for route, _ in list(_routes):
            answered = route(core_request, httpcore2.Response)
            if answered is not None:
                return _httpx2_response(answered)
        _let_through_or_refuse(core_request)
        return original(transport, request)

    return handle_request


def _core_request(request: httpx2.Request, content: bytes) -> httpcore2.Request:
    """An httpx2 request as its pooled transport hands it to an httpcore2 pool."""
    url = httpcore2.URL(
        scheme=request.url.raw_scheme,
        host=request.url.raw_host,
        port=request.url.port,
        target=request.url.raw_path,
    )
    return httpcore2.Request(
        request.method,
        url,
        headers=request.headers.raw,
        content=content,
        extensions=request.extensions,
    )


def _httpx2_response(answered: httpcore2.Response) -> httpx2.Response:
    """A route's httpcore2 response as the httpx2 response its pooled transport returns."""
    return httpx2.Response(
        status_code=answered.status,
        headers=answered.headers,
        stream=_AnsweredStream(answered.stream),
        extensions=answered.extensions,
    )


class _AnsweredStream(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A route's response body, read by httpx2's sync or async client (the route's streams
    serve both). A read that times out raises httpx2's `ReadTimeout`, as httpx2's pooled
    transport maps httpcore2's (the SDK turns it into `openai.APITimeoutError`)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._stream
        except httpcore2.ReadTimeout as error:
            raise httpx2.ReadTimeout(str(error)) from error

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            self._stream.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except httpcore2.ReadTimeout as error:
            raise httpx2.ReadTimeout(str(error)) from error

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            await self._stream.aclose()
