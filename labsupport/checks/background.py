"""Checker for notebook 04: a slow audit write moved out of the request path, losing nothing.

What the lesson teaches, as invariants measured for any answer (the verdict is their
conjunction; the cause is the first that failed, in the order below; the hint is its fix):

1. the app runs, and nothing holds the event loop for the watchdog's limit;
2. every request gets a `{"response": …}` reply;
3. the event loop stays free while requests are served AND while their audit writes run in the
   background: no `time.sleep` and no blocking `sqlite3` statement on the loop's thread
   (counted, not timed: a fast disk does not make a blocking write right), and no other stall
   of about a write's length for most of the writes' time;
4. the response does not wait for the audit (the probe's row is not yet written when its reply
   arrives);
5. no `sqlite3` connection is used by several threads;
6. after shutdown, every request left exactly one row: nothing scheduled was lost, whether by a
   coroutine nobody awaited (`add_task(lambda: write(...))`), a `BackgroundTasks` FastAPI
   never ran (an unannotated `background_tasks=BackgroundTasks()` default), a queue whose
   writer was cancelled before the queue was drained, or a bare `asyncio.create_task` nobody
   awaited at shutdown. A shutdown is put to the test only if writes are still to come when it
   begins, so the rows are counted as the app is handed its shutdown, and a burst whose writes
   had all ended by then is run again (3 bursts at most; a pass then says the shutdown was not
   measured).

Its causes (`CheckResult.cause`), in the order they are judged:

* "ok" — the responses did not wait for the audit, and every request left exactly one row;
* "threading_primitive" / "blocked_loop" / "timed_out" — the watchdog had to stop the app
  (a threading lock held across an `await` deadlocks the loop), or it never finished;
* "app_error" — the app's lifespan (startup or shutdown) raised;
* "nested_event_loop" — `asyncio.run()` / `run_until_complete()` inside the endpoint;
* "missing_return" — the endpoint returned nothing (`null`);
* "bad_reply" — errors, or replies without a `"response"` text;
* "blocked_loop" — an `async def` audit task blocked the event loop (time.sleep, sqlite3);
* "sqlite_on_loop" — a `sqlite3` statement ran on the event loop's thread (an `async def` task
  that awaits, then writes with blocking `sqlite3`);
* "inline_write" — the probe request's row was already written when its response arrived: the
  response waited for the audit (an awaited write, `await asyncio.to_thread(...)`);
* "coroutine_passed_to_add_task" — `add_task(write(...))`: a coroutine where a function belongs;
* "shared_sqlite_connection" — one `sqlite3` connection was used by several threads (`def`
  background tasks share it), which loses rows whenever two writes overlap: found by tracing
  which threads ran statements on it, so the verdict does not depend on whether they overlapped;
* "task_not_kept" — the writes ran in tasks the app started with `asyncio.create_task` and kept
  no reference to (looked at by reference, not by the rows): nothing awaits them at shutdown, so
  whether their rows get written is a race with the shutdown, which a busy machine can make the
  writes win; judged before the rows, so the verdict does not depend on who won;
* "audit_failed" — rows were lost and the server logged the audit task's errors;
* "coroutine_never_awaited" — rows were lost, and Python warned that coroutines were never
  awaited: a function that *returns* a coroutine (`add_task(lambda: write(...))`) is run in a
  thread, and its coroutine is dropped;
* "unannotated_background_tasks" — rows were lost, and the endpoint's `BackgroundTasks` is a
  default value without the type annotation: FastAPI injects (and runs) only an annotated one;
* "queue_not_drained" — rows were lost, and an `asyncio.Queue` still held rows after shutdown:
  its writer was cancelled before the queue was drained;
* "rows_lost" — rows were lost silently: tasks the app kept but did not await at shutdown
  (cancelled, or left running);
* "too_many_rows" — more than one row per request.

Every judgement is a count (rows, threads, errors) or the event loop's blocked time against the
audit writes' own duration, so a loaded machine does not change the verdict.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, get_args
from unittest import mock

import httpx
from starlette.background import BackgroundTasks

from .._text import shorten
from ..load import LoadReport, RequestRecord, fire
from ..looplag import LoopLagMonitor
from ..serving import serve
from ..validation import check_int, check_seconds
from ._common import (
    app_failed,
    caught_warnings,
    never_awaited,
    reference_latency,
    server_errors,
    stopped_by_watchdog,
    upstream_or_none,
)
from ._invariants import unkept_tasks
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
    "sqlite_on_loop",
    "timed_out",
    "app_error",
    "nested_event_loop",
    "missing_return",
    "bad_reply",
    "inline_write",
    "coroutine_passed_to_add_task",
    "shared_sqlite_connection",
    "task_not_kept",
    "audit_failed",
    "coroutine_never_awaited",
    "unannotated_background_tasks",
    "queue_not_drained",
    "rows_lost",
    "too_many_rows",
]
CAUSES: Final[tuple[str, ...]] = get_args(Cause)

RowCounter = Callable[[], int | Awaitable[int]]
"""Returns how many audit rows are stored now: a plain or an async function."""

BLOCKED_SHARE: Final = 0.75
"""The share of all audit writes' time the loop must have been blocked for to blame them."""

