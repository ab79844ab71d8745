"""serve() and asgi_client(): lifespan, background tasks, ports, signals, clean exits."""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import nbformat
import pydantic
import pytest
import uvicorn
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse

from labsupport import serving
from labsupport.checks.watchdog import guarded
from labsupport.instructor.kernels import notebook_client
from labsupport.serving import DRAIN_FACTOR, BodyLimits, ServerLimits, asgi_client, serve

ROOT = Path(__file__).resolve().parents[1]


def make_app(events: list[str] | None = None) -> FastAPI:
    """An app whose lifespan and endpoints leave traces in ``events``."""
    log = events if events is not None else []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        app.state.started = True
        log.append("startup")
        yield {"greeting": "hello"}
        log.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/hello")
    async def hello(request: Request) -> dict[str, Any]:
        request.state.visits = getattr(request.state, "visits", 0) + 1
        return {"greeting": request.state.greeting, "visits": request.state.visits}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(0.1)
        return {"status": "done"}

    @app.post("/jobs")
    async def jobs(background: BackgroundTasks) -> dict[str, str]:
        async def work() -> None:
            await asyncio.sleep(0.3)
            log.append("job finished")

        background.add_task(work)
        return {"status": "accepted"}

    return app


def failing_app(message: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError(message)
        yield

    return FastAPI(lifespan=lifespan)


async def ten_slow_requests(client: httpx.AsyncClient, *, together: bool) -> float:
    began = time.perf_counter()
    if together:
        await asyncio.gather(*(client.get("/slow") for _ in range(10)))
    else:
        for _ in range(10):
            await client.get("/slow")
    return time.perf_counter() - began


# serve ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_serve_answers_on_a_loopback_port_with_lifespan_state() -> None:
    events: list[str] = []
    app = make_app(events)
    async with serve(app) as client:
        assert isinstance(client, httpx.AsyncClient)
        assert client.base_url.host == "127.0.0.1"
        assert client.base_url.port
        assert events == ["startup"]
        first = (await client.get("/hello")).json()
        second = (await client.get("/hello")).json()
    assert first == second == {"greeting": "hello", "visits": 1}  # state copied per request
    assert app.state.started
    assert events == ["startup", "shutdown"]


@pytest.mark.anyio
@pytest.mark.parametrize("helper", [serve, asgi_client])
async def test_a_block_that_raises_still_runs_the_lifespan_shutdown(helper: Any) -> None:
    """A learner's cell fails inside the block: the app's cleanup (closing its client, its
    database) runs all the same, and the cell shows the learner's own error."""
    events: list[str] = []
    with pytest.raises(ZeroDivisionError):
        async with helper(make_app(events)) as client:
            assert (await client.get("/hello")).status_code == 200
            _ = 1 / 0
    assert events == ["startup", "shutdown"]


@pytest.mark.anyio
@pytest.mark.parametrize("helper", [serve, asgi_client])
async def test_an_interrupted_block_still_runs_the_lifespan_shutdown(helper: Any) -> None:
    """Interrupting the kernel cancels the cell's task mid-request; the shutdown still runs
    before the interrupt goes on."""
    events: list[str] = []
    inside = asyncio.Event()

    async def cell() -> None:
        async with helper(make_app(events)) as client:
            inside.set()
            await client.get("/slow")
            await asyncio.sleep(30)

    running = asyncio.create_task(cell())
    await inside.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert events == ["startup", "shutdown"]


@pytest.mark.anyio
async def test_serve_frees_the_port_and_leaves_no_task() -> None:
    tasks_before = asyncio.all_tasks()
    async with serve(make_app()) as client:
        port = client.base_url.port
        assert port is not None
        assert (await client.get("/hello")).status_code == 200
    assert asyncio.all_tasks() == tasks_before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with socket.socket() as sock:  # no SO_REUSEADDR: the port must be entirely free
        sock.bind(("127.0.0.1", port))
    async with serve(make_app(), port=port) as client:  # and serve can take it again
        assert (await client.get("/hello")).status_code == 200


def test_serve_under_asyncio_run_leaves_no_thread() -> None:
    threads_before = set(threading.enumerate())

    async def main() -> int:
        async with serve(make_app()) as client:
            return (await client.get("/hello")).status_code

    assert asyncio.run(main()) == 200
    assert set(threading.enumerate()) == threads_before


@pytest.mark.anyio
async def test_serve_keeps_the_sigint_handler() -> None:
    def kernel_handler(signum: int, frame: FrameType | None) -> None:
        """Stands in for the Jupyter kernel's interrupt handler."""

    previous = signal.signal(signal.SIGINT, kernel_handler)
    try:
        async with serve(make_app()) as client:
            await client.get("/hello")
            assert signal.getsignal(signal.SIGINT) is kernel_handler
        assert signal.getsignal(signal.SIGINT) is kernel_handler
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.anyio
async def test_serve_raises_the_lifespan_error_without_hanging() -> None:
    tasks_before = asyncio.all_tasks()

    async def start_failing_app() -> None:
        async with serve(failing_app("OPENAI_API_KEY is missing")):
            pytest.fail("the block must not run when startup fails")

    with pytest.raises(RuntimeError, match="OPENAI_API_KEY is missing"):
        await asyncio.wait_for(start_failing_app(), timeout=5)
    assert asyncio.all_tasks() == tasks_before


@pytest.mark.anyio
@pytest.mark.parametrize("helper", [serve, asgi_client])
async def test_a_hanging_startup_times_out_with_a_clear_message(
    helper: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.sleep(60)
        yield

    monkeypatch.setattr(serving, "LIFESPAN_TIMEOUT", 0.2)
    tasks_before = asyncio.all_tasks()
    with pytest.raises(TimeoutError, match=r"lifespan startup did not finish within 0\.2 s"):
        async with helper(FastAPI(lifespan=lifespan)):
            pytest.fail("the block must not run when startup hangs")
    assert asyncio.all_tasks() == tasks_before


@pytest.mark.anyio
async def test_a_timeout_inside_the_block_is_not_blamed_on_the_lifespan() -> None:
    with pytest.raises(TimeoutError) as raised:
        async with asgi_client(make_app()), asyncio.timeout(0.01):
            await asyncio.sleep(1)
    assert "lifespan" not in str(raised.value)


@pytest.mark.anyio
async def test_serve_runs_requests_concurrently() -> None:
    async with serve(make_app()) as client:
        await client.get("/hello")  # open the first connection outside the measurement
        together = await ten_slow_requests(client, together=True)
        one_by_one = await ten_slow_requests(client, together=False)
    assert one_by_one >= 10 * 0.1
    assert 3 * together < one_by_one  # paired runs: ideal 1 latency against 10


@pytest.mark.anyio
async def test_serve_responds_before_background_tasks_finish() -> None:
    events: list[str] = []
    async with serve(make_app(events)) as client:
        response = await client.post("/jobs")
        assert response.json() == {"status": "accepted"}
        assert "job finished" not in events  # answered before the background task ended
    # Leaving the block waits for the background task, then runs the lifespan shutdown.
    assert events == ["startup", "job finished", "shutdown"]


@pytest.mark.anyio
async def test_serve_keeps_small_requests_fast() -> None:
    # A socket created without proto=IPPROTO_TCP keeps Nagle's algorithm on, and every
    # response then waits ~40 ms for a delayed ACK. Healthy loopback requests take ~1 ms.
    async with serve(make_app()) as client:
        latencies = []
        for _ in range(10):
            began = time.perf_counter()
            await client.get("/hello")
            latencies.append(time.perf_counter() - began)
    assert statistics.median(latencies) < 0.03


@pytest.mark.anyio
async def test_serve_reports_a_busy_port_as_oserror() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with serve(make_app(), port=port):
                pytest.fail("the block must not run when the port is taken")


@pytest.mark.anyio
async def test_serve_accepts_localhost() -> None:
    async with serve(make_app(), host="localhost") as client:
        assert client.base_url.host == "127.0.0.1"
        assert (await client.get("/hello")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org", ""])
async def test_serve_rejects_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="host must be a loopback address"):
        async with serve(make_app(), host=host):
            pass


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": -1}, "port must be"),
        ({"port": 70000}, "port must be"),
        ({"timeout": 0}, "timeout"),
    ],
)
async def test_serve_rejects_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        async with serve(make_app(), **options):
            pass


