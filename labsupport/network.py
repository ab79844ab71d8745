"""The lab's network, in one place: what "this machine" is, how the lab listens, and the error
for everything it refuses.

* `NetworkBlockedError` is what the offline lab raises instead of letting a request or a packet
  leave this machine. It is an `OSError` (a `ConnectionError`) *and* the connect error of both
  HTTP stacks (`httpx.ConnectError`, `httpx2.ConnectError`), so a library that handles being
  offline (`except httpx.HTTPError: use the bundled copy`) behaves as on a machine without a
  network, instead of crashing on an error it has never heard of.
* `is_loopback` is the one answer to "is this host this machine?", for the mock, the socket
  guard and the servers; `loopback_address` turns a host the lab may listen on into an IP.
* `bound_tcp_socket` and `run_uvicorn` are how `serve()` and `FakeServer` listen: the lab binds
  the socket itself (a port in use is an `OSError` here, not uvicorn's `sys.exit`) and runs
  uvicorn without its signal handlers (Ctrl+C stays with the kernel or `asyncio.run`).
* `client_kind` tells a sync SDK client from an async one by the header the SDK sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Final, Literal

import httpx
import httpx2
import uvicorn
from starlette.types import ASGIApp

from .validation import check_int

__all__ = [
    "SERVER_START_TIMEOUT",
    "ClientKind",
    "NetworkBlockedError",
    "bound_tcp_socket",
    "check_port",
    "client_kind",
    "is_loopback",
    "loopback_address",
    "run_uvicorn",
]

SERVER_START_TIMEOUT: Final = 10.0
"""Seconds uvicorn may take to start accepting connections on its socket."""

ClientKind = Literal["sync", "async"]


class NetworkBlockedError(httpx.ConnectError, httpx2.ConnectError, ConnectionError):  # type: ignore[misc]
    """Raised instead of sending anything off this machine while the offline lab is on.

    Catch it as any of `OSError`/`ConnectionError`, `httpx.ConnectError` or
    `httpx2.ConnectError` (and so `httpx.HTTPError`, `httpx2.TransportError`, ...): whatever a
    library catches when a machine has no network, it catches this too.
    """

    # mypy: both stacks type `request` with their own Request class; this error belongs to both,
    # and the lab raises it before any request object exists.

    def __init__(self, message: str) -> None:
        super().__init__(message)


def is_loopback(host: str | bytes) -> bool:
    """Whether `host` names this machine: "localhost" (and *.localhost), 127.0.0.0/8 or ::1,
    written as text or bytes, bracketed or with an IPv6 zone."""
    text = host.decode() if isinstance(host, bytes) else host
    if text == "localhost" or text.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def loopback_address(host: str) -> str:
    """The IP address to listen on for `host`, which must be a loopback IP or "localhost"."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a str such as '127.0.0.1', got {host!r}")
    address = "127.0.0.1" if host == "localhost" else host
    try:
        ipaddress.ip_address(address)
    except ValueError:
        address = ""  # a name other than localhost: the lab does not resolve names to listen
    if not address or not is_loopback(address):
        raise ValueError(
            f"host must be a loopback address ('127.0.0.1', 'localhost' or '::1'), got {host!r}: "
            "the lab never listens on a network interface"
        )
    return address


def check_port(port: object) -> int:
    """`port` as a TCP port number: an int from 0 to 65535, where 0 lets the OS pick a free one."""
    return check_int("port", port, minimum=0, maximum=65535)


@contextlib.contextmanager
def bound_tcp_socket(host: str, port: int) -> Iterator[socket.socket]:
    """A TCP socket bound to the loopback `host:port` (not yet listening), closed on exit.

    Binding it here turns "port already in use" into a plain `OSError` that names the port,
    instead of uvicorn logging it and calling `sys.exit`.
    """
    address = loopback_address(host)
    port = check_port(port)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # whose proto says TCP. With proto 0 every response written in two parts (headers, body)
    # would wait ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # Lets a re-run cell bind the same port while old connections are still in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            message = f"cannot listen on {address}:{port}: {exc.strerror} (port=0 picks a free one)"
            raise OSError(exc.errno, message) from exc
        yield sock
    finally:
        sock.close()


class _SignalFreeServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to its host (Jupyter kernel, asyncio.run)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would swap the kernel's SIGINT handler for its own while serving, so
        # "interrupt kernel" would stop the server instead of the cell. We stop it ourselves.
        yield


@contextlib.asynccontextmanager
async def run_uvicorn(
    app: ASGIApp, sock: socket.socket, *, graceful_shutdown: float | None = None
) -> AsyncIterator[uvicorn.Server]:
    """Serve `app` with uvicorn on the bound `sock`, as a task in the running event loop.

    Yields the server once it accepts connections (a crash or a start-up slower than
    `SERVER_START_TIMEOUT` raises instead). On exit uvicorn stops accepting, lets running
    requests finish for up to `graceful_shutdown` seconds (None: as long as they take), and
    closes every connection; the task is awaited, so nothing outlives the block. A crash while
    serving is raised after that cleanup. The app's lifespan is not run here: the caller owns it.
    """
    config = uvicorn.Config(
        app,
        interface="asgi3",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=None if graceful_shutdown is None else int(graceful_shutdown),
    )
    server = _SignalFreeServer(config)
    port = sock.getsockname()[1]
    serving = asyncio.create_task(server.serve([sock]), name=f"uvicorn:{port}")
    try:
        await _wait_until_started(server, serving)
        yield server
    finally:
        server.should_exit = True
        if not server.started:
            serving.cancel()  # should_exit is only checked once uvicorn is serving
        interrupted = await _wait_out(server, serving)
    if interrupted:
        raise asyncio.CancelledError  # the cell's interrupt goes on, now that the port is free
    serving.result()  # a crash while serving is raised here, after the cleanup


async def _wait_out(server: uvicorn.Server, serving: asyncio.Task[None]) -> bool:
    """Wait until uvicorn's task is done, even if it failed: nothing may outlive the block.

    Interrupted while uvicorn drains (a cell interrupted mid-shutdown), stop at once, as
    uvicorn's second Ctrl+C does (`force_exit`: no more waiting for requests and background
    tasks), and still wait, so the port is released before the interrupt goes on; a second
    interrupt cancels the task. Returns whether it was interrupted."""
    interrupted = False
    while not serving.done():
        try:
            await asyncio.wait([serving])
        except asyncio.CancelledError:
            if server.force_exit:
                serving.cancel()
            server.force_exit = interrupted = True
    return interrupted


async def _wait_until_started(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    """Return once uvicorn accepts connections; raise if it crashed or takes too long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SERVER_START_TIMEOUT
    while not server.started:
        if serving.done():
            serving.result()  # re-raises what stopped it
            raise RuntimeError("uvicorn stopped before it started serving")
        if loop.time() > deadline:
            raise TimeoutError(f"uvicorn did not start within {SERVER_START_TIMEOUT} s")
        await asyncio.wait([serving], timeout=0.005)


def client_kind(headers: Mapping[str, str] | Sequence[tuple[bytes, bytes]]) -> ClientKind:
    """Which SDK client sent a request: the SDK marks its async client's requests with
    `x-stainless-async: async:…`; anything else (a sync client, curl, httpx) counts as sync.
    `headers` is a mapping (httpx's, case-insensitive) or the raw pairs httpcore sends."""
    if isinstance(headers, Mapping):
        marked = headers.get("x-stainless-async", "false") != "false"
    else:
        marked = any(k.lower() == b"x-stainless-async" and v != b"false" for k, v in headers)
    return "async" if marked else "sync"
