"""Checker for notebook 02: a fan-out that runs its calls together and survives one failure.

The lesson's invariants, measured for any answer; the verdict is their conjunction, the cause
(`CheckResult.cause`) the first one that failed, the hint its fix:

1. The function can be run and returns one entry per text, each the upstream's own reply to
   that text (compared with the prompts and replies the upstream recorded), in the texts'
   order, with `"error": None` (the run without failures).
2. The event loop is never blocked for long: its longest block, watched in every run, stays
   below a few latencies (a `time.sleep` backoff, a sync call), measured twice before it
   counts ("blocked_loop").
3. The calls run together: all of them in flight at once at the upstream.
4. One failure costs only its own entry: the run where one text's calls fail returns the other
   results and an error entry for it.
5. The same function works with the upstream over real TCP, twice in a row: connections made
   in one event loop cannot be used from another (threads that each run `asyncio.run` on the
   shared client fail the second time with "Event loop is closed": "fails_over_tcp").
   Not in a browser tab (Pyodide), which has no sockets: there invariant 5 is not judged.

Its causes:

* "ok" — the calls ran together, and one failure cost only its own entry;
* "offline_only" — live mode: the check needs the offline upstream to make a call fail;
* "threading_primitive" / "blocked_loop" / "timed_out" — the watchdog had to stop the function
  (see `labsupport.checks.watchdog`), or it never finished;
* "not_async" — `fn(texts)` returned something that cannot be awaited;
* "not_awaited" — it returned coroutines, tasks or `asyncio.gather(...)` itself, not results;
* "nested_event_loop" — `asyncio.run()` / `run_until_complete()` inside the running loop;
* "crashed" — it raised without any failing call;
* "missing_return" — it returned None;
* "not_a_list", "wrong_count" — not one entry per text;
* "exception_as_entry" — an entry is the exception object (`return_exceptions=True`, unhandled);
* "missing_error_key" — an entry is not a dict with an "error" key;
* "false_error" — an entry whose call worked reports an error;
* "summary_missing" — an entry whose call worked has no "summary" key;
* "wrong_order" — an entry holds another text's reply (or quotes another text);
* "wrong_summary" — an entry's "summary" is not the model's reply to its text;
* "sequential" — the calls ran one after another;
* "not_all_at_once" — some ran together, but not all of them;
* "error_propagated" — one failing call raised out of the function and lost every result;
* "taskgroup_cancelled" — a TaskGroup let the failure out as an ExceptionGroup;
* "error_not_reported" — the failed text's entry says no error;
* "invented_summary" — the failed text's entry carries a summary (such as "N/A") instead of None;
* "fails_over_tcp" — invariant 5;
* "client_closed" — a call failed because the shared client had been closed (`async with
  client:` around one call closes it for all the others).

"not_awaited" also covers a result used without `await` (iterating `asyncio.gather(...)`'s
future raises "await wasn't used with future").
"""

from __future__ import annotations

import gc
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, get_args

from .._text import shorten
from ..upstream import Fault, MockUpstream, UpstreamStats
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
from .result import CheckResult, an_async_function, recorded
from .watchdog import guarded

__all__ = ["CAUSES", "Cause", "check_parallel_fanout"]

EXERCISE = "a parallel fan-out that survives a failure"

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
    "not_a_list",
    "wrong_count",
    "exception_as_entry",
    "missing_error_key",
    "false_error",
    "summary_missing",
    "wrong_order",
    "wrong_summary",
    "sequential",
    "not_all_at_once",
    "error_propagated",
    "taskgroup_cancelled",
    "error_not_reported",
    "invented_summary",
    "fails_over_tcp",
    "client_closed",
]
CAUSES: Final[tuple[str, ...]] = get_args(Cause)

# In no sorted order (by text or by length, either way): results sorted by anything but the
# input's order come back in another order, and are refused.
TEXTS = (
    "Ticket 3: The mobile app crashes on start. It happens on older phones only.",
    "Ticket 1: The login page times out after the update. Users are locked out.",
    "Ticket 5: Password reset emails arrive twice. Nobody is blocked by it.",
    "Ticket 2: Invoices show the wrong currency. Finance noticed it this morning.",
    "Ticket 4: Search finds nothing for accented names. Support has a workaround.",
)
FAILING = 2  # the index of the text whose calls the upstream answers with HTTP 500

