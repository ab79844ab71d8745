"""Benchmarks of the offline upstream: its cost, and how faithfully the demos show their lesson.

Not part of the test suite: timings belong here, measured as ratios within one run, so that a
busy machine moves both sides of each ratio together.

1. **Cost.** 1,000 calls through `AsyncOpenAI` to the mock, against the SDK's own floor: the
   same SDK, the same calls, over a transport that answers with a prepared body, in the three
   modes the lessons use: one after another; 1,000 at once answering at once; 1,000 at once with
   0.1 s latency (the floor's transport sleeps as long). Then the sequential calls through a
   FastAPI endpoint served in process. Target: mock ≤ 1.10 × floor in every mode.
2. **Fidelity.** Each demo's wall time over its ideal: N blocked requests ≈ N × latency;
   N concurrent ≈ 1 × latency; the seed's three gathered calls ≈ 1 × latency; a semaphore of k
   over N calls ≈ ⌈N/k⌉ × latency. Target: measured / ideal ≤ 1.15; and the concurrent demo
   within 1.05 × what one event loop can do (latency + N × the per-request CPU measured here).
3. **The first cell.** `import labsupport as lab; lab.setup()` in a fresh interpreter, as a
   kernel runs it (median of 3), in wall time and in CPU time (which a loaded machine hardly
   moves). Target ≤ 0.8 s on a quiet machine.

Run: `make bench` (or `.venv/bin/python benchmarks/run.py`; `--first-cell` for part 3 only).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import httpx2
from fastapi import FastAPI
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

import labsupport as lab

CALLS = 1_000
ROUNDS = 5
MESSAGES: Any = [{"role": "user", "content": "Summarize in 5 words: The loop runs one task."}]
CONCURRENT = 20  # requests in the blocked / concurrent endpoint demos, as in notebook 01
TARGET_COST = 1.10
TARGET_FIDELITY = 1.15
TARGET_ONE_LOOP = 1.05
TARGET_FIRST_CELL = 0.8
LATENCY = 0.1


class ChatRequest(BaseModel):
    message: str


def _floor_client(latency: float = 0.0) -> AsyncOpenAI:
    """The SDK over a transport that answers every request with a prepared body, after
    `latency` seconds asleep on the event loop (as the mock's async answers wait)."""
    body = json.dumps(
        {
            "id": "chatcmpl-floor",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "The loop runs one task."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26},
        }
    ).encode()
    headers = {"content-type": "application/json"}

    async def answer(request: httpx2.Request) -> httpx2.Response:
        if latency:
            await asyncio.sleep(latency)
        return httpx2.Response(200, headers=headers, content=body)

    transport = httpx2.MockTransport(answer)
    # The SDK's own pool limits, so that 1,000 concurrent calls queue alike on both sides.
    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
    client = httpx2.AsyncClient(transport=transport, limits=limits)
    return AsyncOpenAI(api_key="bench", http_client=client)


async def _sdk_calls(client: AsyncOpenAI) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    return time.perf_counter() - start


async def _concurrent_sdk_calls(client: AsyncOpenAI) -> float:
    start = time.perf_counter()
    await asyncio.gather(
        *(
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            for _ in range(CALLS)
        )
    )
    return time.perf_counter() - start


async def _endpoint_calls(client: AsyncOpenAI) -> float:
    app = FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        return {"response": reply.choices[0].message.content}

    async with lab.asgi_client(app) as http:
        start = time.perf_counter()
        for _ in range(CALLS):
            await http.post("/chat", json={"message": "Summarize in 5 words: one task."})
        return time.perf_counter() - start


def _best_pair(
    floor: Callable[[], Coroutine[Any, Any, float]],
    mocked: Callable[[], Coroutine[Any, Any, float]],
    latency: float,
) -> tuple[float, float]:
    """The fastest of ROUNDS runs of each, taken in turns (floor, mock, floor, mock, …): the
    least disturbed by whatever else the machine does, and a change in its load between the
    two sides is shared by both instead of landing on one."""
    floors, mocks = [], []
    for _ in range(ROUNDS):
        gc.collect()  # each run starts with no garbage of the last one to collect
        floors.append(asyncio.run(floor()))
        gc.collect()
        with lab.mock_openai(latency=latency):
            mocks.append(asyncio.run(mocked()))
    return min(floors), min(mocks)


