"""Answers to notebook 04's exercise: move a slow audit write out of the request path.

Each `answer_*(db_path)` builds a fresh app whose audit rows go to the SQLite file `db_path`
(table `audit`, created by `create_table`), to be judged by `check_background_audit` with
`count_rows(db_path)` and `audit_seconds=AUDIT_SECONDS`. As in the notebook, the lifespan
opens one aiosqlite connection and yields it as `audit_db`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite
from fastapi import BackgroundTasks, FastAPI, Request
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

AUDIT_SECONDS = 0.2
SCHEMA = "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, user_id TEXT, reply TEXT)"
INSERT = "INSERT INTO audit (user_id, reply) VALUES (?, ?)"

App = Callable[[str], FastAPI]


class ChatRequest(BaseModel):
    message: str
    user_id: str = "anonymous"


def create_table(db_path: str) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute(SCHEMA)
    db.close()


def count_rows(db_path: str) -> int:
    db = sqlite3.connect(db_path)
    try:
        (count,) = db.execute("SELECT COUNT(*) FROM audit").fetchone()
    finally:
        db.close()
    return int(count)


async def slow_write_audit_row(db: aiosqlite.Connection, row: tuple[str, str]) -> None:
    """The notebook's slow audit write, on the lifespan's aiosqlite connection."""
    await asyncio.sleep(AUDIT_SECONDS)
    await db.execute(INSERT, row)
    await db.commit()


def service(
    db_path: str,
    audit: Callable[[ChatRequest, str, Request, BackgroundTasks], Any],
    *,
    lifespan: Any = None,
) -> FastAPI:
    """The exercise's service: an aiosqlite connection in the lifespan, one shared client, and
    `audit(request, reply, http, background_tasks)` where the learner put the write (awaited
    if it returns an awaitable)."""
    client = AsyncOpenAI()

    @asynccontextmanager
    async def exercise_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with aiosqlite.connect(db_path) as db:
            yield {"audit_db": db}
        await client.close()

    app = FastAPI(lifespan=lifespan or exercise_lifespan)

    @app.post("/chat")
    async def audited_chat(
        request: ChatRequest, http: Request, background_tasks: BackgroundTasks
    ) -> dict[str, Any]:
        response = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        reply = response.choices[0].message.content or ""
        scheduled = audit(request, reply, http, background_tasks)
        if asyncio.iscoroutine(scheduled):
            await scheduled
        return {"response": reply}

    return app


# -- wrong -------------------------------------------------------------------------------------


def answer_starter_inline(db_path: str) -> FastAPI:
    """NOT YET, inline_write: the exercise as given: the write awaited before answering."""

    async def audit(
        request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks
    ) -> None:
        await slow_write_audit_row(http.state.audit_db, (request.user_id, reply))

    return service(db_path, audit)


def answer_to_thread_awaited(db_path: str) -> FastAPI:
    """NOT YET, inline_write: a blocking write moved to a thread, but still awaited."""

    def blocking_write(row: tuple[str, str]) -> None:
        time.sleep(AUDIT_SECONDS)
        with sqlite3.connect(db_path) as db:
            db.execute(INSERT, row)
        db.close()

    async def audit(
        request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks
    ) -> None:
        await asyncio.to_thread(blocking_write, (request.user_id, reply))

    return service(db_path, audit)


def answer_add_task_with_a_coroutine(db_path: str) -> FastAPI:
    """NOT YET, coroutine_passed_to_add_task: `add_task(slow_write_audit_row(db, row))`."""

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(slow_write_audit_row(http.state.audit_db, (request.user_id, reply)))  # type: ignore[arg-type]

    return service(db_path, audit)


def answer_create_task_forgotten(db_path: str) -> FastAPI:
    """NOT YET, rows_lost: `asyncio.create_task(...)`, never awaited: shutdown loses the rows."""
    forgotten: set[asyncio.Task[None]] = set()  # referenced, so only shutdown can lose them

    async def write_or_give_up(db: aiosqlite.Connection, row: tuple[str, str]) -> None:
        try:
            await asyncio.sleep(10 * AUDIT_SECONDS)  # well after the database is closed
            await slow_write_audit_row(db, row)
        except (ValueError, asyncio.CancelledError):  # "no active connection"; the loop's end
            pass

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        task = asyncio.create_task(write_or_give_up(http.state.audit_db, (request.user_id, reply)))
        forgotten.add(task)
        task.add_done_callback(forgotten.discard)

    return service(db_path, audit)


def answer_async_task_that_sleeps(db_path: str) -> FastAPI:
    """NOT YET, blocked_loop: an `async def` background task with `time.sleep` and sqlite3."""

    async def write(row: tuple[str, str]) -> None:
        time.sleep(AUDIT_SECONDS)
        with sqlite3.connect(db_path) as db:
            db.execute(INSERT, row)
        db.close()

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, (request.user_id, reply))

    return service(db_path, audit)


def answer_shared_sqlite3_connection(db_path: str) -> FastAPI:
    """NOT YET, shared_sqlite_connection: one `sqlite3` connection (check_same_thread=False)
    shared by `def` background tasks: the notebook's trap."""
    shared = sqlite3.connect(db_path, check_same_thread=False)

    def write(row: tuple[str, str]) -> None:
        time.sleep(AUDIT_SECONDS)
        shared.execute(INSERT, row)
        shared.commit()

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, (request.user_id, reply))

    return service(db_path, audit)


