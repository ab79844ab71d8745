"""The notebook 02 checker judges every answer of the corpus (tests/corpus/ex02_gather.py) with
its expected verdict and cause, and its evidence says what it measured."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from corpus import Answer, answers
from corpus import ex02_gather as corpus

import labsupport
from labsupport.checks import CheckResult, check_parallel_fanout
from labsupport.checks.gather import CAUSES

pytestmark = pytest.mark.usefixtures("offline_lab")


@pytest.fixture
def lab_latency() -> float:
    return 0.02


def check(fn: Any) -> CheckResult:
    return asyncio.run(check_parallel_fanout(fn))


@pytest.mark.parametrize("answer", answers(corpus))
def test_the_corpus_answer_gets_its_verdict_and_cause(answer: Answer) -> None:
    result = check(answer.build())
    assert (result.passed, result.cause) == (answer.passed, answer.cause), str(result)
    assert result.cause in CAUSES
    assert str(result).startswith("✅ PASSED — " if answer.passed else "❌ NOT YET — ")
    if not answer.passed:
        assert result.hint, "a failed check says what to do"


def test_the_corpus_is_big_enough() -> None:
    verdicts = [param.values[0].passed for param in answers(corpus)]
    assert verdicts.count(False) >= 12 and verdicts.count(True) >= 4


def test_a_pass_says_what_was_tested() -> None:
    text = str(check(corpus.answer_return_exceptions_converted()))
    assert "4 results and 1 error entry, in the texts' order" in text
    assert "at most 5 calls in flight" in text
    assert "in this check's two runs of 5 texts" in text


def test_the_starting_point_names_both_mistakes_with_counts() -> None:
    result = check(corpus.answer_starter())
    assert "one after another" in result.summary and "lost every other result" in result.summary
    # Texts 1 and 2 were answered before the loop died on text 3; text 3 was tried 3 times.
    assert "the upstream saw 3 attempts at it, the SDK's retries included" in str(result)
    assert "had answered 2 of the other 4 texts" in str(result)


def test_a_gather_not_awaited_says_await() -> None:
    result = check(corpus.answer_gather_not_awaited())
    assert "_GatheringFuture" in result.summary
    assert "add `await`" in (result.hint or "")


def test_the_upstream_settings_are_restored() -> None:
    upstream = labsupport.current_upstream()
    assert isinstance(upstream, labsupport.MockUpstream)
    upstream.configure(latency=0.02, faults=[labsupport.Fault.on_call(99, status=500)])
    upstream.configure(rate_limit=labsupport.RateLimit(max_concurrent=50))
    before = upstream.settings
    assert check(corpus.answer_taskgroup_with_handling()).passed
    assert not check(corpus.answer_threading_lock_per_call()).passed  # stopped by the watchdog
    assert upstream.settings == before


def test_bad_arguments() -> None:
    result = asyncio.run(check_parallel_fanout("analyze_all"))  # type: ignore[arg-type]
    assert result.cause == "bad_input" and "`async def` function" in result.summary