FanOut = Callable[[list[str]], Awaitable[Any]]


@dataclass(frozen=True)
class _Problem:
    cause: Cause
    what: str
    hint: str


@dataclass(frozen=True)
class _Runs:
    clean: Outcome
    clean_stats: UpstreamStats
    clean_problem: _Problem | None
    faulty: Outcome | None = None
    faulty_stats: UpstreamStats | None = None
    faulty_problem: _Problem | None = None
    blocked: tuple[Measured, Measured] | None = None
    """A run whose loop was blocked long, and its repetition, when both were."""
    tcp_problem: _Problem | None = None


@recorded(notebook="02_gather", fn=an_async_function)
async def check_parallel_fanout(fn: FanOut) -> CheckResult:
    """Run `fn(texts)` twice against the offline upstream and judge the fan-out.

    `fn` is an `async def` taking a list of texts and returning one dict per text, in order:
    `{"text": …, "summary": "<the model's reply>", "error": None}` when the text's call worked,
    `{"text": …, "summary": None, "error": "<what went wrong>"}` when it failed ("text" may be
    left out).

    First run: no failure. The texts' calls should be in flight together, so the run takes
    about 1× the latency of one call, not one latency per text. Second run: every call for
    text 3 gets HTTP 500 (also on the SDK's retries). `fn` should still return the other four
    results, and an error entry for text 3.

    Learner code runs under the watchdog: a blocked event loop is stopped and reported. The
    upstream's settings are restored afterwards, even when the check is interrupted.
    """
    if not callable(fn):
        raise TypeError(f"fn must be an async function taking a list of texts; got {fn!r:.80}")
    upstream = offline_upstream()
    if upstream is None:
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause="offline_only",
            summary="this check needs the offline lab: it makes one call fail on purpose, which "
            "a live API cannot do.",
            hint="run the notebook without LAB_MODE=live to get it checked.",
        )
    latency = max(upstream.latency, 0.001)
    time_limit = 20 * len(TEXTS) * latency + 5.0
    name = getattr(fn, "__name__", "your function")

    async def both_runs() -> _Runs:
        with caught_warnings():  # what the learner's code leaves behind is judged, not printed
            try:
                return await _both_runs()
            finally:
                gc.collect()

    async def _both_runs() -> _Runs:
        clean, clean_watch = await _watched_run(fn, upstream, time_limit)
        clean_stats = clean_watch.stats or upstream.stats
        clean_problem = await _run_problem(clean, name, clean_stats, failing=None)
        if clean_problem is not None:
            return _Runs(clean, clean_stats, clean_problem)
        broken = Fault.matching(re.escape(TEXTS[FAILING]), status=500, retry_after=0.001)
        faulty, faulty_watch = await _watched_run(fn, upstream, time_limit, faults=[broken])
        faulty_stats = faulty_watch.stats or upstream.stats
        faulty_problem = await _faulty_problem(faulty, name, faulty_stats)
        runs = _Runs(clean, clean_stats, None, faulty, faulty_stats, faulty_problem)
        for faults, watched in (((), clean_watch), ([broken], faulty_watch)):
            if loop_blocked(watched, latency):
                # A busy machine can stall the loop once; the answer's own block comes back.
                _, again = await _watched_run(fn, upstream, time_limit, faults=faults)
                if loop_blocked(again, latency):
                    return replace(runs, blocked=(watched, again))
        if faulty_problem is None and clean_stats.max_in_flight < len(TEXTS):
            # A busy machine can be slow to start worker threads once; an answer's own limit
            # comes back in a second run.
            rerun, rerun_watch = await _watched_run(fn, upstream, time_limit)
            rerun_stats = rerun_watch.stats or upstream.stats
            rerun_problem = await _run_problem(rerun, name, rerun_stats, failing=None)
            if rerun_problem is None and rerun_stats.max_in_flight == len(TEXTS):
                runs = replace(runs, clean=rerun, clean_stats=rerun_stats)
                clean_stats = rerun_stats
        if NO_SOCKETS or faulty_problem is not None or clean_stats.max_in_flight < len(TEXTS):
            return runs
        return replace(runs, tcp_problem=await _tcp_problem(fn, upstream, name, time_limit))

    outcome = await guarded(both_runs(), block_limit=1.0 + 10 * latency, time_limit=3 * time_limit)
    if outcome.stopped or outcome.value is None:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, name)
    return _verdict(outcome.value, latency, name)


