"""Answers to notebook 05's exercise: one `AsyncOpenAI` created in a lifespan, handed to the
endpoint, closed at shutdown.

Each `answer_*` builds a fresh app (`POST /chat`, `{"message": …}` → `{"response": …}`). A client
an answer leaves open is also put in `LEFTOVERS`, so the test can close it on the check's own
event loop once the check has judged it.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

LEFTOVERS: list[AsyncOpenAI] = []


class ChatRequest(BaseModel):
    message: str


async def reply(client: AsyncOpenAI, request: ChatRequest) -> dict[str, Any]:
    response = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize in 5 words: {request.message}"}],
    )
    return {"response": response.choices[0].message.content}


def from_app_state(request: Request) -> AsyncOpenAI:
    client: AsyncOpenAI = request.app.state.openai
    return client


# -- wrong -------------------------------------------------------------------------------------


def answer_starter_client_per_request() -> FastAPI:
    """NOT YET, client_per_request: the exercise as given: a client per request (closed)."""
    app = FastAPI()

    @app.post("/chat")
    async def summarize(request: ChatRequest) -> dict[str, Any]:
        async with AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY")) as client:
            return await reply(client, request)

    return app


def answer_client_per_request_never_closed() -> FastAPI:
    """NOT YET, client_per_request: a client per request, never closed."""
    app = FastAPI()

    @app.post("/chat")
    async def summarize(request: ChatRequest) -> dict[str, Any]:
        return await reply(AsyncOpenAI(), request)

    return app


def answer_dependency_builds_a_client_each_time() -> FastAPI:
    """NOT YET, client_per_request: `Depends(get_client)` where `get_client` builds a client."""
    app = FastAPI()

    async def get_client() -> AsyncIterator[AsyncOpenAI]:
        async with AsyncOpenAI() as client:
            yield client

    @app.post("/chat")
    async def summarize(
        request: ChatRequest,
        client: AsyncOpenAI = Depends(get_client),  # noqa: B008 -- FastAPI's own idiom
    ) -> dict[str, Any]:
        return await reply(client, request)

    return app


def answer_lifespan_client_unused() -> FastAPI:
    """NOT YET, client_per_request: a lifespan client, but the endpoint still builds its own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest) -> dict[str, Any]:
        async with AsyncOpenAI() as client:
            return await reply(client, request)

    return app


def answer_lifespan_never_closes() -> FastAPI:
    """NOT YET, never_closed: the client is created at startup and never closed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        client = AsyncOpenAI()
        LEFTOVERS.append(client)
        yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.state.openai, request)

    return app


def answer_lifespan_closes_the_wrong_client() -> FastAPI:
    """NOT YET, never_closed: shutdown closes a second client, not the one in use."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.openai = AsyncOpenAI()
        LEFTOVERS.append(app.state.openai)
        yield
        await AsyncOpenAI().close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.app.state.openai, request)

    return app


def answer_module_level_client() -> FastAPI:
    """NOT YET, built_before_start: the seed's global client, built when the module loads."""
    client = AsyncOpenAI()
    LEFTOVERS.append(client)
    app = FastAPI()

    @app.post("/chat")
    async def summarize(request: ChatRequest) -> dict[str, Any]:
        return await reply(client, request)

    return app


def answer_client_closed_before_yield() -> FastAPI:
    """NOT YET, client_closed_before_yield: the `yield` outside the `async with` block."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncOpenAI() as client:
            app.state.openai = client
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.app.state.openai, request)

    return app


def answer_exit_stack_closed_before_yield() -> FastAPI:
    """NOT YET, client_closed_before_yield: an `AsyncExitStack` that ends before the `yield`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(AsyncOpenAI())
        yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.state.openai, request)

    return app


def answer_lifespan_not_passed() -> FastAPI:
    """NOT YET, lifespan_not_passed: a correct lifespan, never given to `FastAPI()`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}

    app = FastAPI()
    app.state.lifespan = lifespan  # written, but not passed: nothing runs it

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.state.openai, request)

    return app


def answer_startup_fails() -> FastAPI:
    """NOT YET, app_error: the lifespan reads a setting that is not there."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI(base_url=os.environ["LAB_NO_SUCH_SETTING"]) as client:
            yield {"openai": client}

    return FastAPI(lifespan=lifespan)


