"""Worker processes of notebook 07's service: per-process vs shared limits measured at one
upstream, a crash's lease coming back, 503 when Redis dies, BackgroundTasks lost to kill -9 and
streaq jobs that survive it; and no process left behind by any of them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from streaq import Worker
from streaq.constants import REDIS_GROUP

from labsupport import fire
from labsupport.distributed import (
    QueueWorker,
    RedisServer,
    ServiceConfig,
    ServiceWorkers,
    WorkerTaggedServer,
    connect,
)
from labsupport.distributed.jobs import audit_counts, build_queue
from labsupport.distributed.workers import ChildProcess

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.needs("redis-server"),
    pytest.mark.slow,  # uvicorn and streaq worker processes
    pytest.mark.timeout(180),
]
LIMIT = 3


def body(i: int) -> dict[str, str]:
    return {"message": f"Summarize in 5 words: ticket {i}", "request_id": f"r{i}"}


FORK_SERVER = "_serve_forks"  # in the command line of the fork server and of its forks


def lab_children() -> list[str]:
    """Redis servers and workers still running; the fork server itself stays for the next start."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            forked = FORK_SERVER in command and child.ppid() != os.getpid()
        except psutil.NoSuchProcess:
            continue
        if "redis-server" in command or forked:
            found.append(f"{child.pid} {child.status()} {command[:80]}")
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    assert lab_children() == []


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_per_process_limits_add_up_a_shared_one_holds(redis_server: RedisServer) -> None:
    with WorkerTaggedServer(latency=0.3) as upstream:
        local = ServiceConfig(upstream_url=upstream.base_url, limiter="local", limit=LIMIT)
        shared = ServiceConfig(
            upstream_url=upstream.base_url,
            limiter="shared",
            limit=LIMIT,
            lease=3.0,
            redis_url=redis_server.url,
        )
        peaks = {}
        for name, config in [("local", local), ("shared", shared)]:
            with ServiceWorkers(2, config) as workers:
                upstream.reset()
                async with workers.client() as client:
                    report = await fire(client, "POST", "/chat", json=body, n=4 * LIMIT)
                upstream.wait_idle()
                assert report.status_counts == {200: 4 * LIMIT}, report.bodies[:2]
                assert len(upstream.calls_by_worker()) == 2  # the header tells them apart
                peaks[name] = upstream.stats.max_in_flight
    assert peaks == {"local": 2 * LIMIT, "shared": LIMIT}


async def test_crash_returns_its_slot_and_redis_down_is_503(redis_server: RedisServer) -> None:
    from labsupport import Fault
    from labsupport.distributed import SharedSemaphore

    slow = Fault.matching("slow", delay=1.0)
    with WorkerTaggedServer(latency=0.05, faults=[slow]) as upstream:
        config = ServiceConfig(
            upstream_url=upstream.base_url,
            limiter="shared",
            limit=LIMIT,
            lease=1.5,
            upstream_timeout=1.2,
            redis_url=redis_server.url,
        )
        with ServiceWorkers(2, config) as workers:
            redis = connect(redis_server.url)
            slots = SharedSemaphore(redis, "openai", limit=LIMIT, lease=1.5)
            async with workers.client() as client:
                call = asyncio.create_task(client.post("/chat", json={"message": "slow"}))
                while upstream.stats.in_flight < 1:
                    await asyncio.sleep(0.01)
                workers.kill(0)
                await asyncio.gather(call, return_exceptions=True)
                assert await slots.held() == 1
                deadline = time.monotonic() + 5
                while await slots.held() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert await slots.held() == 0  # the lease expired: the slot is back

                redis_server.kill()
                response = await client.post("/chat", json=body(1))
            await redis.aclose()
            upstream.wait_idle()
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "limiter_unavailable"


async def pending(redis: Any, queue: Worker[None]) -> list[dict[str, Any]]:
    """The jobs workers have claimed and not acknowledged: XPENDING on the queue's stream."""
    (priority,) = queue.priorities
    stream = queue.stream_key + priority
    return list(await redis.xpending_range(stream, REDIS_GROUP, "-", "+", 100))


