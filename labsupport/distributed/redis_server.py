"""A real Redis server for the lab: the system's `redis-server`, on a free loopback port.

Notebook 07 shares one limit between several worker processes, and that needs a store every
process can reach. `RedisServer` starts `redis-server` as a child process, like `FakeServer`
starts the upstream: on 127.0.0.1 only, on a port nobody else uses, in memory only (no dump
file, no append-only file), and it returns once the server answers `PING`.

Loopback is shared by everyone on the machine (on a workshop hub, every learner), and Redis's
protected mode does not cover it, so the server asks for a password: a random one, written with
the rest of its configuration to a file in a private temporary folder (not on the command line,
which every local user can read). `url` carries the password, so every client built from it
(redis-py, streaq's coredis, `limits`, the worker processes) sends it; a client without it gets
NOAUTH.

    with RedisServer() as server:
        redis = redis.asyncio.Redis.from_url(server.url)
        ...
        server.kill()        # what a crash looks like to its clients (SIGKILL)

`stop()` (and leaving the `with` block) ends the process and waits for it, so neither a port nor
a zombie process is left behind; servers still running when the Python process exits are
stopped too (an interrupted cell that never reached its `with` exit, a kernel shut down).

`redis-server` is a system package, not a Python one: `install_command()` says how to get it
on this machine, and `require_redis_server()` stops a notebook with that one line if it is
missing.
"""

from __future__ import annotations

import atexit
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Final, Self

import redis

from ..network import free_port
from ..switch import Switch

__all__ = [
    "RedisServer",
    "RedisServerMissing",
    "install_command",
    "redis_server_path",
    "require_redis_server",
]

START_TIMEOUT: Final = 10.0
"""Seconds `redis-server` may take to answer its first PING."""

STOP_TIMEOUT: Final = 5.0
"""Seconds `redis-server` may take to exit after SIGTERM before it gets SIGKILL."""

_PORT_ATTEMPTS: Final = 3
"""A free port can be taken by someone else between our probe and Redis's bind: retry."""

_running: weakref.WeakSet[RedisServer] = weakref.WeakSet()


def redis_server_path() -> str | None:
    """The `redis-server` executable on PATH (or in `LAB_REDIS_SERVER`), or None."""
    configured = os.environ.get("LAB_REDIS_SERVER")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("redis-server")


def install_command() -> str:
    """The one command that installs `redis-server` here (apt, Homebrew or conda)."""
    if os.environ.get("CONDA_PREFIX") and shutil.which("conda"):
        return "conda install -c conda-forge redis-server"
    if platform.system() == "Darwin":
        return "brew install redis"
    if shutil.which("apt-get"):
        prefix = "" if os.geteuid() == 0 else "sudo "
        return f"{prefix}apt-get install -y redis-server"
    return "install Redis 7 (the redis-server program) with your system's package manager"


class RedisServerMissing(RuntimeError):
    """`redis-server` is not installed. In a notebook it shows one line, not a traceback."""

    def __init__(self) -> None:
        super().__init__(
            f"This notebook needs redis-server, which is not installed. Install it with: "
            f"{install_command()}  (then restart the kernel)"
        )

    def _render_traceback_(self) -> list[str]:
        # IPython shows what this returns instead of a traceback: the fix is all that matters.
        return [str(self)]


def require_redis_server() -> str:
    """The path of `redis-server`; raise `RedisServerMissing` (one clean line) without it."""
    path = redis_server_path()
    if path is None:
        raise RedisServerMissing()
    return path


def _death_signal_from_this_thread() -> dict[str, str]:
    """`LAB_PARENT_PID` for a child that should die with this process. Linux sends the death
    signal when the *thread* that started the child ends, so only the main thread (a cell, a
    test) asks for it; a server started elsewhere is stopped at exit (`_running`)."""
    if threading.current_thread() is threading.main_thread():
        return {"LAB_PARENT_PID": str(os.getpid())}
    return {}


class RedisServer(Switch):
    """`redis-server` in a child process on 127.0.0.1, memory only, for one lesson or test."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._port = 0
        self._password = ""

    @property
    def port(self) -> int:
        return self._port

    @property
    def password(self) -> str:
        """The random password this server was started with (new for every start)."""
        return self._password

    @property
    def url(self) -> str:
        """What `redis.asyncio.Redis.from_url()` (and streaq, and `limits`) connect to, with the
        server's password in it: treat it as a secret (don't print it)."""
        if self._process is None:
            raise RuntimeError("the RedisServer is not running; call start() or use `with`")
        return f"redis://:{self._password}@127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start `redis-server` and return once it answers PING. Idempotent."""
        if self._process is not None:
            return self
        executable = require_redis_server()
        # mkdtemp makes the folder 0700: the configuration file with the password is ours alone.
        self._folder = tempfile.TemporaryDirectory(prefix="lab-redis-")
        # URL-safe, so `url` needs no quoting.
        self._password = secrets.token_urlsafe(24)
        try:
            for attempt in range(_PORT_ATTEMPTS):
                self._port = free_port()  # taken meanwhile: the next attempt picks another
                self._process = self._spawn(executable, Path(self._folder.name))
                _running.add(self)
                if self._wait_until_ready():
                    return self
                log = self._log_tail()
                self._reap(signal.SIGKILL)
                if "already in use" not in log or attempt == _PORT_ATTEMPTS - 1:
                    raise RuntimeError(f"redis-server did not start: {log or 'no output'}")
        except BaseException:
            self.stop()  # an interrupted start leaves nothing behind either
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Ask Redis to exit (SIGTERM), kill it if it has not within `STOP_TIMEOUT`, and wait
        for it, so no zombie and no port is left. Idempotent."""
        self._reap(signal.SIGTERM)
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: clients' next commands fail at once."""
        self._reap(signal.SIGKILL)

    # -- helpers ---------------------------------------------------------------------------
    def _spawn(self, executable: str, folder: Path) -> subprocess.Popen[bytes]:
        config = folder / "redis.conf"
        config.touch(mode=0o600)
        config.write_text(f"requirepass {self._password}\n", encoding="utf-8")
        command = [
            # In its own session, so ■ (SIGINT to the kernel's process group) does not stop
            # Redis under a cell that is still using it; dying with this process instead.
            sys.executable, "-m", "labsupport.distributed._orphans",
            executable,
            str(config),  # the password; the options below add to the file
            "--bind", "127.0.0.1",
            "--port", str(self._port),
            "--protected-mode", "yes",
            "--save", "",  # no RDB snapshots: memory only
            "--appendonly", "no",
            "--dir", str(folder),
            "--daemonize", "no",
            "--logfile", "",  # to stdout, which goes to our log file
            "--loglevel", "warning",
        ]  # fmt: skip
        log = (folder / "redis.log").open("wb")
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **_death_signal_from_this_thread()},
            )
        finally:
            log.close()  # the child holds its own copy

    def _wait_until_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(
            host="127.0.0.1",
            port=self._port,
            password=self._password,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
        )
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        return False

    def _log_tail(self) -> str:
        if self._folder is None:
            return ""
        log = Path(self._folder.name) / "redis.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return " ".join(text.split())[-300:]

    def _reap(self, first_signal: signal.Signals) -> None:
        process, self._process = self._process, None
        _running.discard(self)
        if process is None or process.poll() is not None:
            if process is not None:
                process.wait()
            return
        process.send_signal(first_signal)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()