def answer_missing_return() -> FastAPI:
    """NOT YET, missing_return: the lifespan is right, the endpoint returns nothing."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> None:
        await reply(http.state.openai, request)

    return app


def answer_wrong_reply_key() -> FastAPI:
    """NOT YET, bad_reply: `{"summary": …}` instead of `{"response": …}`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return {"summary": (await reply(http.state.openai, request))["response"]}

    return app


def answer_lifespan_client_and_a_constant_reply() -> FastAPI:
    """NOT YET, wrong_reply: the lifespan's client is called, but every request is answered
    with the same text."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        await reply(http.state.openai, request)
        return {"response": "Summarized."}

    return app


def answer_lifespan_client_and_the_message_echoed() -> FastAPI:
    """NOT YET, wrong_reply: the reply is the learner's own message, not the model's."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        await reply(http.state.openai, request)
        return {"response": request.message}

    return app


# -- right -------------------------------------------------------------------------------------


def answer_exit_stack_around_the_yield() -> FastAPI:
    """PASSED, ok: an `AsyncExitStack` for the lifespan's resources, `yield` inside it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(AsyncOpenAI())
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.state.openai, request)

    return app


def answer_app_state_with_a_dependency() -> FastAPI:
    """PASSED, ok: `app.state.openai`, closed in `finally`, handed over by `Depends`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.openai = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))
        try:
            yield
        finally:
            await app.state.openai.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(
        request: ChatRequest,
        client: AsyncOpenAI = Depends(from_app_state),  # noqa: B008 -- FastAPI's own idiom
    ) -> dict[str, Any]:
        return await reply(client, request)

    return app


def answer_global_dict_like_the_seed() -> FastAPI:
    """PASSED, ok: the seed's module-level holder, filled at startup and emptied at shutdown."""
    clients: dict[str, AsyncOpenAI] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients["openai"] = AsyncOpenAI()
        yield
        await clients.pop("openai").close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest) -> dict[str, Any]:
        return await reply(clients["openai"], request)

    return app


def answer_lifespan_router_attribute() -> FastAPI:
    """PASSED, ok: the lifespan attached after creating the app (`app.router.lifespan_context`)."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        client = AsyncOpenAI()
        try:
            yield {"openai": client}
        finally:
            await client.close()

    app = FastAPI()
    app.router.lifespan_context = lifespan

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.state.openai, request)

    return app


# -- more, written as new learners write them (issue 21) ---------------------------------------


def answer_sync_client_in_the_lifespan() -> FastAPI:
    """NOT YET, sync_client: a sync `OpenAI` built in the lifespan, called inside `async def`:
    one client, closed at shutdown, and every call holds the event loop."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        client = OpenAI()
        yield {"openai": client}
        client.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        response = http.state.openai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_shutdown_on_event_beside_the_lifespan() -> FastAPI:
    """NOT YET, on_event_ignored: the lifespan builds the client, `@app.on_event("shutdown")`
    closes it; FastAPI never runs that handler beside `lifespan=`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.openai = AsyncOpenAI()
        LEFTOVERS.append(app.state.openai)
        yield

    app = FastAPI(lifespan=lifespan)
    with warnings.catch_warnings():  # FastAPI's DeprecationWarning, the only sign
        warnings.simplefilter("ignore", DeprecationWarning)

        @app.on_event("shutdown")
        async def close_client() -> None:
            await app.state.openai.close()

    @app.post("/chat")
    async def summarize(request: ChatRequest) -> dict[str, Any]:
        return await reply(app.state.openai, request)

    return app


def answer_startup_on_event_beside_the_lifespan() -> FastAPI:
    """NOT YET, on_event_ignored: `@app.on_event("startup")` builds the client, next to a
    lifespan (for the database): the handler never runs, and every request fails."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(lifespan=lifespan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        @app.on_event("startup")
        async def open_client() -> None:
            app.state.openai = AsyncOpenAI()

    @app.post("/chat")
    async def summarize(request: ChatRequest) -> dict[str, Any]:
        return await reply(app.state.openai, request)

    return app


