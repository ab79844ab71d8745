"""The notebook 03 checker accepts a batch bounded by one shared semaphore and explains each
typical mistake: no bound, a semaphore created per call, sequential awaits, a bound below the
limit, and results out of order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openai import AsyncOpenAI

import labsupport
from labsupport.checks import CheckResult, check_bounded_batch

aclient: AsyncOpenAI


@pytest.fixture
def lab_latency() -> float:
    return 0.03


@pytest.fixture(autouse=True)
def shared_client(offline_lab: labsupport.MockUpstream) -> None:
    global aclient
    aclient = AsyncOpenAI()


async def summarize(text: str) -> str:
    response = await aclient.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize in 5 words: {text}"}],
        max_tokens=20,
    )
    return response.choices[0].message.content or ""


def check(fn: Any, limit: int = 5) -> CheckResult:
    return asyncio.run(check_bounded_batch(fn, limit))


def test_one_shared_semaphore_passes() -> None:
    async def summarize_all(texts: list[str]) -> list[str]:
        semaphore = asyncio.Semaphore(5)

        async def one(text: str) -> str:
            async with semaphore:
                return await summarize(text)

        return await asyncio.gather(*(one(t) for t in texts))

    result = check(summarize_all)
    assert result.passed, str(result)
    text = str(result)
    assert "at most 5 calls in flight" in text and "0 × 429" in text
    assert "⌈20 / 5⌉ = 4 waves" in text


def test_a_module_level_semaphore_passes_with_another_limit() -> None:
    semaphore = asyncio.Semaphore(3)

    async def one(text: str) -> str:
        async with semaphore:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    result = check(summarize_all, limit=3)
    assert result.passed, str(result)


def test_no_bound_is_rejected_with_its_429s() -> None:
    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(summarize(t) for t in texts))

    result = check(summarize_all)
    assert not result.passed
    text = str(result)
    assert result.summary == "the batch had 20 calls in flight at once, more than the limit of 5."
    assert "refused 15 calls with 429 on the first try" in text
    assert "raised RateLimitError" in text
    assert "ONE `asyncio.Semaphore(5)` shared" in (result.hint or "")


def test_a_semaphore_created_per_call_is_rejected_and_named() -> None:
    async def summarize_all(texts: list[str]) -> list[str]:
        async def one(text: str) -> str:
            async with asyncio.Semaphore(5):  # a new semaphore for every call: bounds nothing
                return await summarize(text)

        return await asyncio.gather(*(one(t) for t in texts))

    result = check(summarize_all)
    assert not result.passed
    assert (
        "20 calls in flight" in result.summary and "although it uses a semaphore" in result.summary
    )
    assert "bounds nothing" in (result.hint or "")


def test_errors_kept_as_values_still_count_as_refused() -> None:
    async def summarize_all(texts: list[str]) -> list[Any]:
        return await asyncio.gather(*(summarize(t) for t in texts), return_exceptions=True)

    result = check(summarize_all)
    assert not result.passed
    assert "refused 15 calls with 429" in str(result)
    assert "returned, with 15 summaries missing" in str(result)


def test_sequential_awaits_are_rejected() -> None:
    async def summarize_all(texts: list[str]) -> list[str]:
        return [await summarize(t) for t in texts]

    result = check(summarize_all)
    assert not result.passed
    assert "one after another" in result.summary
    assert "at most 1 call in flight" in str(result)


def test_a_bound_below_the_limit_is_explained() -> None:
    semaphore = asyncio.Semaphore(2)

    async def one(text: str) -> str:
        async with semaphore:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    result = check(summarize_all)
    assert not result.passed and "at most 2 calls ran at once" in result.summary


def test_results_in_completion_order_are_rejected() -> None:
    semaphore = asyncio.Semaphore(5)

    async def one(text: str) -> str:
        async with semaphore:
            return await summarize(text)

    async def summarize_all(texts: list[str]) -> list[str]:
        results = await asyncio.gather(*(one(t) for t in texts))
        return results[1:] + results[:1]  # what collecting in completion order can look like

    result = check(summarize_all)
    assert not result.passed and "result 1 is not the summary of text 1" in result.summary


def test_the_upstream_configuration_is_restored() -> None:
    upstream = labsupport.current_upstream()
    assert isinstance(upstream, labsupport.MockUpstream)
    upstream.configure(latency=0.02, faults=[labsupport.Fault.on_call(999, status=500)])
    before = upstream.settings

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(summarize(t) for t in texts))

    assert not check(summarize_all).passed
    assert upstream.settings == before


def test_bad_arguments() -> None:
    async def summarize_all(texts: list[str]) -> list[str]:
        return texts

    with pytest.raises(ValueError, match="limit must be an int from 2 to 50"):
        check(summarize_all, limit=0)
    with pytest.raises(TypeError, match="fn must be an async function"):
        check(None)
