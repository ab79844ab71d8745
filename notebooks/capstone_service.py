"""The capstone: one small, production-shaped FastAPI service that calls the OpenAI API.

Every pattern of the course, in one place:

* **one shared `AsyncOpenAI` client**, created in the lifespan and closed at shutdown (01, 05);
* **fan-out with `asyncio.gather`**, each call's failure isolated from the others (02);
* **a semaphore shared by all requests**, so the upstream never sees more than
  `max_upstream_calls` calls at once, however many requests arrive (03);
* **a durable audit log** in SQLite: one row per request, whatever happened, written in the
  background by one task and drained at shutdown (04);
* **validated input** with pydantic, and a body-size limit, so bad requests are refused before
  they cost an upstream call;
* **clean errors**: every failure is a JSON body `{"error": {"type": …, "message": …}}` with
  an honest status (429 with Retry-After, 502, 503, 504, 413, 422), never a traceback or a hang.

Build it with `create_app(audit_path=…)` and serve it like any ASGI app::

    app = create_app(audit_path="audit.sqlite3")
    async with lab.serve(app) as client:
        await client.post("/chat", json={"message": "Hello"})

Endpoints: `POST /chat` (one message), `POST /analyze` (sentiment, topics and summary of one
text, in parallel), `POST /batch` (many messages, each answered or failed on its own).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import aiosqlite
import openai
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MODEL", "AuditLog", "create_app"]

MODEL: Final = "gpt-4o-mini"
MAX_MESSAGE_CHARS: Final = 4_000
MAX_BATCH: Final = 50

# ------------------------------------------------------------------------------ request models

# Surrounding whitespace is stripped first, so "   " is an empty message, not a valid one.
UserText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_MESSAGE_CHARS)
]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
UserId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]


class StrictModel(BaseModel):
    # An unknown field is a typo ("temprature") that would otherwise be silently ignored.
    model_config = ConfigDict(extra="forbid")


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


# ----------------------------------------------------------------------- upstream errors → HTTP


@dataclass(frozen=True)
class ClientError:
    """What a client is told about a failure: status, JSON error, and a Retry-After if useful."""

    status: int
    info: ErrorInfo
    retry_after: int | None = None

    def response(self) -> JSONResponse:
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return JSONResponse(
            {"error": self.info.model_dump()}, status_code=self.status, headers=headers
        )


def client_error(error: openai.APIError) -> ClientError:
    """Translate an SDK exception into what our client should see.

    The upstream's own message is not passed on: it can name our account, model or key.
    """
    if isinstance(error, openai.RateLimitError):
        wait = _retry_after_seconds(error.response.headers)
        message = f"The model provider is rate limiting this service; retry in {wait} s."
        return ClientError(429, ErrorInfo(type="rate_limited", message=message), wait)
    if isinstance(error, openai.APITimeoutError):  # before APIConnectionError: a subclass
        message = "The model provider did not answer in time."
        return ClientError(504, ErrorInfo(type="upstream_timeout", message=message))
    if isinstance(error, openai.APIConnectionError):
        message = "The model provider cannot be reached right now; retry shortly."
        return ClientError(503, ErrorInfo(type="upstream_unavailable", message=message), 1)
    if isinstance(error, openai.APIStatusError) and error.status_code >= 500:
        message = f"The model provider failed (HTTP {error.status_code}); retry shortly."
        return ClientError(502, ErrorInfo(type="upstream_error", message=message))
    status = getattr(error, "status_code", None)
    message = f"The model provider refused the request (HTTP {status or 'unknown'})."
    return ClientError(502, ErrorInfo(type="upstream_rejected", message=message))


def _retry_after_seconds(headers: Any) -> int:
    """Whole seconds to wait, from `retry-after-ms` or `retry-after`; 1 if neither parses."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name)) * scale
        except (TypeError, ValueError):
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return max(1, math.ceil(seconds))
    return 1


def validation_message(error: RequestValidationError) -> ClientError:
    """One readable sentence per problem: `temperature: Input should be less than or equal to 2`."""
    details = []
    for problem in error.errors():
        field = _field_name(problem.get("loc", ()))
        text = problem.get("msg", "invalid")
        if problem.get("type") == "json_invalid":
            text = f"not valid JSON ({problem.get('ctx', {}).get('error', 'invalid')})"
        details.append(f"{field}: {text}")
    message = "; ".join(details) or "The request is invalid."
    return ClientError(422, ErrorInfo(type="invalid_request", message=message))


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
    status INTEGER NOT NULL,
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


