"""The notebook 02 checker judges every answer of the corpus (tests/corpus/ex02_gather.py) with
its expected verdict and cause, and its evidence says what it measured."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from corpus import Answer, answers, judged
from corpus import ex02_gather as corpus
from mutation import operators as ops
from mutation.engine import Mutant, judge, mutants

import labsupport
from labsupport.checks import CheckResult, check_parallel_fanout
from labsupport.checks.gather import CAUSES

pytestmark = pytest.mark.usefixtures("offline_lab")


@pytest.fixture
def lab_latency() -> float:
    # 0.1 in notebook 02. At 0.02 s, on a loaded machine, worker threads started 5 calls more
    # than a latency apart, twice in a row (an answer with a thread per call judged
    # "not_all_at_once" in CI): the threads' start, not the answer, decided.
    return 0.05


def check(fn: Any) -> CheckResult:
    """The check's verdict; the function (and its client) is then freed inside this test. A
    client used from several event loops leaves connections whose loop is closed: freeing them
    reports "Event loop is closed" as an unraisable exception, the answer's own mess."""
    result: CheckResult = judged(check_parallel_fanout(fn), fn)
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
    assert verdicts.count(False) >= 27 and verdicts.count(True) >= 11


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


# -- mutants of right answers: each must be refused with the cause its operator implies --------

MUTATED = ("solution_as_in_the_notebook", "inline_client_call", "sync_client_in_threads")
"""Right answers the operators rewrite: the notebook's solution (the call in a helper), one with
the call inline on a client of its own, and the sync client in worker threads."""

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
    ops.DROP_TASK_REFERENCE.expecting("wrong_summary"),
    # A loop per call, in threads: the connections break over TCP, and the default thread pool
    # (min(32, CPUs + 4) threads, slow to start on a busy machine) may already cap the overlap.
    ops.ASYNCIO_RUN_IN_THREAD.expecting("fails_over_tcp", "not_all_at_once"),
    ops.REORDER_RESULTS.expecting("wrong_order"),
)


@pytest.mark.corpus
@pytest.mark.parametrize("mutant", mutants(corpus, MUTATED, OPERATORS))
def test_the_mutant_is_refused(mutant: Mutant, request: pytest.FixtureRequest) -> None:
    result = judge(mutant, request.node, lambda build: check(build()))
    assert result.hint, "a failed check says what to do"
