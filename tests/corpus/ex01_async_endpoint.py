"""Answers to notebook 01's exercise: a `/chat` endpoint that does not block the event loop.

Each `answer_*` builds a fresh app (`POST /chat`, `{"message": …}` → `{"response": …}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel


class ChatRequest(BaseModel):
    message: str
    temperature: float = 0.0


def messages(request: ChatRequest) -> list[Any]:
    return [{"role": "user", "content": f"Summarize in one sentence: {request.message}"}]


MODEL = "gpt-4o-mini"


# -- wrong -------------------------------------------------------------------------------------


def answer_starter_sync_client() -> FastAPI:
    """NOT YET, sync_client_in_async: the exercise as given, the sync client in `async def`."""
    client, app = OpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_time_sleep_before_the_call() -> FastAPI:
    """NOT YET, blocked_loop: a "polite pause" with `time.sleep` before an awaited call."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        time.sleep(0.05)
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_blocking_socket_read() -> FastAPI:
    """NOT YET, blocked_loop: blocking I/O (a socket read with a timeout) inside `async def`."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                ours.recv(1)  # nobody writes: waits the whole timeout, holding the loop
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_missing_await() -> FastAPI:
    """NOT YET, not_awaited: the async client, but the call is not awaited."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}  # type: ignore[attr-defined]

    return app


def answer_missing_return() -> FastAPI:
    """NOT YET, missing_return: the reply is built but never returned."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> None:
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        _ = {"response": response.choices[0].message.content}

    return app


def answer_wrong_reply_key() -> FastAPI:
    """NOT YET, bad_reply: `{"reply": …}` instead of `{"response": …}`."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"reply": response.choices[0].message.content}

    return app


def answer_async_client_per_request() -> FastAPI:
    """NOT YET, client_per_request: a new `AsyncOpenAI` for every request (closed, at least)."""
    app = FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        async with AsyncOpenAI() as client:
            response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_sync_client_per_request_in_def() -> FastAPI:
    """NOT YET, client_per_request: a `def` endpoint (fine) building an `OpenAI` per request."""
    app = FastAPI()

    @app.post("/chat")
    def chat(request: ChatRequest) -> dict[str, Any]:
        with OpenAI() as client:
            response = client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_asyncio_semaphore_of_four() -> FastAPI:
    """NOT YET, concurrency_limited: "to be safe", at most 4 requests call the upstream at once."""
    client, app = AsyncOpenAI(), FastAPI()
    slots = asyncio.Semaphore(4)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        async with slots:
            response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_asyncio_lock_around_the_call() -> FastAPI:
    """NOT YET, concurrency_limited: an `asyncio.Lock` "protecting" the shared client."""
    client, app = AsyncOpenAI(), FastAPI()
    lock = asyncio.Lock()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        async with lock:
            response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_one_queue_worker() -> FastAPI:
    """NOT YET, concurrency_limited: requests queued for a single worker task (lifespan)."""
    client = AsyncOpenAI()
    jobs: asyncio.Queue[tuple[ChatRequest, asyncio.Future[str]]] = asyncio.Queue()

    async def worker() -> None:
        while True:
            request, reply = await jobs.get()
            response = await client.chat.completions.create(model=MODEL, messages=messages(request))
            reply.set_result(response.choices[0].message.content or "")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(worker())
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await jobs.put((request, reply))
        return {"response": await reply}

    return app


