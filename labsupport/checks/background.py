"""Checker for notebook 04: a slow audit write moved out of the request path, losing nothing."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..load import fire
from ..looplag import LoopLagMonitor
from ..serving import serve
from ._common import reference_latency, upstream_or_none
from .result import CheckResult

__all__ = ["check_background_audit"]

EXERCISE = "an audit write that does not delay the response"

RowCounter = Callable[[], int | Awaitable[int]]
"""Returns how many audit rows are stored now: a plain or an async function."""


async def check_background_audit(
    app: Any,
    count_rows: RowCounter,
    *,
    audit_seconds: float,
    path: str = "/chat",
    n: int = 10,
) -> CheckResult:
    """Serve `app` on a real socket, send `n` concurrent requests, shut it down, count the rows.

    Judges three things, in this order:

    * the event loop stayed free (a blocking call in an `async def` audit task stalls everyone);
    * each response came back without waiting for the audit write (`audit_seconds` each);
    * after shutdown, `count_rows()` grew by exactly `n`: every request left one audit row.

    The app must answer `POST path` with `{"message": "…", "user_id": "…"}` by
    `{"response": "<the reply>"}`. `count_rows` is called before and after, so rows already in
    the table do not matter.
    """
    if not callable(count_rows):
        raise TypeError(
            f"count_rows must be a function returning the row count; got {count_rows!r}"
        )
    if isinstance(audit_seconds, bool) or not isinstance(audit_seconds, int | float):
        raise TypeError(f"audit_seconds must be a number of seconds; got {audit_seconds!r}")
    if not audit_seconds > 0:
        raise ValueError(
            f"audit_seconds must be > 0 (the audit write's duration); got {audit_seconds!r}"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int ≥ 2 (a burst needs company); got {n!r}")

    latency = await reference_latency()
    upstream_or_none()  # reset the counters, so an upstream timeline covers only this check
    rows_before = await _count(count_rows)
    lag = LoopLagMonitor()
    with _server_errors() as server_errors:
        async with serve(app) as client:
            lag.start()  # once the server is up: its startup is not the app's fault
            report = await fire(
                client,
                "POST",
                path,
                n=n,
                json=lambda i: {"message": f"Summarize in 5 words: ticket {i}", "user_id": f"u{i}"},
            )
            responses_done = time.perf_counter()
        drained = time.perf_counter() - responses_done  # shutdown: pending audit work
        lag.stop()
    rows = await _count(count_rows) - rows_before

    evidence = [
        f"{n} concurrent requests: median response {report.p50:.2f} s (one upstream call takes "
        f"{latency:.2f} s, one audit write {audit_seconds:.2f} s).",
        f"The event loop was blocked for {lag.blocked:.2f} s; the shutdown waited {drained:.2f} s "
        "for pending work.",
        f"Audit rows written: {rows} for {n} requests.",
    ]
    if server_errors:
        evidence.append(
            f"The server logged {len(server_errors)} error(s); first: {server_errors[0]}"
        )

    if not report.ok:
        return CheckResult(
            EXERCISE,
            False,
            f"{n - report.status_counts.get(200, 0)} of {n} requests did not get a 200 reply.",
            (*evidence, _first_problem(report.requests)),
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
        )
    # A blocking audit stalls the loop once per request; half of that is unmistakable.
    if lag.blocked >= 0.5 * (n - 1) * audit_seconds:
        return CheckResult(
            EXERCISE,
            False,
            "the event loop was blocked: while one audit write ran, no other request could move.",
            tuple(evidence),
            "a blocking call (time.sleep, sqlite3, a sync client) inside an `async def` runs on "
            "the event loop, even in a background task. Make the audit function a plain `def` "
            "(it then runs in the thread pool) or await an async driver such as aiosqlite.",
        )
    # Inline, every response takes at least the upstream call plus the audit write.
    if report.p50 >= latency + 0.8 * audit_seconds:
        return CheckResult(
            EXERCISE,
            False,
            "each response waited for its audit write.",
            tuple(evidence),
            "schedule the write with `background_tasks.add_task(...)` (a `BackgroundTasks` "
            "parameter) instead of awaiting it before `return`.",
        )
    if rows != n:
        lost = rows < n
        return CheckResult(
            EXERCISE,
            False,
            f"{n - rows} audit entries were lost." if lost else f"{rows - n} rows too many.",
            tuple(evidence),
            "work started with a bare `asyncio.create_task` is not awaited by the server at "
            "shutdown: use `BackgroundTasks`, or keep the tasks and await them in the lifespan "
            "before closing the database."
            if lost
            else "write exactly one audit row per request.",
        )
    return CheckResult(
        EXERCISE,
        True,
        "responses came back without waiting for the audit, and every entry was stored.",
        tuple(evidence),
    )


async def _count(count_rows: RowCounter) -> int:
    result = count_rows()
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, bool) or not isinstance(result, int):
        raise TypeError(f"count_rows() must return an int (the number of rows); got {result!r}")
    return result


@contextmanager
def _server_errors() -> Iterator[list[str]]:
    """Collect (and keep off stderr) what uvicorn logs as errors, e.g. a failing audit task."""
    errors: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            error = record.exc_info[1] if record.exc_info else None
            errors.append(f"{type(error).__name__}: {error}" if error else record.getMessage())
            return False
        return True

    logger = logging.getLogger("uvicorn.error")
    logger.addFilter(keep)
    try:
        yield errors
    finally:
        logger.removeFilter(keep)


def _first_problem(records: tuple[Any, ...]) -> str:
    for record in records:
        if record.error:
            return f"First error: {record.error_type}: {record.error}"[:200]
        if record.status != 200:
            return f"First bad reply: HTTP {record.status}: {record.body}"[:200]
    return "Every reply looked fine."