def answer_shared_sqlite3_connection_in_to_thread(db_path: str) -> FastAPI:
    """NOT YET, shared_sqlite_connection: async background tasks that hand the write of one
    shared `sqlite3` connection to `asyncio.to_thread`: the executor's threads share it."""
    shared = sqlite3.connect(db_path, check_same_thread=False)

    def write(row: tuple[str, str]) -> None:
        time.sleep(AUDIT_SECONDS)
        shared.execute(INSERT, row)
        shared.commit()

    async def write_in_a_thread(row: tuple[str, str]) -> None:
        await asyncio.to_thread(write, row)

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write_in_a_thread, (request.user_id, reply))

    return service(db_path, audit)


def answer_shared_sqlite3_connection_same_thread_check(db_path: str) -> FastAPI:
    """NOT YET, shared_sqlite_connection: one `sqlite3` connection from the main thread, used in
    `def` tasks: sqlite3 refuses every write from the other threads."""
    shared = sqlite3.connect(db_path)

    def write(row: tuple[str, str]) -> None:
        time.sleep(AUDIT_SECONDS)
        shared.execute(INSERT, row)
        shared.commit()

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, (request.user_id, reply))

    return service(db_path, audit)


def answer_failing_audit(db_path: str) -> FastAPI:
    """NOT YET, audit_failed: the background write raises (a typo in the SQL)."""

    async def write(db: aiosqlite.Connection, row: tuple[str, str]) -> None:
        await db.execute("INSERT INTO audits (user_id, reply) VALUES (?, ?)", row)

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, http.state.audit_db, (request.user_id, reply))

    return service(db_path, audit)


def answer_added_twice(db_path: str) -> FastAPI:
    """NOT YET, too_many_rows: the write scheduled twice ("once more, to be sure")."""

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        for _ in range(2):
            tasks.add_task(slow_write_audit_row, http.state.audit_db, (request.user_id, reply))

    return service(db_path, audit)


def answer_threading_lock_across_the_write(db_path: str) -> FastAPI:
    """NOT YET, threading_primitive: a `threading.Lock` held across `await` in an async task."""
    lock = threading.Lock()

    async def write(db: aiosqlite.Connection, row: tuple[str, str]) -> None:
        with lock:
            await slow_write_audit_row(db, row)

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, http.state.audit_db, (request.user_id, reply))

    return service(db_path, audit)


def answer_run_until_complete(db_path: str) -> FastAPI:
    """NOT YET, nested_event_loop: `run_until_complete` to "finish the write synchronously"."""

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        write = slow_write_audit_row(http.state.audit_db, (request.user_id, reply))
        try:
            asyncio.get_running_loop().run_until_complete(write)
        finally:
            write.close()

    return service(db_path, audit)


def answer_missing_return(db_path: str) -> FastAPI:
    """NOT YET, missing_return: the write in the background, and no reply returned."""
    client = AsyncOpenAI()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with aiosqlite.connect(db_path) as db:
            yield {"audit_db": db}
        await client.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def audited_chat(
        request: ChatRequest, http: Request, background_tasks: BackgroundTasks
    ) -> None:
        response = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        reply = response.choices[0].message.content or ""
        background_tasks.add_task(
            slow_write_audit_row, http.state.audit_db, (request.user_id, reply)
        )

    return app


def answer_create_task_not_kept(db_path: str) -> FastAPI:
    """NOT YET, task_not_kept: `asyncio.create_task(write(...))` in a sync audit function, the
    task not kept: the loop holds it weakly, nothing awaits it at shutdown. (Its rows may all be
    written before the shutdown, on a busy machine: the verdict is by the reference.)"""

    async def write(db: aiosqlite.Connection, user_id: str, reply: str) -> None:
        await asyncio.sleep(AUDIT_SECONDS)
        await db.execute(INSERT, (user_id, reply))
        await db.commit()

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        asyncio.create_task(write(http.state.audit_db, request.user_id, reply))  # noqa: RUF006

    return service(db_path, audit)


