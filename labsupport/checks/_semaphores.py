"""Watching the `asyncio.Semaphore`s learner code builds and acquires during a check.

"More calls in flight than the limit" has several causes, and each needs its own hint: no
semaphore at all, one semaphore per call (each task its own), one sized above the limit, or one
of the right size that the calls escape (a coroutine created under the semaphore but awaited
after its release). Counting tells them apart, whatever the machine's load: while
`watched_semaphores()` is active, every semaphore learner code acquires is recorded with its
capacity (free slots plus slots held), and every one learner code builds is counted.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from .watchdog import is_learner_code

__all__ = ["SemaphoreUse", "watched_semaphores"]

_CALLER_DEPTH = 4  # acquire() ← __aenter__() ← the learner's coroutine, with room to spare


@dataclass
class _Use:
    semaphore: asyncio.Semaphore  # kept alive for the check, so its id stays its own
    held: int = 0
    capacity: int = 0
    acquisitions: int = 0
    built_here: bool = False


@dataclass
class SemaphoreUse:
    """What learner code did with asyncio semaphores while `watched_semaphores()` was active."""

    built: int = 0
    """Semaphores built by learner code."""
    _uses: dict[int, _Use] = field(default_factory=dict)

    @property
    def acquired(self) -> int:
        """How many distinct semaphores learner code acquired."""
        return sum(use.acquisitions > 0 for use in self._uses.values())

    @property
    def largest(self) -> int:
        """The largest capacity of an acquired semaphore (0 if none was acquired)."""
        return max((u.capacity for u in self._uses.values() if u.acquisitions), default=0)

    @property
    def largest_built_here(self) -> bool:
        """Whether the largest acquired semaphore was built during the check (per batch)."""
        uses = [(u.capacity, u.built_here) for u in self._uses.values() if u.acquisitions]
        return max(uses, default=(0, False))[1]

    def _keep(self, semaphore: asyncio.Semaphore) -> _Use:
        use = self._uses.get(id(semaphore))
        if use is None:
            use = self._uses[id(semaphore)] = _Use(semaphore)
        return use


def _called_by_learner() -> bool:
    frame: FrameType | None = sys._getframe(2)
    for _ in range(_CALLER_DEPTH):
        if frame is None:
            return False
        if is_learner_code(frame):
            return True
        frame = frame.f_back
    return False


@contextmanager
def watched_semaphores() -> Iterator[SemaphoreUse]:
    """Record, inside the block, the asyncio semaphores learner code builds and acquires."""
    use = SemaphoreUse()
    cls: Any = asyncio.Semaphore
    original_init, original_acquire, original_release = cls.__init__, cls.acquire, cls.release

    def init(self: asyncio.Semaphore, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if _called_by_learner():
            use.built += 1
            use._keep(self).built_here = True

    async def acquire(self: asyncio.Semaphore) -> bool:
        learner = _called_by_learner()
        acquired: bool = await original_acquire(self)
        if learner:
            record = use._keep(self)
            record.held += 1
            record.acquisitions += 1
            record.capacity = max(record.capacity, record.held + self._value)
        return acquired

    def release(self: asyncio.Semaphore) -> None:
        original_release(self)
        record = use._uses.get(id(self))
        if record is not None and record.held > 0:
            record.held -= 1

    cls.__init__, cls.acquire, cls.release = init, acquire, release
    try:
        yield use
    finally:
        cls.__init__, cls.acquire, cls.release = original_init, original_acquire, original_release
