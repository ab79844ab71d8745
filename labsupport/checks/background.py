"""Checker for notebook 04: a slow audit write moved out of the request path, losing nothing.

Its causes (`CheckResult.cause`), in the order they are judged:

* "ok" — the responses did not wait for the audit, and every request left exactly one row;
* "threading_primitive" / "blocked_loop" / "timed_out" — the watchdog had to stop the app
  (a threading lock held across an `await` deadlocks the loop), or it never finished;
* "app_error" — the app's lifespan (startup or shutdown) raised;
* "nested_event_loop" — `asyncio.run()` / `run_until_complete()` inside the endpoint;
* "missing_return" — the endpoint returned nothing (`null`);
* "bad_reply" — errors, or replies without a `"response"` text;
* "blocked_loop" — an `async def` audit task blocked the event loop (time.sleep, sqlite3);
* "inline_write" — the probe request's row was already written when its response arrived: the
  response waited for the audit (an awaited write, `await asyncio.to_thread(...)`);
* "coroutine_passed_to_add_task" — `add_task(write(...))`: a coroutine where a function belongs;
* "shared_sqlite_connection" — one `sqlite3` connection was used by several threads (`def`
  background tasks share it), which loses rows whenever two writes overlap: found by tracing
  which threads ran statements on it, so the verdict does not depend on whether they overlapped;
* "audit_failed" — rows were lost and the server logged the audit task's errors;
* "rows_lost" — rows were lost silently: tasks nobody awaited at shutdown (`asyncio.create_task`);
* "too_many_rows" — more than one row per request.

Every judgement is a count (rows, threads, errors) or the event loop's blocked time against the
audit writes' own duration, so a loaded machine does not change the verdict.
"""

from __future__ import annotations

import gc
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import httpx

from .._text import shorten
from ..load import LoadReport, fire
from ..looplag import LoopLagMonitor
from ..serving import serve
from ..validation import check_int
from ._common import caught_warnings, reference_latency, stopped_by_watchdog, upstream_or_none
from ._scenario import nested_loop
from ._sqlite import sqlite_threads
from .result import CheckResult, a_function, an_app, recorded
from .watchdog import guarded

__all__ = ["CAUSES", "Cause", "check_background_audit"]

EXERCISE = "an audit write that does not delay the response"

Cause = Literal[
    "ok",
    "threading_primitive",
    "blocked_loop",
    "timed_out",
    "app_error",
    "nested_event_loop",
    "missing_return",
    "bad_reply",
    "inline_write",
    "coroutine_passed_to_add_task",
    "shared_sqlite_connection",
    "audit_failed",
    "rows_lost",
    "too_many_rows",
]
CAUSES: Final[tuple[str, ...]] = get_args(Cause)

RowCounter = Callable[[], int | Awaitable[int]]
"""Returns how many audit rows are stored now: a plain or an async function."""

BLOCKED_SHARE: Final = 0.75
"""The share of all audit writes' time the loop must have been blocked for to blame them."""

NOT_CALLABLE_ERRORS: Final = ("'coroutine' object is not callable", "must be callable")
SHARED_SQLITE_ERROR: Final = "objects created in a thread can only be used in that same thread"


@dataclass(frozen=True)
class _Measured:
    probe: LoadReport
    rows_at_probe: int
    burst: LoadReport
    rows: int
    blocked: float
    shutdown: float
    server_errors: list[str]
    sqlite_threads: int


