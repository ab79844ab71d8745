"""Checker for notebook 01: an endpoint that calls the upstream without blocking the event loop.

The lesson's invariants, measured for any answer; the verdict is their conjunction, the cause
(`CheckResult.cause`) the first one that failed, and the hint its fix:

1. The check can run it: the watchdog did not have to stop a blocked loop ("threading_primitive",
   "blocked_loop"), the requests finished in time ("timed_out"), the lifespan ran ("app_error").
2. Every request gets `{"response": "<text>"}`: no coroutine left un-awaited ("not_awaited"),
   no loop started inside the running one ("nested_event_loop"), a reply returned at all
   ("missing_return"), of the right shape ("bad_reply").
3. Each reply is what the upstream answered to that request's own prompt: not a constant, not
   another request's reply, not made up while the call runs on in a forgotten task
   ("wrong_reply").
4. One shared client: the app does not build a client per request ("client_per_request": a
   count, independent of how long building one takes).
5. A second burst after a pause works as the first did, and nothing the app started is still
   running once every reply is in ("client_closed" — a shared client closed after its first
   use —, "second_burst_failed", "task_left_running").
6. The same app, served by uvicorn on loopback with the upstream over real TCP, answers two
   bursts too ("fails_over_tcp": a connection pool used from several event loops, say
   `asyncio.run` per request in a worker thread, fails there with "Event loop is closed").
7. The event loop stays free: its blocked time, beyond a reference app's measured just before,
   stays below a few latencies, twice ("sync_client_in_async" when the sync client was the one
   used, else "blocked_loop").
8. The requests run together: the upstream sees many calls in flight at once, and the burst is
   not several times slower than the reference app, twice ("concurrency_limited"); the evidence
   shows the wall time beside one latency and the CPU time the process used meanwhile. Calls
   from the sync client run in worker threads, whose pool bounds them: there, at least half the
   smallest standard pool (asyncio's default executor) must overlap; a lock, a one-thread
   executor or a `CapacityLimiter(1)` around them lets one through at a time.

A burst that failed, or was several times slower than the reference, is not followed by a second
one (nor by the TCP bursts): its own invariants already fail, and the check stays short.

Timings are judged against the reference app (one shared `AsyncOpenAI`, awaited) measured in the
same check, so a loaded machine slows both alike; counts (clients built, calls in flight) need
no reference. A ✅ says only what was measured.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import os
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from fastapi import FastAPI, Request
from openai import AsyncOpenAI

from .._text import shorten
from ..load import LoadReport
from ..upstream import UpstreamStats
from ..validation import check_int
from ._clients import built_clients
from ._common import (
    app_failed,
    caught_warnings,
    never_awaited,
    reference_latency,
    stopped_by_watchdog,
    upstream_or_none,
)
from ._invariants import Burst, bursts, mismatched_replies, over_tcp
from ._scenario import offline_upstream
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
    "wrong_reply",
    "client_per_request",
    "sync_client_in_async",
    "concurrency_limited",
    "client_closed",
    "second_burst_failed",
    "task_left_running",
    "fails_over_tcp",
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

THREAD_POOL_FLOOR: Final = min(32, (os.cpu_count() or 1) + 4)
"""The smallest standard pool of worker threads: asyncio's default executor (`to_thread`) has
min(32, CPUs + 4) threads; Starlette's (`def` endpoints, `run_in_threadpool`) has 40."""

NESTED_LOOP_ERRORS: Final = (
    "cannot be called from a running event loop",
    "loop is already running",
)

CLOSED_CLIENT_ERRORS: Final = ("client has been closed",)
"""What httpx(2) says when a closed client is asked to send a request."""

PAUSE_LATENCIES: Final = 2.0
"""The pause between the two bursts, in upstream latencies."""