def cost() -> list[tuple[str, float, float]]:
    """(mode, µs per call with the mock, µs per call at the SDK's floor)."""
    modes: list[tuple[str, Callable[[AsyncOpenAI], Awaitable[float]], float]] = [
        ("sequential", _sdk_calls, 0.0),
        (f"{CALLS} concurrent, 0 s", _concurrent_sdk_calls, 0.0),
        (f"{CALLS} concurrent, {LATENCY:g} s", _concurrent_sdk_calls, LATENCY),
        ("FastAPI endpoint, seq.", _endpoint_calls, 0.0),
    ]
    rows = []
    for name, runner, latency in modes:
        floor, mocked = _best_pair(
            partial(_against, runner, partial(_floor_client, latency)),
            partial(_against, runner, partial(AsyncOpenAI, api_key="bench")),
            latency,
        )
        rows.append((name, mocked / CALLS * 1e6, floor / CALLS * 1e6))
    return rows


async def _against(
    runner: Callable[[AsyncOpenAI], Awaitable[float]], make_client: Callable[[], AsyncOpenAI]
) -> float:
    """`runner` with a client built inside the event loop that runs it."""
    async with make_client() as client:
        return await runner(client)


def first_cell() -> tuple[float, float]:
    """(wall seconds, CPU seconds) for a fresh interpreter to run the first cell, beyond a bare
    interpreter's start (medians of 3). The CPU time hardly moves when other processes load
    the machine; the wall time is what a learner waits on a quiet one."""
    code = "import labsupport as lab; lab.setup()"
    cell = [_interpreter_run(code) for _ in range(3)]
    bare = [_interpreter_run("pass") for _ in range(3)]
    return (
        statistics.median(wall for wall, _ in cell) - statistics.median(wall for wall, _ in bare),
        statistics.median(cpu for _, cpu in cell) - statistics.median(cpu for _, cpu in bare),
    )


