"""labsupport.checks._invariants: the measurements the checkers share, and the mock's tunnel
that puts real TCP (and each client's own connection pool) between a client and the upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import openai
import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI

import labsupport
from labsupport.checks._invariants import Watch, bursts, mismatched_replies, over_tcp

pytestmark = pytest.mark.usefixtures("offline_lab")

MESSAGES: Any = [{"role": "user", "content": "Summarize: the printer jams. A part is on order."}]


def test_through_the_tunnel_a_pool_limit_bounds_the_calls(
    offline_lab: labsupport.MockUpstream,
) -> None:
    async def calls(client: AsyncOpenAI) -> tuple[int, int]:
        async with Watch(offline_lab) as in_process:
            await asyncio.gather(*(ask(client) for _ in range(6)))
        answered_in_process = offline_lab.stats.calls
        with over_tcp(offline_lab) as server:
            async with Watch(server) as over_real_tcp:
                await asyncio.gather(*(ask(client) for _ in range(6)))
        assert offline_lab.stats.calls == answered_in_process == 6, "the server answered those"
        return in_process.measured.peak, over_real_tcp.measured.peak

    async def ask(client: AsyncOpenAI) -> None:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    async def main() -> tuple[int, int]:
        limits = httpx2.Limits(max_connections=2)
        http = openai.DefaultAsyncHttpxClient(limits=limits)
        async with AsyncOpenAI(http_client=http) as client:
            return await calls(client)

    assert asyncio.run(main()) == (6, 2)  # the in-process mock answers inside the pool


def test_tunnel_needs_a_running_mock_and_a_port(offline_lab: labsupport.MockUpstream) -> None:
    with pytest.raises(ValueError, match="needs a server's port"), offline_lab.tunnel(0):
        pass


def test_bursts_pause_and_replies_are_compared_with_the_upstreams(
    offline_lab: labsupport.MockUpstream,
) -> None:
    client, app = AsyncOpenAI(), FastAPI()

    @app.post("/chat")
    async def chat(body: dict[str, str]) -> dict[str, Any]:
        response = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": body["message"]}]
        )
        text = response.choices[0].message.content
        return {"response": text if "02" not in body["message"] else "made up"}

    texts = [f"Ticket 0{i}: the door sticks. Facilities know." for i in range(1, 4)]

    async def main() -> list[Any]:
        try:
            return await bursts(app, "/chat", texts, upstream=offline_lab, pause=0.01)
        finally:
            await client.close()

    first, second = asyncio.run(main())
    assert first.report.ok and second.report.ok and first.left_running == 0
    assert first.measured.peak == 3 and first.measured.cpu > 0
    assert mismatched_replies(first.replies, texts, first.measured.timeline) == [1]
