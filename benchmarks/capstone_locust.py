"""Capacity of the capstone service measured from outside, with locust, in three processes.

1. the course's fake upstream: `python -m labsupport fake-server --latency 0.1`;
2. the service: `python -m capstone` (notebooks/capstone/) under its own uvicorn, upstream bound 20;
3. locust, headless: 1,000 users, each posting `/chat` again as soon as it has its answer.

Each request is one upstream call of `latency` seconds and at most `bound` run at once in each
worker process, so the ideal throughput is workers × bound / latency (200 req/s at one worker,
20 and 0.1 s), whatever the number of users. How far below it the service stays shows as the
time each upstream slot takes to turn over (Little's law: workers × bound / req/s) against the
call's own `latency`: the difference is the service's own work and waiting, per call.
The report: req/s once every user is running, against that ideal (target ≥ 0.95); p50/p95/p99
as locust measured them; errors; and the audit log's rows against the 2xx answers locust got
(every one audited, none twice); and the CPU time each process used per request, so that
`service ms × ideal req/s` says how many cores the service needs to reach the ideal. Locust
lets every user finish its request in flight when the run time is up (`--stop-timeout`), so
each request the service answered is one locust counted.

Run: `python benchmarks/capstone_locust.py` (about 40 s); `--help` for smaller runs. The same
file is the locustfile: locust imports it (not as `__main__`) and finds `ChatUser` below.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from labsupport.network import free_port

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"  # the service, `python -m capstone`, runs from there
RESULTS_VARIABLE = "CAPSTONE_LOCUST_RESULTS"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Capacity:
    users: int
    bound: int
    latency: float
    workers: int
    requests: int  # answers locust got
    statuses: dict[str, int]
    errors: int  # non-2xx answers and requests with no answer
    steady_rps: float  # answers per second once every user was running
    ideal_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    audit_rows: int
    audit_statuses: dict[str, int]
    duplicated_rows: int
    cpu_seconds: dict[str, float]  # CPU each process used while locust ran (service, ...)

    @property
    def ratio(self) -> float:
        return self.steady_rps / self.ideal_rps

    @property
    def slot_cycle_ms(self) -> float:
        """How often each upstream slot was freed and taken again, on average (Little's law)."""
        return 1000 * self.workers * self.bound / self.steady_rps

    @property
    def core_share(self) -> float:
        """How much of one core each worker process used (its event loop and its threads)."""
        return self.cpu_ms_per_request("service") * self.steady_rps / 1000 / self.workers

    def cpu_ms_per_request(self, name: str) -> float:
        return 1000 * self.cpu_seconds[name] / max(1, self.requests)

    @property
    def every_2xx_audited_once(self) -> bool:
        answered = sum(n for status, n in self.statuses.items() if status.startswith("2"))
        return self.audit_rows == answered and self.duplicated_rows == 0

    def report(self) -> str:
        return (
            f"capstone from outside: {self.users} locust users, bound {self.bound}, "
            f"upstream latency {self.latency:g} s, {self.workers} worker(s)\n"
            f"  {self.requests} requests, statuses {self.statuses}, errors {self.errors}\n"
            f"  steady {self.steady_rps:.1f} req/s vs ideal {self.ideal_rps:.0f} "
            f"(workers × bound / latency): {self.ratio:.2f} of ideal\n"
            f"  each upstream slot turned over every {self.slot_cycle_ms:.1f} ms for a "
            f"{1000 * self.latency:.0f} ms call; the service used {self.core_share:.2f} of a "
            "core per worker\n"
            f"  p50 / p95 / p99: {self.p50_ms:.0f} / {self.p95_ms:.0f} / {self.p99_ms:.0f} ms\n"
            f"  audit rows {self.audit_rows} {self.audit_statuses}, duplicated "
            f"{self.duplicated_rows}: every 2xx audited once: {self.every_2xx_audited_once}\n"
            f"  CPU per request: "
            + ", ".join(
                f"{name} {self.cpu_ms_per_request(name):.2f} ms" for name in self.cpu_seconds
            )
            + f"; at the ideal the service alone needs "
            f"{self.cpu_ms_per_request('service') * self.ideal_rps / 1000:.2f} cores"
        )


def wait_listening(process: subprocess.Popen[bytes], port: int, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port}")


@contextmanager
def process(command: list[str], port: int, name: str, log: Path) -> Any:
    env = {**os.environ, "OPENAI_API_KEY": "sk-offline-placeholder"}
    with log.open("wb") as output:
        child = subprocess.Popen(command, stdout=output, stderr=output, env=env, cwd=NOTEBOOKS)
    try:
        wait_listening(child, port, name)
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # the service drains its audit log on SIGTERM
        try:
            child.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def measure(
    *, users: int, run_time: float, latency: float, bound: int, workers: int = 1
) -> Capacity:
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        audit = folder / "audit.sqlite3"
        upstream_port, service_port = free_port(), free_port()
        fake = [sys.executable, "-m", "labsupport", "fake-server"]
        fake += ["--port", str(upstream_port), "--latency", str(latency)]
        service = [sys.executable, "-m", "capstone", "--port", str(service_port)]
        service += ["--audit-path", str(audit)]
        service += ["--base-url", f"http://127.0.0.1:{upstream_port}/v1"]
        service += ["--max-upstream-calls", str(bound), "--workers", str(workers)]
        service += ["--max-connections", str(max(2048, 2 * users))]
        # Users ≫ bound queue for a slot by design (1,000 users: about 5 s): this measures
        # capacity, so the service waits for a slot instead of shedding load.
        service += ["--slot-wait", str(START_TIMEOUT)]
        locust = [sys.executable, "-m", "locust", "-f", __file__, "--headless"]
        locust += [
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--run-time",
            f"{round(run_time)}s",
        ]
        locust += ["--stop-timeout", "60", "--host", f"http://127.0.0.1:{service_port}"]
        locust += ["--only-summary", "--loglevel", "WARNING"]
        results = folder / "locust.json"
        with (
            process(
                fake, upstream_port, "fake upstream", folder / "upstream.log"
            ) as upstream_process,
            process(service, service_port, "service", folder / "service.log") as service_process,
        ):
            env = {**os.environ, RESULTS_VARIABLE: str(results)}
            servers = {"service": psutil.Process(service_process.pid)}
            servers["upstream"] = psutil.Process(upstream_process.pid)
            before = {name: cpu_seconds(process) for name, process in servers.items()}
            locust_before = _children_cpu_seconds()
            run = subprocess.run(
                locust, env=env, check=False, capture_output=True, text=True, timeout=run_time + 120
            )
            used = {name: cpu_seconds(process) - before[name] for name, process in servers.items()}
            used["locust"] = _children_cpu_seconds() - locust_before
        if not results.exists():
            raise RuntimeError(f"locust wrote no results:\n{run.stdout}\n{run.stderr}")
        # The service has stopped: its audit log is drained.
        with closing(sqlite3.connect(audit)) as db:
            rows = db.execute("SELECT status, prompt FROM audit").fetchall()
        seen = json.loads(results.read_text())
    audit_statuses = Counter(str(status) for status, _ in rows)
    return Capacity(
        users=users,
        bound=bound,
        latency=latency,
        workers=workers,
        requests=seen["requests"],
        statuses=seen["statuses"],
        errors=seen["errors"],
        steady_rps=seen["steady_rps"],
        ideal_rps=workers * bound / latency,
        p50_ms=seen["p50_ms"],
        p95_ms=seen["p95_ms"],
        p99_ms=seen["p99_ms"],
        audit_rows=len(rows),
        audit_statuses=dict(sorted(audit_statuses.items())),
        duplicated_rows=len(rows) - len({prompt for _, prompt in rows}),
        cpu_seconds=used,
    )


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of `process` and its children (the worker processes, if any)."""
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def _children_cpu_seconds() -> float:
    """CPU of this process's children that have been waited for (locust, once it has run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--run-time", type=int, default=30, help="seconds of load")
    parser.add_argument("--latency", type=float, default=0.1, help="upstream seconds per call")
    parser.add_argument(
        "--bound", type=int, default=20, help="the upstream bound of each worker process"
    )
    parser.add_argument("--workers", type=int, default=1, help="service worker processes")
    parser.add_argument("--target", type=float, default=0.95, help="of ideal req/s")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = measure(
        users=args.users,
        run_time=args.run_time,
        latency=args.latency,
        bound=args.bound,
        workers=args.workers,
    )
    print(result.report())
    if args.json is not None:
        args.json.write_text(json.dumps({**asdict(result), "ratio": result.ratio}, indent=2))
    good = result.errors == 0 and result.every_2xx_audited_once and result.ratio >= args.target
    print(f"target {args.target:.2f} of ideal, 0 errors, every 2xx audited once: {good}")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
else:  # imported by locust as its locustfile (locust's import patches the process for gevent)
    import itertools

    from locust import FastHttpUser, constant, events, task
    from locust.env import Environment

    _numbers = itertools.count()
    _statuses: Counter[str] = Counter()
    _finished: list[float] = []
    _phase: dict[str, float] = {}

    class ChatUser(FastHttpUser):
        """One client posting /chat again as soon as it has its answer (a closed loop)."""

        wait_time = constant(0)
        network_timeout = 120.0
        connection_timeout = 30.0

        @task
        def chat(self) -> None:
            message = f"Summarize in 5 words: ticket {next(_numbers)} says export is broken."
            with self.client.post(
                "/chat", json={"message": message}, catch_response=True
            ) as response:
                _statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    _finished.append(time.monotonic())
                    response.success()
                else:
                    response.failure(f"HTTP {response.status_code}")

    @events.spawning_complete.add_listener
    def _all_running(user_count: int, **_: Any) -> None:
        _phase["running"] = time.monotonic()

    @events.test_stopping.add_listener
    def _stopping(**_: Any) -> None:
        _phase["stopping"] = time.monotonic()

    @events.quitting.add_listener
    def _write_results(environment: Environment, **_: Any) -> None:
        total = environment.stats.total
        # The steady window: from 1 s after every user runs to the end of the run time.
        start = _phase["running"] + 1.0
        end = _phase.get("stopping", time.monotonic())
        steady = sum(start <= t < end for t in _finished)
        results = {
            "requests": total.num_requests,
            "statuses": dict(sorted(_statuses.items())),
            "errors": total.num_failures,
            "steady_rps": steady / (end - start),
            "p50_ms": total.get_response_time_percentile(0.5),
            "p95_ms": total.get_response_time_percentile(0.95),
            "p99_ms": total.get_response_time_percentile(0.99),
        }
        Path(os.environ[RESULTS_VARIABLE]).write_text(json.dumps(results))