def _verdict(runs: _Runs, latency: float, name: str) -> CheckResult:
    peak = runs.clean_stats.max_in_flight
    evidence = [
        f"No failure: {len(TEXTS)} texts took {runs.clean.wall:.2f} s ≈ "
        f"{runs.clean.wall / latency:.1f}× the latency of one call ({latency:.2f} s); the "
        f"upstream had at most {peak} call{'s' if peak != 1 else ''} in flight."
    ]
    if runs.clean_problem is not None:
        problem = runs.clean_problem
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause=problem.cause,
            summary=f"without any failure, {problem.what}.",
            evidence=tuple(evidence),
            hint=problem.hint,
        )
    problems: list[_Problem] = []
    if runs.blocked is not None:
        first, again = runs.blocked
        evidence.append(
            f"The event loop's longest block was {first.longest:.2f} s, and "
            f"{again.longest:.2f} s when measured again ({again.blocked:.2f} s blocked in all)."
        )
        problems.append(
            _Problem(
                "blocked_loop",
                f"the event loop was blocked for {first.longest:.2f} s at a time while {name} ran",
                "inside `async def`, wait with `await asyncio.sleep(...)` (a backoff between "
                "retries too), never `time.sleep(...)`, and call the async client with `await`; "
                "run unavoidable blocking code with `await asyncio.to_thread(...)`.",
            )
        )
    if peak <= 1:
        problems.append(
            _Problem(
                "sequential",
                "the texts were analyzed one after another (≈ one latency per text)",
                "start every text's call first, then wait for all of them: "
                "`await asyncio.gather(*(analyze_one(t) for t in texts))`.",
            )
        )
    elif peak < len(TEXTS):
        problems.append(
            _Problem(
                "not_all_at_once",
                f"only {peak} of the {len(TEXTS)} calls ran at once",
                "start all the texts' calls together with one `asyncio.gather`.",
            )
        )
    assert runs.faulty is not None and runs.faulty_stats is not None
    attempts = runs.faulty_stats.count(500)
    failure = (
        f"With every call for text {FAILING + 1} failing (HTTP 500; the upstream saw {attempts} "
        f"attempt{'s' if attempts != 1 else ''} at it, the SDK's retries included): "
    )
    if runs.faulty.error is not None and not runs.faulty.timed_out:
        others = runs.faulty_stats.count(200)
        evidence.append(
            failure + f"{name} raised {describe_error(runs.faulty.error).rstrip('.')}. The "
            f"upstream had answered {others} of the other {len(TEXTS) - 1} texts, but the caller "
            "got none of them."
        )
    elif runs.faulty_problem is None:
        evidence.append(
            failure + f"{len(TEXTS) - 1} results and 1 error entry, in the texts' order."
        )
    else:
        evidence.append(failure + runs.faulty_problem.what + ".")
    if runs.faulty_problem is not None:
        problems.append(runs.faulty_problem)
    if runs.tcp_problem is not None:
        problems.append(runs.tcp_problem)
    elif not problems:
        evidence.append(
            f"With the upstream over real TCP, two more runs of {len(TEXTS)} texts worked too."
        )

    if not problems:
        return CheckResult(
            exercise=EXERCISE,
            passed=True,
            cause="ok",
            summary=f"in this check's two runs of {len(TEXTS)} texts, the calls ran together, and "
            "one failing call cost only its own entry.",
            evidence=tuple(evidence),
        )
    return CheckResult(
        exercise=EXERCISE,
        passed=False,
        cause=problems[0].cause,
        summary=" and ".join(problem.what for problem in problems[:2]) + ".",
        evidence=tuple(evidence),
        hint=" Then ".join(problem.hint for problem in problems[:2]),
    )


async def _watched_run(
    fn: FanOut, upstream: MockUpstream, time_limit: float, *, faults: Sequence[Fault] = ()
) -> tuple[Outcome, Measured]:
    """One run of `fn(TEXTS)` with these faults, watched (loop, CPU, upstream counters)."""
    with scripted(upstream, faults=faults):
        async with Watch(upstream) as watch:
            outcome = await run_learner_code(fn, TEXTS, time_limit=time_limit)
    return outcome, watch.measured


