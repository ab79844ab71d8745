"""Checker for notebook 03: a batch that never has more calls in flight than the upstream allows.

The lesson's invariants, measured for any answer; the verdict is their conjunction, the cause
(`CheckResult.cause`) the first one that failed, the hint its fix:

1. The function can be run and returns one summary per text, each the upstream's own reply to
   that text (compared with the prompts and replies the upstream recorded), in order.
2. The event loop is never blocked for long (its longest block, watched in every run, measured
   twice before it counts: "blocked_loop").
3. Never more than `limit` calls in flight at the upstream, judged where a bound can act: in
   process first, and, when that saw more, again with the upstream over real TCP, where a
   connection pool bounds calls too (`httpx2.Limits(max_connections=limit)`, as the lesson's
   table lists, is a bound: the in-process mock answers inside the pool, so only real
   connections show it).
4. Exactly `limit` in flight, a new call starting as soon as one ends (not fewer, not waves).
5. The same function works with the upstream over real TCP, twice in a row ("fails_over_tcp":
   connections made in one event loop cannot be used from another, so `asyncio.run` per call in
   worker threads fails there with "Event loop is closed").

A call that failed because the shared client had been closed is "client_closed".

In a browser tab (Pyodide, the course's JupyterLite site) there are no sockets: invariants 3 and
5 are judged in process only. There httpx2 sends through the browser's `fetch` and ignores
`httpx2.Limits`, so a pool limit bounds nothing and is judged so.

Its causes (`CheckResult.cause`):

* "ok" — exactly `limit` calls in flight, a new one starting as soon as one ends, every summary
  in its place;
* "offline_only" — live mode: the check needs the offline upstream to set a rate limit;
* "threading_primitive" / "blocked_loop" / "timed_out" — the watchdog had to stop the function
  (a `threading.Semaphore` blocks the event loop while it waits), or it never finished;
  "blocked_loop" is also invariant 2's cause (blocked long, twice, but never stopped);
* "not_async", "not_awaited", "nested_event_loop", "crashed", "missing_return",
  "wrong_count", "wrong_order", "wrong_summary" — what it returned is not one summary per text,
  in order;

with more than `limit` calls in flight, told apart by counting the asyncio semaphores the
learner's code built and acquired:

* "no_bound" — no semaphore was acquired at all;
* "semaphore_per_call" — a semaphore was built for (about) every call: each bounds only itself;
* "bound_above_limit" — a shared semaphore, but sized above the limit (module level or per batch);
* "released_before_await" — a semaphore of the right size, but the calls ran outside it (a
  coroutine created under the semaphore and awaited after its release);

with at most `limit` in flight:

* "sequential" — one call at a time;
* "bound_below_limit" — fewer than `limit` at a time;
* "waves" — `limit` at a time, but in waves (chunks): each wave waited for its slowest call
  before the next began, so the slots stood idle. Seen from the calls in flight whenever one
  started, with call durations spread (the upstream's seeded jitter).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from .._text import shorten
from ..upstream import RateLimit, UpstreamStats
from ..validation import check_int
from ._common import caught_warnings, stopped_by_watchdog
from ._invariants import NO_SOCKETS, Measured, Watch, loop_blocked, over_tcp
from ._scenario import (
    Outcome,
    describe_error,
    expected_replies,
    nested_loop,
    offline_upstream,
    reply_matches,
    run_learner_code,
    scripted,
    settle_unawaited,
)
from ._semaphores import SemaphoreUse, watched_semaphores
from .result import CheckResult, an_async_function, recorded
from .watchdog import guarded

__all__ = ["CAUSES", "Cause", "batch_texts", "check_bounded_batch"]

EXERCISE = "a batch bounded by the upstream's limit"

Cause = Literal[
    "ok",
    "offline_only",
    "threading_primitive",
    "blocked_loop",
    "timed_out",
    "not_async",
    "not_awaited",
    "nested_event_loop",
    "crashed",
    "missing_return",
    "wrong_count",
    "wrong_order",
    "wrong_summary",
    "no_bound",
    "semaphore_per_call",
    "bound_above_limit",
    "released_before_await",
    "sequential",
    "bound_below_limit",
    "waves",
    "client_closed",
    "fails_over_tcp",
]
CAUSES: Final[tuple[str, ...]] = get_args(Cause)

# So long that no client retries (the SDK gives up on a retry-after above two minutes): each
# call over the limit is refused exactly once, and the count does not depend on timing.
NO_RETRY_AFTER: Final = 600.0

JITTER: Final = 0.5
"""The spread of call durations in the first run, as a fraction of the latency: with calls of
unequal length, a semaphore starts the next call as soon as any one ends, waves do not."""

CLOSED_CLIENT: Final = "client has been closed"
"""What httpx(2) says when a closed client is asked to send a request."""

BatchFunction = Callable[[list[str]], Awaitable[Any]]

_PRODUCTS = ("kettle", "headphones", "backpack", "lamp", "keyboard", "tent", "blender", "watch")
_VERDICTS = (
    "works well and arrived early",
    "broke after a week of use",
    "is fine but the manual is confusing",
    "exceeded every expectation we had",
)


def batch_texts(count: int) -> list[str]:
    """`count` short product reviews, each with its own number so each summary is unique."""
    return [
        f"Review {i + 1}: The {_PRODUCTS[i % len(_PRODUCTS)]} {_VERDICTS[i % len(_VERDICTS)]}. "
        "Would order again."
        for i in range(count)
    ]


@dataclass(frozen=True)
class _Runs:
    free: Outcome
    stats: UpstreamStats
    semaphores: SemaphoreUse
    returned_unawaited: bool
    refused: Outcome | None = None
    refused_stats: UpstreamStats | None = None
    blocked: tuple[Measured, Measured] | None = None
    """The first run's measure and its repetition's, when the loop was blocked long in both."""
    tcp_problem: tuple[Cause, str, str] | None = None
    """What went wrong in two more runs with the upstream over real TCP (invariant 5)."""
    over_tcp: bool = False
    """Whether `free` and `stats` are from the run over real TCP (in process saw more than
    `limit` in flight, but real connections were bounded: a connection pool's limit)."""


@recorded(notebook="03_semaphore", fn=an_async_function)
async def check_bounded_batch(fn: BatchFunction, limit: int = 5) -> CheckResult:
    """Run `fn(texts)` on 4 × `limit` texts and judge how many calls it had in flight at once.

    `fn` is an `async def` taking a list of texts and returning one summary (str) per text, in
    the texts' order. The upstream accepts at most `limit` calls in flight. A bounded batch
    keeps exactly `limit` in flight (not more: 429s; not fewer: slower than allowed), so it
    takes about ⌈n / limit⌉ latencies.

    The first run has no rate limit, to see how many calls `fn` sends at once (with call
    durations spread by the upstream's jitter). If that is more than `limit`, a second run turns
    the limit on and counts the 429 answers. Learner code runs under the watchdog; the
    upstream's settings are restored afterwards, even when the check is interrupted.
    """
    if not callable(fn):
        raise TypeError(f"fn must be an async function taking a list of texts; got {fn!r:.80}")
    check_int("limit", limit, minimum=2, maximum=50, why="calls in flight")
    upstream = offline_upstream()
    if upstream is None:
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause="offline_only",
            summary="this check needs the offline lab: it sets a rate limit, which a live API "
            "cannot.",
            hint="run the notebook without LAB_MODE=live to get it checked.",
        )
    latency = max(upstream.latency, 0.001)
    texts = batch_texts(4 * limit)
    time_limit = 3 * len(texts) * latency + 5.0
    name = getattr(fn, "__name__", "your function")

    async def runs() -> _Runs:
        with caught_warnings():  # what the learner's code leaves behind is judged, not printed
            try:
                return await _runs()
            finally:
                gc.collect()

    async def free_run(use_tcp: bool) -> tuple[Outcome, Measured]:
        with scripted(upstream, jitter=JITTER * latency):
            if not use_tcp:
                async with Watch(upstream) as watch:
                    free = await run_learner_code(fn, texts, time_limit=time_limit)
                return free, watch.measured
            with over_tcp(upstream) as server:
                async with Watch(server) as watch:
                    free = await run_learner_code(fn, texts, time_limit=time_limit)
                return free, watch.measured

    async def tcp_runs() -> tuple[Cause, str, str] | None:
        for attempt in ("first", "second"):
            outcome, measured = await free_run(use_tcp=True)
            unawaited = await settle_unawaited(outcome.value)
            assert measured.stats is not None  # a FakeServer always counts
            problem = _result_problem(outcome, unawaited, name, texts, measured.stats)
            if problem is not None:
                return _over_tcp_problem(problem, attempt)
        return None

    async def _runs() -> _Runs:
        with watched_semaphores() as use:
            free, measured = await free_run(use_tcp=False)
        stats = measured.stats or upstream.stats
        unawaited = await settle_unawaited(free.value)
        blocked = None
        if loop_blocked(measured, latency):
            # A busy machine can stall the loop once; the answer's own block comes back.
            again_free, again = await free_run(use_tcp=False)
            await settle_unawaited(again_free.value)
            blocked = (measured, again) if loop_blocked(again, latency) else None
        if free.error is not None or unawaited or blocked is not None:
            return _Runs(free, stats, use, unawaited, blocked=blocked)
        if stats.max_in_flight <= limit:
            tcp_problem = None if NO_SOCKETS else await tcp_runs()
            return _Runs(free, stats, use, unawaited, blocked=blocked, tcp_problem=tcp_problem)
        if not NO_SOCKETS:
            over_tcp_runs = await tcp_run(free, stats, use, unawaited, blocked)
            if over_tcp_runs is not None:
                return over_tcp_runs
        limited = RateLimit(max_concurrent=limit, retry_after=NO_RETRY_AFTER)
        with scripted(upstream, rate_limit=limited):
            refused = await run_learner_code(fn, texts, time_limit=time_limit)
            refused_stats = upstream.stats
        await settle_unawaited(refused.value)
        return _Runs(free, stats, use, unawaited, refused, refused_stats, blocked)

    async def tcp_run(
        free: Outcome,
        stats: UpstreamStats,
        use: SemaphoreUse,
        unawaited: bool,
        blocked: tuple[Measured, Measured] | None,
    ) -> _Runs | None:
        """The run over real connections, where a connection pool bounds the calls: its
        `_Runs` if it decides the verdict, else None (the limit's refusals decide it)."""
        tcp_free, tcp = await free_run(use_tcp=True)
        tcp_unawaited = await settle_unawaited(tcp_free.value)
        assert tcp.stats is not None  # a FakeServer always counts
        if tcp_free.error is not None:  # it ran in process, and fails over real connections
            problem = _result_problem(tcp_free, tcp_unawaited, name, texts, tcp.stats)
            if problem is not None:
                return _Runs(
                    free,
                    stats,
                    use,
                    unawaited,
                    blocked=blocked,
                    tcp_problem=_over_tcp_problem(problem, "first"),
                )
        if 0 < tcp.stats.max_in_flight <= limit:
            return _Runs(tcp_free, tcp.stats, use, tcp_unawaited, blocked=blocked, over_tcp=True)
        return None

    outcome = await guarded(runs(), block_limit=1.0 + 10 * latency, time_limit=3 * time_limit)
    if outcome.stopped or outcome.value is None:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, name)
    return _verdict(outcome.value, texts, limit, latency, name)


