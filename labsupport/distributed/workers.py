"""Worker processes for the lab: N uvicorn workers of the service, and a streaq queue worker.

    with ServiceWorkers(4, ServiceConfig(upstream_url=server.base_url)) as workers:
        async with workers.client() as client:       # spreads requests round-robin
            report = await lab.fire(client, "POST", "/chat", json=..., n=40)
        workers.kill(0)                               # kill -9 one of them

Each worker is a real `uvicorn` process on its own loopback port, like replicas behind a load
balancer; `client()` sends request i to worker i mod N, so each gets the same share. (With
`uvicorn --workers N` the processes share one port and the kernel hands each connection to
whichever worker accepts first, so the split depends on timing.)

A worker starts as a fork, not as a new interpreter: a small fork server (one per process that
starts workers, itself a child process) imports uvicorn, FastAPI, the SDK and streaq once, then
forks each worker from that state, which saves each start seconds of imports on a busy machine.
Once forked, a worker is what `python -m uvicorn --factory
labsupport.distributed.service:app_from_environment ...` would be: uvicorn's command line and
signal handling (SIGTERM: graceful shutdown), with the environment and working directory of the
process that started it at that moment, plus its `ServiceConfig`. (`multiprocessing`'s
"forkserver" would also re-run the starting script's `__main__` module in every worker, and
report a failure there outside the worker's log.)

Nothing outlives its owner: leaving the `with` block (or `stop()`) sends SIGTERM, then SIGKILL
after a grace period, and waits for every process, so no port and no zombie is left; an
interrupted start stops what it had started; processes still running when Python exits are
stopped then; and on Linux a worker also dies with the fork server, which dies with the process
that started it (a killed kernel). Their output goes to log files, so notebook cells stay
quiet; `log(i)` reads one.

A signal never reaches the wrong process: the lab holds each worker by a handle tied to that
process, not by its number. The fork server hands over, with each pid, the read end of a pipe
whose write end only the worker holds (a sentinel, as `multiprocessing.Process.sentinel`): it
reads as closed the moment the worker exits. And the fork server, the worker's parent, waits
for (reaps) a worker only when the lab lets go of it, after seeing it exit: until then an exited
worker stays a zombie that keeps its pid, so the pid the lab signals cannot have been given to
another process in the meantime. (Were a worker reaped as it exits, a SIGKILL meant for it could
land on whatever process got its pid next.)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import itertools
import json
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, NoReturn, Self

import httpx
import redis

from ..network import free_port
from ..switch import Switch
from ..validation import check_choice, check_int
from .jobs import ready_key
from .service import ServiceConfig

__all__ = ["ChildProcess", "QueueWorker", "RoundRobinTransport", "ServiceWorkers"]

START_TIMEOUT: Final = 60.0
"""Seconds a worker may take to be ready (importing FastAPI and the SDK on a busy machine)."""

STOP_TIMEOUT: Final = 5.0
"""Seconds a worker may take to exit after SIGTERM before it gets SIGKILL."""

PRELOAD: Final = (
    "labsupport.distributed.service",
    "labsupport.distributed.jobs",
    "uvicorn.main",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
)
"""What the fork server imports before it forks a worker: what a worker would import itself."""

_children: weakref.WeakSet[ChildProcess] = weakref.WeakSet()


class ChildProcess:
    """One worker process, `python -m <module> <arguments>` forked by the fork server, with its
    output in a log file; `stop()` and `kill()` wait until it is gone."""

    def __init__(
        self, name: str, module: str, arguments: Sequence[str], env: dict[str, str], log: Path
    ) -> None:
        check_choice("module", module, sorted(_MAINS))
        self.name, self.module, self.arguments = name, module, list(arguments)
        self.env, self.log_path = env, log
        self._pid: int | None = None
        self._sentinel: int | None = None  # reads as closed once the worker has exited

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def alive(self) -> bool:
        return self._sentinel is not None and not _exited(self._sentinel, 0)

    def start(self) -> None:
        request = {
            "module": self.module,
            "arguments": self.arguments,
            "env": {**os.environ, **self.env},
            "cwd": os.getcwd(),
            "log": str(self.log_path),
        }
        # Asked from a thread, which Ctrl+C does not interrupt: the pid of the worker the server
        # forks always reaches this object, so an interrupted start can stop that worker too.
        with ThreadPoolExecutor(1, thread_name_prefix="lab fork request") as pool:
            pool.submit(self._forked, request).result()

    def _forked(self, request: Mapping[str, object]) -> None:
        self._pid, self._sentinel = _FORK_SERVER.fork(request)
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
        """SIGTERM (uvicorn and streaq shut down gracefully), SIGKILL after `STOP_TIMEOUT`."""
        self._reap(signal.SIGTERM)

    def log_tail(self, characters: int = 600) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-characters:].strip() or "(no output)"

    def _reap(self, first: signal.Signals) -> None:
        pid, sentinel = self._pid, self._sentinel
        self._pid = self._sentinel = None
        _children.discard(self)
        if pid is None or sentinel is None:
            return
        try:
            # Not reaped yet (the fork server waits for our word), so `pid` is still this
            # worker, running or a zombie, never another process that got the number.
            if not _exited(sentinel, 0):
                _signal(pid, first)
                if not _exited(sentinel, STOP_TIMEOUT):
                    _signal(pid, signal.SIGKILL)
                    _exited(sentinel, None)
        finally:
            os.close(sentinel)
            _FORK_SERVER.reap(pid)


class _ForkServer:
    """The lab's side of the fork server: starts it on first use, asks it for forks and reaps.

    One JSON line per request on its stdin; it answers one line on a Unix socket (its stdout),
    which for a fork carries the worker's sentinel along with its pid (SCM_RIGHTS).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._answers: socket.socket | None = None

    def fork(self, request: Mapping[str, object]) -> tuple[int, int]:
        """A new worker: its pid, and its sentinel (a file descriptor the caller closes)."""
        with self._lock:
            answer, fds = self._ask(self._running(), {"fork": request})
            if len(fds) != 1:
                raise RuntimeError(f"the workers' fork server answered {answer!r} without a handle")
            return int(answer), fds[0]

    def reap(self, pid: int) -> None:
        """Let the server wait for worker `pid`, which has exited. (A server that is gone has
        left its workers to init, which reaps them.)"""
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                with contextlib.suppress(OSError, RuntimeError):  # it died meanwhile: as above
                    self._ask(self._process, {"reap": pid})

    def _ask(self, process: subprocess.Popen[bytes], request: object) -> tuple[str, list[int]]:
        assert process.stdin is not None and self._answers is not None
        answer, fds = b"", []
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
            while not answer.endswith(b"\n"):
                data, received, _, _ = socket.recv_fds(self._answers, 64, 1)
                for fd in received:
                    os.set_inheritable(fd, False)  # no subprocess of the lab keeps a worker's
                fds += received
                if not data:
                    raise RuntimeError("the workers' fork server exited (try importing labsupport)")
                answer += data
        except (OSError, RuntimeError):  # the server died: start another one next time
            for fd in fds:
                os.close(fd)
            self._close()
            raise
        return answer.decode().strip(), fds

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is not None:
            self._close()  # it died: close our ends of its pipes too
        if self._process is None:
            self._answers, server_end = socket.socketpair()
            with server_end:
                self._process = subprocess.Popen(
                    [sys.executable, "-c", f"from {__name__} import _serve_forks; _serve_forks()"],
                    stdin=subprocess.PIPE,
                    stdout=server_end.fileno(),
                    stderr=subprocess.DEVNULL,
                    # Its own process group: Jupyter interrupts a kernel by sending SIGINT to the
                    # kernel's whole group, which killed the server (and every worker it forked)
                    # at each interrupted cell. The workers are stopped by their ServiceWorkers.
                    start_new_session=True,
                )
        return self._process

    def _close(self) -> None:
        """End of its stdin: the server exits (and on Linux its remaining children get SIGTERM)."""
        process, self._process = self._process, None
        answers, self._answers = self._answers, None
        if answers is not None:
            answers.close()
        if process is None:
            return
        assert process.stdin is not None
        with contextlib.suppress(OSError):  # a dead server's pipe: nothing to flush into
            process.stdin.close()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_FORK_SERVER: Final = _ForkServer()