async def test_background_tasks_die_with_the_worker_queued_jobs_do_not(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    background, queued = tmp_path / "background.sqlite3", tmp_path / "queued.sqlite3"
    with WorkerTaggedServer(latency=0.05) as upstream:
        config = ServiceConfig(
            upstream_url=upstream.base_url, audit_path=str(background), audit_delay=2.0
        )
        with ServiceWorkers(1, config) as workers:
            async with workers.client() as client:
                answered = await fire(client, "POST", "/audited", json=body, n=4)
            workers.kill(0)
        assert answered.status_counts == {200: 4}
        assert (await audit_counts(str(background)))["audit rows"] == 0  # all 4 lost

        config = ServiceConfig(
            upstream_url=upstream.base_url, redis_url=redis_server.url, audit_path=str(queued)
        )
        redis = connect(redis_server.url)
        with ServiceWorkers(1, config) as workers, QueueWorker(redis_server.url, queued) as queue:
            async with workers.client() as client:
                answered = await fire(client, "POST", "/queued", json=body, n=3)
            workers.kill(0)
            deadline = time.monotonic() + 30
            while (await audit_counts(str(queued)))["job runs"] < 3:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            # The jobs running now are claimed by the worker, each delivered once: pending
            # entries of streaq's consumer group, which the worker acknowledges as each ends.
            jobs = build_queue(redis_server.url).worker
            claims = await pending(redis, jobs)
            assert len(claims) == 3
            assert {claim["times_delivered"] for claim in claims} == {1}
            queue.kill()  # mid-job: after the writes, before streaq acknowledges them
            queue.start()  # a new worker claims them once idle for IDLE_TIMEOUT, and runs them
            async with jobs:
                while await jobs.queue_size():
                    assert time.monotonic() < deadline + 20
                    await asyncio.sleep(0.1)
            assert await pending(redis, jobs) == []  # every job run to its end, acknowledged
        await redis.aclose()
    counts = await audit_counts(str(queued))
    assert answered.status_counts == {200: 3}
    assert counts["audit rows"] == 3  # 0 lost, 0 duplicated
    assert counts["jobs run twice or more"] >= 1  # the kill made streaq run them again...
    assert counts["naive duplicates"] == counts["jobs run twice or more"]  # ...and a plain
    # INSERT would have written those twice


def test_bad_worker_arguments_are_refused() -> None:
    config = ServiceConfig(upstream_url="http://127.0.0.1:9/v1")
    with pytest.raises(ValueError, match="count"):
        ServiceWorkers(0, config)
    with pytest.raises(ValueError, match="limiter"):
        ServiceConfig(upstream_url="http://127.0.0.1:9/v1", limiter="global")
    with pytest.raises(ValueError, match="needs redis_url"):
        ServiceConfig(upstream_url="http://127.0.0.1:9/v1", limiter="shared")
    with pytest.raises(TypeError, match=r"^count must be an int; got 2\.0$"):
        ServiceWorkers(2.0, config)  # type: ignore[arg-type]
    wrong_values: list[tuple[str, Any, type[Exception]]] = [
        ("lease", 0, ValueError),
        ("lease", "3", TypeError),
        ("lease", 3600, ValueError),
        ("limit", 0, ValueError),
        ("limit", 2.5, TypeError),
        ("burst", 0, ValueError),
        ("rate", -1.0, ValueError),
        ("rate", float("nan"), ValueError),
        ("upstream_timeout", 0, ValueError),
        ("audit_delay", -0.5, ValueError),
    ]
    for field, bad, error in wrong_values:
        with pytest.raises(error, match=rf"^{field} must"):
            ServiceConfig(upstream_url="http://127.0.0.1:9/v1", **{field: bad})
    assert ServiceConfig.from_environment(config.to_environment()) == config
    paced = ServiceConfig(upstream_url="http://127.0.0.1:9/v1", rate=8.0, burst=2)
    assert ServiceConfig.from_environment(paced.to_environment()) == paced


def test_a_worker_that_cannot_start_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "broken.py"
    source.write_text("raise RuntimeError('broken on purpose')\n")
    config = ServiceConfig(
        upstream_url="http://127.0.0.1:9/v1",
        limiter="learner",
        redis_url="redis://127.0.0.1:9/0",
        learner_source=str(source),
        learner_class="Nope",
    )
    with pytest.raises(RuntimeError, match="broken on purpose"):
        ServiceWorkers(1, config).start()


def test_an_exited_worker_keeps_its_pid_until_reaped_and_is_never_signalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fork server reaps a worker only once the lab lets go of it: until then an exited
    worker is a zombie that keeps its pid, so no other process can have been given the pid the
    lab would signal; and the lab sends an exited worker no signal at all."""
    worker = ChildProcess("short-lived", "uvicorn", ["--no-such-option"], {}, tmp_path / "log")
    worker.start()
    pid = worker.pid
    assert pid is not None
    server = psutil.Process(pid).ppid()
    deadline = time.monotonic() + 60
    while worker.alive:  # uvicorn refuses the option and exits
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.02)
    assert "no such option" in worker.log_tail().lower()
    zombie = psutil.Process(pid)
    assert (zombie.status(), zombie.ppid()) == (psutil.STATUS_ZOMBIE, server)

    signals: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, number: signals.append((pid, number)))
    worker.stop()
    worker.kill()  # a second stop, or a kill, after the reap: nothing left to signal
    monkeypatch.undo()
    assert signals == []
    assert worker.pid is None
    # Reaped by its fork server now: the pid is free (or another process's, not a child of it).
    assert not any(child.pid == pid for child in psutil.Process(server).children())


STARTER = """
import sys
from labsupport.distributed import ServiceConfig, ServiceWorkers

workers = ServiceWorkers(2, ServiceConfig(upstream_url="http://127.0.0.1:9/v1")).start()
print(*workers.pids, flush=True)
sys.stdin.read()
"""


def running(pid: int) -> bool:
    try:
        alive: bool = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        return alive
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_and_their_fork_server_die_with_the_process_that_started_them() -> None:
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert starter.stdout is not None
    try:
        workers = [int(pid) for pid in starter.stdout.readline().split()]
        forked_by = {psutil.Process(pid).ppid() for pid in workers}
    finally:
        starter.kill()  # as a killed kernel: no atexit, no cleanup
        starter.wait()
        starter.stdin.close()  # type: ignore[union-attr]
        starter.stdout.close()
    assert len(workers) == 2 and len(forked_by) == 1 and starter.pid not in forked_by
    deadline = time.monotonic() + 30  # SIGTERM: each shuts down gracefully
    left = [*workers, *forked_by]
    while any(running(pid) for pid in left) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in left if running(pid)] == []


INTERRUPTED_STARTER = """
import signal, sys
from labsupport.distributed import ServiceConfig, ServiceWorkers

# As in a kernel: Ctrl+C (Jupyter's interrupt) is the running cell's business, not the workers'.
signal.signal(signal.SIGINT, lambda *_: print("interrupted", flush=True))
workers = ServiceWorkers(1, ServiceConfig(upstream_url="http://127.0.0.1:9/v1")).start()
print(*workers.pids, flush=True)
sys.stdin.readline()
print(*(pid for pid in workers.pids if pid), flush=True)
workers.stop()
"""


def test_an_interrupt_sent_to_the_kernels_process_group_leaves_the_workers_running() -> None:
    """Jupyter interrupts a kernel with SIGINT to its whole process group: the fork server and
    its workers must not be in that group (the server died at every interrupted cell, and the
    next start dropped its pipes: ResourceWarnings)."""
    starter = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_STARTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as Jupyter starts a kernel
    )
    assert starter.stdin is not None and starter.stdout is not None
    try:
        (worker,) = [int(pid) for pid in starter.stdout.readline().split()]
        server = psutil.Process(worker).ppid()
        os.killpg(starter.pid, signal.SIGINT)
        assert starter.stdout.readline() == "interrupted\n"
        time.sleep(1.0)  # a worker or server that got the SIGINT is gone by now
        assert running(worker) and running(server)
        starter.stdin.write("\n")
        starter.stdin.flush()
        assert starter.stdout.readline().split() == [str(worker)]
        assert starter.wait(timeout=60) == 0
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        starter.stdin.close()
        starter.stdout.close()
    deadline = time.monotonic() + 30
    while (running(worker) or running(server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(worker) and not running(server)