# asgi_client ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_asgi_client_runs_the_lifespan_and_shares_its_state() -> None:
    tasks_before = asyncio.all_tasks()
    events: list[str] = []
    app = make_app(events)
    async with asgi_client(app) as client:
        assert events == ["startup"]
        assert app.state.started
        first = (await client.get("/hello")).json()
        second = (await client.get("/hello")).json()
        assert events == ["startup"]
    assert first == second == {"greeting": "hello", "visits": 1}  # state copied per request
    assert events == ["startup", "shutdown"]
    assert asyncio.all_tasks() == tasks_before


@pytest.mark.anyio
async def test_asgi_client_waits_for_background_tasks() -> None:
    events: list[str] = []
    async with asgi_client(make_app(events)) as client:
        began = time.perf_counter()
        await client.post("/jobs")
        assert time.perf_counter() - began >= 0.3
        assert "job finished" in events  # the ASGI transport returned only after the task


@pytest.mark.anyio
async def test_asgi_client_runs_requests_concurrently() -> None:
    async with asgi_client(make_app()) as client:
        together = await ten_slow_requests(client, together=True)
        one_by_one = await ten_slow_requests(client, together=False)
    assert one_by_one >= 10 * 0.1
    assert 3 * together < one_by_one  # paired runs: ideal 1 latency against 10