@recorded(notebook="04_background_tasks", app=an_app, count_rows=a_function)
async def check_background_audit(
    app: Any,
    count_rows: RowCounter,
    *,
    audit_seconds: float,
    path: str = "/chat",
    n: int = 10,
) -> CheckResult:
    """Serve `app` on a real socket, send one probe request and then `n` concurrent ones, shut it
    down, and count the rows.

    Judges, in this order (see the module docstring for every cause):

    * the event loop stayed free (a blocking call in an `async def` audit task stalls everyone);
    * the probe's row was not yet written when its response arrived: responses do not wait for
      the audit write (`audit_seconds` each);
    * no `sqlite3` connection was used by several threads;
    * after shutdown, `count_rows()` grew by exactly `n + 1`: every request left one audit row.

    The app must answer `POST path` with `{"message": "…", "user_id": "…"}` by
    `{"response": "<the reply>"}`. `count_rows` is called before and after, so rows already in
    the table do not matter. Learner code runs under the watchdog.
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
    check_int("n", n, minimum=2, why="a burst needs company")

    latency = await reference_latency()
    upstream_or_none()  # reset the counters, so an upstream timeline covers only this check
    rows_before = await _count(count_rows)

    def body(i: int) -> dict[str, str]:
        return {"message": f"Summarize in 5 words: ticket {i}", "user_id": f"u{i}"}

    async def measure() -> _Measured:
        lag = LoopLagMonitor()
        with _server_errors() as server_errors, caught_warnings(), sqlite_threads() as threads:
            try:
                async with serve(app) as client:
                    lag.start()  # once the server is up: its startup is not the app's fault
                    # The probe on a connection of its own: a failing background task may
                    # close it.
                    async with httpx.AsyncClient(
                        base_url=client.base_url, trust_env=False
                    ) as alone:
                        probe = await fire(alone, "POST", path, n=1, json=body)
                    rows_at_probe = await _count(count_rows) - rows_before
                    burst = await fire(client, "POST", path, n=n, json=lambda i: body(i + 1))
                    responses_done = time.perf_counter()
                shutdown = time.perf_counter() - responses_done
            finally:
                lag.stop()  # interrupted too: its watcher task must not outlive the check
            gc.collect()  # coroutines never awaited warn when collected: inside, not later
        return _Measured(
            probe,
            rows_at_probe,
            burst,
            await _count(count_rows) - rows_before,
            lag.blocked,
            shutdown,
            server_errors,
            threads.most_threads,
        )

    outcome = await guarded(
        measure(),
        block_limit=2.0 + 3 * audit_seconds,
        time_limit=30.0 + 4 * (n + 1) * (latency + audit_seconds),
    )
    if outcome.stopped:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, f"the {n + 1} requests")
    if outcome.error is not None or outcome.value is None:
        error = outcome.error
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause="app_error",
            summary=f"the app failed before it could be measured: {type(error).__name__}: "
            f"{shorten(str(error), 160)}",
            hint="its lifespan (startup or shutdown) must run without errors.",
        )
    return _verdict(outcome.value, n, path, latency, audit_seconds)


def _verdict(
    measured: _Measured, n: int, path: str, latency: float, audit_seconds: float
) -> CheckResult:
    burst, total = measured.burst, n + 1
    errors = measured.server_errors
    evidence = [
        f"{n} concurrent requests: median response {burst.p50:.2f} s (one upstream call takes "
        f"{latency:.2f} s, one audit write {audit_seconds:.2f} s).",
        f"When the first request's response arrived, its audit row was "
        f"{'already' if measured.rows_at_probe else 'not yet'} written.",
        f"The event loop was blocked for {measured.blocked:.2f} s; the server's shutdown took "
        f"{measured.shutdown:.2f} s.",
        f"Audit rows written: {measured.rows} for {total} requests.",
    ]
    if measured.sqlite_threads > 1:
        evidence.append(
            f"One sqlite3 connection ran statements from {measured.sqlite_threads} threads."
        )
    if errors:
        evidence.append(f"The server logged {len(errors)} error(s); first: {errors[0]}")

    def fail(cause: Cause, summary: str, hint: str, *extra: str) -> CheckResult:
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause=cause,
            summary=summary,
            evidence=(*evidence, *extra),
            hint=hint,
        )

    requests = measured.probe.requests + burst.requests
    said = [f"{r.error}{r.body}" for r in requests] + errors
    if any(nested_loop(RuntimeError(text)) for text in said):
        return fail(
            "nested_event_loop",
            "the endpoint tried to start an event loop inside the running one.",
            "an `async def` endpoint already runs on the event loop: `await` the coroutine, or "
            "hand it to `background_tasks.add_task(...)`.",
            _first_problem(requests),
        )
    if all(r.status == 200 and r.body is None for r in requests):
        return fail(
            "missing_return",
            f"all {total} replies were empty (null): the endpoint returned nothing.",
            'end the endpoint with `return {"response": reply}`.',
        )
    bad = sum(r.status != 200 or not _has_response(r.body) for r in requests)
    if bad:
        return fail(
            "bad_reply",
            f"{bad} of {total} requests did not get a proper reply.",
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
            _first_problem(requests),
        )
    # A blocking audit stalls the loop for every request's write: total × audit_seconds. Most of
    # that is far more than a loaded machine's own stalls (a fraction of one write, measured).
    if measured.blocked >= BLOCKED_SHARE * total * audit_seconds:
        return fail(
            "blocked_loop",
            "the event loop was blocked: while one audit write ran, no other request could move.",
            "a blocking call (time.sleep, sqlite3, a sync client) inside an `async def` runs on "
            "the event loop, even in a background task. Make the audit function a plain `def` "
            "(it then runs in the thread pool) or await an async driver such as aiosqlite.",
        )
    if measured.rows_at_probe:
        return fail(
            "inline_write",
            "each response waited for its audit write: the first request's row was written "
            "before its response came back.",
            "schedule the write with `background_tasks.add_task(write, ...)` (a "
            "`BackgroundTasks` parameter) instead of awaiting it (or a thread doing it) before "
            "`return`.",
        )
    if any(message in error for error in errors for message in NOT_CALLABLE_ERRORS):
        return fail(
            "coroutine_passed_to_add_task",
            "`add_task` was given a coroutine (the write already called), not a function.",
            "pass the function and its arguments separately: "
            "`background_tasks.add_task(slow_write_audit_row, db, row)`, without the `(...)` "
            "call.",
        )
    if measured.sqlite_threads > 1 or any(SHARED_SQLITE_ERROR in error for error in errors):
        return fail(
            "shared_sqlite_connection",
            "one sqlite3 connection was shared by the background tasks' threads"
            + (f", and {total - measured.rows} rows were lost." if measured.rows < total else ".")
            + " A sqlite3 connection must not be used by several threads at once: it loses "
            "rows whenever two writes overlap.",
            "use the lifespan's aiosqlite connection from an `async def` task (its one thread "
            "queues the writes), or open a connection per write inside the `def` task.",
        )
    if measured.rows < total:
        lost = total - measured.rows
        if errors:
            return fail(
                "audit_failed",
                f"{lost} audit entries were lost: the audit task failed.",
                "the error the server logged (above) says why; a background task's exception "
                "never reaches the client, so test the audit function on its own first.",
            )
        return fail(
            "rows_lost",
            f"{lost} audit entries were lost, and nothing reported it.",
            "work started with a bare `asyncio.create_task` is not awaited by the server at "
            "shutdown: use `BackgroundTasks`, or keep the tasks and await them in the lifespan "
            "before closing the database.",
        )
    if measured.rows > total:
        return fail(
            "too_many_rows",
            f"{measured.rows - total} rows too many for {total} requests.",
            "write exactly one audit row per request.",
        )
    return CheckResult(
        exercise=EXERCISE,
        passed=True,
        cause="ok",
        summary=f"for this check's {total} requests, the responses did not wait for the audit, "
        "and every entry was stored.",
        evidence=tuple(evidence),
    )


async def _count(count_rows: RowCounter) -> int:
    result = count_rows()
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, bool) or not isinstance(result, int):
        raise TypeError(f"count_rows() must return an int (the number of rows); got {result!r}")
    return result


def _has_response(body: Any) -> bool:
    return (
        isinstance(body, dict) and isinstance(body.get("response"), str) and bool(body["response"])
    )


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
            return shorten(f"First error: {record.error_type}: {record.error}", 200)
        if record.status != 200 or not _has_response(record.body):
            return shorten(f"First bad reply: HTTP {record.status}: {record.body}", 200)
    return "Every reply looked fine."
