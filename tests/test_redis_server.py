"""The lab's redis-server: a child process on a free loopback port, memory only, gone when
stopped; and a clear one-line message, with the install command, when it is not installed (in
labsupport, in doctor, and as the whole output of notebook 07's first cell, in a real kernel)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import nbformat
import psutil
import pytest
import redis
from nbclient.exceptions import CellExecutionError

from labsupport.distributed import RedisServer, RedisServerMissing, redis_server_path
from labsupport.distributed.redis_server import install_command
from labsupport.instructor.kernels import notebook_client

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
MISSING = "/nonexistent/redis-server"
"""`LAB_REDIS_SERVER` pointing here: a machine without redis-server, whatever this one has."""
installed = pytest.mark.needs("redis-server")


def lab_children() -> list[str]:
    """redis-server or uvicorn processes this test process started that are still there."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "redis-server" in command or "uvicorn" in command or "distributed.jobs" in command:
            found.append(f"{child.pid} {child.status()} {command[:80]}")
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    assert lab_children() == []


@installed
def test_serves_on_loopback_in_memory_and_stops_without_a_trace() -> None:
    with RedisServer() as server:
        assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
            # redis-py types a command's reply as `Awaitable | Any`, for its sync and async
            # clients alike; this client is the sync one.
            config = cast(dict[str, str], client.config_get("*"))
            assert config["bind"] == "127.0.0.1"
            assert config["save"] == "" and config["appendonly"] == "no"
        finally:
            client.close()
        port = server.port
    assert not server.running
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    probe = redis.Redis(port=port, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        probe.ping()
    probe.close()


@installed
def test_kill_is_a_crash_and_stop_after_it_is_harmless() -> None:
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url, socket_timeout=1)
    try:
        client.set("k", "v")
        server.kill()
        with pytest.raises(redis.ConnectionError):
            client.get("k")
    finally:
        client.close()
        server.stop()
        server.stop()  # idempotent


@installed
def test_two_servers_get_two_ports_and_two_passwords() -> None:
    with RedisServer() as first, RedisServer() as second:
        assert first.port != second.port
        assert first.password != second.password and len(first.password) >= 32


@installed
def test_a_client_without_the_password_is_refused_and_it_is_on_no_command_line() -> None:
    with RedisServer() as server:
        # Anyone on the machine can connect to loopback (another learner's kernel): without the
        # password every command is refused.
        stranger = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=1)
        try:
            # redis-py raises AuthenticationError for the server's refusal, with its text
            # (redis-py 8 opens with HELLO, which the server refuses before AUTH).
            with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):
                stranger.get("anything")
            with pytest.raises(redis.AuthenticationError):
                stranger.auth("a-guess")
        finally:
            stranger.close()
        # The password is in a file only this user can read (in the server's folder, its working
        # directory), not in the process's arguments, which every local user can list.
        process = psutil.Process(server.pid)
        assert server.password not in " ".join(process.cmdline())
        folder = Path(process.cwd())
        assert folder.stat().st_mode & 0o077 == 0
        (config,) = folder.glob("*.conf")
        assert server.password in config.read_text() and config.stat().st_mode & 0o077 == 0


@installed
def test_every_client_built_from_the_url_sends_the_password() -> None:
    from limits import RateLimitItemPerSecond, storage, strategies

    from labsupport.distributed import connect
    from labsupport.distributed.jobs import build_queue

    async def ping_both(url: str) -> bool:
        client, queue = connect(url), build_queue(url).worker
        try:
            async with queue:  # streaq's coredis client, from the same URL
                return bool(await client.ping() and await queue.redis.ping())
        finally:
            await client.aclose()

    with RedisServer() as server:
        assert asyncio.run(ping_both(server.url))
        # `limits` from the storage URI alone, as notebook 07 writes it (there with `async+`).
        window = strategies.MovingWindowRateLimiter(storage.RedisStorage(server.url))
        assert window.hit(RateLimitItemPerSecond(1), "learner")
        assert not window.hit(RateLimitItemPerSecond(1), "learner")