def _interpreter_run(code: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -c code`, offline whatever the calling shell says."""
    env = {name: value for name, value in os.environ.items() if name != "LAB_MODE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


async def _blocked_demo(n: int) -> float:
    sync_client, app = OpenAI(api_key="bench"), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        reply = sync_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return {"response": reply.choices[0].message.content}

    async with lab.asgi_client(app) as client:
        return (await lab.fire(client, "POST", "/chat", json={"message": "hi"}, n=n)).wall


async def _concurrent_demo(n: int) -> float:
    aclient, app = AsyncOpenAI(api_key="bench"), FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        reply = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return {"response": reply.choices[0].message.content}

    async with lab.asgi_client(app) as client:
        return (await lab.fire(client, "POST", "/chat", json={"message": "hi"}, n=n)).wall


async def _gather_demo() -> float:
    aclient, text = AsyncOpenAI(api_key="bench"), "Machine learning is transforming business."
    prompts = [
        f"Sentiment (one word): {text}",
        f"List 3 topics (comma-separated): {text}",
        f"Summarize in one sentence: {text}",
    ]
    start = time.perf_counter()
    await asyncio.gather(
        *(
            aclient.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": p}]
            )
            for p in prompts
        )
    )
    return time.perf_counter() - start


async def _semaphore_demo(n: int, k: int) -> float:
    aclient, semaphore = AsyncOpenAI(api_key="bench"), asyncio.Semaphore(k)

    async def one(i: int) -> None:
        async with semaphore:
            await aclient.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summarize: {i}."}]
            )

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - start


def fidelity(latency: float = 0.1) -> list[tuple[str, float, float]]:
    """(demo, measured seconds (median of 3), ideal seconds).

    The ideals are the lessons' round numbers, which count waiting only. Requests on one event
    loop also take CPU, one after another: `main()` reports the concurrent demo against that
    floor too (latency + N × the in-process cost per request measured by `cost()`)."""
    demos: list[tuple[str, Callable[[], Coroutine[Any, Any, float]], float]] = [
        (
            f"{CONCURRENT} requests, sync client in async def",
            lambda: _blocked_demo(CONCURRENT),
            CONCURRENT * latency,
        ),
        (
            f"{CONCURRENT} requests, AsyncOpenAI awaited",
            lambda: _concurrent_demo(CONCURRENT),
            latency,
        ),
        ("parallel_analysis: 3 gathered calls", _gather_demo, latency),
        (
            "Semaphore(5) over 100 calls",
            lambda: _semaphore_demo(100, 5),
            math.ceil(100 / 5) * latency,
        ),
    ]
    rows = []
    with lab.mock_openai(latency=latency):
        asyncio.run(_concurrent_demo(2))  # warm up imports and validators outside the timing
        for name, demo, ideal in demos:
            rows.append((name, statistics.median(asyncio.run(demo()) for _ in range(3)), ideal))
    return rows


def main() -> int:
    print(f"Mock cost per call ({CALLS} calls, best of {ROUNDS}), against the SDK's floor")
    print(f"{'mode':<24}{'mock µs':>10}{'floor µs':>10}{'ratio':>8}  target")
    failures = 0
    costs = cost()
    for name, mocked, floor in costs:
        ratio = mocked / floor
        failures += ratio > TARGET_COST
        verdict = "ok" if ratio <= TARGET_COST else "MISSED"
        print(f"{name:<24}{mocked:>10.0f}{floor:>10.0f}{ratio:>8.2f}  ≤ {TARGET_COST} {verdict}")
    print(f"\nDemo fidelity at {LATENCY:g} s latency (median of 3)")
    print(f"{'demo':<40}{'measured':>10}{'ideal':>8}{'ratio':>8}  target")
    rows = fidelity(LATENCY)
    for name, measured, ideal in rows:
        ratio = measured / ideal
        failures += ratio > TARGET_FIDELITY
        verdict = "ok" if ratio <= TARGET_FIDELITY else "MISSED"
        print(
            f"{name:<40}{measured:>9.3f}s{ideal:>7.2f}s{ratio:>8.3f}  ≤ {TARGET_FIDELITY} {verdict}"
        )
    endpoint_mocked_us = costs[-1][1]
    _, concurrent, ideal = rows[1]
    one_loop = ideal + CONCURRENT * endpoint_mocked_us / 1e6
    ratio = concurrent / one_loop
    failures += ratio > TARGET_ONE_LOOP
    verdict = "ok" if ratio <= TARGET_ONE_LOOP else "MISSED"
    print(
        f"\nThe concurrent demo against what one event loop can do: latency + {CONCURRENT} × "
        f"{endpoint_mocked_us:.0f} µs of in-process work per request = {one_loop:.3f} s; "
        f"measured/that = {ratio:.3f}  ≤ {TARGET_ONE_LOOP} {verdict}"
    )
    failures += report_first_cell()
    return 1 if failures else 0


def report_first_cell() -> int:
    """Print the first cell's time against its target; 1 if it missed, else 0."""
    wall, cpu = first_cell()
    verdict = "ok" if wall <= TARGET_FIRST_CELL else "MISSED"
    print(
        f"\nFirst cell (import labsupport; lab.setup()), beyond a bare interpreter's start: "
        f"{wall:.2f} s  ≤ {TARGET_FIRST_CELL} {verdict} (CPU {cpu:.2f} s; load average "
        f"{os.getloadavg()[0]:.1f})"
    )
    return int(wall > TARGET_FIRST_CELL)


if __name__ == "__main__":
    if sys.argv[1:] == ["--first-cell"]:
        sys.exit(report_first_cell())
    sys.exit(main())
