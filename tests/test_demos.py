"""The course's headline effects hold with the offline upstream: blocking vs not, in an endpoint."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from typing import Any

from fastapi import FastAPI
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

import labsupport as lab

LATENCY = 0.1
N = 10


class ChatRequest(BaseModel):
    message: str


def _chat_app(*, blocking: bool) -> FastAPI:
    app = FastAPI()
    sync_client, aclient = OpenAI(api_key="test-key"), AsyncOpenAI(api_key="test-key")
    messages: Any = [{"role": "user", "content": "hello"}]

    if blocking:

        @app.post("/chat")
        async def blocking_chat(request: ChatRequest) -> dict[str, Any]:
            reply = sync_client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            return {"response": reply.choices[0].message.content}

    else:

        @app.post("/chat")
        async def chat(request: ChatRequest) -> dict[str, Any]:
            reply = await aclient.chat.completions.create(model="gpt-4o-mini", messages=messages)
            return {"response": reply.choices[0].message.content}

    return app


def _burst(app: FastAPI) -> lab.LoadReport:
    async def main() -> lab.LoadReport:
        async with lab.asgi_client(app) as client:
            return await lab.fire(client, "POST", "/chat", json={"message": "hi"}, n=N)

    return asyncio.run(main())


def test_sync_client_in_async_def_serializes_ten_requests_async_client_overlaps_them() -> None:
    """The notebook 01 demo: the same burst against both apps, in one test, so the two wall
    times are compared with each other (a busy machine slows both), not with a fixed bound."""
    with lab.mock_openai(latency=LATENCY) as upstream:
        blocked = _burst(_chat_app(blocking=True))
        blocked_in_flight = upstream.stats.max_in_flight
        upstream.reset()
        together = _burst(_chat_app(blocking=False))
        together_in_flight = upstream.stats.max_in_flight
    assert blocked.ok and together.ok
    assert blocked.ratio(LATENCY) >= N  # each waited for the one before: ≥ 10 latencies
    assert (blocked_in_flight, together_in_flight) == (1, N)
    assert 3 * together.wall < blocked.wall  # ideal: 1 latency against 10


def test_the_mock_coexists_with_an_httpcore2_mocker_registered_first() -> None:
    """pytest-httpx2 registers respx's "httpcore2" mocker too; a second registration would raise
    TypeError, so labsupport must reuse the one that exists."""
    script = textwrap.dedent(
        """
        from respx.mocks import HTTPCoreMocker, Mocker

        class OtherHTTPCore2Mocker(HTTPCoreMocker):  # what pytest-httpx2 does at import
            name = "httpcore2"
            targets = [
                "httpcore2._sync.connection_pool.ConnectionPool",
                "httpcore2._async.connection_pool.AsyncConnectionPool",
            ]

        from openai import OpenAI
        import labsupport as lab

        with lab.mock_openai(latency=0.0) as upstream:
            reply = OpenAI(api_key="k").chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
            )
        assert Mocker.registry["httpcore2"] is OtherHTTPCore2Mocker
        print(upstream.stats.calls, bool(reply.choices[0].message.content))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True"]
