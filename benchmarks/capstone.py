"""Benchmark the capstone service (notebooks/capstone/) over real HTTP.

Prints one table: upstream calls per second and p95 request latency, with the offline upstream
answering at once (what the Python stack itself costs per request) and after 0.1 s (what the
async patterns buy), next to the ideal wall time and measured/ideal:

* chat, N ≤ bound: every call overlaps, ideal ≈ 1 × latency;
* chat, N > bound: the semaphore lets `bound` calls through at a time, ideal ≈ ⌈N/bound⌉ × latency;
* batch: one request with N messages, same bound, ideal ≈ ⌈N/bound⌉ × latency.

Client, server and upstream share one event loop in this process, as in the notebooks, so the
zero-latency rows measure the CPU cost of a request through httpx, uvicorn, FastAPI, the SDK
and the audit log together, and the 0.1 s rows include the client's own work on that loop.
The service's capacity as a deployment sees it (its own process, load from another) is
`benchmarks/capstone_locust.py`. Not part of the test suite. Run: `python benchmarks/capstone.py`.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import labsupport as lab

# The service lives with the notebooks, not in a package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
from capstone import create_app

BOUND = 20
CLIENT_CONCURRENCY = 100  # lab.serve()'s client pool


@dataclass(frozen=True)
class Result:
    """One measured scenario."""

    scenario: str
    latency: float
    requests: int
    calls: int
    wall: float
    p95: float
    ideal: float | None

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.wall

    @property
    def ratio(self) -> float | None:
        return None if self.ideal is None else self.wall / self.ideal


async def _measure(
    scenario: str, latency: float, path: str, body: Any, requests: int, calls: int
) -> Result:
    with lab.mock_openai(latency=latency) as upstream, tempfile.TemporaryDirectory() as folder:
        # Every call is counted, so none may be shed: in one loop with its clients a wait for
        # a slot is mostly a wait for the CPU, which a busy machine can stretch past 5 s.
        app = create_app(
            audit_path=Path(folder) / "audit.sqlite3", max_upstream_calls=BOUND, slot_wait=60
        )
        async with lab.serve(app) as client:
            await client.post("/chat", json={"message": "warm-up"})
            upstream.reset()
            report = await lab.fire(
                client, "POST", path, json=body, n=requests, concurrency=CLIENT_CONCURRENCY
            )
        if not report.ok or upstream.stats.calls != calls:
            raise RuntimeError(f"{scenario}: {report.summary()}; {upstream.stats}")
    ideal = math.ceil(calls / BOUND) * latency if latency else None
    return Result(scenario, latency, requests, calls, report.wall, report.p95, ideal)


async def _run() -> list[Result]:
    def chat(i: int) -> dict[str, str]:
        return {"message": f"Summarize in 5 words: ticket {i} is about a slow export."}

    batch = {"messages": [f"Sentiment (one word): review {i} loved it" for i in range(50)]}
    results = []
    for latency in (0.0, 0.1):
        results.append(await _measure("chat, N = bound", latency, "/chat", chat, BOUND, BOUND))
        results.append(await _measure("chat, N = 500", latency, "/chat", chat, 500, 500))
        results.append(await _measure("batch of 50", latency, "/batch", batch, 1, 50))
    return results


def main() -> list[Result]:
    """Run every scenario, print the table, and return the results."""
    os.environ.setdefault("OPENAI_API_KEY", lab.PLACEHOLDER_KEY)
    results = asyncio.run(_run())
    header = (
        f"{'scenario':<17} {'latency':>8} {'requests':>8} {'calls':>6} {'wall':>8} "
        f"{'calls/s':>8} {'p95':>8} {'ideal':>8} {'measured/ideal':>15}"
    )
    print(f"capstone service, upstream bound {BOUND}, client concurrency {CLIENT_CONCURRENCY}")
    print(header)
    print("-" * len(header))
    for r in results:
        ideal = "—" if r.ideal is None else f"{r.ideal:.2f} s"
        ratio = "—" if r.ratio is None else f"{r.ratio:.2f}×"
        print(
            f"{r.scenario:<17} {r.latency:>6.2f} s {r.requests:>8} {r.calls:>6} "
            f"{r.wall:>6.2f} s {r.calls_per_second:>8.0f} {r.p95:>6.3f} s {ideal:>8} {ratio:>15}"
        )
    return results


if __name__ == "__main__":
    main()