@dataclass(frozen=True)
class _Measured:
    reference: Burst
    first: Burst
    second: Burst | None
    """None when the first burst already failed, or was too slow to be worth a second (an app
    that would pass without it gets it measured afterwards)."""
    clients_built: int
    unawaited: bool
    again: tuple[Burst, Burst] | None
    tcp: Burst | BaseException | None
    """The last burst over TCP (the second, unless the first failed), what the app raised
    there (its lifespan), or None when not measured."""


@recorded(
    notebook="01_async_client",
    # In a tab a sync call's wait (the simulated upstream's time.sleep) suspends the WebAssembly
    # stack instead of blocking the loop (JSPI): the trap this check looks for does not show.
    needs="TCP sockets (it serves your app with uvicorn) and an event loop that a sync call blocks",
    app=an_app,
)
async def check_async_endpoint(app: Any, *, path: str = "/chat", n: int = 20) -> CheckResult:
    """Send `app`'s `path` two bursts of `n` concurrent requests (in process, a pause between
    them), as many to a reference app with one shared `AsyncOpenAI`, and one burst over real
    TCP; judge the lesson's invariants (see the module docstring) on what was measured.

    The app must answer `POST path` with `{"message": "…"}` by `{"response": "<the reply>"}`.
    Learner code runs under the watchdog (`labsupport.checks.watchdog`): a blocked loop is
    stopped and reported, never left hanging.
    """
    check_int("n", n, minimum=2, why="concurrency needs company")
    latency = await reference_latency()
    reference_app, reference_client = _reference_app(path)
    texts = [_ticket(i) for i in range(n)]
    pause = PAUSE_LATENCIES * latency

    async def over_tcp_after(second: Burst | None) -> Burst | BaseException | None:
        """Two bursts with the upstream over real TCP, once the burst after the pause worked."""
        mock = offline_upstream()
        if mock is None or second is None or not second.report.ok:
            return None
        try:
            with over_tcp(mock) as server:
                *_, tcp = await bursts(
                    app, path, texts, upstream=server, pause=pause, tcp=True, go_on=_all_answered
                )
        except Exception as error:  # the app's startup or shutdown, over TCP: evidence
            return error
        return tcp

    async def measure() -> _Measured:
        upstream = upstream_or_none()
        (reference,) = await bursts(reference_app, path, texts, upstream=upstream, count=1)
        with built_clients() as built, caught_warnings() as caught:
            first, *rest = await bursts(
                app,
                path,
                texts,
                upstream=upstream,
                pause=pause,
                go_on=functools.partial(_worth_a_second, reference),
            )
            gc.collect()  # a coroutine that was never awaited only warns when it is collected
        again: tuple[Burst, Burst] | None = None
        if _needs_second_look(reference, first, built.count, n) or (
            _blocked_extra(reference, first, latency) and not _few_at_once(reference, first, n)
        ):
            # Slow once may be the machine; slow twice, each time next to the reference, is not.
            (again_reference,) = await bursts(
                reference_app, path, texts, upstream=upstream, count=1
            )
            (again_learner,) = await bursts(app, path, texts, upstream=upstream, count=1)
            again = (again_reference, again_learner)
        second = rest[0] if rest else None
        if second is None and again is not None and not again[1].report.ok:
            second = again[1]  # the second look is a later burst too, and it failed
        return _Measured(
            reference,
            first,
            second,
            built.count,
            never_awaited(caught),
            again,
            await over_tcp_after(second),
        )

    async def after_the_pause(measured: _Measured) -> _Measured:
        """The burst after the pause and the TCP run, which a first burst slowed by a busy
        machine skipped."""
        upstream = upstream_or_none()
        *_, second = await bursts(app, path, texts, upstream=upstream, pause=pause)
        return dataclasses.replace(measured, second=second, tcp=await over_tcp_after(second))

    block_limit, time_limit = 1.0 + 10 * latency, 30.0 + 8 * n * latency
    try:
        outcome = await guarded(measure(), block_limit=block_limit, time_limit=time_limit)
        skipped = outcome.value
        if (
            outcome.error is None
            and skipped is not None
            and skipped.second is None
            and _verdict(latency, n, path, skipped).passed
        ):
            # A pass needs the burst after the pause (and the TCP run after it).
            outcome = await guarded(
                after_the_pause(skipped), block_limit=block_limit, time_limit=time_limit
            )
    finally:
        await reference_client.close()
    if outcome.blocked is not None or outcome.timed_out:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, f"the {n} requests")
    if outcome.error is not None or outcome.value is None:
        return app_failed(EXERCISE, outcome.error)
    return _verdict(latency, n, path, outcome.value)