SHUTDOWN_ATTEMPTS: Final = 3
"""Bursts at most, until one ends with audit writes still to come when the shutdown begins."""

NOT_CALLABLE_ERRORS: Final = ("'coroutine' object is not callable", "must be callable")
SHARED_SQLITE_ERROR: Final = "objects created in a thread can only be used in that same thread"


@dataclass(frozen=True)
class _Measured:
    probe: LoadReport
    rows_at_probe: int
    burst: LoadReport
    shutdown_counts: _ShutdownCounts
    rows: int
    blocked: float
    shutdown: float
    server_errors: list[str]
    sqlite_threads: int
    sqlite_on_loop: int
    sleeps_on_loop: int
    longest_block: float
    never_awaited: bool
    queued_after: int
    unkept_tasks: list[str]
    bursts: int = 1
    """How many bursts were run to put the shutdown to the test (this one is the last)."""
    not_served_again: str = ""
    """Why a later burst could not be judged (the app failed when served again), if so."""


@recorded(
    notebook="04_background_tasks",
    needs="TCP sockets (it serves your app with uvicorn, then shuts the server down)",
    app=an_app,
    count_rows=a_function,
)
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
    check_seconds("audit_seconds", audit_seconds, allow_zero=False)
    check_int("n", n, minimum=2, why="a burst needs company")

    latency = await reference_latency()
    upstream_or_none()  # reset the counters, so an upstream timeline covers only this check
    rows_before = await _count(count_rows)  # a bad count_rows is refused here, as bad input

    def body(i: int) -> dict[str, str]:
        return {"message": f"Summarize in 5 words: ticket {i}", "user_id": f"u{i}"}

    async def measure_with_work_at_shutdown() -> _Measured:
        """The shutdown is put to the test only if some writes are still to come when it
        begins: on a busy machine every write can end first, and then an app that cancels
        its pending work at shutdown loses nothing. So an answer that would pass without that
        test is measured again, a few times at most; a failure stands as it is."""
        measured = await measure(rows_before)
        for bursts in range(2, SHUTDOWN_ATTEMPTS + 1):
            if (
                measured.shutdown_counts.work_was_pending(n + 1)
                or not _verdict(measured, n, path, latency, audit_seconds, app).passed
            ):
                break
            again = await measure(await _count(count_rows))
            requests = again.probe.requests + again.burst.requests
            if not all(_proper_reply(r) for r in requests):
                # Served once more, an app that closes what it built outside its lifespan
                # (a module-level client) fails: not this lesson's question, so the earlier
                # burst's verdict stands, and says the shutdown was not measured.
                return replace(
                    measured, bursts=bursts - 1, not_served_again=_first_problem(requests)
                )
            measured = replace(again, bursts=bursts)
        return measured

    async def measure(rows_before: int) -> _Measured:
        lag = LoopLagMonitor()
        with (
            _queues_seen() as queues,
            server_errors() as logged_errors,
            caught_warnings() as caught,
            sqlite_threads() as threads,
            unkept_tasks() as unkept,
        ):

            async def count_unwatched() -> int:
                with threads.loop_unwatched():  # the check's own statements
                    return await _count(count_rows) - rows_before

            watched = _ShutdownWatch(app, count_unwatched)
            try:
                async with serve(watched) as client:
                    lag.start()  # once the server is up: its startup is not the app's fault
                    threads.watch_loop()  # requests, background work and shutdown
                    # The probe on a connection of its own: a failing background task may
                    # close it.
                    async with httpx.AsyncClient(
                        base_url=client.base_url, trust_env=False
                    ) as alone:
                        probe = await fire(alone, "POST", path, n=1, json=body)
                    rows_at_probe = await count_unwatched()
                    burst = await fire(client, "POST", path, n=n, json=lambda i: body(i + 1))
                    responses_done = time.perf_counter()
                    watched.server_stops()
                shutdown = time.perf_counter() - responses_done
                shutdown_counts = await watched.counts()
            finally:
                watched.forget()
                threads.unwatch_loop()
                lag.stop()  # interrupted too: its watcher task must not outlive the check
            gc.collect()  # coroutines never awaited warn when collected: inside, not later
        return _Measured(
            probe,
            rows_at_probe,
            burst,
            shutdown_counts,
            await _count(count_rows) - rows_before,
            lag.blocked,
            shutdown,
            logged_errors,
            threads.most_threads,
            threads.on_loop,
            threads.sleeps_on_loop,
            lag.longest,
            never_awaited(caught),
            queues.left(),
            unkept,
        )

    outcome = await guarded(
        measure_with_work_at_shutdown(),
        block_limit=2.0 + 3 * audit_seconds,
        time_limit=30.0 + 4 * (n + 1) * (latency + audit_seconds),
    )
    if outcome.stopped:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, f"the {n + 1} requests")
    if outcome.error is not None or outcome.value is None:
        return app_failed(EXERCISE, outcome.error)
    return _verdict(outcome.value, n, path, latency, audit_seconds, app)


