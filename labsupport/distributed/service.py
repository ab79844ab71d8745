"""The service of notebook 07, as it runs in each worker process.

The capstone's pattern, cut down to what this lesson is about: one `AsyncOpenAI` client and one
limiter per process, created in the lifespan; every upstream call holds a slot of the limiter.
Which limiter is the lesson's variable:

* `"local"` — `LocalSlots`: one `asyncio.Semaphore(limit)` per process (the trap);
* `"shared"` — `SharedSemaphore` in Redis, with leases (the fix), plus an optional shared
  `TokenBucket` for a per-second quota;
* `"learner"` — a limiter class the learner wrote, loaded from its source file.

Post-request work comes in two forms: `/audited` writes its audit row in a `BackgroundTasks`
task, inside this process; `/queued` enqueues a streaq job in Redis before it answers, for a
separate queue worker (`labsupport.distributed.jobs`).

Workers are configured through environment variables (`ServiceConfig.to_environment()`), since
uvicorn builds the app in the worker's own process: `uvicorn --factory
labsupport.distributed.service:app_from_environment`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import types
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Final, Protocol

import openai
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.datastructures import State
from fastapi.responses import JSONResponse
from openai import AsyncOpenAI
from pydantic import BaseModel
from redis.asyncio import Redis

from ..validation import check_choice, check_int, check_number, check_seconds
from ._orphans import die_with_parent
from .jobs import QueueUnavailable, build_queue, insert_audit_row
from .shared_limit import (
    SOCKET_TIMEOUT,
    LimiterUnavailable,
    LocalSlots,
    SharedSemaphore,
    TokenBucket,
    connect,
)
from .upstream import WORKER_HEADER

__all__ = ["Limiter", "ServiceConfig", "app_from_environment", "create_app", "load_limiter_class"]

MODEL: Final = "gpt-4o-mini"
_PREFIX: Final = "LAB_SERVICE_"
LIMITERS: Final = ("local", "shared", "learner")
_PARSERS: Final = {"str": str, "int": int, "float": float}


class Limiter(Protocol):
    """What every limiter offers the service: wait for a slot, give it back."""

    async def acquire(self) -> str: ...

    async def release(self, token: str) -> None: ...


@dataclass(frozen=True)
class ServiceConfig:
    """How a worker is set up. Every field travels to the worker process as one variable."""

    upstream_url: str
    limiter: str = "local"
    limit: int = 5
    lease: float = 10.0
    redis_url: str = ""
    rate: float = 0.0  # > 0: also take a token from a shared bucket of `rate` calls per second
    burst: int = 1  # ...holding at most `burst` tokens
    learner_source: str = ""  # "learner": the file that defines the limiter class...
    learner_class: str = ""  # ...and its name
    audit_path: str = ""  # the SQLite file for /audited and /queued
    audit_delay: float = 1.0  # seconds a BackgroundTasks audit write takes
    upstream_timeout: float = 8.0

    def __post_init__(self) -> None:
        check_choice("limiter", self.limiter, LIMITERS)
        if self.limiter in ("shared", "learner") and not self.redis_url:
            raise ValueError(f"limiter={self.limiter!r} needs redis_url")
        if self.limiter == "learner" and not (self.learner_source and self.learner_class):
            raise ValueError("limiter='learner' needs learner_source and learner_class")
        for name in ("limit", "burst"):
            check_int(name, getattr(self, name), minimum=1)
        check_number("lease", self.lease, unit="seconds", gt=0, lt=3600)
        check_seconds("upstream_timeout", self.upstream_timeout, allow_zero=False)
        # 0: no bucket; an audit write with no delay.
        check_number("rate", self.rate, unit="calls per second", ge=0)
        check_seconds("audit_delay", self.audit_delay)

    def to_environment(self) -> dict[str, str]:
        return {_PREFIX + name.upper(): str(value) for name, value in asdict(self).items()}

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> ServiceConfig:
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _PARSERS[str(field.type)](raw)
        return cls(**values)


def load_limiter_class(source_path: str, class_name: str) -> type:
    """The class `class_name` defined by the Python file `source_path`, run as a fresh module."""
    source = Path(source_path).read_text(encoding="utf-8")
    module = types.ModuleType("learner_limiter")
    module.__file__ = source_path
    sys.modules[module.__name__] = module  # dataclasses and typing look modules up by name
    exec(compile(source, source_path, "exec"), module.__dict__)
    found = getattr(module, class_name, None)
    if not isinstance(found, type):
        raise ValueError(f"{source_path} defines no class named {class_name!r}")
    return found


# ----------------------------------------------------------------------------- the service


WORKER = str(os.getpid())
"""This worker process, as the upstream (header) and the client (`"worker"` field) see it."""


def _name_the_fork() -> None:
    # Workers are forked from a server that imported this module once, before any of them
    # existed: each child names itself again.
    global WORKER
    WORKER = str(os.getpid())


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_name_the_fork)


class ChatRequest(BaseModel):
    message: str
    request_id: str = ""


def make_limiter(config: ServiceConfig, redis: Redis | None) -> Limiter:
    """The limiter every upstream call of this process goes through: the lesson's variable."""
    if config.limiter == "local":
        return LocalSlots(config.limit)  # one asyncio.Semaphore(limit) in this process
    if redis is None:
        raise ValueError(f"limiter={config.limiter!r} needs redis_url")
    if config.limiter == "shared":
        return SharedSemaphore(redis, "openai", limit=config.limit, lease=config.lease)
    learner = load_limiter_class(config.learner_source, config.learner_class)
    limiter: Limiter = learner(redis, name="openai", limit=config.limit, lease=config.lease)
    return limiter


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """Once per worker process: one client, one limiter, one Redis connection, one queue."""
    config: ServiceConfig = app.state.config
    client = AsyncOpenAI(
        api_key=os.environ.get("OPENAI_API_KEY") or "lab-placeholder",
        base_url=config.upstream_url,
        max_retries=0,  # every 429 reaches the client: the lesson counts them
        timeout=config.upstream_timeout,
        default_headers={WORKER_HEADER: WORKER},  # so the upstream can tell workers apart
    )
    redis = connect(config.redis_url) if config.redis_url else None
    bucket = None
    if redis is not None and config.rate > 0:
        bucket = TokenBucket(redis, "openai", rate=config.rate, capacity=config.burst)
    # Post-request work to queue: a streaq client whose commands fail within the limiter's
    # socket timeout when Redis stops answering (coredis, like redis-py, waits for good by
    # default).
    queue = None
    if redis is not None and config.audit_path:
        queue = build_queue(config.redis_url, timeout=SOCKET_TIMEOUT)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.close)
        if redis is not None:
            stack.push_async_callback(redis.aclose)
        if queue is not None:
            await stack.enter_async_context(queue.worker)
        yield {
            "config": config,
            "client": client,
            "limiter": make_limiter(config, redis),
            "bucket": bucket,
            "queue": queue,
        }