def answer_threading_lock_around_the_await() -> FastAPI:
    """NOT YET, threading_primitive: a `threading.Lock` held across an `await`: deadlock."""
    client, app = AsyncOpenAI(), FastAPI()
    lock = threading.Lock()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        with lock:
            response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_threading_semaphore_of_four() -> FastAPI:
    """NOT YET, threading_primitive: `threading.Semaphore(4)`: the fifth request blocks the loop."""
    client, app = AsyncOpenAI(), FastAPI()
    slots = threading.Semaphore(4)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        with slots:
            response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_asyncio_run_inside_the_endpoint() -> FastAPI:
    """NOT YET, nested_event_loop: `asyncio.run(...)` to "make it synchronous"."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        coroutine = client.chat.completions.create(model=MODEL, messages=messages(request))
        try:
            response = asyncio.run(coroutine)
        finally:
            coroutine.close()  # what a learner would not write; keeps the test's warnings quiet
        return {"response": response.choices[0].message.content}

    return app


def answer_run_until_complete_inside_the_endpoint() -> FastAPI:
    """NOT YET, nested_event_loop: `loop.run_until_complete(...)` on the running loop."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        response = loop.run_until_complete(
            client.chat.completions.create(model=MODEL, messages=messages(request))
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_time_sleep_sixty_seconds() -> FastAPI:
    """NOT YET, blocked_loop: `time.sleep(60)` "for the rate limit": the watchdog stops it."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        time.sleep(60)
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_def_endpoint_threading_lock() -> FastAPI:
    """NOT YET, concurrency_limited: a `def` endpoint with a `threading.Lock` "for thread
    safety" around the sync client: the threads take turns, one call at a time."""
    client, app = OpenAI(), FastAPI()
    lock = threading.Lock()

    @app.post("/chat")
    def chat(request: ChatRequest) -> dict[str, Any]:
        with lock:
            response = client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_one_thread_executor() -> FastAPI:
    """NOT YET, concurrency_limited: the sync client in a one-thread executor "so it is never
    used from two threads": every request queues for the single thread."""
    client, app = OpenAI(), FastAPI()
    pool = ThreadPoolExecutor(max_workers=1)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(
            pool,
            functools.partial(
                client.chat.completions.create, model=MODEL, messages=messages(request)
            ),
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_anyio_capacity_limiter_of_one() -> FastAPI:
    """NOT YET, concurrency_limited: `anyio.to_thread.run_sync` with a `CapacityLimiter(1)`."""
    client, app = OpenAI(), FastAPI()
    limiter = anyio.CapacityLimiter(1)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        call = functools.partial(
            client.chat.completions.create, model=MODEL, messages=messages(request)
        )
        response = await anyio.to_thread.run_sync(call, limiter=limiter)
        return {"response": response.choices[0].message.content}

    return app


def answer_fire_and_forget_with_a_receipt() -> FastAPI:
    """NOT YET, wrong_reply: the call started as a task nobody keeps, a receipt returned at once."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        asyncio.create_task(client.chat.completions.create(model=MODEL, messages=messages(request)))  # noqa: RUF006
        return {"response": "Your ticket is being summarized."}

    return app


def answer_awaited_but_canned_reply() -> FastAPI:
    """NOT YET, wrong_reply: the call is awaited, then a fixed text is returned."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": "Summary ready."}

    return app


