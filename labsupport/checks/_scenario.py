"""What the batch checkers share: a scripted upstream that is put back afterwards, a time limit
on the learner's code, and a way to tell which reply answered which text.

A checker runs inside the learner's notebook, so it must leave the upstream as it found it: the
lesson's next cell expects its own latency, faults and rate limit, not the checker's.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .._text import shorten
from ..lab import current_upstream
from ..upstream import Fault, MockUpstream, RateLimit, UpstreamCall
from ..upstream.replies import reply_to

__all__ = [
    "Outcome",
    "describe_error",
    "expected_replies",
    "nested_loop",
    "offline_upstream",
    "reply_matches",
    "run_learner_code",
    "scripted",
    "settle_unawaited",
]


def offline_upstream() -> MockUpstream | None:
    """The offline mock upstream, or None in live mode (where nothing can be scripted)."""
    upstream = current_upstream()
    return upstream if isinstance(upstream, MockUpstream) else None


@contextmanager
def scripted(
    upstream: MockUpstream,
    *,
    faults: Iterable[Fault] = (),
    rate_limit: RateLimit | None = None,
    jitter: float = 0.0,
) -> Iterator[MockUpstream]:
    """Give `upstream` these faults, this rate limit and this jitter (latency unchanged) inside
    the block, then restore its previous settings, even when the block is interrupted."""
    with upstream.configured(jitter=jitter, faults=faults, rate_limit=rate_limit):
        yield upstream


@dataclass(frozen=True)
class Outcome:
    """One run of the learner's function: what it returned or raised, and how long it took."""

    value: Any
    error: BaseException | None
    wall: float
    timed_out: bool = False
    not_async: bool = False
    """Whether `fn(texts)` returned something that cannot be awaited (not an `async def`)."""

    @property
    def raised(self) -> bool:
        return self.error is not None


async def run_learner_code(
    fn: Callable[[list[str]], Awaitable[Any]], texts: Sequence[str], *, time_limit: float
) -> Outcome:
    """Await `fn(texts)` for at most `time_limit` seconds; never raise what it raises.

    A function that is not `async def` (or forgets to return its awaitable) is reported as a
    `TypeError` outcome, the way `await` itself would complain.
    """
    start = time.perf_counter()
    deadline = asyncio.timeout(time_limit)
    try:
        pending = fn(list(texts))
        if not inspect.isawaitable(pending):
            error = TypeError(
                f"{_name(fn)}(texts) returned {type(pending).__name__}, not an awaitable: "
                "declare it with `async def`"
            )
            return Outcome(None, error, time.perf_counter() - start, not_async=True)
        async with deadline:
            value = await pending
    except Exception as error:  # the learner's failure is the evidence, not a crash
        return Outcome(None, error, time.perf_counter() - start, timed_out=deadline.expired())
    return Outcome(value, None, time.perf_counter() - start)


async def settle_unawaited(value: object) -> bool:
    """Whether `value` is, or is a list holding, awaitables the learner forgot to await (a
    coroutine, a task, `asyncio.gather(...)`'s future). Coroutines are closed and futures
    cancelled or drained, so that Python does not warn about them later."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    forgotten = [item for item in items if inspect.isawaitable(item)]
    for item in forgotten:
        if inspect.iscoroutine(item):
            item.close()
        elif isinstance(item, asyncio.Future):
            await asyncio.wait([item])  # it runs anyway: let it finish, and read its error
            if not item.cancelled():
                item.exception()
    return bool(forgotten)


def nested_loop(error: BaseException | None) -> bool:
    """Whether `error` is asyncio refusing `asyncio.run()` / `run_until_complete()` inside a
    running event loop."""
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "cannot be called from a running event loop" in text or "loop is already running" in text
    )


def expected_replies(texts: Sequence[str], timeline: Iterable[UpstreamCall]) -> list[set[str]]:
    """For each text, the replies the upstream gave to prompts that contain it."""
    calls = list(timeline)
    return [{reply_to(call.prompt).text for call in calls if text in call.prompt} for text in texts]


def reply_matches(value: object, replies: set[str]) -> bool:
    """Whether `value` is one of `replies`, possibly cut short (`max_tokens`) or stripped."""
    if not isinstance(value, str) or not value.strip():
        return False
    return any(reply.strip().startswith(value.strip()) for reply in replies)


def describe_error(error: BaseException) -> str:
    """`Type: message` on one line, shortened, for a CheckResult's evidence."""
    text = shorten(str(error), 140)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _name(fn: object) -> str:
    return getattr(fn, "__name__", "your function")