def answer_to_thread_forgotten(db_path: str) -> FastAPI:
    """NOT YET, rows_lost: `create_task(asyncio.to_thread(...))`, forgotten: shutdown loses it."""
    forgotten: set[asyncio.Task[None]] = set()

    def blocking_write(row: tuple[str, str]) -> None:
        time.sleep(10 * AUDIT_SECONDS)  # still running when the check counts the rows

    async def audit(
        request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks
    ) -> None:
        task = asyncio.create_task(asyncio.to_thread(blocking_write, (request.user_id, reply)))
        forgotten.add(task)
        task.add_done_callback(forgotten.discard)

    return service(db_path, audit)


# -- right -------------------------------------------------------------------------------------


def answer_def_task_with_its_own_connection(db_path: str) -> FastAPI:
    """PASSED, ok: a `def` background task opening its own sqlite3 connection per write."""

    def write(row: tuple[str, str]) -> None:
        time.sleep(AUDIT_SECONDS)
        with sqlite3.connect(db_path, timeout=5) as db:
            db.execute(INSERT, row)
        db.close()

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, (request.user_id, reply))

    return service(db_path, audit)


def answer_add_task_with_the_lifespan_connection(db_path: str) -> FastAPI:
    """PASSED, ok: `add_task(write, db, row)`, an async write on the lifespan's aiosqlite."""

    async def write(db: aiosqlite.Connection, user_id: str, reply: str) -> None:
        await asyncio.sleep(AUDIT_SECONDS)
        await db.execute(INSERT, (user_id, reply))
        await db.commit()

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, http.state.audit_db, request.user_id, reply)

    return service(db_path, audit)


def answer_tracked_tasks_drained_by_the_lifespan(db_path: str) -> FastAPI:
    """PASSED, ok: `create_task`, kept in a set that the lifespan awaits before closing."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        pending: set[asyncio.Task[None]] = set()
        async with aiosqlite.connect(db_path) as db:
            yield {"audit_db": db, "pending": pending}
            await asyncio.gather(*pending)

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        task = asyncio.create_task(
            slow_write_audit_row(http.state.audit_db, (request.user_id, reply))
        )
        http.state.pending.add(task)
        task.add_done_callback(http.state.pending.discard)

    return service(db_path, audit, lifespan=lifespan)


def answer_queue_and_one_writer(db_path: str) -> FastAPI:
    """PASSED, ok: an `asyncio.Queue` fed by the endpoint, one writer task, drained at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        async with aiosqlite.connect(db_path) as db:

            async def writer() -> None:
                while True:
                    row = await queue.get()
                    await slow_write_audit_row(db, row)
                    queue.task_done()

            task = asyncio.create_task(writer())
            yield {"audit_queue": queue}
            await queue.join()  # every queued row written before the database closes
            task.cancel()

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        http.state.audit_queue.put_nowait((request.user_id, reply))

    return service(db_path, audit, lifespan=lifespan)


# -- more, written as new learners write them (issue 21) ---------------------------------------


def answer_async_task_awaits_then_writes_with_sqlite3(db_path: str) -> FastAPI:
    """NOT YET, sqlite_on_loop: an `async def` task that awaits its pause, then writes with
    blocking `sqlite3`: each write is short, and it still runs on the event loop."""

    async def write(row: tuple[str, str]) -> None:
        await asyncio.sleep(AUDIT_SECONDS)
        db = sqlite3.connect(db_path)
        try:
            db.execute(INSERT, row)
            db.commit()
        finally:
            db.close()

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, (request.user_id, reply))

    return service(db_path, audit)


def answer_add_task_with_a_lambda(db_path: str) -> FastAPI:
    """NOT YET, coroutine_never_awaited: `add_task(lambda: slow_write_audit_row(db, row))`:
    Starlette runs the lambda in a thread, and the coroutine it returns is dropped."""

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        db, row = http.state.audit_db, (request.user_id, reply)
        tasks.add_task(lambda: slow_write_audit_row(db, row))

    return service(db_path, audit)


def answer_unannotated_background_tasks_default(db_path: str) -> FastAPI:
    """NOT YET, unannotated_background_tasks: `background_tasks=BackgroundTasks()` without the
    annotation: FastAPI never injects it, and nobody runs the tasks added to it."""
    client = AsyncOpenAI()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with aiosqlite.connect(db_path) as db:
            yield {"audit_db": db}
        await client.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def audited_chat(  # type: ignore[no-untyped-def]
        request: ChatRequest,
        http: Request,
        background_tasks=BackgroundTasks(),  # noqa: B008 -- the mistake under test: no annotation
    ) -> dict[str, Any]:
        response = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        reply = response.choices[0].message.content or ""
        background_tasks.add_task(
            slow_write_audit_row, http.state.audit_db, (request.user_id, reply)
        )
        return {"response": reply}

    return app