def _verdict(runs: _Runs, texts: list[str], limit: int, latency: float, name: str) -> CheckResult:
    peak = runs.stats.max_in_flight
    waves = math.ceil(len(texts) / limit)
    evidence = [
        f"{len(texts)} texts took {runs.free.wall:.2f} s ≈ {runs.free.wall / latency:.1f}× the "
        f"latency of one call ({latency:.2f} s); ⌈{len(texts)} / {limit}⌉ = {waves} waves would "
        f"take about {waves} latencies. The upstream saw at most {peak} "
        f"call{'s' if peak != 1 else ''} in flight."
    ]

    def fail(cause: Cause, summary: str, hint: str) -> CheckResult:
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause=cause,
            summary=summary,
            evidence=tuple(evidence),
            hint=hint,
        )

    if runs.over_tcp:
        evidence.append(
            f"In process the upstream saw more than {limit} calls at once, but its answers "
            "there skip the client's connection pool; with the upstream over real TCP, at "
            f"most {peak} were in flight: the pool's connections bound them."
        )
    problem = _result_problem(runs.free, runs.returned_unawaited, name, texts, runs.stats)
    if problem is not None and runs.refused is None:
        return fail(*problem)
    if runs.blocked is not None:
        first, again = runs.blocked
        evidence.append(
            f"The event loop's longest block was {first.longest:.2f} s, and "
            f"{again.longest:.2f} s when measured again ({again.blocked:.2f} s blocked in all)."
        )
        return fail(
            "blocked_loop",
            f"the event loop was blocked for {first.longest:.2f} s at a time while {name} ran.",
            "inside `async def`, wait with `await` (`asyncio.Semaphore`, `asyncio.sleep`), never "
            "with `time.sleep` or a threading primitive; run unavoidable blocking code with "
            "`await asyncio.to_thread(...)`.",
        )
    if runs.tcp_problem is not None:
        return fail(*runs.tcp_problem)
    if runs.refused is not None and runs.refused_stats is not None:
        evidence.append(_rate_limited(runs.refused, runs.refused_stats, limit, name))
        return fail(*_over_the_limit(runs.semaphores, peak, limit, len(texts)))
    if peak == 1:
        return fail(
            "sequential",
            "the calls ran one after another (≈ one latency per text).",
            f"start all the texts' tasks with `asyncio.gather` and let a shared "
            f"`asyncio.Semaphore({limit})` hold back all but {limit} of them.",
        )
    if peak < limit:
        return fail(
            "bound_below_limit",
            f"at most {peak} calls ran at once: safe, but slower than the limit of {limit} allows.",
            f"size the shared semaphore to the limit: `asyncio.Semaphore({limit})`.",
        )
    busy = _in_flight_at_starts(runs.stats, limit)
    # Waves see 0, 1, …, limit - 1 others at their starts: (limit - 1) / 2 on average, never
    # more. A refilled slot sees limit - 1. Half a call above the waves' mean tells them apart.
    if busy <= (limit - 1) / 2 + 0.5:
        evidence.append(
            f"When a call started after the first {limit}, on average {busy:.1f} others were "
            f"in flight (a slot freed and refilled at once: {limit - 1})."
        )
        return fail(
            "waves",
            f"the calls ran in waves of {limit}: each wave waited for its slowest call, while "
            "the freed slots stood idle.",
            f"instead of chunks, start every text's task at once and let ONE shared "
            f"`asyncio.Semaphore({limit})` admit a new call whenever one ends.",
        )
    evidence.append(
        f"With the limit on (at most {limit} in flight), the upstream would refuse nothing: "
        "0 × 429. The summaries came back in the texts' order, in process and in two runs "
        "with the upstream over real TCP."
    )
    return CheckResult(
        exercise=EXERCISE,
        passed=True,
        cause="ok",
        summary=f"on this check's {len(texts)} texts, exactly {limit} calls were in flight at a "
        "time, and every summary was in its place.",
        evidence=tuple(evidence),
    )


