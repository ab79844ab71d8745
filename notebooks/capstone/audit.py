"""The audit log (04): one row per request, whatever happened to it, and none lost.

`AuditMiddleware` records the row of every request; `AuditLog` writes the rows to SQLite from
one background task, in batches, so a request never waits for the disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Final

import aiosqlite
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import Settings

log = logging.getLogger("capstone")

AUDIT_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,            -- Unix time the request finished
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,     -- 499: the client left before it had an answer
    duration_ms REAL NOT NULL,
    user_id TEXT,
    prompt TEXT,                 -- the first 200 characters
    reply TEXT,                  -- the first 200 characters
    error TEXT,                  -- the exception's class and message, for failures
    completion_tokens INTEGER    -- a stream's (08): its usage, or the pieces a leaver got
)
"""
# An audit log created before streams had no completion_tokens: the column is added.
_ADD_TOKENS: Final = "ALTER TABLE audit ADD COLUMN completion_tokens INTEGER"
_INSERT: Final = (
    "INSERT INTO audit (at, method, path, status, duration_ms, user_id, prompt, reply, error, "
    "completion_tokens) VALUES (:at, :method, :path, :status, :duration_ms, :user_id, :prompt, "
    ":reply, :error, :completion_tokens)"
)
_NOTED: Final = ("user_id", "prompt", "reply", "error", "completion_tokens")  # None if not noted
_ROWS_PER_COMMIT: Final = 1_000
# What SQLite raises for a row it can never store (a value of a type it cannot bind, an int
# past 64 bits, a NULL where NOT NULL): retrying cannot help. A lock or a full disk is an
# OperationalError instead, and is retried.
_ROW_ERRORS: Final = (
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    OverflowError,
)


class AuditUnavailable(RuntimeError):
    """The audit log cannot be opened (at start-up) or has no room left (backpressure)."""


