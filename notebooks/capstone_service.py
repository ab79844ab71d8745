"""The capstone: one small, production-shaped FastAPI service that calls the OpenAI API.

Every pattern of the course, in one place:

* **one shared `AsyncOpenAI` client**, created in the lifespan and closed at shutdown (01, 05);
* **fan-out with `asyncio.gather`**, each call's failure isolated from the others (02);
* **a semaphore shared by all requests**, so the upstream never sees more than
  `max_upstream_calls` calls at once, however many requests arrive (03);
* **a durable audit log** in SQLite: one row per request, written in the background by one task
  that never gives up, and drained at shutdown (04);
* **deadlines**: `upstream_timeout` is the whole time a request may spend on the upstream,
  retries included; slow clients are cut off too;
* **validated input** with pydantic, and a body guard, so bad requests are refused before
  they cost an upstream call;
* **one error shape**: every non-2xx answer is a JSON body `{"error": {"type": …, "message": …}}`,
  documented in the OpenAPI schema, never a traceback or a hang.

Build it with `create_app(audit_path=…)` and serve it like any ASGI app::

    app = create_app(audit_path="audit.sqlite3")
    async with lab.serve(app) as client:
        await client.post("/chat", json={"message": "Hello"})

or in its own process, with the connection limits of `GuardedH11Protocol`::

    python notebooks/capstone_service.py --port 8000 --audit audit.sqlite3

Endpoints: `POST /chat` (one message), `POST /analyze` (sentiment, topics and summary of one
text, in parallel), `POST /batch` (many messages, each answered or failed on its own),
`GET /health` (200 while the audit log keeps up, 503 while it cannot write).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import logging
import math
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import aiosqlite
import h11
import openai
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["MODEL", "AuditLog", "GuardedH11Protocol", "create_app", "main", "run_in_subprocess"]

MODEL: Final = "gpt-4o-mini"
MAX_MESSAGE_CHARS: Final = 4_000
MAX_BATCH: Final = 50

log = logging.getLogger("capstone")

# ------------------------------------------------------------------------------ request models

# A message needs one character that is neither whitespace nor a control character: "   ",
# "\u00a0" or "\x01\x02" would cost an upstream call for nothing. The pattern is the rule
# itself, so the OpenAPI schema states exactly what is accepted. (The characters are spelled
# out instead of `\s`, whose meaning differs between Python and the JSON Schema dialect.)
VISIBLE_CHARACTER: Final = (
    r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
)
UserText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_MESSAGE_CHARS, pattern=VISIBLE_CHARACTER),
    Field(description="1–4,000 characters, at least one neither whitespace nor control."),
]
# strict: `false` and `"1.5"` are not temperatures (an int such as 1 still is a number).
Temperature = Annotated[float, Field(ge=0.0, le=2.0, strict=True)]
UserId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]


class StrictModel(BaseModel):
    # An unknown field is a typo ("temprature") that would otherwise be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class ChatRequest(StrictModel):
    message: UserText
    temperature: Temperature = 0.0
    user_id: UserId = "anonymous"


class AnalyzeRequest(StrictModel):
    text: UserText
    user_id: UserId = "anonymous"


class BatchRequest(StrictModel):
    messages: Annotated[list[UserText], Field(min_length=1, max_length=MAX_BATCH)]
    temperature: Temperature = 0.0
    user_id: UserId = "anonymous"


# ----------------------------------------------------------------------------- response models


class ErrorInfo(BaseModel):
    type: str
    message: str


class ErrorBody(BaseModel):
    """The one shape of every non-2xx answer."""

    error: ErrorInfo


class ChatReply(BaseModel):
    response: str


class AnalyzeReply(BaseModel):
    sentiment: str | None
    topics: list[str] | None
    summary: str | None
    errors: dict[str, ErrorInfo]


class BatchItem(BaseModel):
    response: str | None
    error: ErrorInfo | None


class BatchReply(BaseModel):
    results: list[BatchItem]


class Health(BaseModel):
    status: str
    audit_rows_written: int
    audit_rows_pending: int
    audit_capacity: int


# ----------------------------------------------------------------------- upstream errors → HTTP


@dataclass(frozen=True)
class ClientError:
    """What a client is told about a failure: status, JSON error, and a Retry-After if useful."""

    status: int
    info: ErrorInfo
    retry_after: int | None = None

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        headers = dict(headers or {})
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return JSONResponse(
            ErrorBody(error=self.info).model_dump(), status_code=self.status, headers=headers
        )


def refusal(status: int, kind: str, message: str, retry_after: int | None = None) -> ClientError:
    return ClientError(status, ErrorInfo(type=kind, message=message), retry_after)


class UpstreamDeadline(Exception):
    """The upstream part of a request ran out of its `upstream_timeout`; says where it was."""


UpstreamFailure = openai.APIError | UpstreamDeadline
UPSTREAM_FAILURES: Final = (openai.APIError, UpstreamDeadline)  # for `except` and isinstance


def client_error(error: UpstreamFailure) -> ClientError:
    """Translate an upstream failure into what our client should see.

    The upstream's own message is not passed on: it can name our account, model or key.
    """
    if isinstance(error, UpstreamDeadline):
        return refusal(504, "upstream_timeout", str(error))
    if isinstance(error, openai.RateLimitError):
        wait = _retry_after_seconds(error.response.headers)
        message = f"The model provider is rate limiting this service; retry in {wait} s."
        return refusal(429, "rate_limited", message, wait)
    if isinstance(error, openai.APITimeoutError):  # before APIConnectionError: a subclass
        return refusal(504, "upstream_timeout", "The model provider did not answer in time.")
    if isinstance(error, openai.APIConnectionError):
        message = "The model provider cannot be reached right now; retry shortly."
        return refusal(503, "upstream_unavailable", message, 1)
    if isinstance(error, openai.APIStatusError) and error.status_code >= 500:
        message = f"The model provider failed (HTTP {error.status_code}); retry shortly."
        return refusal(502, "upstream_error", message)
    status = getattr(error, "status_code", None)
    message = f"The model provider refused the request (HTTP {status or 'unknown'})."
    return refusal(502, "upstream_rejected", message)


def _retry_after_seconds(headers: Any) -> int:
    """Whole seconds to wait, from `retry-after-ms` or `retry-after`; 1 if neither parses."""
    seconds = _retry_after(headers)
    return 1 if seconds is None else max(1, math.ceil(seconds))


def _retry_after(headers: Any) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def validation_message(error: RequestValidationError) -> ClientError:
    """One readable sentence per problem: `temperature: Input should be less than or equal to 2`."""
    details = []
    for problem in error.errors():
        field = _field_name(problem.get("loc", ()))
        text = problem.get("msg", "invalid")
        if problem.get("type") == "json_invalid":
            text = f"not valid JSON ({problem.get('ctx', {}).get('error', 'invalid')})"
        elif problem.get("type") == "string_pattern_mismatch" and field != "user_id":
            text = "needs at least one character that is neither whitespace nor control"
        details.append(f"{field}: {text}")
    return refusal(422, "invalid_request", "; ".join(details) or "The request is invalid.")


def _field_name(location: Any) -> str:
    """("body", "messages", 2) → "messages[2]"; the bare body → "body"."""
    parts = [part for part in location if part != "body" and not isinstance(part, int)]
    name = ".".join(str(part) for part in parts) or "body"
    indexes = "".join(f"[{part}]" for part in location[1:] if isinstance(part, int))
    return name + indexes if parts else name


# ---------------------------------------------------------------------------------- audit log

AUDIT_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,            -- Unix time the request finished
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,     -- 499: the client left before its request was complete
    duration_ms REAL NOT NULL,
    user_id TEXT,
    prompt TEXT,                 -- the first 200 characters
    reply TEXT,                  -- the first 200 characters
    error TEXT                   -- the exception's class and message, for failures
)
"""
_INSERT: Final = (
    "INSERT INTO audit (at, method, path, status, duration_ms, user_id, prompt, reply, error) "
    "VALUES (:at, :method, :path, :status, :duration_ms, :user_id, :prompt, :reply, :error)"
)
_ROWS_PER_COMMIT: Final = 1_000