def _verdict(latency: float, n: int, path: str, measured: _Measured) -> CheckResult:
    reference, learner = measured.reference, measured.first
    report = learner.report
    ratio = report.wall / max(reference.report.wall, 1e-9)
    clients_built = measured.clients_built
    evidence = [
        f"{n} concurrent requests took {report.wall:.2f} s ≈ {ratio:.1f}× the time of a "
        f"reference app with one shared, awaited AsyncOpenAI ({reference.report.wall:.2f} s; one "
        f"upstream call takes {latency:.2f} s; the process used {learner.measured.cpu:.2f} s of "
        "CPU meanwhile).",
        f"The event loop was blocked for {learner.measured.blocked:.2f} s (longest block "
        f"{learner.measured.longest:.2f} s); {_upstream_line(learner.measured.stats)}",
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
    if measured.unawaited or _mentions(report, ("coroutine",)):
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
    if _mentions(report, CLOSED_CLIENT_ERRORS):
        bad = sum(not _reply_ok(r.status, r.body) for r in report.requests)
        return fail(*_closed_client(bad, n, "in the first burst"), _first_problem(report))
    if not report.ok or not _replies_ok(report):
        bad = sum(not _reply_ok(r.status, r.body) for r in report.requests)
        return fail(
            "bad_reply",
            f"{bad} of {n} requests did not get a proper reply.",
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
            _first_problem(report),
        )
    wrong = _wrong_replies(learner)
    if wrong is not None:
        return fail(
            "wrong_reply",
            f"{wrong} of {n} replies were not what the upstream answered to that request's "
            "message.",
            "return the reply of the call made for this request: "
            '`return {"response": response.choices[0].message.content}` after `response = '
            "await aclient.chat.completions.create(...)`, not a fixed text, and not before the "
            "call has finished (a task nobody awaits answers nobody).",
            f"First mismatch: {_first_mismatch(learner)}",
        )
    sent = n * (1 if measured.second is None else 2)
    if clients_built >= max(2, sent // 2):
        return fail(
            "client_per_request",
            f"the app built a new OpenAI client for each request: {clients_built} clients for "
            f"{sent} requests.",
            "create ONE `AsyncOpenAI` outside the endpoint (at module level, or in a lifespan) "
            "and `await` its calls in every request: each new client builds its own connection "
            "pool, and building it costs time on the event loop.",
        )
    after_pause = measured.second
    problem = _second_burst_problem(after_pause, n) if after_pause is not None else None
    if problem is not None:
        return fail(*problem)
    running = max(learner.left_running, after_pause.left_running if after_pause else 0)
    if running:
        return fail(
            "task_left_running",
            f"{running} task{'s' if running != 1 else ''} the app started were still running "
            "after every reply had been sent.",
            "await the work a request starts before returning its reply, or keep a reference to "
            "a background task and let it report its errors (FastAPI's `BackgroundTasks`).",
        )
    tcp = measured.tcp
    tcp_hint = (
        "use one `AsyncOpenAI` from the event loop that serves the app, with `await`: "
        "`asyncio.run(...)` (or a new event loop) per request makes connections that belong to "
        'a loop that is closed by the next request ("Event loop is closed").'
    )
    if isinstance(tcp, BaseException):
        return fail(
            "fails_over_tcp",
            "served by uvicorn with the upstream over real TCP, the app failed "
            f"({type(tcp).__name__}: {shorten(str(tcp), 120)}), although the same app answered "
            "in process.",
            tcp_hint,
        )
    if tcp is not None and (not tcp.report.ok or _wrong_replies(tcp) is not None):
        failed = sum(not _reply_ok(r.status, r.body) for r in tcp.report.requests)
        return fail(
            "fails_over_tcp",
            f"served by uvicorn with the upstream over real TCP, {failed or 'some'} of {n} "
            "requests failed, although the same app answered in process.",
            tcp_hint,
            _first_problem(tcp.report),
        )
    # Counts first: a blocked or bottlenecked app lets few of the n calls overlap, where the
    # reference app, measured just before, let most of them overlap.
    peak = learner.measured.peak
    few_at_once = _few_at_once(reference, learner, n)
    slow_twice = False
    again = measured.again
    if again is not None:
        second_reference, second = again
        second_ratio = second.report.wall / max(second_reference.report.wall, 1e-9)
        slow_twice = ratio >= SLOW_TWICE and second_ratio >= SLOW_TWICE
        evidence.append(f"Measured again: {second_ratio:.1f}× the reference app's time.")
    # A loop blocked before each call lets the calls overlap (each request's first step runs
    # in one go), so the blocked time itself decides, beyond the reference's own, twice.
    blocked_more = _blocked_extra(reference, learner, latency) and (
        again is None or _blocked_extra(again[0], again[1], latency)
    )
    if _blocked(learner) and ((ratio >= SLOWER and few_at_once) or blocked_more):
        # The sync client on the loop makes one call at a time; in worker threads (to_thread,
        # run_in_threadpool) its calls overlap, and whatever blocked the loop was something else.
        if peak <= 1 and any(call.client == "sync" for call in learner.measured.timeline):
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
    threaded = _threaded_calls(learner)
    if threaded and peak < max(2, min(n, THREAD_POOL_FLOOR) // 2):
        return fail(
            "concurrency_limited",
            f"the loop stayed free, but the calls ran in worker threads at most {peak} at a "
            f"time: the {n} requests were served one by one.",
            "something lets only one thread call at a time (a `threading.Lock` around the "
            "client, a one-thread executor, a `CapacityLimiter(1)`): the sync client is safe "
            "to share between threads; call it without a lock, or use one shared "
            "`AsyncOpenAI` and `await` it.",
        )
    if threaded:
        evidence.append(
            f"The calls ran in worker threads, at most {peak} at once: the thread pool's size "
            f"bounds them (asyncio.to_thread's default pool has {THREAD_POOL_FLOOR} threads "
            "here, min(32, CPUs + 4); FastAPI's, for `def` endpoints, has 40)."
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
    evidence.append(_tcp_line(tcp, n))
    where = "in process and over real TCP" if tcp is not None else "in process"
    return CheckResult(
        exercise=EXERCISE,
        passed=True,
        cause="ok",
        summary=f"your app answered this check's two bursts of {n} concurrent requests with the "
        "upstream's own replies, its calls overlapping at the upstream "
        f"({ratio:.1f}× the reference app's time), {where}, and the event loop stayed free.",
        evidence=tuple(evidence),
    )


_THINGS: Final = ("printer", "badge reader", "coffee machine", "projector", "wifi", "door")
_FOLLOW_UPS: Final = ("A part is on order.", "Facilities know.", "It started on Monday.")


def _ticket(index: int) -> str:
    """Request `index`'s message: two sentences, so a summary (the first) is not the message
    itself, and a code of its own, so each reply can be told from the others."""
    thing = _THINGS[index % len(_THINGS)]
    return (
        f"Ticket {index + 1:02d}-{chr(65 + index % 26)}: the {thing} on floor {index % 7 + 1} "
        f"fails every morning. {_FOLLOW_UPS[index % len(_FOLLOW_UPS)]}"
    )


def _worth_a_second(reference: Burst, burst: Burst) -> bool:
    """Whether `burst` is worth a second one after the pause: it worked, and was not so slow
    next to `reference` that its first invariants will fail anyway."""
    slow = burst.report.wall >= SLOW_TWICE * max(reference.report.wall, 1e-9)
    return burst.report.ok and not slow


def _all_answered(burst: Burst) -> bool:
    """Whether every request of `burst` got a 2xx answer."""
    return burst.report.ok


def _second_burst_problem(second: Burst, n: int) -> tuple[Cause, str, str, str] | None:
    """What went wrong in the burst after the pause, if anything (cause, what, hint, detail)."""
    report = second.report
    if report.ok and _replies_ok(report) and _wrong_replies(second) is None:
        return None
    failed = sum(not _reply_ok(r.status, r.body) for r in report.requests)
    if _mentions(report, CLOSED_CLIENT_ERRORS):
        what = "after a pause, although the first burst worked"
        return (*_closed_client(failed, n, what), _first_problem(report))
    return (
        "second_burst_failed",
        f"the first burst worked, but after a pause {failed or 'some'} of {n} requests of a "
        "second burst failed.",
        "whatever the endpoint shares between requests must still work for the next ones: do "
        "not close, replace or use up shared objects inside the endpoint.",
        _first_problem(report),
    )


def _closed_client(failed: int, n: int, when: str) -> tuple[Cause, str, str]:
    return (
        "client_closed",
        f"{failed} of {n} requests failed {when}: the shared client had been closed.",
        "do not close the shared client inside the endpoint (`async with client:` closes it "
        "when the block ends): open it once, at module level or in a lifespan, and close it "
        "when the app shuts down.",
    )


def _wrong_replies(burst: Burst) -> int | None:
    """How many replies were not the upstream's answer to their request's text (None if all
    were, or when there are no upstream counters to compare with)."""
    if burst.measured.stats is None:
        return None
    wrong = mismatched_replies(burst.replies, burst.texts, burst.measured.timeline)
    return len(wrong) or None


def _first_mismatch(burst: Burst) -> str:
    wrong = mismatched_replies(burst.replies, burst.texts, burst.measured.timeline)
    if not wrong:
        return "none."
    index = wrong[0]
    return f"request {index + 1} got {shorten(repr(burst.replies[index]), 100)}."


def _tcp_line(tcp: Burst | None, n: int) -> str:
    if tcp is None:
        return "Over real TCP: not measured (live mode: the upstream cannot be moved)."
    return (
        f"Served by uvicorn with the upstream over real TCP, two bursts: {n} of {n} replies "
        "each time were the upstream's."
    )


def _blocked(burst: Burst) -> bool:
    """Whether the event loop was blocked for at least half of the burst."""
    return burst.measured.blocked >= 0.5 * burst.report.wall


def _blocked_extra(reference: Burst, learner: Burst, latency: float) -> bool:
    """Whether `learner` blocked the loop, and took, `BLOCKED_EXTRA` latencies beyond `reference`
    (both in seconds)."""
    extra = BLOCKED_EXTRA * latency
    return (
        learner.measured.blocked - reference.measured.blocked >= extra
        and learner.report.wall - reference.report.wall >= extra
    )


def _few_at_once(reference: Burst, learner: Burst, n: int) -> bool:
    """Whether `learner` let few of the `n` calls overlap where `reference` let most: a count, so
    it needs no second look."""
    peak = learner.measured.peak
    return 0 < peak < n and 2 * peak <= reference.measured.peak


def _threaded_calls(burst: Burst) -> bool | None:
    """Whether every upstream call came from the sync client (so, with the loop free, from worker
    threads); None without counters."""
    timeline = burst.measured.timeline
    if not timeline:
        return None
    return all(call.client == "sync" for call in timeline)


def _needs_second_look(reference: Burst, learner: Burst, clients_built: int, n: int) -> bool:
    """Whether the learner's run was slow next to the reference for no counted reason."""
    return (
        learner.report.ok
        and learner.report.wall >= SLOW_TWICE * reference.report.wall
        and clients_built < max(2, n // 2)
        and not _blocked(learner)
        and 2 * learner.measured.peak > reference.measured.peak
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