async def _tcp_problem(
    fn: FanOut, upstream: MockUpstream, name: str, time_limit: float
) -> _Problem | None:
    """What goes wrong when the upstream is a real server over TCP, in two runs in a row."""
    with over_tcp(upstream) as server:
        for attempt in ("first", "second"):
            async with Watch(server) as watch:
                outcome = await run_learner_code(fn, TEXTS, time_limit=time_limit)
            stats = watch.measured.stats
            assert stats is not None  # a FakeServer always counts
            problem = await _run_problem(outcome, name, stats, failing=None)
            if problem is not None:
                return _Problem(
                    "fails_over_tcp",
                    f"with the upstream over real TCP, the {attempt} run went wrong: "
                    f"{problem.what}",
                    "call the shared client with `await`, from the running event loop: a new "
                    "event loop per call (`asyncio.run` in threads) makes connections that "
                    "belong to a loop that is closed before the next call "
                    '("Event loop is closed").',
                )
    return None


async def _faulty_problem(outcome: Outcome, name: str, stats: UpstreamStats) -> _Problem | None:
    error = outcome.error
    if error is None or outcome.timed_out or outcome.not_async or CLOSED_CLIENT in str(error):
        return await _run_problem(outcome, name, stats, failing=FAILING)
    if isinstance(error, BaseExceptionGroup):
        return _Problem(
            "taskgroup_cancelled",
            "a TaskGroup let one failure out as an ExceptionGroup, cancelling the other calls",
            "inside the TaskGroup, catch each text's failure in its own task (try/except around "
            "the call), or use `asyncio.gather(..., return_exceptions=True)`.",
        )
    return _Problem(
        "error_propagated",
        "one failing call propagated its exception and lost every other result",
        "catch each text's failure where it happens (try/except in the per-text helper, as in "
        "`parallel_with_errors`), or use `asyncio.gather(..., return_exceptions=True)` and turn "
        'each exception into an entry like {"text": text, "summary": None, "error": str(exc)}.',
    )


async def _run_problem(
    outcome: Outcome, name: str, stats: UpstreamStats, *, failing: int | None
) -> _Problem | None:
    """What is wrong with one run's result, or None if every entry is right."""
    if outcome.not_async:
        return _Problem(
            "not_async",
            f"{describe_error(outcome.error).removeprefix('TypeError: ')}"
            if outcome.error is not None
            else f"{name} is not an async function",
            f"write `async def {name}(texts):` and `await` the calls inside it.",
        )
    if outcome.error is not None:
        if outcome.timed_out:
            return _Problem(
                "timed_out",
                f"{name} did not finish within {outcome.wall:.0f} s",
                "make sure every call ends (a failing one too) and nothing waits forever.",
            )
        if nested_loop(outcome.error):
            return _Problem(
                "nested_event_loop",
                f"{name} raised {describe_error(outcome.error)}",
                "you are already inside a running event loop: `await` the coroutine instead of "
                "`asyncio.run(...)` / `run_until_complete(...)`.",
            )
        if CLOSED_CLIENT in str(outcome.error):
            return _Problem(
                "client_closed",
                f"{name} raised {describe_error(outcome.error)}",
                "do not close the shared client after a call (`async with client:` closes it "
                "for every other call too): create it once and close it when you are done.",
            )
        if _used_without_await(outcome.error):
            return _Problem(
                "not_awaited",
                f"{name} raised {describe_error(outcome.error)}: a result was used before it "
                "was awaited",
                "add `await`: `replies = await asyncio.gather(...)`; without it `replies` is "
                "the gathering future, not the list of results.",
            )
        return _Problem(
            "crashed",
            f"{name} raised {describe_error(outcome.error)}",
            "run the cells above it again, and check the function on one text first.",
        )
    results = outcome.value
    if await settle_unawaited(results):
        return _Problem(
            "not_awaited",
            f"{name} returned {_kind_of(results)}, not results: nothing awaited them",
            "add `await`: `return await asyncio.gather(*(analyze_one(t) for t in texts))` turns "
            "the calls into their results.",
        )
    if results is None:
        return _Problem(
            "missing_return",
            f"{name} returned None",
            "end the function with `return` and the list of entries.",
        )
    if not isinstance(results, list | tuple):
        return _Problem(
            "not_a_list",
            f"{name} returned {type(results).__name__}, not a list with one result per text",
            "return a list of dicts, one per text, in the texts' order.",
        )
    if len(results) != len(TEXTS):
        return _Problem(
            "wrong_count",
            f"{name} returned {len(results)} results for {len(TEXTS)} texts",
            "return exactly one entry per text, failed ones included, in the texts' order.",
        )
    if any(_closed_client(entry) for entry in results):
        return _Problem(
            "client_closed",
            "a call failed because the shared client had been closed",
            "do not close the shared client after a call (`async with client:` closes it for "
            "every other call too): create it once and close it when you are done with it.",
        )
    replies = expected_replies(TEXTS, stats.timeline)
    for index, entry in enumerate(results):
        problem = _entry_problem(index, entry, replies, failing=index == failing)
        if problem is not None:
            return problem
    return None


