"""Watching which threads use each `sqlite3` connection during a check.

One `sqlite3` connection shared by `def` background tasks is used by several thread-pool threads
at once, and silently loses rows, but only when two writes happen to overlap, so a count of rows
alone catches it only sometimes. Which threads ran statements on a connection does not depend on
luck: while `sqlite_threads()` is active, every connection that exists (found through the garbage
collector) or is opened (`sqlite3.connect`) gets a trace callback that notes the thread running
each statement. aiosqlite's connections are used by their one thread, and pass.
"""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["SqliteThreads", "sqlite_threads"]


class SqliteThreads:
    """The threads that ran statements on each traced connection."""

    def __init__(self) -> None:
        self._threads: dict[int, set[int]] = {}
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @property
    def most_threads(self) -> int:
        """The most threads that used one connection (0 if no statement ran)."""
        with self._lock:
            return max((len(threads) for threads in self._threads.values()), default=0)

    def _trace(self, connection: sqlite3.Connection) -> None:
        key = id(connection)
        self._connections.append(connection)

        def note(statement: str) -> None:
            with self._lock:
                self._threads.setdefault(key, set()).add(threading.get_ident())

        with contextlib.suppress(sqlite3.Error):  # a closed connection runs nothing
            connection.set_trace_callback(note)

    def _untrace(self) -> None:
        for connection in self._connections:
            with contextlib.suppress(sqlite3.Error):
                connection.set_trace_callback(None)
        self._connections.clear()


@contextmanager
def sqlite_threads() -> Iterator[SqliteThreads]:
    """Trace every `sqlite3` connection used inside the block (see the module docstring)."""
    seen = SqliteThreads()
    for thing in gc.get_objects():
        if isinstance(thing, sqlite3.Connection):
            seen._trace(thing)
    original = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection: sqlite3.Connection = original(*args, **kwargs)
        seen._trace(connection)
        return connection

    sqlite3.connect = connect  # type: ignore[assignment]
    try:
        yield seen
    finally:
        sqlite3.connect = original
        seen._untrace()
