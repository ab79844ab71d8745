"""What every checker needs: the upstream's latency, its counters, warnings on the way, and the
result of a scenario the watchdog stopped (`stopped_by_watchdog`, defined with `CheckResult`)."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from openai import AsyncOpenAI

from .._text import shorten
from ..lab import LabUpstream, current_upstream
from .result import CheckResult, stopped_by_watchdog

__all__ = [
    "app_failed",
    "caught_warnings",
    "never_awaited",
    "reference_latency",
    "server_errors",
    "stopped_by_watchdog",
    "upstream_or_none",
]


LIFESPAN_HINT = "its lifespan (startup or shutdown) must run without errors."


def app_failed(
    exercise: str, error: BaseException | None, hint: str = LIFESPAN_HINT
) -> CheckResult:
    """The result of an app that raised before the check could measure it (cause "app_error")."""
    return CheckResult(
        exercise=exercise,
        passed=False,
        cause="app_error",
        summary=f"the app failed before it could be measured: {type(error).__name__}: "
        f"{shorten(str(error), 160)}",
        hint=hint,
    )


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


@contextmanager
def server_errors() -> Iterator[list[str]]:
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
