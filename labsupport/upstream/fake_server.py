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
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Self

import uvicorn

from .core import Upstream
from .faults import Fault, RateLimit
from .switch import Switch

__all__ = ["FakeServer", "main"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class FakeServer(Upstream, Switch):
    """An OpenAI-compatible upstream on `http://127.0.0.1:PORT/v1`, in a background thread.

    with FakeServer(latency=0.05) as server:
        client = AsyncOpenAI(base_url=server.base_url)
        ...
        print(server.connections)  # distinct TCP connections clients opened
    """

    def __init__(
        self,
        *,
        latency: float = 0.1,
        jitter: float = 0.0,
        seed: int = 0,
        faults: Iterable[Fault] = (),
        rate_limit: RateLimit | None = None,
        port: int = 0,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0–65535 (0: any free port); got {port!r}")
        self._clients: set[tuple[str, int]] = set()
        super().__init__(
            latency=latency, jitter=jitter, seed=seed, faults=faults, rate_limit=rate_limit
        )
        self._requested_port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

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
        """Bind 127.0.0.1 and serve in a background thread; returns once it accepts requests."""
        if self._server is not None:
            return self
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
        # and without it every response waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._requested_port))
        except OSError as error:
            sock.close()
            raise OSError(
                f"FakeServer could not bind 127.0.0.1:{self._requested_port}: {error.strerror}"
            ) from error
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, interface="asgi3", lifespan="off", log_level="warning", access_log=False
        )
        server = uvicorn.Server(config)
        ready = threading.Event()

        def run() -> None:
            async def serve() -> None:
                task = asyncio.create_task(server.serve(sockets=[sock]))
                while not server.started and not task.done():
                    await asyncio.sleep(0.005)
                ready.set()
                await task

            asyncio.run(serve())

        self._server = server
        self._thread = threading.Thread(target=run, name=f"FakeServer:{self._port}", daemon=True)
        self._thread.start()
        ready.wait(timeout=10)
        if not server.started:
            self.stop()
            raise RuntimeError("FakeServer did not start within 10 s")
        return self  # uvicorn owns `sock` now and closes it at shutdown

    def stop(self) -> None:
        """Stop serving, close every connection, and free the port. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)

    # -- the ASGI app ----------------------------------------------------------------------
    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        client = scope.get("client")
        if client:
            with self._lock:
                self._clients.add((client[0], client[1]))
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        endpoint = path[len("/v1/") :] if path.startswith("/v1/") else path.lstrip("/")
        headers = dict((k.decode().lower(), v.decode()) for k, v in scope["headers"])
        kind = "sync" if headers.get("x-stainless-async", "false") == "false" else "async"
        answer = self.answer(scope["method"], endpoint, body, kind)
        raw_headers = [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        delivered = False
        try:
            await asyncio.sleep(answer.wait)
            await send(
                {"type": "http.response.start", "status": answer.status, "headers": raw_headers}
            )
            if answer.streaming:
                for index, chunk in enumerate(answer.chunks):
                    if index:
                        await asyncio.sleep(answer.chunk_gap)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": answer.body})
            delivered = True
        finally:
            self.finish(answer, delivered=delivered)


def main(argv: list[str] | None = None) -> None:
    """Serve the fake upstream in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport fake-server",
        description="An OpenAI-compatible offline upstream on 127.0.0.1, for live-mode tests.",
    )
    parser.add_argument("--port", type=int, default=8100, help="port on 127.0.0.1 (default 8100)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per call (0.1)")
    parser.add_argument("--jitter", type=float, default=0.0, help="± seconds of seeded jitter")
    args = parser.parse_args(argv)
    server = FakeServer(latency=args.latency, jitter=args.jitter, port=args.port).start()
    print(f"Fake OpenAI upstream at {server.base_url} (Ctrl+C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
