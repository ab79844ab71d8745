"""Run an ASGI app (FastAPI, Starlette, ...) from a notebook and talk to it with httpx.

Two ``async with`` helpers, both yielding an ``httpx.AsyncClient`` whose ``base_url`` points at
the app, so lessons write ``await client.get("/chat")``:

* ``asgi_client(app)`` hands every request straight to the app as an ASGI call in the current
  event loop: no socket, no port, no server. Fast and exact, ideal for tests.
* ``serve(app)`` runs a real uvicorn server on 127.0.0.1 as a task in the current event loop and
  gives you a client that talks to it over TCP, just like a browser or another service would.

The difference that matters for the course: httpx's ASGI transport returns a response only once
the app's ASGI call has *finished*, and in Starlette/FastAPI that call includes the background
tasks that run after the response. So "respond first, work later" can only be observed with
``serve``::

    async with serve(app) as client:
        response = await client.post("/jobs")   # returns before the background task is done

Both helpers run the app's lifespan: startup before the first request, shutdown after the
client is closed. Whatever the lifespan yields (``yield {"openai": AsyncOpenAI()}``) reaches
every request as ``request.state``, each request getting its own shallow copy, as in uvicorn.

And, opt-in, for a service that faces clients it does not control (the capstone does): uvicorn's
own limits on connections, idle time and header size as ``ServerLimits().uvicorn_options()``, and
``BodyLimits``, an ASGI middleware giving the request body a deadline and a size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Final

import httpx
from asgi_lifespan import LifespanManager
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .browser import require_real_kernel
from .network import bound_tcp_socket, check_port, loopback_address, run_uvicorn
from .validation import check_seconds

__all__ = ["BodyLimits", "ServerLimits", "asgi_client", "serve"]

LIFESPAN_TIMEOUT: Final = 10.0
"""Seconds the app's lifespan startup (and shutdown) may take before we give up."""

GRACEFUL_SHUTDOWN_TIMEOUT: Final = 5
"""Seconds uvicorn waits for running requests and background tasks before cancelling them."""


