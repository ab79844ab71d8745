"""Answers to notebook 02's exercise: `analyze_all(texts)`, a fan-out that survives a failure.

Each `answer_*` returns a fresh `analyze_all` (with its own client), to be judged by
`check_parallel_fanout`. The expected entries: `{"text": …, "summary": …, "error": None}`, or
`{"text": …, "summary": None, "error": "<what went wrong>"}` for a failed call.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import openai
from openai import AsyncOpenAI

FanOut = Callable[[list[str]], Awaitable[Any]]
Summarize = Callable[[str], Coroutine[Any, Any, str]]


def summarizer() -> Summarize:
    """The notebook's `summarize(text)`, on a client of its own."""
    client = AsyncOpenAI()

    async def summarize(text: str) -> str:
        response = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarize in one sentence: {text}"}],
            max_tokens=50,
        )
        return (response.choices[0].message.content or "").strip()

    return summarize


def entry(text: str, summary: str | None = None, error: str | None = None) -> dict[str, Any]:
    return {"text": text, "summary": summary, "error": error}


# -- wrong -------------------------------------------------------------------------------------


def answer_starter() -> FanOut:
    """NOT YET, sequential: the exercise as given: one by one, and a failure loses everything."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        results = []
        for text in texts:
            results.append(entry(text, await summarize(text)))
        return results

    return analyze_all


def answer_one_by_one_with_try() -> FanOut:
    """NOT YET, sequential: each failure caught, but the calls still run one after another."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        results = []
        for text in texts:
            try:
                results.append(entry(text, await summarize(text)))
            except openai.OpenAIError as exc:
                results.append(entry(text, error=str(exc)))
        return results

    return analyze_all


def answer_bare_gather() -> FanOut:
    """NOT YET, error_propagated: a bare `gather`: the first failure loses every result."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        summaries = await asyncio.gather(*(summarize(t) for t in texts))
        return [entry(t, s) for t, s in zip(texts, summaries, strict=True)]

    return analyze_all


def answer_gather_not_awaited() -> FanOut:
    """NOT YET, not_awaited: `return asyncio.gather(...)` without `await`, then a list built
    from... nothing: the function returns the gathering future itself."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except openai.OpenAIError as exc:
            return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> Any:
        return asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_coroutines_returned() -> FanOut:
    """NOT YET, not_awaited: a list of coroutines, never awaited."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        return entry(text, await summarize(text))

    async def analyze_all(texts: list[str]) -> list[Any]:
        return [one(t) for t in texts]

    return analyze_all


def answer_return_exceptions_left_raw() -> FanOut:
    """NOT YET, exception_as_entry: `return_exceptions=True`, the exception left in the list."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[Any]:
        replies = await asyncio.gather(*(summarize(t) for t in texts), return_exceptions=True)
        return [
            entry(t, r) if isinstance(r, str) else r for t, r in zip(texts, replies, strict=True)
        ]

    return analyze_all


def answer_taskgroup_without_handling() -> FanOut:
    """NOT YET, taskgroup_cancelled: a TaskGroup: the first failure cancels the rest."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(summarize(t)) for t in texts]
        return [entry(t, task.result()) for t, task in zip(texts, tasks, strict=True)]

    return analyze_all


def answer_no_summary_key() -> FanOut:
    """NOT YET, summary_missing: entries `{"text": t, "error": None}`, the reply dropped."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            await summarize(text)
            return {"text": text, "error": None}
        except openai.OpenAIError as exc:
            return {"text": text, "error": str(exc)}

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_invented_summary() -> FanOut:
    """NOT YET, invented_summary: a failed entry with `"summary": "N/A"`."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except openai.OpenAIError as exc:
            return entry(text, "N/A", str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_as_completed_in_completion_order() -> FanOut:
    """NOT YET, wrong_order: `as_completed`: entries in the order the calls finished."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except openai.OpenAIError as exc:
            return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return [await done for done in asyncio.as_completed([one(t) for t in texts])]

    return analyze_all


def answer_wait_first_exception() -> FanOut:
    """NOT YET, error_propagated: `asyncio.wait(FIRST_EXCEPTION)`, then `.result()` on every
    task, the failed one included."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        tasks = [asyncio.create_task(summarize(t)) for t in texts]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        return [entry(t, task.result()) for t, task in zip(texts, tasks, strict=True)]

    return analyze_all


def answer_chunks_of_two() -> FanOut:
    """NOT YET, not_all_at_once: gathered in chunks of two, "to be gentle"."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except openai.OpenAIError as exc:
            return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for start in range(0, len(texts), 2):
            results += await asyncio.gather(*(one(t) for t in texts[start : start + 2]))
        return results

    return analyze_all


