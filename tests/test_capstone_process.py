"""The capstone service in its own uvicorn process, under faults an SRE would inject.

`python -m capstone` (notebooks/capstone/) runs in a child process, the course's `FakeServer`
answers as its upstream (a thread of this process, on its own event loop), and the load comes
from this process over loopback. Faults:

* another writer holds the audit database's lock longer than the busy timeout;
* the disk is full (the audit folder is a tiny tmpfs in a private mount namespace,
  `unshare -rm`, so it works as root and touches nothing outside the test), while the service
  runs and when it stops;
* the audit file exists on a read-only filesystem at start-up;
* clients trickle their body, send huge headers, or open more connections than the cap.

Every loop is bounded in count; assertions are on counts (rows, statuses, connections), and
the waits only bound how long a test may take to see what it waits for.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import labsupport as lab
from labsupport import FakeServer
from labsupport.network import free_port

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"  # `python -m capstone` runs there
STARTUP_TIMEOUT = 60.0  # seconds a child may take to listen (or to exit) on a loaded machine

# Each test starts the service (and its upstream, or locust) as processes: system tests.
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@dataclass
class Service:
    process: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.log.read_text()


def service_command(port: int, audit: Path, upstream: str, **options: Any) -> list[str]:
    command = [sys.executable, "-m", "capstone", "--port", str(port), "--audit-path", str(audit)]
    command += ["--base-url", upstream]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def in_mount_namespace(script: str, folder: Path, command: list[str]) -> list[str]:
    """`command` run by `sh -c script` in a private user + mount namespace; `$0` is `folder`.
    Mounts made there are invisible outside and vanish with the process."""
    return ["unshare", "-rm", "sh", "-c", f'{script} && exec "$@"', str(folder), *command]


def on_a_small_tmpfs(folder: Path, command: list[str]) -> list[str]:
    """`command` with `folder` a 4 MiB tmpfs of its own (in its private mount namespace)."""
    return in_mount_namespace('mount -t tmpfs -o size=4m tmpfs "$0"', folder, command)


def as_the_service_sees(folder: Path, service: Service) -> Path:
    """`folder` through the service's own mount namespace (its tmpfs, not the folder below)."""
    return Path(f"/proc/{service.process.pid}/root") / str(folder).lstrip("/")


