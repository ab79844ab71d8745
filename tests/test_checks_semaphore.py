"""The notebook 03 checker judges every answer of the corpus (tests/corpus/ex03_semaphore.py)
with its expected verdict and cause: each way of having too many calls in flight gets its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from corpus import Answer, answers, judged
from corpus import ex03_semaphore as corpus
from mutation import operators as ops
from mutation.engine import Mutant, judge, mutants

import labsupport
from labsupport.checks import CheckResult, check_bounded_batch
from labsupport.checks.semaphore import CAUSES

pytestmark = pytest.mark.usefixtures("offline_lab")


@pytest.fixture
def lab_latency() -> float:
    return 0.05  # as in notebook 03


def check(fn: Any, limit: int = 5) -> CheckResult:
    """The check's verdict; the function (and its client) is then freed inside this test. A
    client used from several event loops leaves connections whose loop is closed: freeing them
    reports "Event loop is closed" as an unraisable exception, the answer's own mess."""
    result: CheckResult = judged(check_bounded_batch(fn, limit), fn)
    return result


@pytest.mark.corpus
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
    assert verdicts.count(False) >= 21 and verdicts.count(True) >= 10


def test_a_pass_shows_its_counts() -> None:
    text = str(check(corpus.answer_semaphore_per_batch()))
    assert "at most 5 calls in flight" in text and "0 × 429" in text
    assert "⌈20 / 5⌉ = 4 waves" in text
    assert "on this check's 20 texts, exactly 5 calls were in flight at a time" in text


def test_no_bound_shows_the_429s() -> None:
    result = check(corpus.answer_starter_unbounded())
    assert result.summary == "the batch had 20 calls in flight at once, more than the limit of 5."
    assert "refused 15 calls with 429 on the first try" in str(result)
    assert "raised RateLimitError" in str(result)


def test_the_kinds_of_semaphore_are_told_apart() -> None:
    per_call = check(corpus.answer_semaphore_per_call())
    assert "your code built 20 semaphores, one per call" in per_call.summary
    above = check(corpus.answer_per_batch_bound_of_ten())
    assert "the semaphore (built per batch) has 10 slots" in above.summary
    released = check(corpus.answer_coroutine_created_under_the_semaphore())
    assert "a semaphore of 5 slots was acquired" in released.summary
    assert "inside the `async with semaphore:` block" in (released.hint or "")


def test_another_limit() -> None:
    semaphore = asyncio.Semaphore(3)
    summarize = corpus.summarizer()

    async def one(text: str) -> str:
        async with semaphore:
            summary: str = await summarize(text)
            return summary

    async def summarize_all(texts: list[str]) -> list[str]:
        return await asyncio.gather(*(one(t) for t in texts))

    assert check(summarize_all, limit=3).passed


def test_the_upstream_settings_are_restored_even_after_a_deadlock() -> None:
    upstream = labsupport.current_upstream()
    assert isinstance(upstream, labsupport.MockUpstream)
    upstream.configure(latency=0.02, faults=[labsupport.Fault.on_call(999, status=500)])
    before = upstream.settings
    stopped = check(corpus.answer_threading_semaphore())
    assert stopped.cause == "threading_primitive"
    assert "inside threading.Semaphore.acquire()" in stopped.summary
    assert upstream.settings == before
    assert check(corpus.answer_five_queue_workers()).passed  # the next cell answers


def test_bad_arguments() -> None:
    async def summarize_all(texts: list[str]) -> list[str]:
        return texts

    result = check(summarize_all, limit=0)
    assert result.cause == "bad_input" and "limit must be an int from 2 to 50" in result.summary
    result = check(None)
    assert result.cause == "bad_input" and "`async def` function" in result.summary


# -- mutants of right answers: each must be refused with the cause its operator implies --------

MUTATED = ("solution_as_in_the_notebook", "inline_client_call_under_semaphore")
"""Right answers the operators rewrite: the notebook's solution (the call in a helper), and one
with the call inline on a client of its own. (The pool-bound answer is left out: `asyncio.run`
per call in threads, on a pool capped at 5 connections, leaves its threads waiting for good for
connections of closed loops, and the test process cannot exit.)"""

OPERATORS = (
    ops.ASYNCIO_LOCK.expecting("sequential"),
    ops.SEMAPHORE_ONE.expecting("sequential"),
    ops.THREADING_LOCK.expecting("threading_primitive", "sequential"),
    ops.ONE_THREAD_EXECUTOR.expecting("sequential"),
    ops.CAPACITY_LIMITER_ONE.expecting("sequential"),
    ops.BLOCKING_SLEEP.expecting("blocked_loop"),
    ops.BLOCKING_IO.expecting("blocked_loop"),
    ops.CLOSE_SHARED_CLIENT.expecting("client_closed"),
    ops.CONSTANT_REPLY.expecting("wrong_summary"),
    # A dropped task runs its call after the semaphore was released, unbounded, and the function
    # answers constants. Which of the two the check meets first depends on when the loop runs the
    # dropped tasks: when they start before the function returns, the calls in flight (judged
    # before the replies) are unbounded; when the function returns first, the upstream saw at most
    # one call and the constants are refused as wrong summaries (seen in a CI run under load).
    # Once the check timed out instead: the dropped tasks' calls outlive the function.
    ops.DROP_TASK_REFERENCE.expecting(
        "released_before_await", "no_bound", "wrong_summary", "timed_out"
    ),
    ops.ASYNCIO_RUN_IN_THREAD.expecting("fails_over_tcp"),
    ops.REORDER_RESULTS.expecting("wrong_order"),
)


@pytest.mark.corpus
@pytest.mark.parametrize("mutant", mutants(corpus, MUTATED, OPERATORS))
def test_the_mutant_is_refused(mutant: Mutant, request: pytest.FixtureRequest) -> None:
    result = judge(mutant, request.node, lambda build: check(build()))
    assert result.hint, "a failed check says what to do"