class AuditLog:
    """Audit rows in SQLite, written in the background by one task, in batches.

    `record()` only queues the row, so a request never waits for the disk. One writer task
    (one aiosqlite connection) takes whatever has queued up and commits it in one transaction:
    under load that is a few commits per second instead of one per request. `close()` writes
    every queued row before it returns, so nothing recorded is lost at shutdown.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._connection: aiosqlite.Connection | None = None
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._connection = await aiosqlite.connect(self.path)
        # WAL: readers (an admin's query, the notebook) never block the writer.
        await self._connection.execute("PRAGMA journal_mode=WAL")
        await self._connection.execute(AUDIT_SCHEMA)
        await self._connection.commit()
        self._writer = asyncio.create_task(self._write_batches(), name="audit writer")

    def record(self, row: dict[str, Any]) -> None:
        if self._writer is None or self._writer.done():
            raise RuntimeError("the audit log is not open (or its writer failed)")
        self._queue.put_nowait(row)

    async def close(self) -> None:
        """Write every queued row, stop the writer and close the connection."""
        try:
            if self._writer is not None:
                self._queue.put_nowait(None)  # the writer stops once it reaches this
                await self._writer
        finally:
            self._writer = None
            if self._connection is not None:
                await self._connection.close()
                self._connection = None

    async def _write_batches(self) -> None:
        assert self._connection is not None
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows = [row for row in batch if row is not None]
            if rows:
                await self._connection.executemany(_INSERT, rows)
                await self._connection.commit()
            if None in batch:
                return


class AuditMiddleware:
    """Record one audit row per HTTP request, whatever happened to it.

    It sits outside every other part of the app, so it also sees requests that never reached
    an endpoint (413, 422). An endpoint adds details with `note(request, prompt=…, reply=…)`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
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
            state = scope.get("state", {})
            row: dict[str, Any] = {"user_id": None, "prompt": None, "reply": None, "error": None}
            row.update(state.get("audit_note", {}))
            row.update(
                at=time.time(),
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            state["resources"].audit.record(row)


def note(request: Request, **fields: Any) -> None:
    """Add fields (user_id, prompt, reply, error) to this request's audit row."""
    if not hasattr(request.state, "audit_note"):
        request.state.audit_note = {}
    for name, value in fields.items():
        request.state.audit_note[name] = value[:200] if isinstance(value, str) else value


# ------------------------------------------------------------------------------- body limit


class BodySizeLimit:
    """Refuse request bodies larger than `max_bytes` with 413, before anyone parses them.

    A declared `Content-Length` that is too large is refused at once; a body sent without one
    (chunked) is counted as it arrives. (FastAPI's own `max_body_size` answers in plain text;
    this service answers every error in JSON.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            refusal = self.too_large()
            note(Request(scope), error=refusal.info.message)
            await refusal.response()(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # An HTTPException raised while FastAPI reads the body reaches the app's
                # exception handler, which answers 413 in JSON.
                raise HTTPException(413, self.too_large().info.message)
            return message

        await self.app(scope, counting_receive, send)

    def too_large(self) -> ClientError:
        message = f"The request body is larger than {self.max_bytes} bytes."
        return ClientError(413, ErrorInfo(type="too_large", message=message))


# -------------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Resources:
    """What the lifespan creates once and every request shares."""

    openai: AsyncOpenAI
    upstream_slots: asyncio.Semaphore
    audit: AuditLog

    async def ask(self, prompt: str, *, temperature: float = 0.0, max_tokens: int = 200) -> str:
        """One upstream call, waiting for a free slot first (the bound holds across requests)."""
        async with self.upstream_slots:
            response = await self.openai.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                temperature=temperature,
                max_tokens=max_tokens,
            )
        return (response.choices[0].message.content or "").strip()


def get_resources(request: Request) -> Resources:
    resources: Resources = request.state.resources
    return resources


Shared = Annotated[Resources, Depends(get_resources)]


def create_app(
    *,
    audit_path: str | Path,
    max_upstream_calls: int = 20,
    upstream_timeout: float = 30.0,
    max_retries: int = 2,
    max_body_bytes: int = 64 * 1024,
    base_url: str | None = None,
) -> FastAPI:
    """Build the service.

    Args:
        audit_path: the SQLite file for the audit log (created if missing).
        max_upstream_calls: the most upstream calls in flight at once, across all requests.
        upstream_timeout: seconds one upstream call may take before the client gets a 504.
        max_retries: the SDK's retries of 429/5xx/connection errors, per upstream call.
        max_body_bytes: the largest request body accepted; larger ones get 413.
        base_url: the OpenAI-compatible API to call; None uses OPENAI_BASE_URL or OpenAI.
    """
    _check_int("max_upstream_calls", max_upstream_calls, minimum=1)
    _check_int("max_retries", max_retries, minimum=0)
    _check_int("max_body_bytes", max_body_bytes, minimum=1)
    if isinstance(upstream_timeout, bool) or not isinstance(upstream_timeout, int | float):
        raise TypeError(f"upstream_timeout must be a number of seconds, got {upstream_timeout!r}")
    if not 0 < upstream_timeout < math.inf:
        raise ValueError(f"upstream_timeout must be > 0 seconds, got {upstream_timeout!r}")
    if not isinstance(audit_path, str | Path):
        raise TypeError(f"audit_path must be a str or Path, got {audit_path!r}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Resources]]:
        audit = AuditLog(audit_path)
        await audit.open()
        client = AsyncOpenAI(
            api_key=os.getenv("OPENAI_API_KEY"),
            base_url=base_url,
            timeout=upstream_timeout,
            max_retries=max_retries,
        )
        try:
            yield {"resources": Resources(client, asyncio.Semaphore(max_upstream_calls), audit)}
        finally:
            # The server has finished every request by now: close the client, then drain the
            # audit rows of those last requests.
            await client.close()
            await audit.close()

    app = FastAPI(title="Capstone: an async LLM service", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(AuditMiddleware)  # added last = outermost: it sees every request

    @app.exception_handler(openai.APIError)
    async def upstream_failed(request: Request, error: openai.APIError) -> JSONResponse:
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
        kind = "too_large" if error.status_code == 413 else "http_error"
        info = ErrorInfo(type=kind, message=str(error.detail))
        return ClientError(error.status_code, info).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Logged by the server with its traceback; the client only learns that it failed.
        message = "Something went wrong on our side; it has been logged."
        return ClientError(500, ErrorInfo(type="internal_error", message=message)).response()

    @app.post("/chat")
    async def chat(body: ChatRequest, request: Request, shared: Shared) -> ChatReply:
        note(request, user_id=body.user_id, prompt=body.message)
        reply = await shared.ask(body.message, temperature=body.temperature)
        note(request, reply=reply)
        return ChatReply(response=reply)

    @app.post("/analyze")
    async def analyze(body: AnalyzeRequest, request: Request, shared: Shared) -> AnalyzeReply:
        note(request, user_id=body.user_id, prompt=body.text)
        prompts = {
            "sentiment": f"Sentiment (one word): {body.text}",
            "topics": f"List 3 topics (comma-separated): {body.text}",
            "summary": f"Summarize in one sentence: {body.text}",
        }
        # return_exceptions=True: one failed call leaves the other two answers intact.
        outcomes = await asyncio.gather(
            *(shared.ask(prompt) for prompt in prompts.values()), return_exceptions=True
        )
        texts: dict[str, str] = {}
        failures: dict[str, openai.APIError] = {}
        for part, outcome in zip(prompts, outcomes, strict=True):
            if isinstance(outcome, openai.APIError):
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

    @app.post("/batch")
    async def batch(body: BatchRequest, request: Request, shared: Shared) -> BatchReply:
        note(request, user_id=body.user_id, prompt=" | ".join(body.messages))

        async def one(message: str) -> BatchItem:
            try:
                reply = await shared.ask(message, temperature=body.temperature)
            except openai.APIError as error:
                return BatchItem(response=None, error=client_error(error).info)
            return BatchItem(response=reply, error=None)

        results = await asyncio.gather(*(one(message) for message in body.messages))
        failed = sum(item.error is not None for item in results)
        note(request, reply=f"{len(results) - failed} answered, {failed} failed")
        return BatchReply(results=list(results))

    return app


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