class AuditLog:
    """Audit rows in SQLite, written in the background by one task, in batches.

    The promise: every request that was *admitted* gets its row kept, exactly once. How:

    * `reserve()` is called before the request runs and fails once `audit_capacity` rows are
      waiting: the service answers 503 instead of a 2xx it could not audit.
    * `record()` queues the row of a reserved request.
    * One writer task commits whatever has queued up in one transaction. A failing store (a
      lock held past `audit_busy_timeout`, a full disk) is retried after a backoff; rows leave
      the queue only once committed, so none is lost or written twice. The outage and the
      recovery are logged once each, and `failure` says what is wrong (`/health` shows it).
      A row SQLite refuses for what it holds goes to the dead-letter file; the writer moves on.
    * `close()` writes what is queued; if the store still fails after `audit_drain_timeout`,
      the rows go to the spill file (or, failing that, the log), and `open()` writes them first
      at the next start. (A crash between that commit and the file's removal writes them twice.)
    """

    def __init__(self, settings: Settings) -> None:
        self.path, self.settings = settings.audit_path, settings
        self.dead_letter = settings.audit_dead_letter_path or Path(f"{self.path}.dead.jsonl")
        self.spill = settings.audit_spill_path or Path(f"{self.path}.spill.jsonl")
        self.capacity = settings.audit_capacity
        self.written = 0
        self.failure: str | None = None  # the error of the last write, while writes fail
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._reserved = 0
        self._replaying = 0  # rows at the head of the queue that came from the spill file
        self._wake, self._give_up = asyncio.Event(), asyncio.Event()
        self._closing = False
        self._connection: aiosqlite.Connection | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Rows queued or promised and not yet committed."""
        return len(self._pending) + self._reserved

    async def open(self) -> None:
        """Open (or create) the store and queue the spilled rows of an earlier run first;
        raises `AuditUnavailable` with the cause if it cannot."""
        try:
            timeout = self.settings.audit_busy_timeout
            self._connection = await aiosqlite.connect(self.path, timeout=timeout)
            # WAL: readers (an admin's query, the notebook) never block the writer.
            await self._connection.execute("PRAGMA journal_mode=WAL")
            await self._connection.execute(AUDIT_SCHEMA)
            columns = await self._connection.execute_fetchall("PRAGMA table_info(audit)")
            if "completion_tokens" not in {column[1] for column in columns}:
                await self._connection.execute(_ADD_TOKENS)
            await self._connection.commit()
            spilled = self.spill.read_text() if self.spill.exists() else ""
            self._pending.extend(
                {"completion_tokens": None, **json.loads(line)} for line in spilled.splitlines()
            )
        except (sqlite3.Error, OSError, ValueError) as error:
            # Close what was opened: aiosqlite's thread would keep the process alive.
            await self._close_connection()
            raise AuditUnavailable(f"cannot open the audit log {self.path}: {error}") from error
        self._replaying = len(self._pending)
        if self._replaying:
            log.warning("audit log: writing %d rows spilled by the last run", self._replaying)
        self._writer = asyncio.create_task(self._write_batches(), name="audit writer")

    def reserve(self) -> bool:
        """Promise room for one more row; False if `capacity` rows are already waiting."""
        if self._writer is None or self._closing or self.pending >= self.capacity:
            return False
        self._reserved += 1
        return True

    def record(self, row: dict[str, Any]) -> None:
        """Queue the row of a request that `reserve()` admitted."""
        if self._reserved <= 0:
            raise RuntimeError("record() without reserve(): that row has no room promised")
        self._reserved -= 1
        self._pending.append(row)
        self._wake.set()

    async def close(self) -> None:
        """Write every queued row (for up to `drain_timeout` s, then spill them), and close."""
        self._closing = True
        self._wake.set()
        try:
            if self._writer is not None:
                timeout = self.settings.audit_drain_timeout
                done, _ = await asyncio.wait([self._writer], timeout=timeout)
                if not done:
                    # Not cancelled: a commit cut short might have landed anyway, and its rows
                    # would be spilled too. The writer stops after its current attempt.
                    self._give_up.set()
                    await self._writer
                    self._spill()
        finally:
            self._writer = None
            await self._close_connection()

    async def _close_connection(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    async def _write_batches(self) -> None:
        backoff = 0.05
        while self._pending or not self._closing:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(len(self._pending), _ROWS_PER_COMMIT))]
            try:
                refused = await self._commit(batch)
            except Exception as error:  # the store fails: keep the rows, wait, try again
                self._failed(error)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._give_up.wait()
                if self._give_up.is_set():
                    return
                backoff = min(2 * backoff, 1.0)
                continue
            for _ in batch:
                self._pending.popleft()
            self.written += len(batch) - len(refused)
            self._dead_letter(refused)
            self._replayed(len(batch))
            backoff = 0.05
            if self.failure is not None:
                log.warning("audit log writes again: %s cleared", self.failure)
                self.failure = None

    async def _commit(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Insert `rows` in one transaction; return those SQLite refused, each with `refused`."""
        assert self._connection is not None
        refused = []
        try:
            try:
                await self._connection.executemany(_INSERT, rows)
            except _ROW_ERRORS:  # one row is poison: insert them one by one to find it
                await self._connection.rollback()
                for row in rows:
                    try:
                        await self._connection.execute(_INSERT, row)
                    except _ROW_ERRORS as error:
                        refused.append({**row, "refused": f"{type(error).__name__}: {error}"})
            await self._connection.commit()
        except BaseException:
            # Nothing of a failed batch stays behind: the retry writes it whole, once.
            with contextlib.suppress(sqlite3.Error):  # no transaction, or still failing
                await self._connection.rollback()
            raise
        return refused

    def _failed(self, error: Exception) -> None:
        cause = f"{type(error).__name__}: {error}"
        if self.failure is None:  # log the start of an outage once, not every retry
            log.error("audit log cannot write: %s", cause)
        self.failure = cause

    def _dead_letter(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            log.error("audit log: %d rows SQLite refuses go to %s", len(rows), self.dead_letter)
            _keep(rows, self.dead_letter, whole=False)

    def _replayed(self, done: int) -> None:
        if self._replaying:
            self._replaying = max(0, self._replaying - done)
            if not self._replaying:
                self.spill.unlink(missing_ok=True)  # every spilled row is in the store now

    def _spill(self) -> None:
        rows = list(self._pending)  # the spill file's own rows, if any, are among them
        log.error(
            "audit log closed with %d rows unwritten (%s); spilled to %s for the next start",
            *(len(rows), self.failure, self.spill),
        )
        _keep(rows, self.spill, whole=True)


def _keep(rows: list[dict[str, Any]], path: Path, *, whole: bool) -> None:
    """Append `rows` to `path` as JSON lines, or replace it `whole` (a half-written spill file
    would be replayed); if that fails, log them: the last place a row can be kept."""
    lines = "".join(json.dumps(row, default=str) + "\n" for row in rows)
    part = path.with_name(path.name + ".part")
    try:
        with (part if whole else path).open("w" if whole else "a") as file:
            file.write(lines)
        if whole:
            os.replace(part, path)
    except OSError as error:
        part.unlink(missing_ok=True)
        log.critical("audit rows that %s cannot keep (%s):\n%s", path, error, lines)


class AuditMiddleware:
    """Record one audit row per HTTP request, whatever happened to it.

    It sits outside every other part of the app, so it also sees requests that never reached
    an endpoint (408, 413, 422). Before the request runs it reserves the row's place in the
    audit log; if there is none, the client gets 503 with Retry-After, unaudited, instead of an
    answer that could not be. An endpoint adds details with `note(request, prompt=…)`. Health
    probes are not audited: they must answer even when the audit log cannot.
    """

    def __init__(self, app: ASGIApp, unaudited_paths: tuple[str, ...] = ("/health",)) -> None:
        self.app = app
        self.unaudited_paths = frozenset(unaudited_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.unaudited_paths:
            await self.app(scope, receive, send)
            return
        audit: AuditLog = scope["state"]["resources"].audit
        if not audit.reserve():
            message = "The audit log is not keeping up, so this request was not run; retry soon."
            error = {"error": {"type": "audit_unavailable", "message": message}}
            await JSONResponse(error, 503, {"Retry-After": "1"})(scope, receive, send)
            return
        started = time.perf_counter()
        status = 499  # no answer and no exception: the client left before it had one

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except BaseException:
            status = 500 if status == 499 else status  # the server answers 500 if it can
            raise
        finally:
            row: dict[str, Any] = dict.fromkeys(_NOTED)
            if status == 499:
                row["error"] = "the client disconnected before it had an answer"
            row.update(scope["state"].get("audit_note", {}))
            row.update(
                at=time.time(),
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            audit.record(row)


def note(request: Request | Scope, **fields: Any) -> None:
    """Add fields (user_id, prompt, reply, error, completion_tokens) to this request's row."""
    state = request.scope["state"] if isinstance(request, Request) else request["state"]
    audit_note = state.setdefault("audit_note", {})
    for name, value in fields.items():
        if isinstance(value, str):
            # SQLite stores UTF-8: a lone surrogate from JSON ("\ud800") must not be refused.
            value = value[:200].encode("utf-8", "replace").decode("utf-8")
        audit_note[name] = value
