"""The notebook 04 checker accepts an audit moved out of the request path, and explains the
typical mistakes: an inline write, an async task that blocks the loop, entries lost at shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import BackgroundTasks, FastAPI, Request
from openai import AsyncOpenAI
from pydantic import BaseModel

from labsupport.checks import CheckResult, check_background_audit

AUDIT_SECONDS = 0.2


class ChatRequest(BaseModel):
    message: str
    user_id: str = "anonymous"


pytestmark = pytest.mark.usefixtures("offline_lab")


def audited_app(
    schedule: Callable[[ChatRequest, BackgroundTasks], Awaitable[None]],
    on_shutdown: Callable[[], None] = lambda: None,
) -> FastAPI:
    """A /chat app whose audit write is scheduled by `schedule(request, background_tasks)`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}
        on_shutdown()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(
        request: ChatRequest, http: Request, background_tasks: BackgroundTasks
    ) -> dict[str, Any]:
        response = await http.state.openai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        await schedule(request, background_tasks)
        return {"response": response.choices[0].message.content}

    return app


def check(app: FastAPI, rows: list[str]) -> CheckResult:
    return asyncio.run(
        check_background_audit(app, lambda: len(rows), audit_seconds=AUDIT_SECONDS, n=5)
    )


def test_an_async_background_task_that_awaits_passes() -> None:
    rows: list[str] = []

    async def write(user_id: str) -> None:
        await asyncio.sleep(AUDIT_SECONDS)
        rows.append(user_id)

    async def schedule(request: ChatRequest, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, request.user_id)

    result = check(audited_app(schedule), rows)
    assert result.passed, str(result)
    assert "Audit rows written: 5 for 5 requests." in str(result)


def test_a_def_background_task_in_the_thread_pool_passes_and_an_async_counter_works() -> None:
    rows: list[str] = []

    def write(user_id: str) -> None:
        time.sleep(AUDIT_SECONDS)
        rows.append(user_id)

    async def schedule(request: ChatRequest, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, request.user_id)

    async def count_rows() -> int:
        return len(rows)

    app = audited_app(schedule)
    result = asyncio.run(check_background_audit(app, count_rows, audit_seconds=AUDIT_SECONDS, n=5))
    assert result.passed, str(result)


def test_an_inline_write_is_rejected() -> None:
    rows: list[str] = []

    async def schedule(request: ChatRequest, tasks: BackgroundTasks) -> None:
        await asyncio.sleep(AUDIT_SECONDS)
        rows.append(request.user_id)

    result = check(audited_app(schedule), rows)
    assert not result.passed
    assert "each response waited for its audit write" in result.summary
    assert "background_tasks.add_task" in str(result)


def test_an_async_background_task_that_blocks_is_rejected() -> None:
    rows: list[str] = []

    async def write(user_id: str) -> None:
        time.sleep(AUDIT_SECONDS)  # blocks the event loop, background task or not
        rows.append(user_id)

    async def schedule(request: ChatRequest, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, request.user_id)

    result = check(audited_app(schedule), rows)
    assert not result.passed
    assert "the event loop was blocked" in result.summary
    assert "plain `def`" in str(result)


def test_entries_lost_at_shutdown_are_counted() -> None:
    rows: list[str] = []
    state = {"open": True}
    forgotten: list[asyncio.Task[None]] = []  # referenced, but never awaited by anyone

    def close_database() -> None:
        state["open"] = False

    async def write(user_id: str) -> None:
        # Far slower than any shutdown, even on a loaded machine: the database is always closed
        # first. (Nobody awaits these tasks, so their length costs the test nothing.)
        await asyncio.sleep(10 * AUDIT_SECONDS)
        if state["open"]:
            rows.append(user_id)

    async def schedule(request: ChatRequest, tasks: BackgroundTasks) -> None:
        forgotten.append(asyncio.create_task(write(request.user_id)))

    result = check(audited_app(schedule, close_database), rows)
    assert not result.passed
    assert "5 audit entries were lost" in result.summary
    assert "Audit rows written: 0 for 5 requests." in str(result)
    assert "asyncio.create_task" in str(result)


def test_a_failing_audit_task_is_reported_from_the_server_log() -> None:
    rows: list[str] = []

    async def write(user_id: str) -> None:
        raise RuntimeError("disk full")

    async def schedule(request: ChatRequest, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, request.user_id)

    result = check(audited_app(schedule), rows)
    assert not result.passed
    assert "5 audit entries were lost" in result.summary
    assert "The server logged 5 error(s); first: RuntimeError: disk full" in str(result)


def test_bad_arguments() -> None:
    app = FastAPI()
    with pytest.raises(TypeError, match="count_rows must be a function"):
        asyncio.run(check_background_audit(app, 3, audit_seconds=0.1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="audit_seconds must be > 0"):
        asyncio.run(check_background_audit(app, lambda: 0, audit_seconds=0))
    with pytest.raises(ValueError, match="n must be an int ≥ 2"):
        asyncio.run(check_background_audit(app, lambda: 0, audit_seconds=0.1, n=1))
    with pytest.raises(TypeError, match=r"count_rows\(\) must return an int"):
        asyncio.run(check_background_audit(app, lambda: "many", audit_seconds=0.1))  # type: ignore[arg-type,return-value]
