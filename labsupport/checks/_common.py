"""What every checker needs: the upstream's latency, its counters, warnings on the way, and the
result of a scenario the watchdog stopped (`stopped_by_watchdog`, defined with `CheckResult`)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from openai import AsyncOpenAI

from ..lab import LabUpstream, current_upstream
from .result import stopped_by_watchdog

__all__ = [
    "caught_warnings",
    "never_awaited",
    "reference_latency",
    "stopped_by_watchdog",
    "upstream_or_none",
]


def upstream_or_none() -> LabUpstream | None:
    """The lab's upstream (offline: the mock; live: the observer of the real API), reset so its
    counters cover only the check; None before `labsupport.setup()`."""
    upstream = current_upstream()
    if upstream is not None:
        upstream.reset()
    return upstream


async def reference_latency() -> float:
    """Seconds one upstream call takes: the configured latency offline, the latency measured at
    setup in live mode (so a checker judges a slow real API by the same yardstick as the mock);
    without `labsupport.setup()`, one call measured now."""
    upstream = current_upstream()
    if upstream is not None:
        return max(upstream.latency, 0.001)
    async with AsyncOpenAI() as client:
        start = time.perf_counter()
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say OK."}], max_tokens=1
        )
        return time.perf_counter() - start


@contextmanager
def caught_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning raised inside (and keep them from printing)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def never_awaited(caught: list[warnings.WarningMessage]) -> bool:
    """Whether a coroutine was created and dropped without `await` (Python warns at GC)."""
    return any("was never awaited" in str(w.message) for w in caught)
