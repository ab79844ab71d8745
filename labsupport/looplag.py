"""Measure how long the event loop was blocked.

An event loop runs one thing at a time. While a coroutine runs code that never awaits
(``time.sleep``, a synchronous HTTP call, a long computation) nothing else in the loop moves:
no other request is served, no timer fires. ``loop_lag`` makes that visible. It starts a small
watcher task that sleeps ``interval`` seconds, again and again, and notes how *late* it wakes
up. On a free loop it is on time to within a millisecond or so; if something blocks the loop
for 0.3 s, one wake-up comes 0.3 s late::

    async with loop_lag() as lag:
        time.sleep(0.3)            # blocks the loop
    print(lag)                     # event loop blocked 0.30 s (longest stall 0.30 s)

    async with loop_lag() as lag:
        await asyncio.sleep(0.3)   # lets the loop run
    print(lag)                     # event loop blocked 0.00 s (longest stall 0.00 s)

Only wake-ups later than ``threshold`` count as stalls, so the loop's ordinary jitter does not
add up to "blocked" time.

A busy machine makes wake-ups late too: the loop's thread was ready to run but waited for a
CPU. Where the OS reports that wait (Linux's per-thread ``schedstat``), ``starved`` gives the
part of the blocked time it explains, so a check can tell a blocking call (the thread asleep
in ``time.sleep`` or a socket read, or busy computing) from a machine that had no CPU to spare.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, Self

from .switch import Switch
from .validation import check_seconds

__all__ = ["LoopLagMonitor", "loop_lag"]

_SCHEDSTAT = "/proc/thread-self/schedstat"
"""Linux: the calling thread's CPU time, time spent runnable but waiting for a CPU, and
timeslices, the first two in nanoseconds."""


def _cpu_wait() -> float:
    """Seconds the calling thread has waited for a CPU while ready to run; 0.0 where the OS does
    not say (not Linux, or a kernel without schedstats)."""
    try:
        with open(_SCHEDSTAT, "rb") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class LoopLagMonitor(Switch):
    """Watches the running event loop for stalls; see the module docstring.

    Use it with ``async with`` (or ``with``, inside a coroutine), or call ``start()`` and later
    ``stop()`` (for instance in two notebook cells); both are idempotent, like every switch of
    the lab. The numbers are live while it runs and final after ``stop()``.

    Args:
        interval: seconds the watcher sleeps between checks; also the precision of the result.
        threshold: a wake-up later than this many seconds counts as a stall.
    """

    def __init__(self, interval: float = 0.005, threshold: float = 0.02) -> None:
        self.interval = check_seconds("interval", interval, allow_zero=False)
        self.threshold = check_seconds("threshold", threshold, allow_zero=False)
        self.blocked = 0.0
        """Total seconds of lateness, summed over the stalls."""
        self.longest = 0.0
        """The latest single wake-up, in seconds late (stall or not)."""
        self.stalls = 0
        """How many wake-ups were later than ``threshold``."""
        self.samples = 0
        """How many wake-ups were measured."""
        self.starved = 0.0
        """Seconds of ``blocked`` during which the loop's thread was ready to run but waited for
        a CPU (a busy machine, not a blocking call); 0.0 where the OS does not report it."""
        self._task: asyncio.Task[None] | None = None
        self._due = 0.0  # perf_counter() when the watcher should next run
        self._waited = 0.0  # the loop thread's CPU wait at the last wake-up (see _cpu_wait)

    @property
    def active(self) -> bool:
        return self._task is not None

    def start(self) -> Self:
        """Reset the numbers and start watching the running event loop. Idempotent: a running
        monitor keeps its numbers."""
        if self._task is not None:
            return self
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("LoopLagMonitor.start() needs a running event loop") from None
        self.blocked, self.longest, self.stalls, self.samples = 0.0, 0.0, 0, 0
        self.starved = 0.0
        self._waited = _cpu_wait()
        # The watcher's first wake-up is due now: if the caller blocks the loop before the
        # watcher ever runs, that time is still counted.
        self._due = time.perf_counter()
        self._task = loop.create_task(self._watch(), name="loop-lag watcher")
        return self

    def stop(self) -> None:
        """Stop watching; the pending wake-up counts if it is already late. Idempotent."""
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        # The watcher is asleep (or not started yet): its next wake-up has not been measured.
        # If that wake-up is overdue, the loop has been busy with our caller until now.
        late = time.perf_counter() - self._due
        if late > 0:
            self._record(late, _cpu_wait() - self._waited)

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task = self._task
        self.stop()
        if task is not None:
            # Let the cancelled watcher finish, so no task outlives the block. asyncio.wait
            # never raises the watcher's CancelledError, only a cancellation of our own.
            await asyncio.wait([task])

    async def _watch(self) -> None:
        while True:
            waited = _cpu_wait()
            self._record(time.perf_counter() - self._due, waited - self._waited)
            self._waited = waited
            self._due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)

    def _record(self, late: float, waited: float) -> None:
        """Count one wake-up `late` seconds late, the thread having waited `waited` seconds for
        a CPU since the previous one."""
        late = max(late, 0.0)  # timers may fire a hair early
        self.samples += 1
        self.longest = max(self.longest, late)
        if late > self.threshold:
            self.stalls += 1
            self.blocked += late
            self.starved += min(late, max(waited, 0.0))

    def summary(self) -> str:
        """One line with the blocked time and the longest stall, times as ``N.NN s``."""
        return f"event loop blocked {self.blocked:.2f} s (longest stall {self.longest:.2f} s)"

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        state = "running" if self._task is not None else "stopped"
        return f"<LoopLagMonitor {state}: {self.summary()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.summary())


def loop_lag(interval: float = 0.005, threshold: float = 0.02) -> LoopLagMonitor:
    """A ``LoopLagMonitor`` to use as ``async with loop_lag() as lag: ...``."""
    return LoopLagMonitor(interval=interval, threshold=threshold)
