"""Counting the OpenAI clients learner code builds during a check.

"A new client per request" is the seed's own trap, and its cost (building a client, opening a
connection pool) varies with the machine's load. A count does not: while `built_clients()` is
active, every `OpenAI(...)` / `AsyncOpenAI(...)` that brings its own HTTP connection pool is
recorded. Copies that share their parent's pool (`client.with_options(timeout=…)`) are not new
clients and are not counted.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

import openai

__all__ = ["BuiltClients", "built_clients"]


class BuiltClients:
    """The clients built (with a pool of their own) while `built_clients()` was active."""

    def __init__(self) -> None:
        self.count = 0
        self.sync_count = 0
        """How many of them are sync `OpenAI` clients."""
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()

    def _record(self, client: Any) -> None:
        pool = getattr(client, "_client", None)
        if pool is None or pool in self._pools:
            return
        self._pools.add(pool)
        self._clients.add(client)
        self.count += 1
        self.sync_count += isinstance(client, openai.OpenAI)

    def closed(self) -> int:
        """How many of the recorded clients that are still alive have been closed."""
        return sum(client.is_closed() for client in list(self._clients))

    def open(self) -> int:
        """How many of the recorded clients are alive and not closed."""
        return sum(not client.is_closed() for client in list(self._clients))


@contextmanager
def built_clients() -> Iterator[BuiltClients]:
    """Record the OpenAI clients built inside the block (sync and async, subclasses too)."""
    built = BuiltClients()
    with ExitStack() as patches:
        for cls in (openai.OpenAI, openai.AsyncOpenAI):
            original = cls.__init__

            @functools.wraps(original)
            def counting_init(
                self: Any, *args: Any, __original: Callable[..., None] = original, **kwargs: Any
            ) -> None:
                __original(self, *args, **kwargs)
                built._record(self)

            # Restored when the block ends, however it ends.
            patches.enter_context(mock.patch.object(cls, "__init__", counting_init))
        yield built
