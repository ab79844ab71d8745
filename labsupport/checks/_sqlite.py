"""Watching which threads use each `sqlite3` connection during a check.

One `sqlite3` connection shared by `def` background tasks is used by several thread-pool threads
at once, and silently loses rows, but only when two writes happen to overlap, so a count of rows
alone catches it only sometimes. Which threads ran statements on a connection does not depend on
luck: while `sqlite_threads()` is active, every function the event loop hands to a worker thread
(`anyio.to_thread.run_sync`, which Starlette runs `def` background tasks and endpoints with, and
`loop.run_in_executor`, under `asyncio.to_thread`) runs under a profile function of that thread,
which notes each call of a `sqlite3.Connection` or `sqlite3.Cursor` method and the thread making
it. aiosqlite's connections are used by their own thread, not a worker's, and pass.

The event loop's own thread is watched too, by a profile function set on it (which also counts
its `time.sleep` calls, the other blocking wait of an `async def` audit): a `sqlite3` call
there (an `async def` task that awaits, then writes with blocking `sqlite3`) blocks every request
for as long as the statement takes, however short the block looks on a fast disk. The lesson's
invariant is that no blocking database call runs on the loop, so it is counted, not timed.

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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from types import FrameType
from typing import Any, TypeVar
from unittest import mock

import anyio.to_thread

__all__ = ["SqliteThreads", "sqlite_threads"]

R = TypeVar("R")

_STATEMENTS = frozenset(
    {"execute", "executemany", "executescript", "commit", "fetchone", "fetchall", "fetchmany"}
)
"""The sqlite3 methods that wait for the database (closing one is not counted)."""


class SqliteThreads:
    """The worker threads that called methods of each `sqlite3` connection."""

    def __init__(self) -> None:
        self.on_loop = 0
        """How many sqlite3 statements ran on the event loop's thread while it was watched."""
        self.sleeps_on_loop = 0
        """How many `time.sleep` calls the event loop's thread made while it was watched."""
        self._threads: dict[int, set[int]] = {}
        self._previous_profile: Any = None
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

    def _note_on_loop(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and arg is time.sleep:
            self.sleeps_on_loop += 1
        elif (
            event == "c_call"
            and getattr(arg, "__name__", "") in _STATEMENTS
            and isinstance(getattr(arg, "__self__", None), sqlite3.Connection | sqlite3.Cursor)
        ):
            self.on_loop += 1

    def watch_loop(self) -> None:
        """Count the sqlite3 statements the calling thread (the event loop's) runs from now on,
        until `unwatch_loop()`."""
        self._previous_profile = sys.getprofile()
        sys.setprofile(self._note_on_loop)

    def unwatch_loop(self) -> None:
        """Stop counting (idempotent): the calling thread's previous profile function is back."""
        if sys.getprofile() is not None and sys.getprofile() == self._note_on_loop:
            sys.setprofile(self._previous_profile)

    @contextmanager
    def loop_unwatched(self) -> Iterator[None]:
        """Not counting inside (the check's own statements, such as counting rows)."""
        watching = sys.getprofile() == self._note_on_loop
        self.unwatch_loop()
        try:
            yield
        finally:
            if watching:
                self.watch_loop()

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
