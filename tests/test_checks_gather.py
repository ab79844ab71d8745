"""The notebook 02 checker accepts parallel fan-outs that survive a failure and explains each
typical mistake: awaiting one by one, a bare gather, a TaskGroup without per-task handling,
and `return_exceptions=True` without turning the exception into an entry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openai import AsyncOpenAI

import labsupport
from labsupport.checks import CheckResult, check_parallel_fanout

aclient: AsyncOpenAI


@pytest.fixture(autouse=True)
def shared_client(offline_lab: labsupport.MockUpstream) -> None:
    global aclient
    aclient = AsyncOpenAI()


async def summarize(text: str) -> str:
    response = await aclient.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summarize: {text}"}]
    )
    return response.choices[0].message.content or ""


async def analyze_one(text: str) -> dict[str, Any]:
    try:
        return {"text": text[:30], "summary": await summarize(text), "error": None}
    except Exception as exc:
        return {"text": text[:30], "summary": None, "error": str(exc)}


def check(fn: Any) -> CheckResult:
    return asyncio.run(check_parallel_fanout(fn))


def test_gather_with_per_task_error_handling_passes() -> None:
    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(analyze_one(t) for t in texts))

    result = check(analyze_all)
    assert result.passed, str(result)
    assert "4 results and 1 error entry, in the texts' order" in str(result)
    assert "at most 5 calls in flight" in str(result)


def test_return_exceptions_turned_into_entries_passes() -> None:
    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        replies = await asyncio.gather(*(summarize(t) for t in texts), return_exceptions=True)
        return [
            {"summary": None, "error": str(r)}
            if isinstance(r, Exception)
            else {"summary": r, "error": None}
            for r in replies
        ]

    assert check(analyze_all).passed


def test_taskgroup_with_per_task_error_handling_passes() -> None:
    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(analyze_one(t)) for t in texts]
        return [task.result() for task in tasks]

    assert check(analyze_all).passed


def test_sequential_awaits_are_rejected_even_when_they_survive_the_failure() -> None:
    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return [await analyze_one(t) for t in texts]

    result = check(analyze_all)
    assert not result.passed
    assert result.summary == "the texts were analyzed one after another (≈ one latency per text)."
    assert "at most 1 call in flight" in str(result)
    assert "asyncio.gather" in (result.hint or "")


def test_the_exercise_starting_point_names_both_mistakes() -> None:
    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        results = []
        for text in texts:
            results.append({"text": text, "summary": await summarize(text), "error": None})
        return results

    result = check(analyze_all)
    assert not result.passed
    assert "one after another" in result.summary
    assert "lost every other result" in result.summary
    # Texts 1 and 2 were answered before the loop died on text 3; text 3 was tried 3 times.
    assert "the upstream saw 3 attempts at it, the SDK's retries included" in str(result)
    assert "had answered 2 of the other 4 texts" in str(result)


def test_a_bare_gather_is_rejected_because_the_failure_loses_every_result() -> None:
    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        summaries = await asyncio.gather(*(summarize(t) for t in texts))
        return [{"summary": s, "error": None} for s in summaries]

    result = check(analyze_all)
    assert not result.passed
    assert (
        result.summary == "one failing call propagated its exception and lost every other result."
    )
    assert "raised InternalServerError" in str(result)
    assert "had answered 4 of the other 4 texts, but the caller got none" in str(result)
    assert "return_exceptions=True" in (result.hint or "")


def test_return_exceptions_left_as_exception_objects_is_named() -> None:
    async def analyze_all(texts: list[str]) -> list[Any]:
        replies = await asyncio.gather(*(summarize(t) for t in texts), return_exceptions=True)
        return [r if isinstance(r, Exception) else {"summary": r, "error": None} for r in replies]

    result = check(analyze_all)
    assert not result.passed
    assert "the entry for text 3 is the exception object itself (InternalServerError)" in str(
        result
    )


def test_a_taskgroup_without_per_task_handling_is_named() -> None:
    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(summarize(t)) for t in texts]
        return [{"summary": t.result(), "error": None} for t in tasks]

    result = check(analyze_all)
    assert not result.passed and "ExceptionGroup" in result.summary


def test_results_out_of_order_are_rejected() -> None:
    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        results = await asyncio.gather(*(analyze_one(t) for t in texts))
        return results[::-1]

    result = check(analyze_all)
    assert not result.passed and "does not hold the reply to text 1" in result.summary


def test_coroutines_returned_without_await_are_named() -> None:
    async def analyze_all(texts: list[str]) -> list[Any]:
        return [analyze_one(t) for t in texts]

    result = check(analyze_all)
    assert not result.passed and "never awaited" in result.summary


def test_a_sync_function_is_explained_not_raised() -> None:
    def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return [{"summary": t, "error": None} for t in texts]

    result = check(analyze_all)
    assert not result.passed and "declare it with `async def`" in result.summary


def test_the_upstream_configuration_is_restored() -> None:
    upstream = labsupport.current_upstream()
    assert isinstance(upstream, labsupport.MockUpstream)
    limit = labsupport.RateLimit(max_concurrent=50)
    upstream.configure(latency=0.02, faults=[labsupport.Fault.on_call(99, status=500)])
    upstream.configure(rate_limit=limit)
    before = upstream.settings

    async def analyze_all(texts: list[str]) -> list[dict[str, Any]]:
        return await asyncio.gather(*(analyze_one(t) for t in texts))

    assert check(analyze_all).passed
    assert upstream.settings == before


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="fn must be an async function"):
        asyncio.run(check_parallel_fanout("analyze_all"))  # type: ignore[arg-type]