class AuditUnavailable(RuntimeError):
    """The audit log cannot be opened (at start-up) or has no room left (backpressure)."""


class AuditLog:
    """Audit rows in SQLite, written in the background by one task, in batches.

    The promise: every request that was *admitted* gets its row written, exactly once, as soon
    as the store accepts writes. How it is kept:

    * `reserve()` is called before the request runs and fails once `capacity` rows are waiting
      or promised: the service answers 503 instead of a 2xx it could not audit. Memory stays
      bounded by `capacity` rows.
    * `record()` queues the row of a reserved request, so a request never waits for the disk.
    * One writer task (one aiosqlite connection) commits whatever has queued up in one
      transaction. A failed commit is rolled back and the same rows are tried again after a
      backoff (0.05 s doubling to 1 s): a lock held past `busy_timeout`, a full disk or any
      other error never stops the writer, and the rows are removed from the queue only once
      committed, so none is lost or written twice. The first failure is logged once with its
      cause, `failure` says what is wrong (the health endpoint shows it), and the recovery is
      logged too.
    * `close()` writes what is queued before it returns, giving up after `drain_timeout`
      seconds if the store is still failing (and logging how many rows that lost).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        capacity: int = 10_000,
        busy_timeout: float = 5.0,
        drain_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self.busy_timeout = busy_timeout
        self.drain_timeout = drain_timeout
        self.written = 0
        self.failure: str | None = None  # the error of the last write, while writes fail
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._reserved = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._connection: aiosqlite.Connection | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Rows queued or promised and not yet committed."""
        return len(self._pending) + self._reserved

    async def open(self) -> None:
        """Open (or create) the store; raises `AuditUnavailable` with the cause if it cannot."""
        try:
            self._connection = await aiosqlite.connect(self.path, timeout=self.busy_timeout)
            # WAL: readers (an admin's query, the notebook) never block the writer.
            await self._connection.execute("PRAGMA journal_mode=WAL")
            await self._connection.execute(AUDIT_SCHEMA)
            await self._connection.commit()
        except (sqlite3.Error, OSError) as error:
            # Close what was opened: aiosqlite's thread would keep the process alive.
            await self._close_connection()
            raise AuditUnavailable(f"cannot open the audit log {self.path}: {error}") from error
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
        """Write every queued row (for up to `drain_timeout` s), stop the writer, close."""
        self._closing = True
        self._wake.set()
        try:
            if self._writer is not None:
                done, _ = await asyncio.wait([self._writer], timeout=self.drain_timeout)
                if not done:
                    self._writer.cancel()
                    await asyncio.wait([self._writer])
                    log.error(
                        "audit log closed with %d rows unwritten: %s", self.pending, self.failure
                    )
        finally:
            self._writer = None
            await self._close_connection()

    async def _close_connection(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()

    async def _write_batches(self) -> None:
        backoff = 0.05
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(len(self._pending), _ROWS_PER_COMMIT))]
            try:
                await self._commit(batch)
            except Exception as error:  # any failure: keep the rows, wait, try again
                self._failed(error)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 1.0)
                continue
            for _ in batch:
                self._pending.popleft()
            self.written += len(batch)
            backoff = 0.05
            if self.failure is not None:
                log.warning("audit log writes again: %s cleared", self.failure)
                self.failure = None

    async def _commit(self, rows: list[dict[str, Any]]) -> None:
        assert self._connection is not None
        try:
            await self._connection.executemany(_INSERT, rows)
            await self._connection.commit()
        except BaseException:
            # Nothing of a failed batch stays behind: the retry writes it whole, once.
            with contextlib.suppress(sqlite3.Error):  # no transaction, or still failing
                await self._connection.rollback()
            raise

    def _failed(self, error: Exception) -> None:
        cause = f"{type(error).__name__}: {error}"
        if self.failure is None:  # log the start of an outage once, not every retry
            log.error("audit log cannot write: %s", cause)
        self.failure = cause


