"""The notebook 01 checker judges every answer of the corpus (tests/corpus/ex01_async_endpoint.py)
with its expected verdict and cause, and its evidence says what it measured."""

from __future__ import annotations

import asyncio

import pytest
from corpus import Answer, answers
from corpus import ex01_async_endpoint as corpus
from fastapi import FastAPI

from labsupport.checks import CheckResult, check_async_endpoint
from labsupport.checks.async_client import CAUSES

pytestmark = pytest.mark.usefixtures("offline_lab")


@pytest.fixture
def lab_latency() -> float:
    return 0.1  # 4 requests at a time (20 in 5 waves) must stand out from one wave


def check(app: FastAPI) -> CheckResult:
    return asyncio.run(check_async_endpoint(app))


@pytest.mark.parametrize("answer", answers(corpus))
def test_the_corpus_answer_gets_its_verdict_and_cause(answer: Answer) -> None:
    result = check(answer.build())
    assert (result.passed, result.cause) == (answer.passed, answer.cause), str(result)
    assert result.cause in CAUSES
    text = str(result)
    assert text.startswith("✅ PASSED — " if answer.passed else "❌ NOT YET — ")
    if not answer.passed:
        assert result.hint, "a failed check says what to do"


def test_the_corpus_is_big_enough() -> None:
    verdicts = [param.values[0].passed for param in answers(corpus)]
    assert verdicts.count(False) >= 12 and verdicts.count(True) >= 4


def test_the_evidence_names_what_was_measured() -> None:
    text = str(check(corpus.answer_lifespan_client_in_app_state()))
    assert "20 concurrent requests took" in text and "the time of a reference app" in text
    assert "from the async client, overlapping in time" in text
    assert "The app built 1 OpenAI client while the check ran." in text
    assert "your app answered this check's 20 concurrent requests together" in text


def test_a_client_per_request_is_counted_not_timed() -> None:
    result = check(corpus.answer_async_client_per_request())
    assert "20 clients for 20 requests" in result.summary


def test_the_semaphore_of_four_names_the_calls_in_flight() -> None:
    result = check(corpus.answer_asyncio_semaphore_of_four())
    assert "let at most 4 of the 20 requests reach the upstream at once" in result.summary


def test_a_deadlock_is_stopped_named_and_the_next_check_passes() -> None:
    blocked = check(corpus.answer_threading_lock_around_the_await())
    assert blocked.cause == "threading_primitive"
    assert "inside threading.Lock.__enter__()" in blocked.summary
    assert "line" in blocked.summary and "with lock:" in blocked.summary
    assert "asyncio.Lock" in (blocked.hint or "")
    assert check(corpus.answer_to_thread()).passed  # the process is fine afterwards


def test_bad_arguments() -> None:
    result = asyncio.run(check_async_endpoint(FastAPI(), n=1))
    assert result.cause == "bad_input" and "n must be an int ≥ 2" in result.summary
