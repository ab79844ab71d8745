"""The notebook 05 checker accepts one lifespan-managed client, and explains the typical mistakes:
a client per request, a client never closed, a client built before the app starts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Request
from openai import AsyncOpenAI
from pydantic import BaseModel

from labsupport.checks import CheckResult, check_lifespan_client


class ChatRequest(BaseModel):
    message: str


pytestmark = pytest.mark.usefixtures("offline_lab")


async def reply(client: AsyncOpenAI, request: ChatRequest) -> dict[str, Any]:
    response = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
    )
    return {"response": response.choices[0].message.content}


def get_openai(request: Request) -> AsyncOpenAI:
    """A dependency (module level: FastAPI resolves the string annotations of endpoints)."""
    client: AsyncOpenAI = request.app.state.openai
    return client


def check(app: FastAPI) -> CheckResult:
    return asyncio.run(check_lifespan_client(app))


def test_a_client_in_the_lifespan_state_passes_and_the_base_url_is_restored() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY")) as client:
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(request: ChatRequest, http: Request) -> dict[str, Any]:
        return await reply(http.state.openai, request)

    result = check(app)
    assert result.passed, str(result)
    assert "the upstream got 5 calls over 1 TCP connection." in str(result)
    assert "After shutdown: 0 connections still open." in str(result)
    assert "OPENAI_BASE_URL" not in os.environ


def test_app_state_with_a_dependency_and_an_explicit_close_passes() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.openai = AsyncOpenAI()
        yield
        await app.state.openai.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(
        request: ChatRequest, client: Annotated[AsyncOpenAI, Depends(get_openai)]
    ) -> dict[str, Any]:
        return await reply(client, request)

    assert check(app).passed


def test_a_client_per_request_is_rejected_even_when_closed() -> None:
    app = FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        async with AsyncOpenAI() as client:
            return await reply(client, request)

    result = check(app)
    assert not result.passed
    assert result.summary == "a new client per request: 5 connections for 5 sequential requests."
    assert "create ONE `AsyncOpenAI` in the lifespan" in str(result)


def test_a_client_per_request_never_closed_is_rejected_for_both() -> None:
    app = FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        return await reply(AsyncOpenAI(), request)

    result = check(app)
    assert not result.passed
    assert "5 connections for 5 sequential requests, and they were never closed" in result.summary


def test_a_lifespan_client_never_closed_is_rejected() -> None:
    clients: list[AsyncOpenAI] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients.append(AsyncOpenAI())
        yield  # and no close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        return await reply(clients[0], request)

    async def check_then_clean_up() -> CheckResult:
        result = await check_lifespan_client(app)
        await clients[0].close()  # the socket belongs to this event loop: close it here
        return result

    result = asyncio.run(check_then_clean_up())
    assert not result.passed
    assert "never closed" in result.summary
    assert "After shutdown: 1 connection still open." in str(result)


def test_a_client_built_before_the_app_started_is_explained() -> None:
    module_level = AsyncOpenAI()  # built before the check sets OPENAI_BASE_URL
    app = FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        return await reply(module_level, request)

    result = check(app)
    assert not result.passed
    assert "the client was built before the app started" in result.summary
    assert "The in-process upstream answered 5 calls instead." in str(result)
    asyncio.run(module_level.close())


def test_a_failing_startup_is_reported() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("no key")
        yield

    result = check(FastAPI(lifespan=lifespan))
    assert not result.passed and "RuntimeError: no key" in result.summary


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n must be an int ≥ 2"):
        asyncio.run(check_lifespan_client(FastAPI(), n=1))