class AuditMiddleware:
    """Record one audit row per HTTP request, whatever happened to it.

    It sits outside every other part of the app, so it also sees requests that never reached
    an endpoint (408, 413, 422). Before the request runs it reserves the row's place in the
    audit log; if there is none (the store has been failing long enough to fill the queue),
    the client gets 503 with Retry-After, unaudited, instead of an answer that could not be.
    An endpoint adds details with `note(request, prompt=…, reply=…)`. Health probes are not
    audited: they must answer even when the audit log cannot.
    """

    def __init__(self, app: ASGIApp, unaudited_paths: Sequence[str] = ("/health",)) -> None:
        self.app = app
        self.unaudited_paths = frozenset(unaudited_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.unaudited_paths:
            await self.app(scope, receive, send)
            return
        audit: AuditLog = scope["state"]["resources"].audit
        if not audit.reserve():
            message = "The audit log is not keeping up, so this request was not run; retry soon."
            await refusal(503, "audit_unavailable", message, 1).response()(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            row: dict[str, Any] = {"user_id": None, "prompt": None, "reply": None, "error": None}
            row.update(scope["state"].get("audit_note", {}))
            row.update(
                at=time.time(),
                method=scope["method"],
                path=scope["path"],
                status=row.pop("status", status),
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            audit.record(row)


def note(request: Request | Scope, **fields: Any) -> None:
    """Add fields (user_id, prompt, reply, error, status) to this request's audit row."""
    state = request.scope["state"] if isinstance(request, Request) else request["state"]
    audit_note = state.setdefault("audit_note", {})
    for name, value in fields.items():
        if isinstance(value, str):
            # SQLite stores UTF-8: a lone surrogate from JSON ("\ud800") must not jam the writer.
            value = value[:200].encode("utf-8", "replace").decode("utf-8")
        audit_note[name] = value


# ------------------------------------------------------------------------------- body guard


class BodyGuard:
    """Read the whole request body before the app sees it, and refuse a bad one in JSON.

    * larger than `max_bytes` → 413 (a declared Content-Length at once, a chunked body as it
      arrives);
    * not complete `timeout` seconds after the request started → 408, and the connection is
      closed (a client trickling its body must not hold a connection for ever);
    * not UTF-8 JSON (malformed, invalid UTF-8, nested too deep, a number too long) → 422,
      the same answer FastAPI gives for other malformed JSON;
    * the client disconnects before the body is complete → nothing is sent, and the audit row
      says 499 ("client closed the request") instead of a 400 nobody received.

    The app then reads the same bytes as usual. (FastAPI's own `max_body_size` answers in
    plain text; this service answers every error in JSON.)
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(self._too_large(), scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(receive)
        except TimeoutError:
            message = f"The request body was not complete within {self.timeout:g} s."
            problem = refusal(408, "request_timeout", message)
            await self._refuse(problem, scope, receive, send, {"Connection": "close"})
            return
        except _TooLarge:
            await self._refuse(self._too_large(), scope, receive, send, {"Connection": "close"})
            return
        if body is None:
            note(scope, status=499, error="the client disconnected before its body was complete")
            return
        if body and (problem := _not_json(body)) is not None:
            await self._refuse(problem, scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as usual

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None if the client disconnected first."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> ClientError:
        return refusal(413, "too_large", f"The request body is larger than {self.max_bytes} bytes.")

    @staticmethod
    async def _refuse(
        problem: ClientError,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str] | None = None,
    ) -> None:
        note(scope, error=problem.info.message)
        await problem.response(headers)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _not_json(body: bytes) -> ClientError | None:
    """None if `body` is UTF-8 JSON; else the 422 that says why (RFC 8259: JSON is UTF-8)."""
    try:
        json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        reason = f"not UTF-8 at byte {error.start}"
    except json.JSONDecodeError as error:
        reason = error.msg
    except RecursionError:
        reason = "nested too deeply"
    except ValueError as error:  # e.g. an integer of more than 4,300 digits
        reason = str(error).split(";")[0]
    else:
        return None
    return refusal(422, "invalid_request", f"body: not valid JSON ({reason})")


# ------------------------------------------------------------------------- slow connections


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the limits it lacks for slow clients.

    * **Header timeout**: a new connection must send its request line and headers within
      `CAPSTONE_HEADER_TIMEOUT` seconds (default 10), or it gets a JSON 408 and is closed.
      (A kept-alive connection is already covered: uvicorn closes it `timeout_keep_alive`
      seconds after a response unless the next request's headers are complete by then.)
    * **Connection cap**: beyond `CAPSTONE_MAX_CONNECTIONS` open connections (default 2,048) a
      new one gets a JSON 503 and is closed at once, so trickling clients cannot exhaust the
      process's file descriptors.
    * **Lingering close**: a connection closed while its client is still sending (a 408 for
      headers or a body too slow, a 413 for a chunked body too large) is not closed at once.
      Closing a socket with unread bytes makes the kernel send a reset instead of a normal
      close: what is not yet sent of the answer is dropped, and the client's read fails with
      "connection reset" instead of ending after it. So, like nginx's `lingering_close`, the
      service sends the answer, shuts down its writing side, reads and discards what still
      arrives until the client closes or `LINGER_SECONDS` (2) pass, and only then closes.
      A lingering connection still counts against the cap.

    The limits come from the environment because uvicorn builds one protocol per connection,
    in every worker process. Use it with `uvicorn --http capstone_service:GuardedH11Protocol`,
    or run this module (`main()`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = float(os.environ.get("CAPSTONE_HEADER_TIMEOUT", "10"))
        self.max_connections = int(os.environ.get("CAPSTONE_MAX_CONNECTIONS", "2048"))
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Every close uvicorn makes (its request cycle's too) goes through `_close`.
        self._socket = transport
        self.transport = _ClosedThrough(transport, self._close)  # type: ignore[assignment]
        if len(self.connections) > self.max_connections:
            message = f"This server has {self.max_connections} connections open; retry soon."
            # Closed at once, not lingering: this limit exists to free sockets.
            self._answer_and_close(refusal(503, "too_many_connections", message, 1), linger=False)
            return
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is None:
            super().data_received(data)
        # else: the rest of a request already answered and refused; discarded

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self._header_timer is not None:
            self._header_timer.cancel()  # the first request's headers are complete
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # Unparseable HTTP ("Invalid HTTP request received."): the one error shape here too.
        self._answer_and_close(refusal(400, "invalid_http", msg))

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None and not self.transport.is_closing():
            message = f"The request headers were not complete within {self.header_timeout:g} s."
            self._answer_and_close(refusal(408, "request_timeout", message))

    def _answer_and_close(self, problem: ClientError, *, linger: bool = True) -> None:
        body = json.dumps(ErrorBody(error=problem.info).model_dump()).encode()
        retry = b"" if problem.retry_after is None else b"retry-after: %d\r\n" % problem.retry_after
        head = b"HTTP/1.1 %d %s\r\n" % (problem.status, _REASONS[problem.status])
        self.transport.write(
            head
            + b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
            + retry
            + b"connection: close\r\n\r\n"
            + body
        )
        # Before its request is complete, a client may still be sending: linger.
        self._close(linger=linger)

    def _close(self, *, linger: bool | None = None) -> None:
        """Close now, or linger if `linger` (None: if the client is in the middle of a body)."""
        transport = self._socket
        if transport.is_closing() or self._linger_timer is not None:
            return  # closed already, or lingering until its timer closes it
        if linger is None:
            linger = self.conn.their_state is h11.SEND_BODY
        if not linger:
            transport.close()
            return
        # Send what is written, then FIN; keep reading (and discarding) so that no byte of
        # the client's stays unread when the socket closes. The client's own close ends it
        # early: the protocol's `eof_received` lets asyncio close the transport.
        transport.write_eof()
        transport.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, transport.close)


LINGER_SECONDS: Final = 2.0


class _ClosedThrough:
    """A transport whose `close()` calls `close` instead; everything else is the transport's."""

    def __init__(self, transport: asyncio.Transport, close: Callable[[], None]) -> None:
        self._transport = transport
        self.close = close

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_REASONS: Final = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}

# -------------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Resources:
    """What the lifespan creates once and every request shares."""

    openai: AsyncOpenAI
    upstream_slots: asyncio.Semaphore
    audit: AuditLog
    upstream_timeout: float
    max_retries: int

    def deadline(self) -> float:
        """The event-loop time by which a request started now must be done with the upstream."""
        return asyncio.get_running_loop().time() + self.upstream_timeout

    async def ask(
        self, prompt: str, *, deadline: float, temperature: float = 0.0, max_tokens: int = 200
    ) -> str:
        """One upstream call, retried on 408/409/429/5xx/connection errors, all by `deadline`.

        A slot is held only while a call is in flight: between attempts it is released, so a
        failing call sleeping out its backoff does not keep a healthy request waiting. A retry
        whose wait would end past the deadline is not made; the last error is the answer. Past
        the deadline, waiting for a slot or for the upstream, `UpstreamDeadline` says which.
        """
        attempt = 1
        waiting_for = "a free upstream slot"
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    waiting_for = "a free upstream slot"
                    async with self.upstream_slots:
                        waiting_for = f"the model provider (attempt {attempt})"
                        try:
                            response = await self.openai.chat.completions.create(
                                model=MODEL,
                                messages=[{"role": "user", "content": prompt}],
                                temperature=temperature,
                                max_tokens=max_tokens,
                            )
                        except openai.APIError as error:
                            failure = error
                        else:
                            return (response.choices[0].message.content or "").strip()
                    wait = _retry_wait(failure, attempt)
                    loop_time = asyncio.get_running_loop().time()
                    if wait is None or attempt > self.max_retries or loop_time + wait >= deadline:
                        raise failure
                    waiting_for = f"the backoff before attempt {attempt + 1}"
                    await asyncio.sleep(wait)
                    attempt += 1
        except TimeoutError:
            raise UpstreamDeadline(
                f"The upstream part of this request did not finish within its "
                f"{self.upstream_timeout:g} s deadline (waiting for {waiting_for})."
            ) from None


def _retry_wait(error: openai.APIError, attempt: int) -> float | None:
    """Seconds to wait before retrying `error` (the server's Retry-After if it sent one), or
    None if retrying cannot help. Same rules and backoff as the SDK's own retries."""
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        if status not in (408, 409, 429) and status < 500:
            return None
        told = _retry_after(error.response.headers)
        if told is not None and told <= 60:
            return told
    elif not isinstance(error, openai.APIConnectionError):
        return None
    return min(0.5 * 2 ** (attempt - 1), 8.0) * (1 - 0.25 * random.random())


async def get_resources(request: Request) -> Resources:
    # `async def`, though it never awaits: FastAPI runs a plain `def` dependency in its thread
    # pool, a round trip to another thread on every request for one attribute lookup.
    resources: Resources = request.state.resources
    return resources


Shared = Annotated[Resources, Depends(get_resources)]

# Every status an endpoint can answer besides its 200, all in the one error shape.
_ERRORS: Final = {
    408: "The request body was not complete in time.",
    413: "The request body is too large.",
    422: "The request is not valid JSON or breaks the schema.",
    429: "The model provider is rate limiting this service (see Retry-After).",
    500: "A bug on our side; it has been logged.",
    502: "The model provider failed or refused the request.",
    503: "The model provider cannot be reached, or the audit log is not keeping up "
    "(see Retry-After).",
    504: "The upstream part of the request did not finish within `upstream_timeout`.",
}
ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": ErrorBody, "description": text} for status, text in _ERRORS.items()
}
_KINDS: Final = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def create_app(
    *,
    audit_path: str | Path,
    max_upstream_calls: int = 20,
    upstream_timeout: float = 30.0,
    max_retries: int = 2,
    max_body_bytes: int = 64 * 1024,
    body_timeout: float = 10.0,
    audit_capacity: int = 10_000,
    audit_busy_timeout: float = 5.0,
    base_url: str | None = None,
) -> FastAPI:
    """Build the service.

    Args:
        audit_path: the SQLite file for the audit log (created if missing).
        max_upstream_calls: the most upstream calls in flight at once, across all requests
            of this process (with N worker processes the upstream can see N times as many).
        upstream_timeout: seconds a request may spend on the upstream in all (waiting for a
            slot, the calls, the retries and the waits between them) before it gets a 504.
        max_retries: retries of a 408/409/429/5xx/connection error, per upstream call.
        max_body_bytes: the largest request body accepted; larger ones get 413.
        body_timeout: seconds a client has to send its whole body; slower ones get 408.
        audit_capacity: audit rows that may wait in memory while the store cannot write;
            once they are used up, requests get 503 until it writes again.
        audit_busy_timeout: seconds one audit commit waits for another writer's lock.
        base_url: the OpenAI-compatible API to call; None uses OPENAI_BASE_URL or OpenAI.
    """
    _check_int("max_upstream_calls", max_upstream_calls, minimum=1)
    _check_int("max_retries", max_retries, minimum=0)
    _check_int("max_body_bytes", max_body_bytes, minimum=1)
    _check_int("audit_capacity", audit_capacity, minimum=1)
    for name, seconds in (
        ("upstream_timeout", upstream_timeout),
        ("body_timeout", body_timeout),
        ("audit_busy_timeout", audit_busy_timeout),
    ):
        _check_seconds(name, seconds)
    if not isinstance(audit_path, str | Path):
        raise TypeError(f"audit_path must be a str or Path, got {audit_path!r}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Resources]]:
        # The exit stack closes whatever opened, in reverse order, if a later step fails too.
        async with AsyncExitStack() as opened:
            audit = AuditLog(audit_path, capacity=audit_capacity, busy_timeout=audit_busy_timeout)
            await audit.open()
            # Closed last: the server has finished every request by then, so the audit rows
            # of those last requests are queued and get drained.
            opened.push_async_callback(audit.close)
            client = AsyncOpenAI(
                api_key=os.getenv("OPENAI_API_KEY"),
                base_url=base_url,
                timeout=upstream_timeout,
                max_retries=0,  # Resources.ask retries, within the request's deadline
            )
            opened.push_async_callback(client.close)
            slots = asyncio.Semaphore(max_upstream_calls)
            yield {"resources": Resources(client, slots, audit, upstream_timeout, max_retries)}

    app = FastAPI(title="Capstone: an async LLM service", lifespan=lifespan)
    app.add_middleware(BodyGuard, max_bytes=max_body_bytes, timeout=body_timeout)
    app.add_middleware(AuditMiddleware)  # added last = outermost: it sees every request

    @app.exception_handler(UpstreamDeadline)
    @app.exception_handler(openai.APIError)
    async def upstream_failed(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, UPSTREAM_FAILURES)
        note(request, error=f"{type(error).__name__}: {error}")
        return client_error(error).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problem = validation_message(error)
        note(request, error=problem.info.message)
        return problem.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        note(request, error=str(error.detail))
        problem = refusal(
            error.status_code, _KINDS.get(error.status_code, "http_error"), error.detail
        )
        return problem.response(error.headers)  # e.g. 405's Allow

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Logged by the server with its traceback; the client only learns that it failed.
        message = "Something went wrong on our side; it has been logged."
        return refusal(500, "internal_error", message).response()

    @app.post("/chat", responses=ERROR_RESPONSES)
    async def chat(body: ChatRequest, request: Request, shared: Shared) -> ChatReply:
        note(request, user_id=body.user_id, prompt=body.message)
        reply = await shared.ask(
            body.message, deadline=shared.deadline(), temperature=body.temperature
        )
        note(request, reply=reply)
        return ChatReply(response=reply)

    @app.post("/analyze", responses=ERROR_RESPONSES)
    async def analyze(body: AnalyzeRequest, request: Request, shared: Shared) -> AnalyzeReply:
        note(request, user_id=body.user_id, prompt=body.text)
        prompts = {
            "sentiment": f"Sentiment (one word): {body.text}",
            "topics": f"List 3 topics (comma-separated): {body.text}",
            "summary": f"Summarize in one sentence: {body.text}",
        }
        deadline = shared.deadline()  # one deadline for the three calls together
        # return_exceptions=True: one failed call leaves the other two answers intact.
        outcomes = await asyncio.gather(
            *(shared.ask(prompt, deadline=deadline) for prompt in prompts.values()),
            return_exceptions=True,
        )
        texts: dict[str, str] = {}
        failures: dict[str, UpstreamFailure] = {}
        for part, outcome in zip(prompts, outcomes, strict=True):
            if isinstance(outcome, UPSTREAM_FAILURES):
                failures[part] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome  # a bug, not an upstream failure: let it be a 500
            else:
                texts[part] = outcome
        if not texts:
            raise next(iter(failures.values()))  # nothing to show: answer with the error
        topics = texts.get("topics")
        note(request, reply=texts.get("summary") or texts.get("sentiment") or "")
        if failures:
            note(request, error="partial: " + ", ".join(failures))
        return AnalyzeReply(
            sentiment=texts.get("sentiment"),
            topics=None if topics is None else [t.strip() for t in topics.split(",")],
            summary=texts.get("summary"),
            errors={part: client_error(error).info for part, error in failures.items()},
        )

    @app.post("/batch", responses=ERROR_RESPONSES)
    async def batch(body: BatchRequest, request: Request, shared: Shared) -> BatchReply:
        note(request, user_id=body.user_id, prompt=" | ".join(body.messages))
        deadline = shared.deadline()

        async def one(message: str) -> BatchItem:
            try:
                reply = await shared.ask(message, deadline=deadline, temperature=body.temperature)
            except UPSTREAM_FAILURES as error:
                return BatchItem(response=None, error=client_error(error).info)
            return BatchItem(response=reply, error=None)

        results = await asyncio.gather(*(one(message) for message in body.messages))
        failed = sum(item.error is not None for item in results)
        note(request, reply=f"{len(results) - failed} answered, {failed} failed")
        return BatchReply(results=list(results))

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": ErrorBody, "description": "The audit log cannot write."}},
    )
    async def health(shared: Shared) -> Health | JSONResponse:
        audit = shared.audit
        if audit.failure is not None:
            message = (
                f"The audit log cannot write ({audit.failure}); {audit.pending} of "
                f"{audit.capacity} rows wait in memory."
            )
            return refusal(503, "degraded", message).response()
        return Health(
            status="ok",
            audit_rows_written=audit.written,
            audit_rows_pending=audit.pending,
            audit_capacity=audit.capacity,
        )

    return app


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")


# ------------------------------------------------------------------------ its own process

_ENV: Final = "CAPSTONE_"
_SETTINGS: Final = {  # create_app's options that `main()` passes on, and how to read them
    "audit_path": str,
    "base_url": str,
    "max_upstream_calls": int,
    "upstream_timeout": float,
    "max_retries": int,
    "max_body_bytes": int,
    "body_timeout": float,
    "audit_capacity": int,
    "audit_busy_timeout": float,
}


def app_from_environment() -> FastAPI:
    """`create_app()` with the options `main()` put in CAPSTONE_* variables (every worker
    process builds its own app from them).

    What exists by then (the modules of FastAPI, pydantic and the SDK, their classes, the app)
    lives as long as the process, so it is frozen out of the garbage collector's sight
    (`gc.freeze()`): under load a full collection otherwise walks all of it again, while the
    event loop, and every request, waits.
    """
    options = {
        name: kind(os.environ[_ENV + name.upper()])
        for name, kind in _SETTINGS.items()
        if _ENV + name.upper() in os.environ
    }
    app = create_app(**options)
    gc.collect()  # what is garbage already is freed, not frozen for good
    gc.freeze()
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the capstone on 127.0.0.1 with uvicorn, in this process (or N worker processes).

    A start-up failure (an audit log it cannot open) exits with status 3 and the cause logged.
    """
    parser = argparse.ArgumentParser(description="The capstone service, on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--audit", dest="audit_path", required=True, help="SQLite file")
    parser.add_argument("--base-url", help="the OpenAI-compatible API (default OPENAI_BASE_URL)")
    parser.add_argument("--max-upstream-calls", type=int)
    parser.add_argument("--upstream-timeout", type=float)
    parser.add_argument("--max-retries", type=int)
    parser.add_argument("--max-body-bytes", type=int)
    parser.add_argument("--body-timeout", type=float)
    parser.add_argument("--audit-capacity", type=int)
    parser.add_argument("--audit-busy-timeout", type=float)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--max-connections", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    for name in _SETTINGS:
        if getattr(args, name) is not None:
            os.environ[_ENV + name.upper()] = str(getattr(args, name))
    os.environ[_ENV + "HEADER_TIMEOUT"] = str(args.header_timeout)
    os.environ[_ENV + "MAX_CONNECTIONS"] = str(args.max_connections)
    uvicorn.run(
        "capstone_service:app_from_environment",
        factory=True,
        app_dir=str(Path(__file__).resolve().parent),
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        http="capstone_service:GuardedH11Protocol",
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
    )


@contextmanager
def run_in_subprocess(
    *, audit_path: str | Path, base_url: str, workers: int = 1, **options: object
) -> Iterator[str]:
    """Run `main()` in a child process on a free loopback port; yield its URL.

    Leaving the block sends SIGTERM: the service finishes its requests, drains its audit log
    and exits. `options` are `main()`'s flags without the dashes (`max_upstream_calls=20`).
    A service that does not start raises `RuntimeError` with what it printed.
    """
    with socket.socket() as probe:  # a free port; uvicorn binds it again in the child
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, __file__, "--port", str(port), "--audit", str(audit_path)]
    command += ["--base-url", base_url, "--workers", str(workers)]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen(command, stdout=output, stderr=output, text=True)
        try:
            for _ in range(600):  # up to 60 s to listen
                if child.poll() is not None:
                    output.seek(0)
                    raise RuntimeError(f"the service exited ({child.returncode}):\n{output.read()}")
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            else:
                raise RuntimeError("the service did not listen within 60 s")
            yield f"http://127.0.0.1:{port}"
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            child.wait(timeout=60)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    main()