def _over_tcp_problem(problem: tuple[Cause, str, str], attempt: str) -> tuple[Cause, str, str]:
    """Invariant 5's failure, from what went wrong in a run over real TCP ("client_closed"
    stays itself: the closed client is the cause wherever it shows)."""
    cause, what, _ = problem
    if cause == "client_closed":
        return problem
    return (
        "fails_over_tcp",
        f"with the upstream over real TCP, the {attempt} run went wrong: {what}",
        "call the shared client with `await`, from the running event loop: a new event loop "
        "per call (`asyncio.run` in threads) makes connections that belong to a loop that is "
        'closed before the next call ("Event loop is closed").',
    )


def _over_the_limit(use: SemaphoreUse, peak: int, limit: int, texts: int) -> tuple[Cause, str, str]:
    what = f"the batch had {peak} calls in flight at once, more than the limit of {limit}"
    shared = (
        f"Create ONE `asyncio.Semaphore({limit})` shared by every text's task, and make the call "
        "inside `async with semaphore:`."
    )
    if use.acquired == 0:
        return (
            "no_bound",
            what + ".",
            f"wrap each call in `async with semaphore:`, with ONE `asyncio.Semaphore({limit})` "
            "shared by all the texts' tasks.",
        )
    if use.built >= texts // 2:
        return (
            "semaphore_per_call",
            f"{what}: your code built {use.built} semaphores, one per call.",
            "a semaphore created inside the per-text helper bounds nothing: every task gets "
            f"its own. {shared}",
        )
    if use.largest > limit:
        where = "built per batch" if use.largest_built_here else "shared"
        return (
            "bound_above_limit",
            f"{what}: the semaphore ({where}) has {use.largest} slots.",
            f"size it to the upstream's limit: `asyncio.Semaphore({limit})`.",
        )
    return (
        "released_before_await",
        f"{what}, although a semaphore of {use.largest} slots was acquired: the calls ran "
        "after it was released.",
        "make the call itself inside the `async with semaphore:` block: "
        "`async with semaphore: return await summarize(text)`. Creating the coroutine (or the "
        "task) under the semaphore and awaiting it afterwards leaves the call unbounded.",
    )


