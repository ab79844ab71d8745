"""The notebook 01 checker accepts non-blocking endpoints and explains each typical mistake."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

from labsupport.checks import CheckResult, check_async_endpoint


class ChatRequest(BaseModel):
    message: str


def messages(request: ChatRequest) -> list[Any]:
    return [{"role": "user", "content": request.message}]


pytestmark = pytest.mark.usefixtures("offline_lab")


def check(app: FastAPI) -> CheckResult:
    return asyncio.run(check_async_endpoint(app))


def test_the_shared_async_client_passes() -> None:
    app, aclient = FastAPI(), AsyncOpenAI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = await aclient.chat.completions.create(
            model="gpt-4o-mini", messages=messages(request)
        )
        return {"response": response.choices[0].message.content}

    result = check(app)
    assert result.passed, str(result)
    assert "✅ PASSED" in str(result)
    assert "from the async client, overlapping in time" in str(result)


def test_a_def_endpoint_with_the_sync_client_passes_through_the_thread_pool() -> None:
    app, client = FastAPI(), OpenAI()

    @app.post("/chat")
    def chat(request: ChatRequest) -> dict[str, Any]:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=messages(request))
        return {"response": response.choices[0].message.content}

    assert check(app).passed


def test_the_sync_client_inside_async_def_is_rejected_with_its_evidence() -> None:
    app, client = FastAPI(), OpenAI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = client.chat.completions.create(model="gpt-4o-mini", messages=messages(request))
        return {"response": response.choices[0].message.content}

    result = check(app)
    assert not result.passed
    text = str(result)
    assert "the event loop was blocked" in text
    assert "from the sync client, one at a time" in text
    assert "a synchronous call inside `async def`?" in text


def test_time_sleep_inside_async_def_is_rejected() -> None:
    app, aclient = FastAPI(), AsyncOpenAI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        time.sleep(0.05)  # "just a little pause" still blocks everyone
        response = await aclient.chat.completions.create(
            model="gpt-4o-mini", messages=messages(request)
        )
        return {"response": response.choices[0].message.content}

    result = check(app)
    assert not result.passed and "the event loop was blocked" in str(result)


def test_a_missing_await_is_named() -> None:
    app, aclient = FastAPI(), AsyncOpenAI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = aclient.chat.completions.create(model="gpt-4o-mini", messages=messages(request))
        return {"response": response.choices[0].message.content}  # type: ignore[attr-defined]

    result = check(app)
    assert not result.passed
    assert "never awaited" in result.summary and "add `await`" in str(result)


def test_a_wrong_reply_shape_is_explained() -> None:
    app, aclient = FastAPI(), AsyncOpenAI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        response = await aclient.chat.completions.create(
            model="gpt-4o-mini", messages=messages(request)
        )
        return {"reply": response.choices[0].message.content}

    result = check(app)
    assert not result.passed
    assert "did not get a proper reply" in result.summary and "First bad reply" in str(result)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n must be an int ≥ 2"):
        asyncio.run(check_async_endpoint(FastAPI(), n=1))