def test_missing_redis_server_says_the_install_command_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAB_REDIS_SERVER", MISSING)
    assert redis_server_path() is None
    with pytest.raises(RedisServerMissing) as raised:
        RedisServer().start()
    message = str(raised.value)
    assert install_command() in message and "\n" not in message
    # IPython shows this instead of a traceback.
    assert raised.value._render_traceback_() == [message]


@installed
def test_doctor_finds_redis_server_or_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labsupport.instructor.doctor import check_redis_server

    assert check_redis_server().ok
    monkeypatch.setenv("LAB_REDIS_SERVER", MISSING)
    missing = check_redis_server()
    assert (missing.ok, missing.fix) == (False, install_command())


@pytest.mark.slow
@pytest.mark.parametrize(
    "folder", [NOTEBOOKS, NOTEBOOKS / "solutions"], ids=["learner", "solution"]
)
def test_notebook_07_without_redis_server_says_the_command_and_stops(folder: Path) -> None:
    stored = nbformat.read(folder / "07_beyond_one_process.ipynb", as_version=4)
    first = next(cell for cell in stored.cells if cell.cell_type == "code")
    run = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(first.source), nbformat.v4.new_code_cell("1 + 1")]
    )
    env = {**os.environ, "LAB_REDIS_SERVER": MISSING}
    # Run All stops at the first cell: the next one never runs.
    with pytest.raises(CellExecutionError, match="needs redis-server, which is not installed"):
        asyncio.run(notebook_client(run, cwd=folder).async_execute(env=env))
    first_cell, next_cell = run.cells
    (error,) = first_cell.outputs  # nothing else: no setup banner, no stream
    assert error.output_type == "error" and error.ename == "RedisServerMissing"
    # One line, the install command in it, no traceback.
    assert error.traceback == [str(RedisServerMissing())]
    assert install_command() in error.traceback[0]
    assert next_cell.outputs == [] and next_cell.execution_count is None


REDIS_STARTER = """
import signal, sys
from labsupport.distributed import RedisServer

# As in a kernel: Ctrl+C (Jupyter's interrupt) is the running cell's business, not Redis's.
signal.signal(signal.SIGINT, lambda *_: print("interrupted", flush=True))
server = RedisServer().start()
print(server.pid, flush=True)
sys.stdin.readline()
print(server.running, flush=True)
server.stop()
"""


def _started(starter: subprocess.Popen[str]) -> int:
    assert starter.stdout is not None
    return int(starter.stdout.readline())


def test_an_interrupt_sent_to_the_kernels_process_group_leaves_redis_running() -> None:
    """■ sends SIGINT to the kernel's whole process group: a redis-server in it stopped under
    the interrupted cell, which then failed with a ConnectionError instead of stopping."""
    starter = subprocess.Popen(
        [sys.executable, "-c", REDIS_STARTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as Jupyter starts a kernel
    )
    assert starter.stdin is not None and starter.stdout is not None
    try:
        redis_pid = _started(starter)
        os.killpg(starter.pid, signal.SIGINT)
        assert starter.stdout.readline() == "interrupted\n"
        time.sleep(1.0)  # a redis-server that got the SIGINT has shut down by now
        assert psutil.pid_exists(redis_pid)
        starter.stdin.write("\n")
        starter.stdin.flush()
        assert starter.stdout.readline() == "True\n"
        assert starter.wait(timeout=60) == 0
    finally:
        if starter.poll() is None:
            starter.kill()
        starter.stdin.close()
        starter.stdout.close()


def test_redis_dies_with_the_process_that_started_it() -> None:
    """A killed kernel runs no cleanup: Linux's death signal (kept across exec) stops Redis."""
    starter = subprocess.Popen(
        [sys.executable, "-c", REDIS_STARTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdin is not None and starter.stdout is not None
    try:
        redis_pid = _started(starter)
        assert psutil.Process(redis_pid).name() == "redis-server"
    finally:
        starter.kill()  # as a killed kernel: no atexit, no cleanup
        starter.wait()
        starter.stdin.close()
        starter.stdout.close()
    deadline = time.monotonic() + 30  # SIGTERM: Redis shuts down gracefully
    while _alive(redis_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(redis_pid)


def _alive(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
        return bool(status != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