def fill(folder: Path) -> Path:
    """Fill the filesystem of `folder`; return the file that fills it (unlink it to free it)."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as file, pytest.raises(OSError, match="No space left"):
        for _ in range(2_000):  # 2,000 × 4 KiB: more than the 4 MiB there
            file.write(b"\0" * 4096)
    return filler


@contextmanager
def running(command: list[str], log: Path, port: int) -> Iterator[Service]:
    """Start `command`, wait until it listens on `port`, and stop it with SIGTERM after."""
    env = {**os.environ, "OPENAI_API_KEY": lab.PLACEHOLDER_KEY}
    env.pop("OPENAI_BASE_URL", None)
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, stderr=stderr, stdout=stderr, env=env, text=True, cwd=NOTEBOOKS
        )
    service = Service(process, port, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"the service exited ({process.returncode}):\n{log.read_text()}"
                )
            try:  # ready = answers HTTP; the service closes this connection itself, so it no
                # longer counts against a connection cap when the test begins
                httpx.get(f"http://127.0.0.1:{port}/health", headers={"connection": "close"})
                break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the service did not listen:\n{log.read_text()}")
            time.sleep(0.05)
        yield service
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def upstream() -> Iterator[FakeServer]:
    with FakeServer(latency=0.02) as server:
        yield server


def ticket(i: int) -> dict[str, str]:
    return {"message": f"Summarize in 5 words: ticket {i} says the export button is broken."}


def audit_rows(path: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM audit ORDER BY id")]


async def wave(client: httpx.AsyncClient, first: int, size: int) -> list[httpx.Response]:
    """`size` concurrent /chat requests, each with its own ticket number."""
    return await asyncio.gather(
        *(client.post("/chat", json=ticket(i)) for i in range(first, first + size))
    )


async def drive_until(
    client: httpx.AsyncClient,
    sent: list[httpx.Response],
    done: Callable[[], bool],
    *,
    size: int = 20,
    max_waves: int = 100,
) -> None:
    """Send waves of requests (appending the answers to `sent`) until `done()`; bounded."""
    for _ in range(max_waves):
        sent += await wave(client, len(sent), size)
        if done():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"not seen after {max_waves} waves: {Counter(r.status_code for r in sent)}"
    )


async def wait_written(client: httpx.AsyncClient, max_polls: int = 400) -> dict[str, Any]:
    """Poll /health until no audit row is pending; return its body."""
    for _ in range(max_polls):
        health = await client.get("/health")
        if health.status_code == 200 and health.json()["audit_rows_pending"] == 0:
            return dict(health.json())
        await asyncio.sleep(0.05)
    raise AssertionError(f"audit rows still pending: {health.json()}")


def assert_every_2xx_audited_once(sent: list[httpx.Response], rows: list[dict[str, Any]]) -> None:
    answered = Counter(r.status_code for r in sent)
    prompts = Counter(row["prompt"] for row in rows)
    print(f"clients saw {dict(answered)}; audit rows {len(rows)}, distinct {len(prompts)}")
    assert Counter(row["status"] for row in rows) == {200: answered[200]}
    assert len(prompts) == len(rows)  # no row written twice
    ok_prompts = {r.request.content for r in sent if r.status_code == 200}
    assert len(ok_prompts) == answered[200]
    refused = [r for r in sent if r.status_code != 200]
    # Refused before running: no row promised, so none written, and no upstream call made.
    assert all(r.status_code == 503 for r in refused)
    assert all(r.json()["error"]["type"] == "audit_unavailable" for r in refused)
    assert all(r.headers["retry-after"] == "1" for r in refused)


# -------------------------------------------------------------------------- audit store faults


async def test_lock_held_past_busy_timeout_loses_no_row(
    upstream: FakeServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.sqlite3"
    port = free_port()
    command = service_command(
        port, audit, upstream.base_url, audit_busy_timeout=0.1, audit_capacity=60
    )
    sent: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        with running(command, tmp_path / "service.log", port):
            sent += await wave(client, 0, 20)
            await wait_written(client)
            # Another writer takes the lock and keeps it, as a long admin transaction would.
            blocker = sqlite3.connect(audit, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                await drive_until(client, sent, lambda: any(r.status_code == 503 for r in sent))
                degraded = await client.get("/health")
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            recovered = await wait_written(client)
            after = await wave(client, len(sent), 20)
            sent += after
            await wait_written(client)
    rows = audit_rows(audit)

    assert degraded.status_code == 503
    assert degraded.json()["error"]["type"] == "degraded"
    assert "database is locked" in degraded.json()["error"]["message"]
    assert recovered["status"] == "ok"
    assert [r.status_code for r in after] == [200] * 20  # serving normally again
    assert_every_2xx_audited_once(sent, rows)
    assert Counter(r.status_code for r in sent)[503] > 0
    assert upstream.stats.calls == Counter(r.status_code for r in sent)[200]


async def test_full_disk_loses_no_row_and_recovers(upstream: FakeServer, tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    folder.mkdir()
    audit = folder / "audit.sqlite3"
    port = free_port()
    command = on_a_small_tmpfs(
        folder, service_command(port, audit, upstream.base_url, audit_capacity=60)
    )
    sent: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        with running(command, tmp_path / "service.log", port) as service:
            inside = as_the_service_sees(folder, service)
            sent += await wave(client, 0, 20)
            await wait_written(client)
            filler = fill(inside)
            await drive_until(client, sent, lambda: any(r.status_code == 503 for r in sent))
            degraded = await client.get("/health")
            filler.unlink()
            recovered = await wait_written(client)
            after = await wave(client, len(sent), 20)
            sent += after
            await wait_written(client)
            # The tmpfs goes with the process: copy the database out first, through the
            # kernel's view of /proc (SQLite would resolve that symlink to this namespace's).
            # Nothing writes now: the main file and its WAL are a consistent snapshot.
            for name in ("audit.sqlite3", "audit.sqlite3-wal"):
                shutil.copyfile(inside / name, tmp_path / name)
            rows = audit_rows(tmp_path / "audit.sqlite3")
            log = service.stderr()

    assert degraded.status_code == 503
    assert "full" in degraded.json()["error"]["message"]
    assert recovered["status"] == "ok"
    assert [r.status_code for r in after] == [200] * 20
    assert_every_2xx_audited_once(sent, rows)
    assert log.count("audit log cannot write") == 1  # logged once, with its cause
    assert "audit log writes again" in log


async def until_degraded(client: httpx.AsyncClient, sent: list[httpx.Response]) -> None:
    """Send waves of requests until /health says the audit log cannot write; bounded."""
    for _ in range(100):
        sent += await wave(client, len(sent), 20)
        if (await client.get("/health")).status_code == 503:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the audit log never failed")


async def replay(command: list[str], log: Path, port: int) -> None:
    """Start the service again (it writes the spilled rows first), wait until written, stop."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        with running(command, log, port):
            await wait_written(client)


def assert_spilled_then_replayed(log: str, spill: Path, replayed: str) -> None:
    spilled = re.search(r"audit log closed with (\d+) rows unwritten", log)
    print(spilled and spilled[0])
    assert spilled is not None and int(spilled[1]) > 0
    assert f"spilled to {spill}" in log
    assert f"writing {spilled[1]} rows spilled by the last run" in replayed
    assert not spill.exists()  # every spilled row is in the store now


