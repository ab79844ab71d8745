"""Watching which threads use each `sqlite3` connection during a check.

One `sqlite3` connection shared by `def` background tasks is used by several thread-pool threads
at once, and silently loses rows, but only when two writes happen to overlap, so a count of rows
alone catches it only sometimes. Which threads ran statements on a connection does not depend on
luck: while `sqlite_threads()` is active, every function the event loop hands to a worker thread
(`anyio.to_thread.run_sync`, which Starlette runs `def` background tasks and endpoints with, and
`loop.run_in_executor`, under `asyncio.to_thread`) runs under a profile function of that thread,
which notes each call of a `sqlite3.Connection` or `sqlite3.Cursor` method and the thread making
it. aiosqlite's connections are used by their own thread, not a worker's, and pass.

Why not SQLite's own trace callback (`Connection.set_trace_callback`)? SQLite calls it while it
holds the connection's lock, and the callback needs the GIL; a second thread binding parameters
on the same connection holds the GIL while it waits for that lock. On exactly the answer this
module exists to catch, the two waited for each other for good: the kernel froze, beyond the
reach of any interrupt.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from types import FrameType
from typing import Any, TypeVar
from unittest import mock

import anyio.to_thread

__all__ = ["SqliteThreads", "sqlite_threads"]

R = TypeVar("R")


class SqliteThreads:
    """The worker threads that called methods of each `sqlite3` connection."""

    def __init__(self) -> None:
        self._threads: dict[int, set[int]] = {}
        # Held until the block ends: a closed connection's id would otherwise be reused by the
        # next one (a connection per task looked like one shared by all their threads).
        self._connections: dict[int, sqlite3.Connection] = {}
        self._lock = threading.Lock()

    @property
    def most_threads(self) -> int:
        """The most threads that used one connection (0 if none was used)."""
        with self._lock:
            return max((len(threads) for threads in self._threads.values()), default=0)

    def _note(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "c_call":
            return
        owner = getattr(arg, "__self__", None)
        if isinstance(owner, sqlite3.Cursor):
            owner = owner.connection
        if isinstance(owner, sqlite3.Connection):
            with self._lock:
                self._connections[id(owner)] = owner
                self._threads.setdefault(id(owner), set()).add(threading.get_ident())

    def watched(self, function: Callable[..., R]) -> Callable[..., R]:
        """`function`, noting its thread's sqlite3 calls while it runs."""

        @wraps(function)
        def in_worker_thread(*args: Any, **kwargs: Any) -> R:
            previous = sys.getprofile()
            sys.setprofile(self._note)
            try:
                return function(*args, **kwargs)
            finally:
                sys.setprofile(previous)

        return in_worker_thread


@contextmanager
def sqlite_threads() -> Iterator[SqliteThreads]:
    """Watch the sqlite3 calls of worker threads inside the block (see the module docstring).
    Call it with the check's event loop running."""
    seen = SqliteThreads()
    loop = asyncio.get_running_loop()
    to_thread = anyio.to_thread.run_sync
    in_executor = loop.run_in_executor

    def run_sync(function: Callable[..., R], *args: Any, **kwargs: Any) -> Any:
        return to_thread(seen.watched(function), *args, **kwargs)

    def run_in_executor(executor: Any, function: Callable[..., R], *args: Any) -> Any:
        return in_executor(executor, seen.watched(function), *args)

    with (
        mock.patch.object(anyio.to_thread, "run_sync", run_sync),
        mock.patch.object(loop, "run_in_executor", run_in_executor),
    ):
        try:
            yield seen
        finally:
            seen._connections.clear()
