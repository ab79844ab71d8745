"""Checker for notebook 03: a batch that never has more calls in flight than the upstream allows."""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any

from ..upstream import RateLimit, UpstreamStats
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

__all__ = ["check_bounded_batch"]

EXERCISE = "a batch bounded by the upstream's limit"

# So long that no client retries (the SDK gives up on a retry-after above two minutes): each
# call over the limit is refused exactly once, and the count does not depend on timing.
NO_RETRY_AFTER = 600.0

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


async def check_bounded_batch(fn: BatchFunction, limit: int = 5) -> CheckResult:
    """Run `fn(texts)` on 4 × `limit` texts and judge how many calls it had in flight at once.

    `fn` is an `async def` taking a list of texts and returning one summary (str) per text, in
    the texts' order. The upstream accepts at most `limit` calls in flight. A bounded batch
    keeps exactly `limit` in flight (not more: 429s; not fewer: slower than allowed), so it
    takes about ⌈n / limit⌉ latencies.

    The first run has no rate limit, to see how many calls `fn` sends at once. If that is more
    than `limit`, a second run turns the limit on and counts the 429 answers. The upstream's
    configuration is restored afterwards.
    """
    if not callable(fn):
        raise TypeError(f"fn must be an async function taking a list of texts; got {fn!r:.80}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 2 <= limit <= 50:
        raise ValueError(f"limit must be an int from 2 to 50 (calls in flight); got {limit!r}")
    upstream = offline_upstream()
    if upstream is None:
        return CheckResult(
            EXERCISE,
            False,
            "this check needs the offline lab: it sets a rate limit, which a live API cannot.",
            hint="run the notebook without LAB_MODE=live to get it checked.",
        )
    latency = max(upstream.latency, 0.001)
    texts = batch_texts(4 * limit)
    waves = math.ceil(len(texts) / limit)
    time_limit = 3 * len(texts) * latency + 5.0
    name = getattr(fn, "__name__", "your function")

    with scripted(upstream):
        free = await run_learner_code(fn, texts, time_limit=time_limit)
        stats = upstream.stats
    peak = stats.max_in_flight
    evidence = [
        f"{len(texts)} texts took {free.wall:.2f} s ≈ {free.wall / latency:.1f}× the latency of "
        f"one call ({latency:.2f} s); ⌈{len(texts)} / {limit}⌉ = {waves} waves would take "
        f"{waves} latencies. The upstream saw at most {peak} call{'s' if peak != 1 else ''} "
        "in flight."
    ]

    if peak > limit:
        limited = RateLimit(max_concurrent=limit, retry_after=NO_RETRY_AFTER)
        with scripted(upstream, rate_limit=limited):
            refused = await run_learner_code(fn, texts, time_limit=time_limit)
            refused_stats = upstream.stats
        evidence.append(_rate_limited(refused, refused_stats, limit, name))
        per_call = _creates_semaphore(fn)
        what = f"the batch had {peak} calls in flight at once, more than the limit of {limit}" + (
            ", although it uses a semaphore" if per_call else ""
        )
        hint = (
            "a semaphore created inside the per-text helper bounds nothing: every task gets "
            f"its own. Create ONE `asyncio.Semaphore({limit})` outside the helper and share it "
            "(and check its size)."
            if per_call
            else f"wrap each call in `async with semaphore:`, with ONE "
            f"`asyncio.Semaphore({limit})` shared by all the texts' tasks."
        )
        return CheckResult(EXERCISE, False, what + ".", tuple(evidence), hint)

    problem = _result_problem(free, name, texts, stats)
    if problem is not None:
        return CheckResult(EXERCISE, False, problem[0] + ".", tuple(evidence), problem[1])
    if peak == 1:
        return CheckResult(
            EXERCISE,
            False,
            "the calls ran one after another (≈ one latency per text).",
            tuple(evidence),
            f"start all the texts' tasks with `asyncio.gather` and let a shared "
            f"`asyncio.Semaphore({limit})` hold back all but {limit} of them.",
        )
    if peak < limit:
        return CheckResult(
            EXERCISE,
            False,
            f"at most {peak} calls ran at once: safe, but slower than the limit of {limit} allows.",
            tuple(evidence),
            f"size the shared semaphore to the limit: `asyncio.Semaphore({limit})`.",
        )
    evidence.append(
        f"With the limit on (at most {limit} in flight), the upstream would refuse nothing: "
        "0 × 429. The summaries came back in the texts' order."
    )
    return CheckResult(
        EXERCISE,
        True,
        f"exactly {limit} calls in flight at a time, and every summary in its place.",
        tuple(evidence),
    )


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
    outcome: Outcome, name: str, texts: list[str], stats: UpstreamStats
) -> tuple[str, str] | None:
    """What is wrong with the returned summaries (what, hint), or None."""
    if outcome.error is not None:
        if outcome.timed_out:
            return f"{name} did not finish within {outcome.wall:.0f} s", "does it wait forever?"
        return (
            f"{name} raised {describe_error(outcome.error).rstrip('.')}",
            "check the function on one text first.",
        )
    results = outcome.value
    if not isinstance(results, list | tuple) or len(results) != len(texts):
        size = f"{len(results)} items" if isinstance(results, list | tuple) else "no list"
        return (
            f"{name} returned {size} for {len(texts)} texts",
            "return a list with one summary per text.",
        )
    replies = expected_replies(texts, stats.timeline)
    for index, summary in enumerate(results):
        if not reply_matches(summary, replies[index]):
            shown = " ".join(repr(summary).split())[:80]
            return (
                f"result {index + 1} is not the summary of text {index + 1} (got {shown})",
                "return the reply texts (`response.choices[0].message.content`) in the texts' "
                "order: `asyncio.gather` keeps it, `as_completed` does not.",
            )
    return None


def _creates_semaphore(fn: BatchFunction) -> bool:
    """Whether `fn`'s own source builds a Semaphore: with too many calls in flight, that means
    one semaphore per call (or per batch inside the helper), which bounds nothing."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return "Semaphore(" in source