async def test_rows_unwritten_at_shutdown_under_a_lock_are_spilled_and_replayed(
    upstream: FakeServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.sqlite3"
    spill = tmp_path / "elsewhere" / "spill.jsonl"
    spill.parent.mkdir()
    port, again = free_port(), free_port()
    options = {"audit_busy_timeout": 0.1, "audit_drain_timeout": 0.5, "audit_spill_path": spill}
    sent: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        with running(
            service_command(port, audit, upstream.base_url, **options), tmp_path / "1.log", port
        ):
            sent += await wave(client, 0, 20)
            await wait_written(client)
            blocker = sqlite3.connect(audit, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # held until after the service has stopped
            await until_degraded(client, sent)
    try:
        log = (tmp_path / "1.log").read_text()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    command = service_command(again, audit, upstream.base_url, **options)
    await replay(command, tmp_path / "2.log", again)

    assert_spilled_then_replayed(log, spill, (tmp_path / "2.log").read_text())
    assert_every_2xx_audited_once(sent, audit_rows(audit))


async def test_rows_unwritten_at_shutdown_on_a_full_disk_are_spilled_and_replayed(
    upstream: FakeServer, tmp_path: Path
) -> None:
    folder = tmp_path / "audit"
    folder.mkdir()
    audit = folder / "audit.sqlite3"
    spill = tmp_path / "spill.jsonl"  # another filesystem than the full tmpfs
    port, again = free_port(), free_port()
    options = {"audit_drain_timeout": 0.5, "audit_spill_path": spill}
    command = on_a_small_tmpfs(folder, service_command(port, audit, upstream.base_url, **options))
    copy = tmp_path / "copy"
    copy.mkdir()
    sent: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        with running(command, tmp_path / "1.log", port) as service:
            inside = as_the_service_sees(folder, service)
            sent += await wave(client, 0, 20)
            await wait_written(client)
            fill(inside)
            await until_degraded(client, sent)
            # The tmpfs goes with the process: keep its database (no commit can land now).
            for name in ("audit.sqlite3", "audit.sqlite3-wal"):
                shutil.copyfile(inside / name, copy / name)
        # Stopped with the disk still full: the unwritten rows went to the spill file.
    await replay(
        service_command(again, copy / "audit.sqlite3", upstream.base_url, **options),
        tmp_path / "2.log",
        again,
    )

    assert_spilled_then_replayed(
        (tmp_path / "1.log").read_text(), spill, (tmp_path / "2.log").read_text()
    )
    assert_every_2xx_audited_once(sent, audit_rows(copy / "audit.sqlite3"))


# --------------------------------------------------------------------------------- start-up


def test_start_up_failure_exits_with_the_cause(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    folder.mkdir()
    audit = folder / "audit.sqlite3"
    with closing(sqlite3.connect(audit)) as db:  # an audit file from an earlier run
        db.execute("CREATE TABLE earlier (x)")
    command = in_mount_namespace(
        'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"',
        folder,
        service_command(free_port(), audit, "http://127.0.0.1:9/v1"),
    )
    started = time.monotonic()
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=STARTUP_TIMEOUT, check=False, cwd=NOTEBOOKS
    )
    print(f"exited {result.returncode} after {time.monotonic() - started:.2f} s")

    assert result.returncode == 3  # uvicorn's "startup failed"
    assert f"cannot open the audit log {audit}: attempt to write a readonly database" in (
        result.stderr
    )
    assert "Application startup failed. Exiting." in result.stderr


# ----------------------------------------------------------------------------- slow clients


def read_answer(sock: socket.socket, max_reads: int = 100) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    sock.settimeout(30)
    data = b""
    for _ in range(max_reads):
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def trickle(sock: socket.socket, data: bytes, every: float) -> int:
    """Send `data` one byte at a time; stop when the server answers. Returns bytes sent."""
    for sent, byte in enumerate(data):
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            return sent
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return sent
    return len(data)


def test_trickled_body_gets_408_and_huge_headers_400(upstream: FakeServer, tmp_path: Path) -> None:
    port = free_port()
    command = service_command(
        port, tmp_path / "audit.sqlite3", upstream.base_url, body_timeout=0.5, max_header_bytes=2048
    )
    body = b'{"message": "' + b"b" * 400 + b'"}'
    with running(command, tmp_path / "service.log", port):
        with socket.create_connection(("127.0.0.1", port)) as huge_headers:
            huge_headers.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 4096)
            header_answer = read_answer(huge_headers)
        with socket.create_connection(("127.0.0.1", port)) as slow_body:
            slow_body.sendall(
                b"POST /chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body)
            )
            sent_body = trickle(slow_body, body, every=0.05)
            body_answer = read_answer(slow_body)
        with socket.create_connection(("127.0.0.1", port)) as gone:  # leaves mid-body
            gone.sendall(
                b"POST /chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b'content-length: 100\r\n\r\n{"message": '
            )
        health = httpx.get(f"http://127.0.0.1:{port}/health")  # the service serves on
    rows = audit_rows(tmp_path / "audit.sqlite3")  # all written: the service has stopped

    # uvicorn's own answer (h11's limit), in plain text: the request never reached the app.
    assert header_answer.startswith(b"HTTP/1.1 400 ")
    assert sent_body < len(body)  # cut off before the body was complete
    assert body_answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in body_answer
    assert b"The request body was not complete within 0.5 s." in body_answer
    assert upstream.stats.calls == 0
    assert health.status_code == 200
    # The trickled body's 408, and 499 for the client that left: no 400 that nobody received.
    assert [row["status"] for row in rows] == [408, 499]
    assert rows[1]["error"] == "the client disconnected before it had an answer"


def test_a_client_still_sending_is_cut_off_at_the_body_deadline(
    upstream: FakeServer, tmp_path: Path
) -> None:
    """A client streams its body in small pieces, slower than the body timeout allows, and
    stops when the answer arrives. The service closes every such connection at the deadline
    and audits its 408. (Bytes still in flight then can make the kernel reset the connection
    instead of ending it after the 408: uvicorn closes at once, it does not linger.)"""
    port = free_port()
    length = 100_000_000  # far more than the client can send before the body timeout
    command = service_command(
        port,
        tmp_path / "audit.sqlite3",
        upstream.base_url,
        body_timeout=0.5,
        max_body_bytes=length,
    )
    endings: list[str] = []
    with running(command, tmp_path / "service.log", port):
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(
                    b"POST /chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n{" % length
                )
                try:
                    for _ in range(length // 64):
                        if select.select([sock], [], [], 0)[0]:
                            break  # the answer is here: stop sending, as a client would
                        sock.sendall(b"b" * 64)
                    answer = read_answer(sock)
                    endings.append("408" if answer.startswith(b"HTTP/1.1 408 ") else "other")
                except (ConnectionResetError, BrokenPipeError):
                    endings.append("reset")
    rows = audit_rows(tmp_path / "audit.sqlite3")
    print("connections ended:", Counter(endings))

    assert len(endings) == 5 and "other" not in endings  # closed: a 408 or a reset, no hang
    assert [row["status"] for row in rows] == [408] * 5
    assert upstream.stats.calls == 0


def test_requests_past_the_connection_cap_get_503_and_are_closed(
    upstream: FakeServer, tmp_path: Path
) -> None:
    port = free_port()
    cap, extra = 10, 15
    command = service_command(
        port, tmp_path / "audit.sqlite3", upstream.base_url, max_connections=cap
    )
    with running(command, tmp_path / "service.log", port):
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(cap + extra)]
        try:
            for sock in sockets:
                sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            # Each read ends only when the service closes the connection.
            refused = [read_answer(sock) for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
        after = httpx.get(f"http://127.0.0.1:{port}/health")  # the cap counts open connections

    # uvicorn's `limit_concurrency`: its own plain-text 503, then the connection is closed. It
    # counts the connections open when a request arrives: those past the cap are refused, always;
    # a request uvicorn reads before it has accepted the others may still be served (a busy
    # machine), and its connection then closes after the keep-alive timeout.
    served = [answer for answer in refused if answer.startswith(b"HTTP/1.1 200 ")]
    turned_away = [answer for answer in refused if answer.startswith(b"HTTP/1.1 503 ")]
    assert len(served) + len(turned_away) == cap + extra, refused
    assert len(turned_away) >= extra and len(served) <= cap
    assert all(answer.endswith(b"Service Unavailable") for answer in turned_away)
    assert after.status_code == 200


# ------------------------------------------------------------------------ load from outside


def test_locust_from_another_process_every_2xx_audited_once(tmp_path: Path) -> None:
    """A small run of benchmarks/capstone_locust.py: three processes, counts only."""
    figures = tmp_path / "capacity.json"
    benchmark = Path(__file__).resolve().parents[1] / "benchmarks" / "capstone_locust.py"
    command = [sys.executable, str(benchmark), "--users", "50", "--run-time", "3"]
    command += ["--latency", "0.02", "--target", "0", "--json", str(figures)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    capacity = json.loads(figures.read_text())

    print(result.stdout)
    assert capacity["requests"] > 0
    assert capacity["errors"] == 0
    assert capacity["statuses"] == {"200": capacity["requests"]}
    assert capacity["audit_statuses"] == {"200": capacity["requests"]}
    assert capacity["duplicated_rows"] == 0
