"""The offline upstream over real TCP: an OpenAI-compatible server on 127.0.0.1.

The in-process mock is fast and sees every call, but it has no sockets. Lessons about connection
pooling need real ones, and live mode needs a server to point `OPENAI_BASE_URL` at. `FakeServer`
answers with the same brain (`Upstream`), so replies, faults and counters are identical, and it
also counts the distinct TCP connections its clients opened.

It runs uvicorn in its own thread with its own event loop, so a notebook cell that blocks its own
loop (the lesson of notebook 01) cannot stall the upstream too.

Run it as a process for live-mode tests:

    python -m labsupport fake-server --port 8100 --latency 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from typing import Self, Unpack

import uvicorn
from starlette.types import Receive, Scope, Send

from ..browser import require_real_kernel
from ..network import bound_tcp_socket, check_port, client_kind, run_uvicorn
from ..switch import Switch
from ..validation import check_seconds
from .core import Upstream
from .settings import SettingsChanges, UpstreamSettings

__all__ = ["FakeServer", "main"]


class FakeServer(Upstream, Switch):
    """An OpenAI-compatible upstream on `http://127.0.0.1:PORT/v1`, in a background thread.

    with FakeServer(latency=0.05) as server:
        client = AsyncOpenAI(base_url=server.base_url)
        ...
        print(server.connections)  # distinct TCP connections clients opened
    """

    def __init__(
        self,
        settings: UpstreamSettings | None = None,
        /,
        *,
        port: int = 0,
        **changes: Unpack[SettingsChanges],
    ) -> None:
        require_real_kernel("lab.FakeServer", "TCP sockets and a thread to serve them from")
        port = check_port(port)
        self._clients: set[tuple[str, int]] = set()
        super().__init__(settings, **changes)
        self._requested_port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._handling = 0  # requests inside the app right now (answered, not yet recorded)
        self._port = 0

    @property
    def active(self) -> bool:
        """Whether the server is running."""
        return self._server is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """What to pass as `base_url=` (or `OPENAI_BASE_URL`) to reach this server."""
        if self._server is None:
            raise RuntimeError("the FakeServer is not running; call start() or use `with`")
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def connections(self) -> int:
        """Distinct TCP connections that sent at least one request since the last reset."""
        with self._lock:
            return len(self._clients)

    @property
    def open_connections(self) -> int:
        """Client connections open right now (a closed client leaves none behind)."""
        server = self._server
        return len(server.server_state.connections) if server is not None else 0

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._clients.clear()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Bind 127.0.0.1 and serve in a background thread; returns once it accepts requests.
        Idempotent. A port in use raises `OSError`, here in the caller's thread."""
        if self._thread is not None:
            return self
        listening = contextlib.ExitStack()
        sock = listening.enter_context(bound_tcp_socket("127.0.0.1", self._requested_port))
        self._port = sock.getsockname()[1]
        ready, running = threading.Event(), threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
            async with run_uvicorn(self._app, sock) as server:
                self._server = server
                ready.set()
                await self._stopping.wait()

        def run() -> None:
            running.set()
            try:
                with listening:  # the socket is closed once uvicorn is done with it
                    asyncio.run(serve())
            except BaseException as error:  # start() raises it if serving never began
                failure.append(error)
            finally:
                self._server = None
                ready.set()

        self._thread = threading.Thread(target=run, name=f"FakeServer:{self._port}", daemon=True)
        try:
            self._thread.start()  # on a busy machine a Ctrl+C can land in here, too
            _wait_interruptibly(ready)
        except BaseException:  # Ctrl+C while it starts: the thread would serve on, port and all
            if running.wait(_THREAD_START_SECONDS):  # it runs, and sets `ready` however it ends
                _wait_interruptibly(ready)
                self.stop()
            else:  # interrupted before the thread began: nothing serves, the socket is ours
                self._thread = None
                listening.close()
            raise
        if self._server is None:
            self.stop()
            raise RuntimeError("FakeServer did not start") from (failure[0] if failure else None)
        return self

    def stop(self) -> None:
        """Stop serving, close every connection, and free the port. Idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        self._thread = self._loop = self._stopping = None
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(stopping.set)
        if thread is not None:
            thread.join()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every request the server accepted has been answered and recorded, so
        `stats` and `connections` include them. Raises `TimeoutError` after `timeout` s.

        A client has its response a moment before the server records the call (the server
        thread finishes the call after the last byte is sent), so counters read right after
        the last response may lag by one without this."""
        deadline = time.monotonic() + check_seconds("timeout", timeout)
        while not self._is_idle():
            if time.monotonic() > deadline:
                raise TimeoutError(f"FakeServer still busy after {timeout:g} s")
            time.sleep(0.002)

    def _is_idle(self) -> bool:
        server = self._server
        # uvicorn's own tasks cover a request that arrived but has not reached the app yet.
        accepted = server is not None and bool(server.server_state.tasks)
        with self._lock:
            return self._handling == 0 and not accepted

    # -- the ASGI app ----------------------------------------------------------------------
    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client = scope.get("client")
        with self._lock:
            self._handling += 1
            if client:
                self._clients.add((client[0], client[1]))
        try:
            await self._answer(scope, receive, send)
        finally:
            with self._lock:
                self._handling -= 1

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        endpoint = path[len("/v1/") :] if path.startswith("/v1/") else path.lstrip("/")
        answer = self.answer(scope["method"], endpoint, body, client_kind(scope["headers"]))
        raw_headers = [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        # The client may leave at any moment (a timeout, a closed stream): uvicorn then drops
        # what the app sends, silently, so the app listens for the disconnect itself and stops.
        left = asyncio.Event()
        listening = asyncio.create_task(_until_disconnected(receive, left))
        sent_at: list[float] = []
        delivered = False
        try:
            if await _left_within(left, answer.wait):
                return
            await send(
                {"type": "http.response.start", "status": answer.status, "headers": raw_headers}
            )
            if answer.streaming:
                gaps = answer.gaps()
                for index, chunk in enumerate(answer.chunks):
                    if index and await _left_within(left, gaps[index]):
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    sent_at.append(time.perf_counter())
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": answer.body})
            delivered = True
        finally:
            listening.cancel()
            self.finish(answer, delivered=delivered, sent_at=sent_at, abandoned=True)


async def _until_disconnected(receive: Receive, left: asyncio.Event) -> None:
    """Set `left` when the client disconnects (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    left.set()


async def _left_within(left: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if the client leaves first: whether it left."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(left.wait(), seconds)
    return left.is_set()


_INTERRUPT_POLL_SECONDS = 0.1
_THREAD_START_SECONDS = 10.0
"""How long an interrupted `start()` waits for its thread to begin running (on a loaded machine a
new thread can wait a while for a core): one that never began serves nothing."""


def _wait_interruptibly(event: threading.Event) -> None:
    """Wait for `event` in short slices. CPython runs a signal's handler between bytecodes: a
    SIGINT that arrives just before an untimed lock wait blocks is noted but not raised, and that
    wait would never end (a Ctrl+C lost, seen once as a 120 s hang); each slice returns to Python,
    which raises the pending KeyboardInterrupt."""
    while not event.wait(_INTERRUPT_POLL_SECONDS):
        pass


def main(argv: list[str] | None = None) -> None:
    """Serve the fake upstream in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport fake-server",
        description="An OpenAI-compatible offline upstream on 127.0.0.1, for live-mode tests.",
    )
    parser.add_argument("--port", type=int, default=8100, help="port on 127.0.0.1 (default 8100)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per call (0.1)")
    parser.add_argument("--jitter", type=float, default=0.0, help="± seconds of seeded jitter")
    parser.add_argument(
        "--time-to-first-token", type=float, help="seconds to a stream's first event"
    )
    parser.add_argument("--time-per-token", type=float, help="seconds between a stream's events")
    args = parser.parse_args(argv)
    server = FakeServer(
        latency=args.latency,
        jitter=args.jitter,
        time_to_first_token=args.time_to_first_token,
        time_per_token=args.time_per_token,
        port=args.port,
    ).start()
    print(f"Fake OpenAI upstream at {server.base_url} (Ctrl+C to stop)", flush=True)
    try:
        _wait_interruptibly(threading.Event())  # until Ctrl+C
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