def _serve_forks() -> None:
    """The fork server's main loop (in its own process): import `PRELOAD`, then fork and reap on
    request. A forked worker stays its child, unreaped, until the lab asks: see the module
    docstring.

    It exits when its stdin ends: the process that started it closed it, or died, however it
    died. (Not PR_SET_PDEATHSIG: that fires when the *thread* that started it ends, and the
    server outlives the `ServiceWorkers` and threads that use it.) Its workers die with it, on
    Linux, through their own PR_SET_PDEATHSIG: the server's only thread forked them.
    """
    for module in PRELOAD:
        with contextlib.suppress(ImportError):  # the worker imports it again; its log says why
            importlib.import_module(module)
    server = os.getpid()
    answers = socket.socket(fileno=sys.stdout.fileno())
    for line in sys.stdin.buffer:
        request = json.loads(line)
        if "reap" in request:
            _wait_for(request["reap"])
            answers.sendall(b"reaped\n")
            continue
        sentinel, alive = os.pipe()  # `alive` stays open in the worker, and only there
        pid = os.fork()
        if pid == 0:
            os.close(sentinel)
            _run_child(request["fork"], server)
        os.close(alive)
        socket.send_fds(answers, [f"{pid}\n".encode()], [sentinel])
        os.close(sentinel)