def answer_queue_with_two_workers() -> FanOut:
    """NOT YET, not_all_at_once: a queue and two workers: at most two calls at a time."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any] | None]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(len(texts)):
            queue.put_nowait(index)
        results: list[dict[str, Any] | None] = [None] * len(texts)

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                try:
                    results[index] = entry(texts[index], await summarize(texts[index]))
                except openai.OpenAIError as exc:
                    results[index] = entry(texts[index], error=str(exc))

        await asyncio.gather(worker(), worker())
        return results

    return analyze_all


def answer_missing_return() -> FanOut:
    """NOT YET, missing_return: the results are gathered, and never returned."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except openai.OpenAIError as exc:
            return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> None:
        _ = await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_asyncio_run_inside() -> FanOut:
    """NOT YET, nested_event_loop: `asyncio.run(gather(...))` inside the running loop."""
    summarize = summarizer()

    async def everything(texts: list[str]) -> list[Any]:
        return await asyncio.gather(*(summarize(t) for t in texts), return_exceptions=True)

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        replies = asyncio.run(everything(texts))
        return [entry(t, r) for t, r in zip(texts, replies, strict=True)]

    return analyze_all


def answer_threading_lock_per_call() -> FanOut:
    """NOT YET, threading_primitive: a `threading.Lock` held across the call: deadlock."""
    summarize = summarizer()
    lock = threading.Lock()

    async def one(text: str) -> dict[str, Any]:
        with lock:
            try:
                return entry(text, await summarize(text))
            except openai.OpenAIError as exc:
                return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_plain_def() -> FanOut:
    """NOT YET, not_async: a plain `def` that never calls the model."""

    def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return [entry(t, t[:20]) for t in texts]

    # The mistake under test: a plain function where the check awaits one.
    return analyze_all  # type: ignore[return-value]


def answer_error_text_for_success() -> FanOut:
    """NOT YET, false_error: `"error": "none"` (a string) for the calls that worked."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text), "none")
        except openai.OpenAIError as exc:
            return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


# -- right -------------------------------------------------------------------------------------


def answer_return_exceptions_converted() -> FanOut:
    """PASSED, ok: `return_exceptions=True`, each exception turned into an error entry."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        replies = await asyncio.gather(*(summarize(t) for t in texts), return_exceptions=True)
        return [
            entry(t, error=f"{type(r).__name__}: {r}")
            if isinstance(r, BaseException)
            else entry(t, r)
            for t, r in zip(texts, replies, strict=True)
        ]

    return analyze_all


def answer_taskgroup_with_handling() -> FanOut:
    """PASSED, ok: a TaskGroup whose tasks each catch their own failure."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except Exception as exc:
            return entry(text, error=repr(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(t)) for t in texts]
        return [task.result() for task in tasks]

    return analyze_all


def answer_as_completed_then_sorted() -> FanOut:
    """PASSED, ok: `as_completed`, each result tagged with its index, then put in order."""
    summarize = summarizer()

    async def one(index: int, text: str) -> tuple[int, dict[str, Any]]:
        try:
            return index, entry(text, await summarize(text))
        except openai.OpenAIError as exc:
            return index, entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        tagged = [
            await done for done in asyncio.as_completed([one(i, t) for i, t in enumerate(texts)])
        ]
        return [result for _, result in sorted(tagged, key=lambda pair: pair[0])]

    return analyze_all


def answer_wait_all_completed() -> FanOut:
    """PASSED, ok: tasks, `asyncio.wait` for all of them, then each task's result or error."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        tasks = [asyncio.create_task(summarize(t)) for t in texts]
        await asyncio.wait(tasks)
        return [
            entry(t, error=str(task.exception())) if task.exception() else entry(t, task.result())
            for t, task in zip(texts, tasks, strict=True)
        ]

    return analyze_all


def answer_tasks_started_then_awaited_in_order() -> FanOut:
    """PASSED, ok: every task started first, then awaited one by one (in the texts' order)."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        tasks = [asyncio.create_task(summarize(t)) for t in texts]
        results = []
        for task in tasks:
            try:
                results.append({"summary": await task, "error": None})
            except openai.APIStatusError as exc:
                results.append({"summary": None, "error": exc.message})
        return results

    return analyze_all