async def ask(state: State, prompt: str) -> str:
    """One upstream call, holding a slot of the limiter (and a token of the bucket, if any)."""
    if state.bucket is not None:
        await state.bucket.take()
    token = await state.limiter.acquire()
    try:
        response = await state.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=50
        )
    finally:
        await state.limiter.release(token)
    return (response.choices[0].message.content or "").strip()


async def chat(body: ChatRequest, request: Request) -> dict[str, str]:
    return {"response": await ask(request.state, body.message), "worker": WORKER}


async def audited(
    body: ChatRequest, request: Request, background: BackgroundTasks
) -> dict[str, str]:
    reply = await ask(request.state, body.message)
    # Runs after the response is sent, in this process: if the process dies first, it never
    # runs, and nothing anywhere remembers that it should have.
    config = request.state.config
    background.add_task(write_audit_row, config, body.request_id, body.message, reply)
    return {"response": reply, "worker": WORKER}


async def queued(body: ChatRequest, request: Request) -> dict[str, str]:
    reply = await ask(request.state, body.message)
    # The job is in Redis before the client hears "200": a queue worker runs it even if this
    # process dies right now. The request id is the job id: a request retried while its job
    # waits or runs is one job.
    await request.state.queue.enqueue(body.request_id, body.message, reply)
    return {"response": reply, "worker": WORKER}


async def write_audit_row(config: ServiceConfig, request_id: str, prompt: str, reply: str) -> None:
    """The BackgroundTasks audit write: slow (`audit_delay` seconds), then one row."""
    await asyncio.sleep(config.audit_delay)
    await insert_audit_row(config.audit_path, request_id, prompt, reply)


async def health() -> dict[str, str]:
    return {"worker": WORKER}


def create_app(config: ServiceConfig) -> FastAPI:
    """The worker's app: `/chat`, `/audited` (BackgroundTasks) and `/queued` (streaq)."""
    app = FastAPI(title="Notebook 07: one service, several workers", lifespan=lifespan)
    app.state.config = config
    app.get("/health")(health)
    app.post("/chat")(chat)
    app.post("/audited")(audited)
    app.post("/queued")(queued)
    for error_type, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(error_type, handler)
    return app


# ------------------------------------------------------------------------- errors → HTTP


async def limiter_down(request: Request, error: Exception) -> JSONResponse:
    return _error(503, "limiter_unavailable", f"The shared limit cannot be checked: {error}")


async def queue_down(request: Request, error: Exception) -> JSONResponse:
    return _error(503, "queue_unavailable", f"The job queue cannot be reached: {error}")


async def no_slot(request: Request, error: Exception) -> JSONResponse:
    return _error(503, "busy", f"No upstream slot came free in time: {error}")


async def upstream_failed(request: Request, error: Exception) -> JSONResponse:
    if getattr(error, "status_code", None) == 429:
        return _error(429, "rate_limited", "The model provider refused the call (429).")
    return _error(502, "upstream_error", f"The model provider failed ({type(error).__name__}).")


ERROR_HANDLERS: Final[dict[type[Exception], Any]] = {
    LimiterUnavailable: limiter_down,
    QueueUnavailable: queue_down,
    TimeoutError: no_slot,
    openai.APIError: upstream_failed,
}


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def app_from_environment() -> FastAPI:
    """uvicorn's factory in a worker process: the app the `LAB_SERVICE_*` variables describe."""
    die_with_parent()
    return create_app(ServiceConfig.from_environment())
