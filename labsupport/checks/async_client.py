"""Checker for notebook 01: an endpoint that calls the upstream without blocking the event loop.

Its causes (`CheckResult.cause`), in the order they are judged:

* "ok" — the requests ran together, as fast as the check's reference app, with the loop free;
* "threading_primitive" / "blocked_loop" — the watchdog had to stop the app: the loop was held
  by a threading lock or semaphore, or by another blocking call, past the check's limit;
* "timed_out" — the requests did not finish within the check's time limit;
* "app_error" — the app's lifespan (startup or shutdown) raised;
* "not_awaited" — a coroutine was created and never awaited;
* "nested_event_loop" — `asyncio.run()` or `loop.run_until_complete()` inside the endpoint;
* "missing_return" — the endpoint returned nothing (`null`);
* "bad_reply" — errors, or replies without a `"response"` text;
* "client_per_request" — the app built a new OpenAI client for (about) every request: counted,
  so the verdict does not depend on how long building them took;
* "sync_client_in_async" — the loop was blocked while the sync `OpenAI` client was used;
* "blocked_loop" — the loop was blocked by something else (`time.sleep`, blocking I/O);
* "concurrency_limited" — the loop was free, but the requests took several times as long as the
  reference app's, twice in a row: something lets only a few through at a time.

Timings are judged against a reference app (one shared `AsyncOpenAI`, awaited) measured in the
same check, so a loaded machine slows both alike; counts (clients built, calls in flight) need no
reference.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from fastapi import FastAPI, Request
from openai import AsyncOpenAI

from .._text import shorten
from ..load import LoadReport, fire
from ..looplag import LoopLagMonitor, loop_lag
from ..serving import asgi_client
from ..upstream import UpstreamStats
from ..validation import check_int
from ._clients import built_clients
from ._common import (
    caught_warnings,
    never_awaited,
    reference_latency,
    stopped_by_watchdog,
    upstream_or_none,
)
from .result import CheckResult, an_app, recorded
from .watchdog import guarded

__all__ = ["CAUSES", "Cause", "check_async_endpoint"]

EXERCISE = "a non-blocking /chat endpoint"

Cause = Literal[
    "ok",
    "threading_primitive",
    "blocked_loop",
    "timed_out",
    "app_error",
    "not_awaited",
    "nested_event_loop",
    "missing_return",
    "bad_reply",
    "client_per_request",
    "sync_client_in_async",
    "concurrency_limited",
]
CAUSES: Final[tuple[str, ...]] = get_args(Cause)

SLOWER: Final = 2.5
"""How many times the reference app's wall time, with few calls overlapping, counts as "served a
few at a time"."""

BLOCKED_EXTRA: Final = 4.0
"""How many upstream latencies of blocked time, and of wall time, beyond the reference app's
count as a blocked loop when the calls still overlapped. A difference, not a ratio: the reference
runs just before, in the same conditions, so a busy machine slows and blocks both alike, and
what remains is the app's own; measured twice before it counts."""

SLOW_TWICE: Final = 4.0
"""How many times the reference app's wall time, measured twice in a row, counts as slow even
when the calls overlapped (an endpoint that sleeps, say): far above what load does to one run."""

NESTED_LOOP_ERRORS: Final = (
    "cannot be called from a running event loop",
    "loop is already running",
)


@dataclass(frozen=True)
class _Run:
    report: LoadReport
    lag: LoopLagMonitor
    stats: UpstreamStats | None


@recorded(notebook="01_async_client", app=an_app)
async def check_async_endpoint(app: Any, *, path: str = "/chat", n: int = 20) -> CheckResult:
    """Send `n` concurrent requests to `app`'s `path` (in process), and as many to a reference
    app with one shared `AsyncOpenAI`; judge whether `app` served them together (about as fast as
    the reference) or one after another behind a blocked event loop or a bottleneck.

    The app must answer `POST path` with `{"message": "…"}` by `{"response": "<the reply>"}`.
    Learner code runs under the watchdog (`labsupport.checks.watchdog`): a blocked loop is
    stopped and reported, never left hanging.
    """
    check_int("n", n, minimum=2, why="concurrency needs company")
    latency = await reference_latency()
    reference_app, reference_client = _reference_app(path)

    async def measure() -> tuple[_Run, _Run, int, bool, list[_Run]]:
        reference = await _run(reference_app, path, n)
        with built_clients() as built, caught_warnings() as caught:
            learner = await _run(app, path, n)
            gc.collect()  # a coroutine that was never awaited only warns when it is collected
        again: list[_Run] = []
        if _needs_second_look(reference, learner, built.count, n) or (
            _blocked_extra(reference, learner, latency) and not _few_at_once(reference, learner, n)
        ):
            # Slow once may be the machine; slow twice, each time next to the reference, is not.
            again = [await _run(reference_app, path, n), await _run(app, path, n)]
        return reference, learner, built.count, never_awaited(caught), again

    try:
        outcome = await guarded(
            measure(), block_limit=1.0 + 10 * latency, time_limit=30.0 + 4 * n * latency
        )
    finally:
        await reference_client.close()
    if outcome.blocked is not None or outcome.timed_out:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, f"the {n} requests")
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
    reference, learner, clients_built, unawaited, again = outcome.value
    return _verdict(latency, n, path, reference, learner, clients_built, unawaited, again)


