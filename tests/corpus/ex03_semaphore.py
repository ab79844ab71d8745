"""Answers to notebook 03's exercise: `summarize_all(texts)`, at most 5 calls in flight.

Each `answer_*` returns a fresh `summarize_all` (with its own client and, where it has one, its
own module-level semaphore), to be judged by `check_bounded_batch(fn, limit=5)`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import httpx2
import openai
from openai import AsyncOpenAI

Batch = Callable[[list[str]], Awaitable[Any]]
Summarize = Callable[[str], Coroutine[Any, Any, str]]


def summarizer() -> Summarize:
    """The notebook's `summarize(text)`, on a client of its own."""
    client = AsyncOpenAI()

    async def summarize(text: str) -> str:
        response = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarize in 5 words: {text}"}],
            max_tokens=20,
        )
        return response.choices[0].message.content or ""

    return summarize


# -- wrong -------------------------------------------------------------------------------------


def answer_starter_unbounded() -> Batch:
    """NOT YET, no_bound: the exercise as given: every text at once."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(summarize(t) for t in texts))

    return summarize_all


def answer_unbounded_errors_kept() -> Batch:
    """NOT YET, no_bound: unbounded, with `return_exceptions=True` hiding the 429s."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[Any]:
        return await asyncio.gather(*(summarize(t) for t in texts), return_exceptions=True)

    return summarize_all


def answer_semaphore_per_call() -> Batch:
    """NOT YET, semaphore_per_call: `async with asyncio.Semaphore(5):` inside the helper."""
    summarize = summarizer()

    async def one(text: str) -> str:
        async with asyncio.Semaphore(5):
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_module_level_bound_of_ten() -> Batch:
    """NOT YET, bound_above_limit: one shared semaphore, but `Semaphore(10)`."""
    summarize = summarizer()
    slots = asyncio.Semaphore(10)

    async def one(text: str) -> str:
        async with slots:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_per_batch_bound_of_ten() -> Batch:
    """NOT YET, bound_above_limit: a semaphore per batch (fine), of 10 slots (not fine)."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[str]:
        slots = asyncio.Semaphore(10)

        async def one(text: str) -> str:
            async with slots:
                return await summarize(text)

        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_bounded_semaphore_of_twenty() -> Batch:
    """NOT YET, bound_above_limit: `BoundedSemaphore(len(texts))`: one slot per text."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[str]:
        slots = asyncio.BoundedSemaphore(len(texts))

        async def one(text: str) -> str:
            async with slots:
                return await summarize(text)

        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_coroutine_created_under_the_semaphore() -> Batch:
    """NOT YET, released_before_await: the call is created inside `async with`, awaited after."""
    summarize = summarizer()
    slots = asyncio.Semaphore(5)

    async def one(text: str) -> str:
        async with slots:
            pending = summarize(text)
        return await pending

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_task_created_under_the_semaphore() -> Batch:
    """NOT YET, released_before_await: a task started under the semaphore runs on without it."""
    summarize = summarizer()
    slots = asyncio.Semaphore(5)

    async def start(text: str) -> asyncio.Task[str]:
        async with slots:
            return asyncio.create_task(summarize(text))

    async def summarize_all(texts: list[str]) -> list[str]:
        tasks = await asyncio.gather(*(start(t) for t in texts))
        return list(await asyncio.gather(*tasks))

    return summarize_all


def answer_threading_semaphore() -> Batch:
    """NOT YET, threading_primitive: `threading.Semaphore(5)`: the sixth task blocks the loop."""
    summarize = summarizer()
    slots = threading.Semaphore(5)

    async def one(text: str) -> str:
        with slots:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_one_by_one() -> Batch:
    """NOT YET, sequential: "bounded" to one call at a time by awaiting in a loop."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[str]:
        return [await summarize(t) for t in texts]

    return summarize_all


def answer_bound_of_two() -> Batch:
    """NOT YET, bound_below_limit: `Semaphore(2)`, "to be safe"."""
    summarize = summarizer()
    slots = asyncio.Semaphore(2)

    async def one(text: str) -> str:
        async with slots:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_chunks_of_five() -> Batch:
    """NOT YET, waves: chunks of 5 gathered one after another."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[str]:
        results: list[str] = []
        for start in range(0, len(texts), 5):
            results += await asyncio.gather(*(summarize(t) for t in texts[start : start + 5]))
        return results

    return summarize_all


def answer_as_completed_order() -> Batch:
    """NOT YET, wrong_order: bounded, but collected with `as_completed` (completion order)."""
    summarize = summarizer()
    slots = asyncio.Semaphore(5)

    async def one(text: str) -> str:
        async with slots:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return [await done for done in asyncio.as_completed([one(t) for t in texts])]

    return summarize_all


