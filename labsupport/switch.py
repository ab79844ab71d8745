"""`with thing:` for the lab's parts that are switched on and off: `start()` on entry, `stop()`
on exit, even when the block raises."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

__all__ = ["Switch"]


class Switch(ABC):
    """Something with `start()` (returning itself) and `stop()`, usable as a context manager."""

    @abstractmethod
    def start(self) -> Self: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