@pytest.mark.anyio
async def test_asgi_client_raises_the_lifespan_error() -> None:
    with pytest.raises(RuntimeError, match="no model configured"):
        async with asgi_client(failing_app("no model configured")):
            pytest.fail("the block must not run when startup fails")


@pytest.mark.anyio
async def test_asgi_client_without_lifespan_serves_a_bare_asgi_app() -> None:
    async def bare_app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"plain"})

    async with asgi_client(bare_app, lifespan=False, base_url="http://app.local") as client:
        response = await client.get("/")
    assert response.text == "plain"
    assert str(response.request.url) == "http://app.local/"


@pytest.mark.anyio
async def test_asgi_client_rejects_a_bad_base_url() -> None:
    with pytest.raises(ValueError, match="base_url"):
        async with asgi_client(make_app(), base_url="testserver"):
            pass


@pytest.mark.anyio
@pytest.mark.parametrize("helper", [serve, asgi_client])
@pytest.mark.parametrize("app", [None, "main:app", FastAPI])
async def test_helpers_reject_what_is_not_an_asgi_app(helper: Any, app: Any) -> None:
    with pytest.raises(TypeError, match="app must be an ASGI application"):
        async with helper(app):
            pass


# in a real Jupyter kernel -----------------------------------------------------------------


