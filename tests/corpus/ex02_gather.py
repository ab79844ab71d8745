"""Answers to notebook 02's exercise: `analyze_all(texts)`, a fan-out that survives a failure.

Each `answer_*` returns a fresh `analyze_all` (with its own client), to be judged by
`check_parallel_fanout`. The expected entries: `{"text": …, "summary": …, "error": None}`, or
`{"text": …, "summary": None, "error": "<what went wrong>"}` for a failed call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import openai
from openai import AsyncOpenAI, OpenAI

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


def answer_time_sleep_backoff() -> FanOut:
    """NOT YET, blocked_loop: a retry with a `time.sleep` backoff inside `async def`: each
    failure holds the whole event loop."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        for attempt in range(3):
            try:
                return entry(text, await summarize(text))
            except openai.APIStatusError as exc:
                if attempt == 2:
                    return entry(text, error=exc.message)
                time.sleep(0.3)
        raise AssertionError("unreachable")

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_gather_then_a_blocking_pause() -> FanOut:
    """NOT YET, blocked_loop: gathered, then a `time.sleep(0.3)` "rate-limit pause" before it
    returns: three latencies of the tests' upstream, once per run, at the end (from a blind
    answer that got ✅ when the block threshold was three latencies: the watcher's wake-up was
    due a few milliseconds into the sleep)."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except openai.APIStatusError as exc:
            return entry(text, error=exc.message)

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        results = await asyncio.gather(*(one(t) for t in texts))
        time.sleep(0.3)
        return list(results)

    return analyze_all


def answer_threads_each_running_asyncio_run() -> FanOut:
    """NOT YET, fails_over_tcp: each text in a worker thread running `asyncio.run` on the shared
    async client: every call gets a new event loop, the connections outlive it."""
    summarize = summarizer()

    def one_in_a_thread(text: str) -> dict[str, Any]:
        try:
            return entry(text, asyncio.run(summarize(text)))
        except Exception as exc:
            return entry(text, error=repr(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(asyncio.to_thread(one_in_a_thread, t) for t in texts))

    return analyze_all


def answer_gather_used_without_await() -> FanOut:
    """NOT YET, not_awaited: `replies = asyncio.gather(...)` without `await`, then zipped."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        replies = asyncio.gather(*(summarize(t) for t in texts), return_exceptions=True)
        return [
            entry(t, error=str(r)) if isinstance(r, Exception) else entry(t, r)  # type: ignore[arg-type]
            for t, r in zip(texts, replies, strict=False)  # the mistake: a future, not a list
        ]

    return analyze_all


def answer_canned_summary() -> FanOut:
    """NOT YET, wrong_summary: the calls are made, but every summary is the same fixed text."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            await summarize(text)
            return entry(text, "Summary generated.")
        except openai.OpenAIError as exc:
            return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_newest_first() -> FanOut:
    """NOT YET, wrong_order: results reversed "so the newest ticket comes first"."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except openai.OpenAIError as exc:
            return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        results = await asyncio.gather(*(one(t) for t in texts))
        return list(reversed(results))

    return analyze_all