def _wait_for(pid: int) -> None:
    """Reap worker `pid`, whose sentinel the lab saw close: it is exiting. One that closed its
    sentinel and lives on is killed first (it is still this server's child: the pid is its)."""
    deadline = time.monotonic() + STOP_TIMEOUT
    with contextlib.suppress(ChildProcessError):  # already reaped: nothing left to wait for
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.001)


def _run_child(request: dict[str, Any], server: int) -> NoReturn:
    """In a forked worker: the log as its output, its environment and directory, then its main."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.environ.clear()
        os.environ.update({**request["env"], "LAB_PARENT_PID": str(server)})
        os.chdir(request["cwd"])
        _MAINS[request["module"]](request["arguments"])
        code = 0
    except SystemExit as exit:  # what `python -m` does with it
        if exit.code is None or isinstance(exit.code, int):
            code = exit.code or 0
        else:
            print(exit.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _uvicorn(arguments: list[str]) -> None:
    """`python -m uvicorn ARGUMENTS`: uvicorn's command line (it ends with SystemExit)."""
    from uvicorn.main import main

    main.main(args=arguments, prog_name="uvicorn")


def _queue_worker(arguments: list[str]) -> None:
    """`python -m labsupport.distributed.jobs`."""
    from .jobs import main

    main()


_MAINS: Final[dict[str, Callable[[list[str]], None]]] = {
    "uvicorn": _uvicorn,
    "labsupport.distributed.jobs": _queue_worker,
}


def _exited(sentinel: int, timeout: float | None) -> bool:
    """Whether the worker whose `sentinel` this is has exited, waiting up to `timeout` seconds
    (None: until it has)."""
    return bool(multiprocessing.connection.wait([sentinel], timeout))


def _signal(pid: int, number: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # macOS: signalling a zombie
        os.kill(pid, number)


class ServiceWorkers(Switch):
    """`count` uvicorn processes serving `labsupport.distributed.service` with `config`."""

    def __init__(self, count: int, config: ServiceConfig) -> None:
        check_int("count", count, minimum=1, maximum=8, why="worker processes")
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
            for index in range(self.count):  # one at a time, so that stop() knows each
                self._workers.append(self._spawn(index))
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
        check_int("index", index, minimum=0, maximum=self.count - 1)
        if not self._workers:
            raise RuntimeError("the workers are not running; call start() or use `with`")
        return self._workers[index]

    def _spawn(self, index: int) -> ChildProcess:
        assert self._folder is not None
        port = free_port()
        self._ports.append(port)
        arguments = [
            "labsupport.distributed.service:app_from_environment",
            "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "3",
        ]  # fmt: skip
        log = Path(self._folder.name) / f"worker-{index + 1}.log"
        env = self.config.to_environment()
        worker = ChildProcess(f"worker {index + 1}", "uvicorn", arguments, env, log)
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
    """One streaq worker process (`python -m labsupport.distributed.jobs`) running audit jobs."""

    def __init__(self, redis_url: str, audit_path: str | Path) -> None:
        self.redis_url, self.audit_path = redis_url, str(audit_path)
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._process: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> Self:
        """Start the queue worker and return once it has reported to Redis. Idempotent.
        Each start is a new worker (a new id): a restarted worker takes a killed one's jobs."""
        if self._process is not None and self._process.alive:
            return self
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="lab-queue-")
        worker_id = uuid.uuid4().hex[:8]
        env = {
            "LAB_JOBS_REDIS_URL": self.redis_url,
            "LAB_JOBS_AUDIT_PATH": self.audit_path,
            "LAB_JOBS_WORKER_ID": worker_id,
        }
        log = Path(self._folder.name) / "queue-worker.log"
        module = "labsupport.distributed.jobs"
        self._process = ChildProcess("queue worker", module, [], env, log)
        client = redis.Redis.from_url(self.redis_url, socket_timeout=1)
        started = ready_key(worker_id)
        try:
            self._process.start()  # its lifespan sets `started` once it is connected
            self._process.wait_until(lambda: bool(client.exists(started)), "connected to Redis")
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


@atexit.register
def _stop_all() -> None:
    for child in list(_children):
        child.stop()
    _FORK_SERVER._close()