def answer_echoes_the_message() -> FastAPI:
    """NOT YET, wrong_reply: the reply is the learner's own message, not the model's."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": request.message}

    return app


def answer_last_reply_in_a_global() -> FastAPI:
    """NOT YET, wrong_reply: each reply kept in a shared variable, read after the await: by then
    another request has overwritten it."""
    client, app = AsyncOpenAI(), FastAPI()
    latest: dict[str, str] = {}

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        latest["reply"] = "pending"
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        latest["reply"] = response.choices[0].message.content or ""
        await asyncio.sleep(0.01)  # "let the log catch up"
        return {"response": latest["reply"]}

    return app


def answer_async_with_the_shared_client() -> FastAPI:
    """NOT YET, client_closed: `async with client:` inside the handler closes the shared client
    when the first request's block ends; the next burst finds it closed."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        async with client:
            response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_close_in_finally() -> FastAPI:
    """NOT YET, client_closed: "cleaning up" the shared client after each call."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        try:
            response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        finally:
            await client.close()
        return {"response": response.choices[0].message.content}

    return app


def answer_def_endpoint_asyncio_run_on_a_shared_async_client() -> FastAPI:
    """NOT YET, fails_over_tcp: a `def` endpoint running the shared `AsyncOpenAI` with
    `asyncio.run` in each worker thread: a new loop per request for one connection pool."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    def chat(request: ChatRequest) -> dict[str, Any]:
        response = asyncio.run(
            client.chat.completions.create(model=MODEL, messages=messages(request))
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_to_thread_asyncio_run() -> FastAPI:
    """NOT YET, fails_over_tcp: `await asyncio.to_thread(asyncio.run, coroutine)` "to keep the
    loop free"."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        coroutine = client.chat.completions.create(model=MODEL, messages=messages(request))
        response = await asyncio.to_thread(asyncio.run, coroutine)
        return {"response": response.choices[0].message.content}

    return app


# -- right -------------------------------------------------------------------------------------


def answer_def_endpoint_with_the_sync_client() -> FastAPI:
    """PASSED, ok: a plain `def` endpoint: FastAPI runs it in its thread pool."""
    client, app = OpenAI(), FastAPI()

    @app.post("/chat")
    def chat(request: ChatRequest) -> dict[str, Any]:
        response = client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_run_in_threadpool() -> FastAPI:
    """PASSED, ok: the sync client, called through Starlette's `run_in_threadpool`."""
    client, app = OpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = await run_in_threadpool(
            client.chat.completions.create, model=MODEL, messages=messages(request)
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_to_thread() -> FastAPI:
    """PASSED, ok: the sync client, called through `asyncio.to_thread`."""
    client, app = OpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = await asyncio.to_thread(
            client.chat.completions.create, model=MODEL, messages=messages(request)
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_lifespan_client_in_app_state() -> FastAPI:
    """PASSED, ok: one `AsyncOpenAI` opened in a lifespan, kept on `app.state`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncOpenAI() as client:
            app.state.openai = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(request: ChatRequest, http: Request) -> dict[str, Any]:
        response = await http.app.state.openai.chat.completions.create(
            model=MODEL, messages=messages(request)
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_client_from_a_dependency_with_options() -> FastAPI:
    """PASSED, ok: a shared client from `Depends`, with per-request options (same pool)."""
    shared, app = AsyncOpenAI(), FastAPI()

    def shared_client() -> AsyncOpenAI:
        return shared

    @app.post("/chat")
    async def chat(
        request: ChatRequest,
        client: AsyncOpenAI = Depends(shared_client),  # noqa: B008 -- FastAPI's own idiom
    ) -> dict[str, Any]:
        response = await client.with_options(timeout=30).chat.completions.create(
            model=MODEL, messages=messages(request)
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_solution_as_in_the_notebook() -> FastAPI:
    """PASSED, ok: the notebook's solution: a module-level `AsyncOpenAI`, awaited."""
    ticket_client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def summarize_ticket(request: ChatRequest) -> dict[str, Any]:
        response = await ticket_client.chat.completions.create(
            model=MODEL, messages=messages(request)
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_lifespan_state_dict() -> FastAPI:
    """PASSED, ok: the lifespan yields `{"client": …}`, read back as `request.state.client`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, AsyncOpenAI]]:
        async with AsyncOpenAI() as client:
            yield {"client": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(request: ChatRequest, http: Request) -> dict[str, Any]:
        response = await http.state.client.chat.completions.create(
            model=MODEL, messages=messages(request)
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_wait_for_with_a_timeout() -> FastAPI:
    """PASSED, ok: the awaited call bounded by `asyncio.wait_for(..., timeout=30)`."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = await asyncio.wait_for(
            client.chat.completions.create(model=MODEL, messages=messages(request)), timeout=30
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_model_dump_and_router() -> FastAPI:
    """PASSED, ok: an `APIRouter`, and the reply read from `response.model_dump()`."""
    client, router = AsyncOpenAI(), APIRouter()

    @router.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.model_dump()["choices"][0]["message"]["content"]}

    app = FastAPI()
    app.include_router(router)
    return app


def answer_task_awaited() -> FastAPI:
    """PASSED, ok: the call started as a task and awaited in the same request."""
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        task = asyncio.create_task(
            client.chat.completions.create(model=MODEL, messages=messages(request))
        )
        response = await task
        return {"response": response.choices[0].message.content}

    return app


def answer_run_in_executor_default_pool() -> FastAPI:
    """PASSED, ok: the sync client in the loop's default executor (`run_in_executor(None, …)`)."""
    client, app = OpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        call = functools.partial(
            client.chat.completions.create, model=MODEL, messages=messages(request)
        )
        response = await asyncio.get_running_loop().run_in_executor(None, call)
        return {"response": response.choices[0].message.content}

    return app


def answer_yield_dependency_shared_client() -> FastAPI:
    """PASSED, ok: an async-generator dependency that yields the one shared client (and closes
    nothing)."""
    shared, app = AsyncOpenAI(), FastAPI()

    async def get_client() -> AsyncIterator[AsyncOpenAI]:
        yield shared

    @app.post("/chat")
    async def chat(
        request: ChatRequest,
        client: AsyncOpenAI = Depends(get_client),  # noqa: B008 -- FastAPI's own idiom
    ) -> dict[str, Any]:
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        return {"response": response.choices[0].message.content}

    return app


def answer_def_endpoint_thread_safe_sync_client_with_timeout() -> FastAPI:
    """PASSED, ok: a `def` endpoint, the sync client shared without a lock (it is thread-safe),
    with a per-call timeout."""
    client, app = OpenAI(timeout=30.0), FastAPI()

    @app.post("/chat")
    def chat(request: ChatRequest) -> dict[str, Any]:
        response = client.with_options(timeout=20.0).chat.completions.create(
            model=MODEL, messages=messages(request)
        )
        return {"response": response.choices[0].message.content}

    return app