def _entry_problem(
    index: int, entry: object, replies: list[set[str]], *, failing: bool
) -> _Problem | None:
    label = f"the entry for text {index + 1}"
    shown = shorten(repr(entry), 90)
    if isinstance(entry, BaseException):
        return _Problem(
            "exception_as_entry",
            f"{label} is the exception object itself ({type(entry).__name__})",
            "`return_exceptions=True` hands you the exception: turn it into an entry like "
            '{"text": text, "summary": None, "error": str(exc)}.',
        )
    if not isinstance(entry, dict) or "error" not in entry:
        return _Problem(
            "missing_error_key",
            f"{label} is {shown}, not a dict with an 'error' key",
            'give every entry an "error" key: None when the call worked, else the error.',
        )
    if failing:
        if not entry["error"]:
            return _Problem(
                "error_not_reported",
                f"{label}, whose call failed, has no error ({shown})",
                'put the failure into the entry: {"error": str(exc)}.',
            )
        if entry.get("summary") is not None:
            return _Problem(
                "invented_summary",
                f"{label}, whose call failed, still has a summary ({shown})",
                'a failed call has no summary: set "summary" to None, so nobody mistakes a '
                "placeholder for the model's answer.",
            )
        return None
    if entry["error"]:
        return _Problem(
            "false_error",
            f"{label} reports an error although its call worked ({shown})",
            'set "error" to None when the call worked.',
        )
    quoted = entry.get("text")
    if isinstance(quoted, str) and quoted.strip() and not TEXTS[index].startswith(quoted.strip()):
        return _Problem(
            "wrong_order",
            f"{label} quotes another text ({shown})",
            "return the entries in the texts' order (`asyncio.gather` keeps it; "
            "`as_completed` does not).",
        )
    if "summary" not in entry:
        return _Problem(
            "summary_missing",
            f"{label} has no 'summary' ({shown})",
            'put the model\'s reply under "summary": {"text": text, "summary": reply, '
            '"error": None}.',
        )
    if reply_matches(entry["summary"], replies[index]):
        return None
    if any(reply_matches(entry["summary"], other) for other in replies):
        return _Problem(
            "wrong_order",
            f"{label} holds the reply to another text ({shown})",
            "return the entries in the texts' order (`asyncio.gather` keeps it; "
            "`as_completed` does not).",
        )
    return _Problem(
        "wrong_summary",
        f"the summary in {label} is not the model's reply to it ({shown})",
        'put the reply text (`response.choices[0].message.content`) under "summary".',
    )


UNAWAITED_ERRORS: Final = (
    "await wasn't used with future",
    "'coroutine' object",
    "_GatheringFuture",
    "'Task' object",
    "'Future' object",
)
"""What Python says when a coroutine or future is used as if it were its result."""


def _closed_client(entry: object) -> bool:
    error = entry.get("error") if isinstance(entry, dict) else None
    return isinstance(error, str) and CLOSED_CLIENT in error


CLOSED_CLIENT: Final = "client has been closed"
"""What httpx(2) says when a closed client is asked to send a request."""


def _used_without_await(error: BaseException) -> bool:
    return isinstance(error, TypeError | RuntimeError | AttributeError) and any(
        needle in str(error) for needle in UNAWAITED_ERRORS
    )


def _kind_of(results: object) -> str:
    if isinstance(results, list | tuple):
        return f"a list of {type(results[0]).__name__}" if results else "an empty list"
    return type(results).__name__