def answer_queue_writer_cancelled_without_draining(db_path: str) -> FastAPI:
    """NOT YET, queue_not_drained: a queue and one writer, cancelled at shutdown while rows
    still wait in the queue."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        async with aiosqlite.connect(db_path) as db:

            async def writer() -> None:
                while True:
                    await slow_write_audit_row(db, await queue.get())

            task = asyncio.create_task(writer())
            yield {"audit_queue": queue}
            task.cancel()  # the rows still queued are lost
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        http.state.audit_queue.put_nowait((request.user_id, reply))

    return service(db_path, audit, lifespan=lifespan)


def answer_wait_for_the_write(db_path: str) -> FastAPI:
    """NOT YET, inline_write: `await asyncio.wait_for(write(...), timeout=5)`, "so it cannot
    hang": still awaited before the response."""

    async def audit(
        request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks
    ) -> None:
        await asyncio.wait_for(
            slow_write_audit_row(http.state.audit_db, (request.user_id, reply)), timeout=5
        )

    return service(db_path, audit)


def answer_def_endpoint_writes_inline(db_path: str) -> FastAPI:
    """NOT YET, inline_write: a plain `def` endpoint with the sync client and a `sqlite3`
    write before `return`: the loop is free, but each response waits for its write."""
    client = OpenAI()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        client.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    def audited_chat(request: ChatRequest) -> dict[str, Any]:
        response = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        reply = response.choices[0].message.content or ""
        time.sleep(AUDIT_SECONDS)
        with sqlite3.connect(db_path, timeout=5) as db:
            db.execute(INSERT, (request.user_id, reply))
        db.close()
        return {"response": reply}

    return app


def answer_tasks_cancelled_at_shutdown(db_path: str) -> FastAPI:
    """NOT YET, rows_lost: `create_task`, kept in a set that the lifespan *cancels* at shutdown
    ("clean up what is left") instead of awaiting."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        pending: set[asyncio.Task[None]] = set()
        async with aiosqlite.connect(db_path) as db:
            yield {"audit_db": db, "pending": pending}
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        task = asyncio.create_task(
            slow_write_audit_row(http.state.audit_db, (request.user_id, reply))
        )
        http.state.pending.add(task)
        task.add_done_callback(http.state.pending.discard)

    return service(db_path, audit, lifespan=lifespan)


def answer_lambda_creating_a_task(db_path: str) -> FastAPI:
    """NOT YET, audit_failed: `add_task(lambda: asyncio.create_task(write(...)))`: the lambda
    runs in a worker thread, which has no event loop."""

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        db, row = http.state.audit_db, (request.user_id, reply)
        tasks.add_task(lambda: asyncio.create_task(slow_write_audit_row(db, row)))

    return service(db_path, audit)


def answer_partial_of_the_async_write(db_path: str) -> FastAPI:
    """PASSED, ok: `add_task(functools.partial(write, db, row))`: Starlette sees through the
    partial to the async function and awaits it."""

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(
            functools.partial(slow_write_audit_row, http.state.audit_db, (request.user_id, reply))
        )

    return service(db_path, audit)


def answer_async_task_with_a_thread_per_write(db_path: str) -> FastAPI:
    """PASSED, ok: an `async def` task that sleeps with `await`, then hands a `sqlite3` write
    with its own connection to `asyncio.to_thread`."""

    def blocking_insert(row: tuple[str, str]) -> None:
        db = sqlite3.connect(db_path, timeout=5)
        try:
            db.execute(INSERT, row)
            db.commit()
        finally:
            db.close()

    async def write(user_id: str, reply: str) -> None:
        await asyncio.sleep(AUDIT_SECONDS)
        await asyncio.to_thread(blocking_insert, (user_id, reply))

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, request.user_id, reply)

    return service(db_path, audit)


def answer_aiosqlite_connection_per_task(db_path: str) -> FastAPI:
    """PASSED, ok: each `async def` task opens its own aiosqlite connection."""

    async def write(row: tuple[str, str]) -> None:
        await asyncio.sleep(AUDIT_SECONDS)
        async with aiosqlite.connect(db_path, timeout=5) as db:
            await db.execute(INSERT, row)
            await db.commit()

    def audit(request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks) -> None:
        tasks.add_task(write, (request.user_id, reply))

    return service(db_path, audit)


def answer_queue_with_a_sentinel(db_path: str) -> FastAPI:
    """PASSED, ok: a queue whose writer stops at a `None` sentinel, awaited at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(maxsize=100)
        async with aiosqlite.connect(db_path) as db:

            async def writer() -> None:
                while (row := await queue.get()) is not None:
                    await slow_write_audit_row(db, row)

            task = asyncio.create_task(writer())
            yield {"audit_queue": queue}
            await queue.put(None)  # after every row already queued
            await task

    async def audit(
        request: ChatRequest, reply: str, http: Request, tasks: BackgroundTasks
    ) -> None:
        await http.state.audit_queue.put((request.user_id, reply))

    return service(db_path, audit, lifespan=lifespan)