def answer_semaphore_of_two_to_be_nice() -> FanOut:
    """NOT YET, not_all_at_once: a `Semaphore(2)` "to be nice to the API": 2 at a time."""
    summarize = summarizer()
    slots = asyncio.Semaphore(2)

    async def one(text: str) -> dict[str, Any]:
        async with slots:
            try:
                return entry(text, await summarize(text))
            except openai.OpenAIError as exc:
                return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_failures_dropped() -> FanOut:
    """NOT YET, wrong_count: failures skipped (`except: continue`), so a text loses its entry."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        replies = await asyncio.gather(*(summarize(t) for t in texts), return_exceptions=True)
        results = []
        for text, reply in zip(texts, replies, strict=True):
            if isinstance(reply, BaseException):
                continue
            results.append(entry(text, reply))
        return results

    return analyze_all


def answer_empty_summary_on_failure() -> FanOut:
    """NOT YET, invented_summary: a failed text gets `"summary": ""`, not None."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except openai.OpenAIError as exc:
            return {"text": text, "summary": "", "error": str(exc)}

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_shared_client_closed_after_each_call() -> FanOut:
    """NOT YET, client_closed: the shared client used as `async with client:` in each call."""
    client = AsyncOpenAI()

    async def one(text: str) -> dict[str, Any]:
        try:
            async with client:
                response = await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"Summarize in one sentence: {text}"}],
                )
            return entry(text, response.choices[0].message.content)
        except openai.OpenAIError as exc:
            return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_gathered_then_sorted_by_text() -> FanOut:
    """NOT YET, wrong_order: gathered and each failure caught, then sorted by text ("tidier"):
    the results no longer follow the texts' order."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        try:
            return entry(text, await summarize(text))
        except openai.APIError as exc:
            return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        results = await asyncio.gather(*(one(text) for text in texts))
        return sorted(results, key=lambda result: result["text"])

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


def answer_solution_as_in_the_notebook() -> FanOut:
    """PASSED, ok: the notebook's solution: `analyze_one` catches `openai.APIError`, `gather`."""
    summarize = summarizer()

    async def analyze_one(text: str) -> dict[str, Any]:
        try:
            return {"text": text, "summary": await summarize(text), "error": None}
        except openai.APIError as exc:
            return {"text": text, "summary": None, "error": f"{type(exc).__name__}: {exc.message}"}

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(analyze_one(text) for text in texts))

    return analyze_all


def answer_inline_client_call() -> FanOut:
    """PASSED, ok: its own shared `AsyncOpenAI`, the call written inline in the per-text helper."""
    client = AsyncOpenAI()

    async def one(text: str) -> dict[str, Any]:
        try:
            response = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Summarize in one sentence: {text}"}],
                max_tokens=50,
            )
        except openai.APIStatusError as exc:
            return {"text": text, "summary": None, "error": f"HTTP {exc.status_code}"}
        return {"text": text, "summary": response.choices[0].message.content, "error": None}

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*map(one, texts)))

    return analyze_all


def answer_sync_client_in_threads() -> FanOut:
    """PASSED, ok: the sync client in worker threads (`asyncio.to_thread`), gathered."""
    client = OpenAI()

    def one(text: str) -> dict[str, Any]:
        try:
            response = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Summarize in one sentence: {text}"}],
            )
        except openai.OpenAIError as exc:
            return entry(text, error=str(exc))
        return entry(text, response.choices[0].message.content)

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(asyncio.to_thread(one, t) for t in texts))

    return analyze_all


def answer_async_backoff_retry() -> FanOut:
    """PASSED, ok: two retries with `await asyncio.sleep` backoff, then an error entry."""
    summarize = summarizer()

    async def one(text: str) -> dict[str, Any]:
        for attempt in range(3):
            try:
                return entry(text, await summarize(text))
            except openai.APIStatusError as exc:
                if attempt == 2:
                    return entry(text, error=f"{exc.status_code}: {exc.message}")
                await asyncio.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all


def answer_tasks_in_a_dict() -> FanOut:
    """PASSED, ok: tasks kept in a dict by index, then read back in order."""
    summarize = summarizer()

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        tasks = {i: asyncio.ensure_future(summarize(t)) for i, t in enumerate(texts)}
        await asyncio.wait(tasks.values())
        results = []
        for i, text in enumerate(texts):
            error = tasks[i].exception()
            results.append(
                entry(text, error=str(error)) if error else entry(text, tasks[i].result())
            )
        return results

    return analyze_all


def answer_generous_semaphore() -> FanOut:
    """PASSED, ok: a `Semaphore(10)`: above the number of texts, so all run at once."""
    summarize = summarizer()
    slots = asyncio.Semaphore(10)

    async def one(text: str) -> dict[str, Any]:
        async with slots:
            try:
                return entry(text, await summarize(text))
            except openai.OpenAIError as exc:
                return entry(text, error=str(exc))

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(one(t) for t in texts))

    return analyze_all