def _verdict(
    measured: _Measured, n: int, path: str, latency: float, audit_seconds: float, app: Any
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
        measured.shutdown_counts.says(total),
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
    bad = sum(not _proper_reply(r) for r in requests)
    if bad:
        return fail(
            "bad_reply",
            f"{bad} of {total} requests did not get a proper reply.",
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
            _first_problem(requests),
        )
    blocking = (
        "a blocking call (time.sleep, sqlite3, a sync client) inside an `async def` runs on "
        "the event loop, even in a background task. Make the audit function a plain `def` "
        "(it then runs in the thread pool) or await an async driver such as aiosqlite."
    )
    if measured.sleeps_on_loop:
        return fail(
            "blocked_loop",
            f"time.sleep ran {measured.sleeps_on_loop} time(s) on the event loop's thread: "
            "while it slept, no other request could move.",
            f"use `await asyncio.sleep(...)` in `async def`; {blocking}",
        )
    if measured.sqlite_on_loop:
        return fail(
            "sqlite_on_loop",
            f"{measured.sqlite_on_loop} blocking sqlite3 statements ran on the event loop's "
            "thread: while each ran, no other request could move.",
            "an `async def` task runs on the event loop, also after an `await`: a `sqlite3` "
            "call there blocks it. Make the task a plain `def` with its own connection (it "
            "then runs in the thread pool), or write with aiosqlite (`await db.execute(...)`).",
        )
    # Any other blocking audit stalls the loop for every request's write: total × audit_seconds
    # in all, each stall about one write long. A loaded machine's own stalls add up too, but
    # rarely to most of that, and not in stretches of a whole write.
    if (
        measured.blocked >= BLOCKED_SHARE * total * audit_seconds
        and measured.longest_block >= BLOCKED_SHARE * audit_seconds
    ):
        return fail(
            "blocked_loop",
            "the event loop was blocked: while one audit write ran, no other request could move.",
            blocking,
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
    if measured.unkept_tasks:
        started = measured.unkept_tasks
        outcome = (
            f"{total - measured.rows} of {total} audit entries were lost"
            if measured.rows < total
            else "every entry was stored this time"
        )
        return fail(
            "task_not_kept",
            f"{outcome}: the writes ran in {len(started)} task(s) the app started and kept no "
            f"reference to ({started[0]}), so nothing awaits them at shutdown: a row is "
            "written only if its task finishes before the shutdown does.",
            "use `BackgroundTasks`, or keep each task (a set in the app's state, discarding it "
            "when done) and await them in the lifespan before closing the database.",
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
        if measured.never_awaited:
            return fail(
                "coroutine_never_awaited",
                f"{lost} audit entries were lost: the writes were coroutines nobody awaited.",
                "give `add_task` the async function itself and its arguments: "
                "`background_tasks.add_task(write, db, row)`. A lambda (or any plain function) "
                "that returns `write(db, row)` is run in a thread, and the coroutine it "
                "returns is dropped.",
            )
        if _unannotated_background_tasks(app):
            return fail(
                "unannotated_background_tasks",
                f"{lost} audit entries were lost: FastAPI never ran the endpoint's "
                "`BackgroundTasks`.",
                "annotate the parameter, without a default: `background_tasks: "
                "BackgroundTasks`. Only an annotated one is injected and run after the "
                "response; `background_tasks=BackgroundTasks()` is one shared object nobody "
                "runs.",
            )
        if measured.queued_after:
            return fail(
                "queue_not_drained",
                f"{lost} audit entries were lost: after shutdown, {measured.queued_after} rows "
                "were still waiting in an `asyncio.Queue`.",
                "at shutdown, `await queue.join()` (every row written) before cancelling the "
                "writer task and closing the database.",
            )
        return fail(
            "rows_lost",
            f"{lost} audit entries were lost, and nothing reported it.",
            "the server does not await work started with `asyncio.create_task` at shutdown, "
            "and cancelling it loses its rows: use `BackgroundTasks`, or await the tasks you "
            "kept in the lifespan before closing the database.",
        )
    if measured.rows > total:
        return fail(
            "too_many_rows",
            f"{measured.rows - total} rows too many for {total} requests.",
            "write exactly one audit row per request.",
        )
    untested = (
        f" (in {'each of ' if measured.bursts > 1 else ''}{measured.bursts} "
        f"burst{'s' if measured.bursts > 1 else ''}, every row was already written when the "
        "rows were counted as the app's shutdown began: what a shutdown does to pending work "
        "was not measured)"
        if not measured.shutdown_counts.work_was_pending(total)
        else ""
    )
    if measured.not_served_again:
        evidence.append(
            "Served again to measure the shutdown with writes still to come, the app failed, "
            f"so that burst was not judged. {measured.not_served_again}"
        )
    return CheckResult(
        exercise=EXERCISE,
        passed=True,
        cause="ok",
        summary=f"for this check's {total} requests, the responses did not wait for the audit, "
        f"and every entry was stored{untested}.",
        evidence=tuple(evidence),
    )


@dataclass(frozen=True)
class _ShutdownCounts:
    """The audit rows counted as the server's shutdown went on (each count less the rows of
    before the check).

    A count can only be late, never early: the rows it finds were written by the moment it is
    named for *or later*. So a count below the requests proves that writes were still to come at
    that moment, and a count that reached them proves nothing about it.
    """

    at_server_stop: int
    """Counted once the server was asked to stop, after the burst's last response."""
    requests_running: int
    """The requests (ASGI calls) still running when the server was asked to stop: in
    Starlette, a request's call ends after its `BackgroundTasks` have run."""
    when_requests_ended: int | None
    """Counted as the last of those requests ended, before its call returned: these rows were
    written by then (None: none was running, or the count failed)."""
    at_lifespan_shutdown: int
    """Counted once the app was handed its lifespan shutdown, where a shutdown that cancels
    pending work (tasks, a queue's writer) loses it."""

    def work_was_pending(self, total: int) -> bool:
        """Whether the shutdown was put to the test: writes were still to come when the app's
        lifespan shutdown began, or they were still to come when the server was asked to stop
        and were written by the time the requests still running had ended (the server waits
        for a request's call, and so for its background tasks, before the lifespan shutdown)."""
        if self.at_lifespan_shutdown < total:
            return True
        return (
            self.requests_running > 0
            and self.at_server_stop < total
            and self.when_requests_ended is not None
            and self.when_requests_ended >= total
        )

    def says(self, total: int) -> str:
        """The evidence line: what the counts prove, and nothing more."""
        if self.at_lifespan_shutdown < total:
            return (
                "When the server's shutdown began, some audit rows were still to be written "
                "(still when the app's lifespan shutdown began)."
            )
        if self.work_was_pending(total):
            return (
                "When the server's shutdown began, some audit rows were still to be written "
                "(every one was written when the requests still running then had ended)."
            )
        return (
            "When the rows were counted, just after the app's lifespan shutdown began, every "
            "audit row was already written."
        )


class _ShutdownWatch:
    """`app`, with the audit rows counted as the server's shutdown goes on (`_ShutdownCounts`).

    A count taken before the server was asked to stop proved nothing: on a loaded machine the
    last writes ended while the server wound down, so an app that cancels its pending writes
    at shutdown found none to cancel, and passed. Each count here starts after the moment it is
    named for, so it can only be late.
    """

    def __init__(self, app: Any, count: Callable[[], Coroutine[Any, Any, int]]) -> None:
        self._app = app
        self._count = count
        self._running: set[int] = set()
        self._running_at_stop: set[int] | None = None
        self._requests_running_at_stop = 0
        self._at_server_stop: asyncio.Task[int] | None = None
        self._when_requests_ended: int | None = None
        self._at_lifespan_shutdown: asyncio.Task[int] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._app(scope, self._telling_shutdown(receive), send)
            return
        call = id(scope)
        self._running.add(call)
        try:
            await self._app(scope, receive, send)
        finally:
            self._running.discard(call)
            waited_for = self._running_at_stop
            if waited_for and call in waited_for:
                waited_for.discard(call)
                if not waited_for:
                    # Before the call returns: the server still waits for it, so the rows
                    # counted here were written while a request was still running.
                    await self._count_when_requests_ended()

    def _telling_shutdown(self, receive: Any) -> Callable[[], Awaitable[Any]]:
        async def receiving() -> Any:
            message = await receive()
            if message.get("type") == "lifespan.shutdown" and self._at_lifespan_shutdown is None:
                # Runs on the loop's next turn, once the app has begun its shutdown.
                self._at_lifespan_shutdown = asyncio.get_running_loop().create_task(self._count())
            return message

        return receiving

    async def _count_when_requests_ended(self) -> None:
        try:
            self._when_requests_ended = await self._count()
        except Exception:  # the final count, after the shutdown, reports a failing count_rows
            self._when_requests_ended = None

    def server_stops(self) -> None:
        """Note the requests still running and start counting: call it just before leaving
        `serve()`. The count runs while the server stops, so it does not delay the stop."""
        self._running_at_stop = set(self._running)
        self._requests_running_at_stop = len(self._running)
        self._at_server_stop = asyncio.get_running_loop().create_task(self._count())

    async def counts(self) -> _ShutdownCounts:
        """Every count, once the server has stopped. An app without a lifespan is never handed
        the shutdown: its rows are counted now, which is later still."""
        if self._at_server_stop is None:
            raise RuntimeError("server_stops() was not called before the server stopped")
        lifespan = self._at_lifespan_shutdown
        return _ShutdownCounts(
            at_server_stop=await self._at_server_stop,
            requests_running=self._requests_running_at_stop,
            when_requests_ended=self._when_requests_ended,
            at_lifespan_shutdown=await (lifespan if lifespan is not None else self._count()),
        )

    def forget(self) -> None:
        """Cancel the counts still running (the server failed or was interrupted)."""
        for counting in (self._at_server_stop, self._at_lifespan_shutdown):
            if counting is not None and not counting.done():
                counting.cancel()
                # Nobody awaits it any more: its outcome is read here, not reported as lost.
                counting.add_done_callback(lambda task: task.cancelled() or task.exception())


async def _count(count_rows: RowCounter) -> int:
    result = count_rows()
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, bool) or not isinstance(result, int):
        raise TypeError(f"count_rows() must return an int (the number of rows); got {result!r}")
    return result


class _Queues:
    """The `asyncio.Queue`s in use during a check: those already alive (found by the garbage
    collector: a queue kept in a closure or a module), and those created during it (kept here,
    so a lifespan's queue can still be read after shutdown dropped it)."""

    def __init__(self) -> None:
        # type(), not isinstance(): some objects compute `__class__` on access (lazy modules,
        # proxies), which made a first scan take a second.
        self._queues: list[asyncio.Queue[Any]] = [
            item for item in gc.get_objects() if issubclass(type(item), asyncio.Queue)
        ]
        self._sizes_before = [queue.qsize() for queue in self._queues]

    def add(self, queue: asyncio.Queue[Any]) -> None:
        self._queues.append(queue)

    def left(self) -> int:
        """How many more items wait in the queues than when the check began."""
        before = self._sizes_before + [0] * (len(self._queues) - len(self._sizes_before))
        return sum(max(0, q.qsize() - size) for q, size in zip(self._queues, before, strict=True))


@contextmanager
def _queues_seen() -> Iterator[_Queues]:
    """Watch the `asyncio.Queue`s in use inside the block (see `_Queues`)."""
    seen = _Queues()
    original = asyncio.Queue.__init__

    def keeping(self: asyncio.Queue[Any], *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        seen.add(self)

    with mock.patch.object(asyncio.Queue, "__init__", keeping):
        yield seen


def _unannotated_background_tasks(app: Any) -> bool:
    """Whether an endpoint takes a `BackgroundTasks` instance as a parameter's default value
    without the annotation FastAPI injects by: the default is never run."""
    for route in getattr(app, "routes", ()):
        endpoint = getattr(route, "endpoint", None)
        if endpoint is None:
            continue
        try:
            parameters = inspect.signature(endpoint).parameters.values()
        except (TypeError, ValueError):
            continue
        for parameter in parameters:
            if isinstance(parameter.default, BackgroundTasks) and not (
                isinstance(parameter.annotation, type)
                and issubclass(parameter.annotation, BackgroundTasks)
            ):
                return True
    return False


def _proper_reply(record: RequestRecord) -> bool:
    """HTTP 200 with a `{"response": "<non-empty text>"}` body."""
    return record.status == 200 and _has_response(record.body)


def _has_response(body: Any) -> bool:
    return (
        isinstance(body, dict) and isinstance(body.get("response"), str) and bool(body["response"])
    )


def _first_problem(records: tuple[Any, ...]) -> str:
    for record in records:
        if record.error:
            return shorten(f"First error: {record.error_type}: {record.error}", 200)
        if not _proper_reply(record):
            return shorten(f"First bad reply: HTTP {record.status}: {record.body}", 200)
    return "Every reply looked fine."
