"""Worker processes for the lab: N uvicorn workers of the service, and an arq queue worker.

    with ServiceWorkers(4, ServiceConfig(upstream_url=server.base_url)) as workers:
        async with workers.client() as client:       # spreads requests round-robin
            report = await lab.fire(client, "POST", "/chat", json=..., n=40)
        workers.kill(0)                               # kill -9 one of them

Each worker is a real `uvicorn` process on its own loopback port, like replicas behind a load
balancer; `client()` sends request i to worker i mod N, so each gets the same share. (With
`uvicorn --workers N` the processes share one port and the kernel hands each connection to
whichever worker accepts first, so the split depends on timing.)

Nothing outlives its owner: leaving the `with` block (or `stop()`) sends SIGTERM, then SIGKILL
after a grace period, and waits for every process, so no port and no zombie is left; an
interrupted start stops what it had started; processes still running when Python exits are
stopped then; and on Linux a worker also dies with the process that started it (a killed
kernel). Their output goes to log files, so notebook cells stay quiet; `log(i)` reads one.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, Self

import httpx
import redis

from ..switch import Switch
from .service import ServiceConfig

__all__ = ["ChildProcess", "QueueWorker", "RoundRobinTransport", "ServiceWorkers"]

START_TIMEOUT: Final = 60.0
"""Seconds a worker may take to be ready (importing FastAPI and the SDK on a busy machine)."""

STOP_TIMEOUT: Final = 5.0
"""Seconds a worker may take to exit after SIGTERM before it gets SIGKILL."""

HEALTH_KEY: Final = "arq:queue:health-check"
"""The key an arq worker on the default queue refreshes while it runs."""

_children: weakref.WeakSet[ChildProcess] = weakref.WeakSet()


class ChildProcess:
    """One child process with its output in a log file; `stop()` and `kill()` reap it."""

    def __init__(self, name: str, command: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name, self.command, self.env, self.log_path = name, list(command), env, log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        environment = {**os.environ, **self.env, "LAB_PARENT_PID": str(os.getpid())}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        _children.add(self)

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready()` until it is true; raise (with the log's tail) if the process exits
        or `START_TIMEOUT` passes."""
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if not self.alive:
                raise RuntimeError(f"{self.name} exited before {what}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} was not {what} within {START_TIMEOUT:g} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no cleanup runs in the process."""
        self._reap(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (uvicorn and arq shut down gracefully), SIGKILL after `STOP_TIMEOUT`."""
        self._reap(signal.SIGTERM)

    def log_tail(self, characters: int = 600) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-characters:].strip() or "(no output)"

    def _reap(self, first: signal.Signals) -> None:
        process, self._process = self._process, None
        _children.discard(self)
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(first)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()


class ServiceWorkers(Switch):
    """`count` uvicorn processes serving `labsupport.distributed.service` with `config`."""

    def __init__(self, count: int, config: ServiceConfig) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 8:
            raise ValueError(f"count must be an int from 1 to 8 (worker processes); got {count!r}")
        if not isinstance(config, ServiceConfig):
            raise TypeError(f"config must be a ServiceConfig; got {config!r:.80}")
        self.count, self.config = count, config
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._workers: list[ChildProcess] = []
        self._ports: list[int] = []
        self._labels: dict[str, str] = {}

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    @property
    def pids(self) -> list[int | None]:
        return [worker.pid for worker in self._workers]

    def label(self, pid: str | int) -> str:
        """ "worker 1" … "worker N" for a worker's pid (as the upstream saw it in its header);
        a restarted worker keeps its label."""
        return self._labels.get(str(pid), f"pid {pid}")

    def start(self) -> Self:
        """Start every worker and return once each answers `/health`. Idempotent."""
        if self._workers:
            return self
        self._folder = tempfile.TemporaryDirectory(prefix="lab-workers-")
        try:
            self._workers = [self._spawn(index) for index in range(self.count)]
            for index in range(self.count):
                self._wait_ready(index)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL) and wait for each. Idempotent."""
        for worker in self._workers:
            worker.stop()
        self._workers, self._ports = [], []
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def kill(self, index: int) -> None:
        """kill -9 worker `index` (0-based): its requests, tasks and slots die with it."""
        self._worker(index).kill()

    def restart(self, index: int) -> None:
        """Start worker `index` again, on the same port, and wait until it is ready."""
        worker = self._worker(index)
        worker.kill()
        worker.start()
        self._wait_ready(index)

    def log(self, index: int) -> str:
        """The end of worker `index`'s output (uvicorn's warnings, tracebacks)."""
        return self._worker(index).log_tail(4000)

    def client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        """An `httpx.AsyncClient` that sends request i to worker i mod N (round-robin)."""
        if not self._workers:
            raise RuntimeError("the workers are not running; call start() or use `with`")
        return httpx.AsyncClient(
            transport=RoundRobinTransport(self._ports),
            base_url="http://127.0.0.1",
            timeout=timeout,
            trust_env=False,
        )

    # -- helpers ---------------------------------------------------------------------------
    def _worker(self, index: int) -> ChildProcess:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.count:
            raise ValueError(f"index must be an int from 0 to {self.count - 1}; got {index!r}")
        if not self._workers:
            raise RuntimeError("the workers are not running; call start() or use `with`")
        return self._workers[index]

    def _spawn(self, index: int) -> ChildProcess:
        assert self._folder is not None
        port = _free_port()
        self._ports.append(port)
        command = [
            sys.executable, "-m", "uvicorn", "labsupport.distributed.service:app_from_environment",
            "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "3",
        ]  # fmt: skip
        log = Path(self._folder.name) / f"worker-{index + 1}.log"
        worker = ChildProcess(f"worker {index + 1}", command, self.config.to_environment(), log)
        worker.start()
        return worker

    def _wait_ready(self, index: int) -> None:
        worker, port = self._workers[index], self._ports[index]

        def answers() -> bool:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False)
            except httpx.TransportError:
                return False
            if response.status_code == 200:
                self._labels[str(response.json()["worker"])] = f"worker {index + 1}"
                return True
            return False

        worker.wait_until(answers, "serving")


class QueueWorker(Switch):
    """One arq worker process (`python -m labsupport.distributed.jobs`) running audit jobs."""

    def __init__(self, redis_url: str, audit_path: str | Path) -> None:
        self.redis_url, self.audit_path = redis_url, str(audit_path)
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._process: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> Self:
        """Start the queue worker and return once it has reported to Redis. Idempotent."""
        if self._process is not None and self._process.alive:
            return self
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="lab-queue-")
        env = {"LAB_JOBS_REDIS_URL": self.redis_url, "LAB_JOBS_AUDIT_PATH": self.audit_path}
        command = [sys.executable, "-m", "labsupport.distributed.jobs"]
        log = Path(self._folder.name) / "queue-worker.log"
        self._process = ChildProcess("queue worker", command, env, log)
        client = redis.Redis.from_url(self.redis_url, socket_timeout=1)
        try:
            # arq writes its health-check key when its main loop starts polling the queue; a
            # key left by a worker killed earlier must not count.
            client.delete(HEALTH_KEY)
            self._process.start()
            self._process.wait_until(lambda: bool(client.exists(HEALTH_KEY)), "polling the queue")
        except BaseException:
            self.stop()
            raise
        finally:
            client.close()
        return self

    def kill(self) -> None:
        """kill -9 the queue worker, in the middle of whatever job it runs."""
        if self._process is not None:
            self._process.kill()

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def log(self) -> str:
        return "" if self._process is None else self._process.log_tail(4000)


class RoundRobinTransport(httpx.AsyncBaseTransport):
    """Sends each request to the next port in turn, like a round-robin load balancer."""

    def __init__(self, ports: Sequence[int]) -> None:
        if not ports:
            raise ValueError("ports must not be empty")
        self._ports: Iterator[int] = itertools.cycle(list(ports))
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(host="127.0.0.1", port=next(self._ports))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@atexit.register
def _stop_all() -> None:
    for child in list(_children):
        child.stop()