def answer_close_without_await() -> FastAPI:
    """NOT YET, missing_await: `client.close()` at shutdown, without `await`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        client = AsyncOpenAI()
        LEFTOVERS.append(client)
        yield {"openai": client}
        client.close()  # type: ignore[unused-coroutine]  # the mistake under test

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.state.openai, request)

    return app


def answer_create_without_await() -> FastAPI:
    """NOT YET, missing_await: `client.chat.completions.create(...)` without `await` in the
    endpoint: the reply is a coroutine, and every request fails."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        response = http.state.openai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_time_sleep_to_be_polite() -> FastAPI:
    """NOT YET, blocked_loop: the right client, and a `time.sleep` "to be polite to the API"."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        time.sleep(0.3)
        return await reply(http.state.openai, request)

    return app


def answer_dependency_with_yield_per_request() -> FastAPI:
    """NOT YET, client_per_request: a `yield` dependency, which FastAPI runs once per request:
    a client built and closed each time."""
    app = FastAPI()

    async def openai_client() -> AsyncIterator[AsyncOpenAI]:
        client = AsyncOpenAI()
        try:
            yield client
        finally:
            await client.close()

    @app.post("/chat")
    async def summarize(
        request: ChatRequest,
        client: AsyncOpenAI = Depends(openai_client),  # noqa: B008 -- FastAPI's own idiom
    ) -> dict[str, Any]:
        return await reply(client, request)

    return app


def answer_fallback_client_by_a_typo() -> FastAPI:
    """NOT YET, client_per_request: the lifespan stores `app.state.client`, the endpoint looks
    for `openai` and quietly builds its own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncOpenAI() as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest) -> dict[str, Any]:
        client = getattr(app.state, "openai", None) or AsyncOpenAI()
        LEFTOVERS.append(client)
        return await reply(client, request)

    return app


def answer_sync_client_in_a_def_endpoint() -> FastAPI:
    """PASSED, ok: a sync `OpenAI` from the lifespan in a plain `def` endpoint: FastAPI runs it
    in the thread pool, so the loop stays free; one client, closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with OpenAI() as client:
            app.state.openai = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    def summarize(request: ChatRequest) -> dict[str, Any]:
        response = app.state.openai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        return {"response": response.choices[0].message.content}

    return app


def answer_async_dependency_on_lifespan_state() -> FastAPI:
    """PASSED, ok: an `async def` dependency reading the lifespan's state (no thread hop)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        client = AsyncOpenAI(max_retries=1)
        try:
            yield {"llm": client}
        finally:
            await client.close()

    async def llm(request: Request) -> AsyncOpenAI:
        client: AsyncOpenAI = request.state.llm
        return client

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(
        request: ChatRequest,
        client: AsyncOpenAI = Depends(llm),  # noqa: B008 -- FastAPI's own idiom
    ) -> dict[str, Any]:
        return await reply(client, request)

    return app


def answer_holder_class_started_and_stopped() -> FastAPI:
    """PASSED, ok: a small holder class whose `start()` and `stop()` the lifespan calls."""

    class Clients:
        openai: AsyncOpenAI | None = None

        async def start(self) -> None:
            self.openai = AsyncOpenAI()

        async def stop(self) -> None:
            if self.openai is not None:
                await self.openai.close()
                self.openai = None

    clients = Clients()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await clients.start()
        try:
            yield
        finally:
            await clients.stop()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest) -> dict[str, Any]:
        assert clients.openai is not None
        return await reply(clients.openai, request)

    return app


def answer_async_with_around_the_yield_on_app_state() -> FastAPI:
    """PASSED, ok: `async with AsyncOpenAI() as client:` around the `yield`, kept on
    `app.state`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncOpenAI() as client:
            app.state.openai = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.app.state.openai, request)

    return app


def answer_shared_sync_client_through_to_thread() -> FastAPI:
    """PASSED, ok: one sync `OpenAI` from the lifespan, each call handed to
    `asyncio.to_thread`: the loop stays free, one client, closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        client = OpenAI()
        try:
            yield {"openai": client}
        finally:
            client.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def summarize(request: ChatRequest, http: Request) -> dict[str, Any]:
        response = await asyncio.to_thread(
            http.state.openai.chat.completions.create,
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": request.message}],
        )
        return {"response": response.choices[0].message.content}

    return app