def _in_flight_at_starts(stats: UpstreamStats, limit: int) -> float:
    """On average, how many other calls were in flight when a call after the first `limit`
    started: a slot refilled as soon as it frees leaves `limit - 1`; waves leave fewer."""
    calls = sorted(stats.timeline, key=lambda call: call.start)
    later = calls[limit:]
    if not later:
        return float(limit - 1)
    counts = [sum(c.start <= s.start < c.end for c in calls if c is not s) for s in later]
    return sum(counts) / len(counts)


def _rate_limited(outcome: Outcome, stats: UpstreamStats, limit: int, name: str) -> str:
    refused = stats.count(429)
    said = (
        f"{name} raised {describe_error(outcome.error).rstrip('.')}"
        if outcome.error is not None
        else f"{name} returned, with {refused} summar{'ies' if refused != 1 else 'y'} missing"
    )
    return (
        f"With the limit on (at most {limit} in flight), the upstream refused {refused} "
        f"call{'s' if refused != 1 else ''} with 429 on the first try, and {said}."
    )


def _result_problem(
    outcome: Outcome, unawaited: bool, name: str, texts: list[str], stats: UpstreamStats
) -> tuple[Cause, str, str] | None:
    """What is wrong with the returned summaries (cause, what, hint), or None."""
    if outcome.not_async:
        return (
            "not_async",
            f"{describe_error(outcome.error).removeprefix('TypeError: ')}."
            if outcome.error is not None
            else f"{name} is not an async function.",
            f"write `async def {name}(texts):` and `await` the calls inside it.",
        )
    if outcome.error is not None:
        if outcome.timed_out:
            return (
                "timed_out",
                f"{name} did not finish within {outcome.wall:.0f} s.",
                "does it wait forever?",
            )
        if CLOSED_CLIENT in str(outcome.error):
            return (
                "client_closed",
                f"{name} raised {describe_error(outcome.error).rstrip('.')}.",
                "do not close the shared client after a call (`async with client:` closes it for "
                "every other call too): create it once, and close it when you are done.",
            )
        if nested_loop(outcome.error):
            return (
                "nested_event_loop",
                f"{name} raised {describe_error(outcome.error).rstrip('.')}.",
                "you are already inside a running event loop: `await` the coroutine instead of "
                "`asyncio.run(...)` / `run_until_complete(...)`.",
            )
        return (
            "crashed",
            f"{name} raised {describe_error(outcome.error).rstrip('.')}.",
            "check the function on one text first.",
        )
    results = outcome.value
    if unawaited:
        return (
            "not_awaited",
            f"{name} returned {type(results).__name__}, not summaries: nothing awaited the calls.",
            "add `await`: `return await asyncio.gather(...)`.",
        )
    if results is None:
        return "missing_return", f"{name} returned None.", "end it with `return` and the list."
    if not isinstance(results, list | tuple) or len(results) != len(texts):
        size = f"{len(results)} items" if isinstance(results, list | tuple) else "no list"
        return (
            "wrong_count",
            f"{name} returned {size} for {len(texts)} texts.",
            "return a list with one summary per text.",
        )
    replies = expected_replies(texts, stats.timeline)
    for index, summary in enumerate(results):
        if reply_matches(summary, replies[index]):
            continue
        shown = shorten(repr(summary), 80)
        if any(reply_matches(summary, other) for other in replies):
            return (
                "wrong_order",
                f"result {index + 1} is the summary of another text (got {shown}).",
                "return the summaries in the texts' order: `asyncio.gather` keeps it, "
                "`as_completed` does not.",
            )
        return (
            "wrong_summary",
            f"result {index + 1} is not the summary of text {index + 1} (got {shown}).",
            "return the reply texts (`response.choices[0].message.content`), one per text.",
        )
    return None