def _verdict(
    latency: float,
    n: int,
    path: str,
    reference: _Run,
    learner: _Run,
    clients_built: int,
    unawaited: bool,
    again: list[_Run],
) -> CheckResult:
    report, lag = learner.report, learner.lag
    ratio = report.wall / max(reference.report.wall, 1e-9)
    evidence = [
        f"{n} concurrent requests took {report.wall:.2f} s ≈ {ratio:.1f}× the time of a "
        f"reference app with one shared, awaited AsyncOpenAI ({reference.report.wall:.2f} s; one "
        f"upstream call takes {latency:.2f} s).",
        f"The event loop was blocked for {lag.blocked:.2f} s; {_upstream_line(learner.stats)}",
        f"The app built {clients_built} OpenAI client{'s' if clients_built != 1 else ''} while "
        "the check ran.",
    ]

    def fail(cause: Cause, summary: str, hint: str, *extra: str) -> CheckResult:
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause=cause,
            summary=summary,
            evidence=(*evidence, *extra),
            hint=hint,
        )

    if _mentions(report, NESTED_LOOP_ERRORS):
        return fail(
            "nested_event_loop",
            "the endpoint tried to start an event loop inside the running one.",
            "an `async def` endpoint already runs on the event loop: `await` the call instead "
            "of `asyncio.run(...)` or `loop.run_until_complete(...)`.",
            _first_problem(report),
        )
    if unawaited or _mentions(report, ("coroutine",)):
        return fail(
            "not_awaited",
            "a coroutine was never awaited, so the endpoint never got a reply.",
            "add `await` in front of `aclient.chat.completions.create(...)`.",
            _first_problem(report),
        )
    if report.ok and all(body is None for body in report.bodies):
        return fail(
            "missing_return",
            f"all {n} replies were empty (null): the endpoint returned nothing.",
            'end the endpoint with `return {"response": response.choices[0].message.content}`.',
        )
    if not report.ok or not _replies_ok(report):
        bad = sum(not _reply_ok(r.status, r.body) for r in report.requests)
        return fail(
            "bad_reply",
            f"{bad} of {n} requests did not get a proper reply.",
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
            _first_problem(report),
        )
    if clients_built >= max(2, n // 2):
        return fail(
            "client_per_request",
            f"the app built a new OpenAI client for each request: {clients_built} clients for "
            f"{n} requests.",
            "create ONE `AsyncOpenAI` outside the endpoint (at module level, or in a lifespan) "
            "and `await` its calls in every request: each new client builds its own connection "
            "pool, and building it costs time on the event loop.",
        )
    # Counts first: a blocked or bottlenecked app lets few of the n calls overlap, where the
    # reference app, measured just before, let most of them overlap.
    peak = _peak(learner)
    few_at_once = _few_at_once(reference, learner, n)
    slow_twice = False
    if again:
        second_reference, second = again
        second_ratio = second.report.wall / max(second_reference.report.wall, 1e-9)
        slow_twice = ratio >= SLOW_TWICE and second_ratio >= SLOW_TWICE
        evidence.append(f"Measured again: {second_ratio:.1f}× the reference app's time.")
    # A loop blocked before each call lets the calls overlap (each request's first step runs
    # in one go), so the blocked time itself decides, beyond the reference's own, twice.
    blocked_more = _blocked_extra(reference, learner, latency) and (
        not again or _blocked_extra(again[0], again[1], latency)
    )
    if _blocked(learner) and ((ratio >= SLOWER and few_at_once) or blocked_more):
        if learner.stats is not None and any(c.client == "sync" for c in learner.stats.timeline):
            return fail(
                "sync_client_in_async",
                "the event loop was blocked by the sync OpenAI client: each request waited for "
                "the one before.",
                "inside `async def`, use one shared `AsyncOpenAI` client and `await` its calls "
                "(or make the endpoint a plain `def`, which FastAPI runs in its thread pool).",
            )
        return fail(
            "blocked_loop",
            "the event loop was blocked: each request waited for the one before.",
            "something in the endpoint blocks without `await` (time.sleep, a sync client, "
            "blocking I/O): use its async version and `await` it, or run it with "
            "`await asyncio.to_thread(...)`.",
        )
    if (few_at_once or slow_twice) and _threaded_calls(learner):
        evidence.append(
            f"The calls ran in worker threads, at most {peak} at once: the thread pool's size "
            "bounds them (asyncio.to_thread's default pool has min(32, CPUs + 4) threads)."
        )
    elif few_at_once or slow_twice:
        return fail(
            "concurrency_limited",
            f"the loop stayed free, but the app let at most {peak} of the {n} requests reach the "
            "upstream at once"
            + (
                ", and took several times as long as the reference app, twice."
                if slow_twice
                else "."
            ),
            "something lets only a few requests through at a time (a semaphore, a lock, a "
            "single worker, a sleep): an endpoint that awaits one shared `AsyncOpenAI` needs no "
            "bound.",
        )
    return CheckResult(
        exercise=EXERCISE,
        passed=True,
        cause="ok",
        summary=f"your app answered this check's {n} concurrent requests together, about as fast "
        "as the reference app, and the event loop stayed free.",
        evidence=tuple(evidence),
    )


def _blocked(run: _Run) -> bool:
    """Whether the event loop was blocked for at least half of the run."""
    return run.lag.blocked >= 0.5 * run.report.wall


def _blocked_extra(reference: _Run, learner: _Run, latency: float) -> bool:
    """Whether `learner` blocked the loop, and took, `BLOCKED_EXTRA` latencies beyond `reference`
    (both in seconds)."""
    extra = BLOCKED_EXTRA * latency
    return (
        learner.lag.blocked - reference.lag.blocked >= extra
        and learner.report.wall - reference.report.wall >= extra
    )


def _few_at_once(reference: _Run, learner: _Run, n: int) -> bool:
    """Whether `learner` let few of the `n` calls overlap where `reference` let most: a count, so
    it needs no second look."""
    peak = _peak(learner)
    return 0 < peak < n and 2 * peak <= _peak(reference)


def _peak(run: _Run) -> int:
    return run.stats.max_in_flight if run.stats is not None else 0


def _threaded_calls(run: _Run) -> bool | None:
    """Whether every upstream call came from the sync client (so, with the loop free, from worker
    threads); None without counters."""
    if run.stats is None or not run.stats.timeline:
        return None
    return all(call.client == "sync" for call in run.stats.timeline)


def _needs_second_look(reference: _Run, learner: _Run, clients_built: int, n: int) -> bool:
    """Whether the learner's run was slow next to the reference for no counted reason."""
    return (
        learner.report.ok
        and learner.report.wall >= SLOW_TWICE * reference.report.wall
        and clients_built < max(2, n // 2)
        and not _blocked(learner)
        and 2 * _peak(learner) > _peak(reference)
    )


def _reference_app(path: str) -> tuple[FastAPI, AsyncOpenAI]:
    """The answer the check compares with: one shared `AsyncOpenAI`, awaited."""
    client = AsyncOpenAI()
    app = FastAPI()

    @app.post(path)
    async def chat(request: Request) -> dict[str, Any]:
        message = (await request.json())["message"]
        response = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": message}]
        )
        return {"response": response.choices[0].message.content}

    return app, client


async def _run(app: Any, path: str, n: int) -> _Run:
    upstream = upstream_or_none()
    async with asgi_client(app) as client, loop_lag() as lag:
        report = await fire(
            client, "POST", path, n=n, json=lambda i: {"message": f"Summarize: Ticket {i}."}
        )
    return _Run(report, lag, upstream.stats if upstream is not None else None)


def _upstream_line(stats: UpstreamStats | None) -> str:
    if stats is None:
        return "no upstream counters (live mode without setup)."
    if not stats.calls:
        return "the upstream saw no calls."
    kinds = " and ".join(sorted({call.client for call in stats.timeline}))
    overlap = "one at a time" if stats.max_in_flight <= 1 else "overlapping in time"
    return f"the upstream saw {stats.calls} calls from the {kinds} client, {overlap}."


def _reply_ok(status: int | None, body: Any) -> bool:
    return (
        status == 200
        and isinstance(body, dict)
        and isinstance(body.get("response"), str)
        and bool(body["response"])
    )


def _replies_ok(report: LoadReport) -> bool:
    return all(_reply_ok(r.status, r.body) for r in report.requests)


def _mentions(report: LoadReport, needles: tuple[str, ...]) -> bool:
    return any(needle in f"{r.error}{r.body}" for r in report.requests for needle in needles)


def _first_problem(report: LoadReport) -> str:
    for record in report.requests:
        if record.error:
            return f"First error: {record.error_type}: {shorten(record.error, 160)}"
        if record.status != 200 or not isinstance(record.body, dict):
            return f"First bad reply: HTTP {record.status}: {shorten(str(record.body), 160)}"
        if not record.body.get("response"):
            return f"First bad reply: {shorten(str(record.body), 160)}"
    return "Every reply looked fine."