def answer_missing_return() -> Batch:
    """NOT YET, missing_return: bounded and gathered, but nothing returned."""
    summarize = summarizer()
    slots = asyncio.Semaphore(5)

    async def one(text: str) -> str:
        async with slots:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> None:
        _ = await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_gather_not_awaited() -> Batch:
    """NOT YET, not_awaited: `return asyncio.gather(...)` without `await`."""
    summarize = summarizer()
    slots = asyncio.Semaphore(5)

    async def one(text: str) -> str:
        async with slots:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> Any:
        return asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_time_sleep_pacing() -> Batch:
    """NOT YET, blocked_loop: a shared `Semaphore(5)`, and `time.sleep` to "pace" each call."""
    summarize = summarizer()
    slots = asyncio.Semaphore(5)

    async def one(text: str) -> str:
        async with slots:
            time.sleep(0.05)
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_pool_limit_above_the_limit() -> Batch:
    """NOT YET, no_bound: `httpx2.Limits(max_connections=10)`: a real bound, but above 5."""
    client = AsyncOpenAI(
        http_client=openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=10))
    )

    async def one(text: str) -> str:
        response = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarize in 5 words: {text}"}],
            max_tokens=20,
        )
        return response.choices[0].message.content or ""

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_semaphore_of_six() -> Batch:
    """NOT YET, bound_above_limit: `Semaphore(6)`, one above the upstream's limit of 5."""
    summarize = summarizer()
    slots = asyncio.Semaphore(6)

    async def one(text: str) -> str:
        async with slots:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_lock_instead_of_semaphore() -> Batch:
    """NOT YET, sequential: an `asyncio.Lock` "for safety": one call at a time."""
    summarize = summarizer()
    lock = asyncio.Lock()

    async def one(text: str) -> str:
        async with lock:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_canned_summaries() -> Batch:
    """NOT YET, wrong_summary: bounded, but each summary replaced by a fixed placeholder."""
    summarize = summarizer()
    slots = asyncio.Semaphore(5)

    async def one(text: str) -> str:
        async with slots:
            await summarize(text)
            return "summary pending review"

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_sorted_summaries() -> Batch:
    """NOT YET, wrong_order: bounded, then `sorted()` "to make the output tidy"."""
    summarize = summarizer()
    slots = asyncio.Semaphore(5)

    async def one(text: str) -> str:
        async with slots:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return sorted(await asyncio.gather(*(one(t) for t in texts)))

    return summarize_all


# -- right -------------------------------------------------------------------------------------


def answer_semaphore_per_batch() -> Batch:
    """PASSED, ok: one `Semaphore(5)` per batch, shared by that batch's tasks."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[str]:
        slots = asyncio.Semaphore(5)

        async def one(text: str) -> str:
            async with slots:
                return await summarize(text)

        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_five_queue_workers() -> Batch:
    """PASSED, ok: a queue of indices and five workers, each taking the next text when free."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[str]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(len(texts)):
            queue.put_nowait(index)
        results = [""] * len(texts)

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                results[index] = await summarize(texts[index])

        await asyncio.gather(*(worker() for _ in range(5)))
        return results

    return summarize_all


def answer_bounded_semaphore_acquire_release() -> Batch:
    """PASSED, ok: `BoundedSemaphore(5)` with explicit `acquire()` / `release()` in `finally`."""
    summarize = summarizer()
    slots = asyncio.BoundedSemaphore(5)

    async def one(text: str) -> str:
        await slots.acquire()
        try:
            return await summarize(text)
        finally:
            slots.release()

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_taskgroup_with_semaphore() -> Batch:
    """PASSED, ok: a TaskGroup of tasks sharing one semaphore, results read in order."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[str]:
        slots = asyncio.Semaphore(5)

        async def one(text: str) -> str:
            async with slots:
                return await summarize(text)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(t)) for t in texts]
        return [task.result() for task in tasks]

    return summarize_all


def answer_as_completed_then_sorted() -> Batch:
    """PASSED, ok: bounded `as_completed`, each summary tagged with its index and sorted back."""
    summarize = summarizer()
    slots = asyncio.Semaphore(5)

    async def one(index: int, text: str) -> tuple[int, str]:
        async with slots:
            return index, await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        pending = [one(i, t) for i, t in enumerate(texts)]
        tagged = [await done for done in asyncio.as_completed(pending)]
        return [summary for _, summary in sorted(tagged)]

    return summarize_all


def answer_solution_as_in_the_notebook() -> Batch:
    """PASSED, ok: the notebook's solution: a module-level `Semaphore(5)` around the call."""
    summarize = summarizer()
    summary_slots = asyncio.Semaphore(5)

    async def summarize_bounded(text: str) -> str:
        async with summary_slots:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(summarize_bounded(text) for text in texts))

    return summarize_all


def answer_pool_limit_of_five() -> Batch:
    """PASSED, ok: no semaphore: `httpx2.Limits(max_connections=5)` on the client, as the
    lesson's table lists: the pool lets 5 requests out at a time."""
    client = AsyncOpenAI(
        http_client=openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=5))
    )

    async def one(text: str) -> str:
        response = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarize in 5 words: {text}"}],
            max_tokens=20,
        )
        return response.choices[0].message.content or ""

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_inline_client_call_under_semaphore() -> Batch:
    """PASSED, ok: its own client, the call written inline under a shared `Semaphore(5)`."""
    client = AsyncOpenAI()
    slots = asyncio.Semaphore(5)

    async def one(text: str) -> str:
        async with slots:
            response = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Summarize in 5 words: {text}"}],
                max_tokens=20,
            )
        return response.choices[0].message.content or ""

    async def summarize_all(texts: list[str]) -> list[str]:
        return list(await asyncio.gather(*map(one, texts)))

    return summarize_all


def answer_capacity_limiter_of_five() -> Batch:
    """PASSED, ok: an anyio `CapacityLimiter(5)` used as an async context manager."""
    summarize = summarizer()
    limiter = anyio.CapacityLimiter(5)

    async def one(text: str) -> str:
        async with limiter:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    return summarize_all


def answer_anyio_task_group_with_semaphore() -> Batch:
    """PASSED, ok: an anyio task group filling a results list, bounded by `Semaphore(5)`."""
    summarize = summarizer()

    async def summarize_all(texts: list[str]) -> list[str]:
        slots = asyncio.Semaphore(5)
        results = [""] * len(texts)

        async def one(index: int) -> None:
            async with slots:
                results[index] = await summarize(texts[index])

        async with anyio.create_task_group() as group:
            for index in range(len(texts)):
                group.start_soon(one, index)
        return results

    return summarize_all
