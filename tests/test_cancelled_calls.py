"""■ on a cell cancels its calls: the upstream counts them as cancelled, not as timeouts, and a
progress bar ticked by done callbacks that skip cancelled tasks stops where the work stopped."""

from __future__ import annotations

import asyncio
import io

import openai
import pytest
from openai import AsyncOpenAI
from tqdm import tqdm

import labsupport

MESSAGES = [{"role": "user", "content": "Summarize: a cancelled call"}]


async def _cancel_five_then_time_out_one(upstream: labsupport.MockUpstream) -> str:
    async with AsyncOpenAI(max_retries=0) as client:

        async def one(seconds: float | None = None) -> object:
            return await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
                timeout=seconds,
            )

        with tqdm(total=6, file=io.StringIO()) as bar:
            tasks = [asyncio.create_task(one()) for _ in range(5)]
            for task in tasks:
                task.add_done_callback(lambda done: done.cancelled() or bar.update())
            while upstream.stats.in_flight < 5:
                await asyncio.sleep(0.01)
            for task in tasks:
                task.cancel()  # what ■ does to a cell's TaskGroup
            await asyncio.wait(tasks)
            with pytest.raises(openai.APITimeoutError):
                await one(seconds=0.05)
            return f"{bar.n}/{bar.total}"


def test_cancelled_calls_are_counted_apart_from_timeouts() -> None:
    with labsupport.mock_openai(latency=1.0) as upstream:
        progress = asyncio.run(_cancel_five_then_time_out_one(upstream))
        stats = upstream.stats
    assert (stats.calls, stats.cancelled, stats.count(None)) == (6, 5, 1)
    assert "5 × cancelled" in str(stats) and "1 × timeout" in str(stats)
    assert progress == "0/6"  # the bar did not jump to done for cancelled tasks