@contextlib.asynccontextmanager
async def asgi_client(
    app: ASGIApp, *, base_url: str = "http://testserver", lifespan: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Yield an ``httpx.AsyncClient`` that calls ``app`` in memory, with its lifespan running.

    Each request becomes one ASGI call in the current event loop, so the app and your code
    share the loop exactly as they would inside one process (and ``time.sleep`` in an endpoint
    blocks your cell too). Nothing is listening on a port.

    Note: the ASGI transport returns the response only after the whole ASGI call has finished,
    *including background tasks*. Lessons about "respond first, work later" need ``serve``.
    An exception the app does not handle is raised in your code (a real server answers 500).

    Args:
        app: the ASGI application, e.g. a ``FastAPI()`` instance.
        base_url: the URL the client pretends to talk to; only the path reaches the app.
        lifespan: run the app's startup/shutdown around the block. Pass ``False`` for a bare
            ASGI callable that does not implement the lifespan protocol.
    """
    _check_app(app)
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
    async with _running_lifespan(app, enabled=lifespan) as running_app:
        transport = httpx.ASGITransport(app=running_app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: bool = True,
    timeout: float = 30.0,
) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` with uvicorn on a loopback port and yield a client pointed at it.

    The server is a task in the *current* event loop, so this works both at the top level of a
    Jupyter cell (where the kernel's loop is already running) and under ``asyncio.run``. The
    order of events:

    1. bind a socket on ``host:port`` (port 0 lets the OS pick a free one);
    2. run the app's lifespan startup;
    3. start uvicorn on the socket and wait until it accepts connections;
    4. yield an ``httpx.AsyncClient`` with ``base_url="http://127.0.0.1:<port>"``;
    5. on exit: close the client, let uvicorn finish running requests and background tasks,
       run the lifespan shutdown and release the port.

    uvicorn normally installs its own Ctrl+C handler; here the kernel (or ``asyncio.run``)
    keeps its own, so interrupting a cell still works as usual.

    The client is an ordinary ``httpx.AsyncClient``: at most 100 connections at a time and a
    ``timeout`` of 30 s per request unless you pass another one.

    Args:
        app: the ASGI application, e.g. a ``FastAPI()`` instance.
        host: a loopback address (``127.0.0.1``, ``localhost`` or ``::1``); the lab never
            listens on a network interface.
        port: the TCP port; 0 (the default) picks a free one.
        lifespan: run the app's startup/shutdown around the block.
        timeout: the client's timeout in seconds for each request.
    """
    require_real_kernel("lab.serve", "TCP sockets (it serves the app with uvicorn on 127.0.0.1)")
    _check_app(app)
    address = loopback_address(host)
    port = check_port(port)
    timeout = check_seconds("timeout", timeout, allow_zero=False)

    with bound_tcp_socket(address, port) as sock:
        bound_port = sock.getsockname()[1]
        netloc = f"[{address}]" if ":" in address else address
        async with (
            _running_lifespan(app, enabled=lifespan) as running_app,
            run_uvicorn(running_app, sock, graceful_shutdown=GRACEFUL_SHUTDOWN_TIMEOUT),
            httpx.AsyncClient(
                base_url=f"http://{netloc}:{bound_port}",
                timeout=timeout,
                trust_env=False,  # a proxy from the environment must not see loopback calls
            ) as client,
        ):
            yield client


@contextlib.asynccontextmanager
async def _running_lifespan(app: ASGIApp, *, enabled: bool) -> AsyncIterator[ASGIApp]:
    """Run the app's lifespan around the block and yield the app to send requests to.

    The yielded app puts the lifespan state into each request's scope; a startup that raises
    raises here, with the app's own exception. The shutdown runs however the block ends: also
    when it raised or was interrupted (asgi-lifespan skips it then; uvicorn never does), so the
    app's own cleanup, such as closing its client or database, is not lost with a failed cell.
    """
    if not enabled:
        yield app
        return
    started = finished = False
    try:
        async with LifespanManager(
            _copy_state_per_request(app),
            startup_timeout=LIFESPAN_TIMEOUT,
            shutdown_timeout=LIFESPAN_TIMEOUT,
        ) as manager:
            started = True
            try:
                yield manager.app
            except BaseException:
                try:
                    await manager.shutdown()
                except TimeoutError as exc:
                    raise _lifespan_timeout("shutdown") from exc
                raise  # the block's own exception goes on
            finished = True
    except TimeoutError as exc:
        if started and not finished:
            raise  # raised inside the block, or by a shutdown after it: already said
        raise _lifespan_timeout("shutdown" if finished else "startup") from exc


def _lifespan_timeout(phase: str) -> TimeoutError:
    return TimeoutError(f"the app's lifespan {phase} did not finish within {LIFESPAN_TIMEOUT} s")


def _copy_state_per_request(app: ASGIApp) -> ASGIApp:
    """Give each request a shallow copy of the lifespan state, as uvicorn does.

    Without the copy, ``request.state.user = ...`` in one request would be visible in all the
    others, because the lifespan state dict is shared.
    """

    async def app_with_request_state(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and "state" in scope:
            scope["state"] = dict(scope["state"])
        await app(scope, receive, send)

    return app_with_request_state


def _check_app(app: object) -> None:
    if isinstance(app, type) or not callable(app):
        raise TypeError(
            "app must be an ASGI application such as a FastAPI() instance "
            f"(an object called with scope, receive, send), got {app!r}"
        )


class ServerLimits(BaseModel):
    """uvicorn's own limits for clients that would hold a server's sockets or memory.

    Pass ``uvicorn.run(app, **ServerLimits().uvicorn_options())``. What each one does:

    * ``max_connections`` (``--limit-concurrency``): a request that arrives while this many
      connections (or requests) are open gets uvicorn's plain-text 503, and its connection is
      closed, so a flood of connections cannot exhaust the process's file descriptors.
    * ``keep_alive`` (``--timeout-keep-alive``): an idle connection is closed this many seconds
      after its last response.
    * ``max_header_bytes`` (h11's ``max_incomplete_event_size``): a request line and headers
      larger than this get 400 and the connection closed.

    uvicorn has no deadline for a new connection's headers: a client trickling them holds its
    connection until it leaves. A reverse proxy in front (nginx's ``client_header_timeout``)
    closes those.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )

    max_connections: Annotated[int, Field(ge=1)] = 2048
    """Open connections past which a new request gets 503 and its connection is closed."""
    keep_alive: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0
    """Seconds an idle connection stays open after its last response."""
    max_header_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024
    """The largest request line and headers accepted; larger ones get 400."""

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.run`` or ``uvicorn.Config``."""
        return {
            "http": "h11",  # the header limit is h11's
            "limit_concurrency": self.max_connections,
            "timeout_keep_alive": self.keep_alive,
            "h11_max_incomplete_event_size": self.max_header_bytes,
        }


Refusal = Callable[[Scope, int, str], ASGIApp]
"""Makes the answer to a refused body from (scope, status, message): any ASGI app."""


def json_refusal(scope: Scope, status: int, message: str) -> ASGIApp:
    """The default refusal: ``{"detail": message}``, as FastAPI answers its own errors."""
    return JSONResponse({"detail": message}, status_code=status)


DRAIN_FACTOR = 16
"""How much more than ``max_bytes`` a refused body may still send, read and dropped, before the
413: beyond it the connection is closed with bytes unread."""


class BodyLimits:
    """A pure ASGI middleware: the whole request body, read before the app runs, within
    ``timeout`` seconds and at most ``max_bytes``.

    * larger than ``max_bytes`` → 413 (a declared Content-Length at once, a chunked body as it
      arrives);
    * not complete ``timeout`` seconds after the request started → 408 (a client trickling
      its body must not hold a connection for ever);
    * the client disconnects first → the app is not called: there is nobody to answer.

    A body refused for its size is read to its end and dropped first (up to ``DRAIN_FACTOR`` ×
    ``max_bytes`` more, within the same deadline), so a client still sending reads the 413
    instead of a reset: bytes left unread in a closed socket make the kernel send one. A
    refused body that was still arriving after that gets ``Connection: close``: uvicorn closes
    the connection after the answer.
    ``refuse`` makes the answer, so an app keeps its own error shape. The app then reads the
    same bytes as usual.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, timeout: float, refuse: Refusal = json_refusal
    ) -> None:
        self.app, self.max_bytes, self.timeout, self.refuse = app, max_bytes, timeout, refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, 413, close=False)
            return
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(receive)
        except TimeoutError:
            await self._refuse(scope, receive, send, 408, close=True)
            return
        if body is None:
            return
        if len(body) > self.max_bytes:
            try:
                async with asyncio.timeout_at(started + self.timeout):
                    ended = await self._drain(receive)
            except TimeoutError:
                ended = False
            await self._refuse(scope, receive, send, 413, close=not ended)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as usual

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body (or its first ``max_bytes`` + 1), or None if the client left first."""
        chunks: list[bytes] = []
        size = 0
        while size <= self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _drain(self, receive: Receive) -> bool:
        """Read and drop the rest of a refused body; True if it ended (False: too much more,
        or the client left)."""
        dropped = 0
        while dropped <= DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, *, close: bool
    ) -> None:
        message = (
            f"The request body was not complete within {self.timeout:g} s."
            if status == 408
            else f"The request body is larger than {self.max_bytes} bytes."
        )

        async def send_closing(event: Message) -> None:
            if close and event["type"] == "http.response.start":
                event = {**event, "headers": [*event["headers"], (b"connection", b"close")]}
            await send(event)

        await self.refuse(scope, status, message)(scope, receive, send_closing)
