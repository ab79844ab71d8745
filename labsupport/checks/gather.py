"""Checker for notebook 02: a fan-out that runs its calls together and survives one failure."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from .._text import shorten
from ..upstream import Fault, UpstreamStats
from ._scenario import (
    Outcome,
    describe_error,
    expected_replies,
    offline_upstream,
    reply_matches,
    run_learner_code,
    scripted,
)
from .result import CheckResult

__all__ = ["check_parallel_fanout"]

EXERCISE = "a parallel fan-out that survives a failure"

TEXTS = (
    "Ticket 1: The login page times out after the update. Users are locked out.",
    "Ticket 2: Invoices show the wrong currency. Finance noticed it this morning.",
    "Ticket 3: The mobile app crashes on start. It happens on older phones only.",
    "Ticket 4: Search finds nothing for accented names. Support has a workaround.",
    "Ticket 5: Password reset emails arrive twice. Nobody is blocked by it.",
)
FAILING = 2  # the index of the text whose calls the upstream answers with HTTP 500

FanOut = Callable[[list[str]], Awaitable[Any]]


async def check_parallel_fanout(fn: FanOut) -> CheckResult:
    """Run `fn(texts)` twice against the offline upstream and judge the fan-out.

    `fn` is an `async def` taking a list of texts and returning one dict per text, in order,
    each with an `"error"` key: None (and the model's reply under any other key, such as
    `"summary"`) when the text's call worked, the error's description when it failed.

    First run: no failure. The texts' calls should be in flight together, so the run takes
    about 1× the latency of one call, not one latency per text. Second run: every call for
    text 3 gets HTTP 500 (also on the SDK's retries). `fn` should still return the other four
    results, and an error entry for text 3.

    The upstream's configuration is restored afterwards.
    """
    if not callable(fn):
        raise TypeError(f"fn must be an async function taking a list of texts; got {fn!r:.80}")
    upstream = offline_upstream()
    if upstream is None:
        return CheckResult(
            EXERCISE,
            False,
            "this check needs the offline lab: it makes one call fail on purpose, which a live "
            "API cannot do.",
            hint="run the notebook without LAB_MODE=live to get it checked.",
        )
    latency = max(upstream.latency, 0.001)
    time_limit = 20 * len(TEXTS) * latency + 5.0
    name = getattr(fn, "__name__", "your function")

    with scripted(upstream):
        clean = await run_learner_code(fn, TEXTS, time_limit=time_limit)
        clean_stats = upstream.stats
    timing = (
        f"No failure: {len(TEXTS)} texts took {clean.wall:.2f} s ≈ {clean.wall / latency:.1f}× "
        f"the latency of one call ({latency:.2f} s); the upstream had at most "
        f"{clean_stats.max_in_flight} call{'s' if clean_stats.max_in_flight != 1 else ''} "
        "in flight."
    )
    problem = _run_problem(clean, name, clean_stats, failing=None)
    if problem is not None:
        return CheckResult(
            EXERCISE, False, f"without any failure, {problem[0]}", (timing,), problem[1]
        )

    broken = Fault.matching(re.escape(TEXTS[FAILING]), status=500, retry_after=0.001)
    with scripted(upstream, faults=[broken]):
        faulty = await run_learner_code(fn, TEXTS, time_limit=time_limit)
        faulty_stats = upstream.stats
    attempts = faulty_stats.count(500)
    failure = (
        f"With every call for text {FAILING + 1} failing (HTTP 500; the upstream saw {attempts} "
        f"attempt{'s' if attempts != 1 else ''} at it, the SDK's retries included): "
    )
    evidence = [timing]
    problems: list[tuple[str, str]] = []
    if clean_stats.max_in_flight <= 1:
        problems.append(
            (
                "the texts were analyzed one after another (≈ one latency per text)",
                "start every text's call first, then wait for all of them: "
                "`await asyncio.gather(*(analyze_one(t) for t in texts))`.",
            )
        )
    elif clean_stats.max_in_flight < len(TEXTS):
        problems.append(
            (
                f"only {clean_stats.max_in_flight} of the {len(TEXTS)} calls ran at once",
                "start all the texts' calls together with one `asyncio.gather`.",
            )
        )

    if faulty.raised and faulty.error is not None:
        others = faulty_stats.count(200)
        evidence.append(
            failure + f"{name} raised {describe_error(faulty.error).rstrip('.')}. The upstream "
            "had answered "
            f"{others} of the other {len(TEXTS) - 1} texts, but the caller got none of them."
        )
        problems.append(_propagated(faulty.error, faulty.timed_out))
    else:
        fault_problem = _run_problem(faulty, name, faulty_stats, failing=FAILING)
        if fault_problem is None:
            evidence.append(
                failure + f"{len(TEXTS) - 1} results and 1 error entry, in the texts' order."
            )
        else:
            evidence.append(failure + fault_problem[0] + ".")
            problems.append(fault_problem)

    if not problems:
        return CheckResult(
            EXERCISE,
            True,
            "the calls ran together, and one failure cost only its own result.",
            tuple(evidence),
        )
    summary = " and ".join(what for what, _ in problems[:2])
    hints = " Then ".join(hint for _, hint in problems[:2])
    return CheckResult(EXERCISE, False, summary + ".", tuple(evidence), hints)


def _propagated(error: BaseException, timed_out: bool) -> tuple[str, str]:
    if timed_out:
        return (
            "with one failing call, the function did not finish",
            "make sure every call ends (a failing one too) and nothing waits forever.",
        )
    if isinstance(error, BaseExceptionGroup):
        return (
            "a TaskGroup let one failure out as an ExceptionGroup, cancelling the other calls",
            "inside the TaskGroup, catch each text's failure in its own task (try/except around "
            "the call), or use `asyncio.gather(..., return_exceptions=True)`.",
        )
    return (
        "one failing call propagated its exception and lost every other result",
        "catch each text's failure where it happens (try/except in the per-text helper, as in "
        "`parallel_with_errors`), or use `asyncio.gather(..., return_exceptions=True)` and turn "
        'each exception into an entry like {"error": str(exc)}.',
    )


def _run_problem(
    outcome: Outcome, name: str, stats: UpstreamStats, *, failing: int | None
) -> tuple[str, str] | None:
    """What is wrong with one run's result (what, hint), or None if every entry is right."""
    if outcome.error is not None:
        if outcome.timed_out:
            return (
                f"{name} did not finish within {outcome.wall:.0f} s",
                "does something wait forever?",
            )
        return (
            f"{name} raised {describe_error(outcome.error)}",
            "run the cells above it again, and check the function on one text first.",
        )
    results = outcome.value
    if not isinstance(results, list | tuple):
        return (
            f"{name} returned {type(results).__name__}, not a list with one result per text",
            "return a list of dicts, one per text, in the texts' order.",
        )
    dropped = [item for item in results if hasattr(item, "cr_frame") and hasattr(item, "close")]
    for coroutine in dropped:
        coroutine.close()  # never awaited: close it so Python does not warn later
    if dropped:
        return (
            f"{name} returned coroutines, not results: they were never awaited",
            "`await asyncio.gather(*coroutines)` turns coroutines into their results.",
        )
    if len(results) != len(TEXTS):
        return (
            f"{name} returned {len(results)} results for {len(TEXTS)} texts",
            "return exactly one entry per text, failed ones included.",
        )
    replies = expected_replies(TEXTS, stats.timeline)
    for index, entry in enumerate(results):
        label = f"the entry for text {index + 1}"
        shown = shorten(repr(entry), 90)
        if isinstance(entry, BaseException):
            return (
                f"{label} is the exception object itself ({type(entry).__name__})",
                "`return_exceptions=True` hands you the exception: turn it into an entry like "
                '{"text": text, "summary": None, "error": str(exc)}.',
            )
        if not isinstance(entry, dict) or "error" not in entry:
            return (
                f"{label} is {shown}, not a dict with an 'error' key",
                'give every entry an "error" key: None when the call worked, else the error.',
            )
        if index == failing:
            if not entry["error"]:
                return (
                    f"{label}, whose call failed, has no error ({shown})",
                    'put the failure into the entry: {"error": str(exc)}.',
                )
            continue
        if entry["error"]:
            return (
                f"{label} reports an error although its call worked ({shown})",
                'set "error" to None when the call worked.',
            )
        if not _answers(entry, TEXTS[index], replies[index]):
            return (
                f"{label} does not hold the reply to text {index + 1} ({shown})",
                "return the entries in the texts' order, each with its text's reply.",
            )
    return None


def _answers(entry: dict[Any, Any], text: str, replies: set[str]) -> bool:
    """Whether `entry` belongs to `text`: it holds the reply to it (or the text's beginning)."""
    quoted = entry.get("text")
    if isinstance(quoted, str) and quoted.strip() and text.startswith(quoted.strip()):
        return True
    return any(reply_matches(value, replies) for value in entry.values())