@pytest.mark.slow
def test_serve_at_the_top_level_of_a_jupyter_cell() -> None:
    """The kernel's loop is already running; its interrupt handler must survive."""
    cells = [
        "import signal\nfrom fastapi import FastAPI\nfrom labsupport.serving import serve\n"
        "app = FastAPI()\n\n@app.get('/')\nasync def root():\n    return {'ok': True}",
        # ipykernel installs a fresh SIGINT handler for each cell that awaits.
        "handler = signal.getsignal(signal.SIGINT)\n"
        "async with serve(app) as client:\n"
        "    during = signal.getsignal(signal.SIGINT) is handler\n"
        "    body = (await client.get('/')).json()\n"
        "print(body, during, signal.getsignal(signal.SIGINT) is handler)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    notebook_client(notebook, cwd=ROOT, timeout=60).execute()
    assert notebook.cells[1].outputs[0]["text"] == "{'ok': True} True True\n"


@pytest.mark.anyio
async def test_interrupted_while_draining_it_still_frees_the_port() -> None:
    """A cell interrupted while `serve()` waits for a slow background task: uvicorn stops at
    once (as on a second Ctrl+C), the port is released, and the interrupt goes on."""
    app = FastAPI()
    finished: list[bool] = []

    async def slow_audit() -> None:
        await asyncio.sleep(30)
        finished.append(True)

    @app.post("/chat")
    async def chat(background: BackgroundTasks) -> dict[str, str]:
        background.add_task(slow_audit)
        return {"response": "ok"}

    async def cell() -> None:
        async with serve(app) as client:
            ports.append(int(client.base_url.port or 0))
            assert (await client.post("/chat")).status_code == 200

    ports: list[int] = []
    running = asyncio.create_task(cell())
    while not ports:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the block has ended; uvicorn waits for the background task
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", ports[0]))  # free again
    still_serving = [t for t in asyncio.all_tasks() if t.get_name() == f"uvicorn:{ports[0]}"]
    assert still_serving == [] and finished == []


@pytest.mark.anyio
async def test_an_interrupted_check_frees_the_port_before_the_cell_ends() -> None:
    """A checker serves the learner's app inside `guarded()` (notebook 04's check). Interrupted
    mid-request (ipykernel cancels the cell's task), the cell may end only once the server has
    stopped: the next cell must find the port free and no task of the check left."""
    app = make_app()
    ports: list[int] = []

    async def scenario() -> None:
        async with serve(app) as client:
            ports.append(int(client.base_url.port or 0))
            await client.get("/slow")
            await asyncio.sleep(30)

    async def cell() -> None:
        await guarded(scenario(), block_limit=5.0, time_limit=60.0)

    tasks_before = asyncio.all_tasks()
    running = asyncio.create_task(cell())
    while not ports:
        await asyncio.sleep(0.01)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # No waiting here: the next cell runs as soon as the interrupted one has ended.
    with socket.socket() as probe:  # no SO_REUSEADDR: the port must be entirely free
        probe.bind(("127.0.0.1", ports[0]))
    assert asyncio.all_tasks() - tasks_before == set()


# server hardening (opt-in) ---------------------------------------------------------------


def echo_body_app(max_bytes: int = 100, timeout: float = 5.0) -> tuple[BodyLimits, list[bytes]]:
    """An app behind `BodyLimits` that records each body it reads."""
    bodies: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        bodies.append(message["body"])
        await JSONResponse({"length": len(message["body"])})(scope, receive, send)

    return BodyLimits(app, max_bytes=max_bytes, timeout=timeout), bodies


async def trickled(chunks: int, every: float) -> AsyncIterator[bytes]:
    for _ in range(chunks):
        await asyncio.sleep(every)
        yield b"x" * 10


@pytest.mark.anyio
async def test_body_limits_pass_a_body_within_them_to_the_app_unchanged() -> None:
    app, bodies = echo_body_app()
    async with asgi_client(app, lifespan=False) as client:
        whole = await client.post("/", content=b"x" * 100)
        chunked = await client.post("/", content=trickled(3, every=0.0))
    assert [whole.json(), chunked.json()] == [{"length": 100}, {"length": 30}]
    assert bodies == [b"x" * 100, b"x" * 30]


@pytest.mark.anyio
async def test_body_limits_refuse_a_body_too_large_or_too_slow() -> None:
    app, bodies = echo_body_app(max_bytes=25, timeout=0.2)
    async with asgi_client(app, lifespan=False) as client:
        declared = await client.post("/", content=b"x" * 26)
        chunked = await client.post("/", content=trickled(3, every=0.0))
        # More than DRAIN_FACTOR × max_bytes still coming: not read to its end, closed.
        flood = await client.post("/", content=trickled(50, every=0.0))
        slow = await client.post("/", content=trickled(2, every=1.0))

    assert declared.status_code == 413 and "connection" not in declared.headers
    assert declared.json() == {"detail": "The request body is larger than 25 bytes."}
    # Refused while the body still arrives: the rest is read and dropped first, so the client
    # reads the 413 (not a reset) and the connection stays usable.
    assert chunked.status_code == 413 and "connection" not in chunked.headers
    assert DRAIN_FACTOR * 25 < 50 * 10
    assert flood.status_code == 413 and flood.headers["connection"] == "close"
    assert slow.status_code == 408 and slow.headers["connection"] == "close"
    assert slow.json() == {"detail": "The request body was not complete within 0.2 s."}
    assert bodies == []  # the app never ran


@pytest.mark.anyio
async def test_body_limits_answer_in_the_apps_own_shape() -> None:
    def refuse(scope: Any, status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"status": status, "message": message}}, status)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not reached")

    limited = BodyLimits(app, max_bytes=1, timeout=1.0, refuse=refuse)
    async with asgi_client(limited, lifespan=False) as client:
        response = await client.post("/", content=b"xx")
    assert response.json() == {
        "error": {"status": 413, "message": "The request body is larger than 1 bytes."}
    }


def test_server_limits_are_uvicorns_own_options() -> None:
    options = ServerLimits(max_connections=10, keep_alive=2.5).uvicorn_options()
    assert options == {
        "http": "h11",
        "limit_concurrency": 10,
        "timeout_keep_alive": 2.5,
        "h11_max_incomplete_event_size": 16 * 1024,
    }
    uvicorn.Config(make_app(), **options)  # every one a keyword uvicorn knows
    with pytest.raises(pydantic.ValidationError, match="max_connections"):
        ServerLimits(max_connections=0)
