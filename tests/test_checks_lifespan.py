"""The notebook 05 checker judges every answer of the corpus (tests/corpus/ex05_lifespan.py)
with its expected verdict and cause, by counting clients and TCP connections."""

from __future__ import annotations

import asyncio
import os
import re

import pytest
from corpus import Answer, answers
from corpus import ex05_lifespan as corpus
from fastapi import FastAPI
from mutation import ex05_lifespan as mutants05
from mutation.engine import Mutant, judge, mutants
from mutation.operators import CAPACITY_LIMITER_ONE, ONE_THREAD_EXECUTOR, THREADING_LOCK

import labsupport
from labsupport.checks import CheckResult, check_lifespan_client, lifespan
from labsupport.checks.lifespan import CAUSES

pytestmark = pytest.mark.usefixtures("offline_lab")


def check(app: FastAPI) -> CheckResult:
    async def check_then_clean_up() -> CheckResult:
        try:
            return await check_lifespan_client(app)
        finally:
            while corpus.LEFTOVERS:  # the sockets belong to this event loop: close them here
                await corpus.LEFTOVERS.pop().close()

    return asyncio.run(check_then_clean_up())


@pytest.mark.corpus
@pytest.mark.parametrize("answer", answers(corpus))
def test_the_corpus_answer_gets_its_verdict_and_cause(answer: Answer) -> None:
    result = check(answer.build())
    assert (result.passed, result.cause) == (answer.passed, answer.cause), str(result)
    assert result.cause in CAUSES
    assert str(result).startswith("✅ PASSED — " if answer.passed else "❌ NOT YET — ")
    if not answer.passed:
        assert result.hint, "a failed check says what to do"
    assert "OPENAI_BASE_URL" not in os.environ  # put back


def test_the_corpus_is_big_enough() -> None:
    verdicts = [param.values[0].passed for param in answers(corpus)]
    assert verdicts.count(False) >= 20 and verdicts.count(True) >= 9


def test_the_evidence_counts_clients_and_connections() -> None:
    text = str(check(corpus.answer_exit_stack_around_the_yield()))
    assert "the upstream got 5 calls over 1 TCP connection." in text
    assert "The app built 1 OpenAI client while the check ran, 1 of them at startup." in text
    assert "After shutdown: 0 of them not closed, 0 connections still open." in text
    per_request = check(corpus.answer_starter_client_per_request())
    assert "10 clients and 5 connections for 5 sequential requests" in per_request.summary


# The key words of each weak case's fix (issue 21): the cause alone is not enough, the hint
# must say what to do about it.
HINTS = {
    "sync_client_in_the_lifespan": ("AsyncOpenAI", "await"),
    "shutdown_on_event_beside_the_lifespan": ("lifespan", "after it for shutdown"),
    "startup_on_event_beside_the_lifespan": ("before `yield` for startup",),
    "close_without_await": ("await client.close()",),
    "create_without_await": ("await",),
    "time_sleep_to_be_polite": ("await asyncio.sleep",),
}


@pytest.mark.parametrize("name", list(HINTS))
def test_the_weak_cases_get_the_fix_in_their_hint(name: str) -> None:
    result = check(getattr(corpus, f"answer_{name}")())
    for words in HINTS[name]:
        assert words in (result.hint or ""), str(result)


def test_bad_arguments() -> None:
    result = asyncio.run(check_lifespan_client(FastAPI(), n=1))
    assert result.cause == "bad_input" and "n must be an int ≥ 2" in result.summary


# -- mutants: right answers rewritten into the lesson's mistakes (tests/mutation) ---------------

MUTATED = (
    "exit_stack_around_the_yield",
    "app_state_with_a_dependency",
    "global_dict_like_the_seed",
    "async_with_around_the_yield_on_app_state",
)
# The generic operators rewrite upstream calls the answer makes itself: the sync client's.
GENERIC_MUTATED = ("sync_client_in_a_def_endpoint", "shared_sync_client_through_to_thread")
GENERIC = (
    ONE_THREAD_EXECUTOR,
    CAPACITY_LIMITER_ONE,
    THREADING_LOCK.expecting("threading_primitive", "concurrency_limited"),
)


@pytest.mark.corpus
@pytest.mark.parametrize(
    "mutant",
    mutants(corpus, MUTATED, mutants05.OPERATORS) + mutants(corpus, GENERIC_MUTATED, GENERIC),
)
def test_the_mutant_is_refused_with_its_cause(
    mutant: Mutant, request: pytest.FixtureRequest
) -> None:
    judge(mutant, request.node, lambda build: check(build()))


# -- without sockets, as in a browser tab (the course's JupyterLite site) ---------------------


@pytest.mark.corpus
@pytest.mark.parametrize("answer", answers(corpus))
def test_without_sockets_the_answer_gets_the_same_verdict(
    answer: Answer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check's upstream in process, as in Pyodide: every verdict rests on what is still
    measured (clients built and closed, calls, the event loop), and no connection is claimed."""
    monkeypatch.setattr(lifespan, "NO_SOCKETS", True)
    result = check(answer.build())
    assert (result.passed, result.cause) == (answer.passed, answer.cause), str(result)
    said = str(result)
    assert re.search(r"\d+ (TCP )?connections?\b", said) is None, said
    if result.evidence:  # an app that failed to start has none
        assert "(TCP connections not counted: a browser tab has no sockets" in result.evidence[0]


def test_without_sockets_nor_the_lab_a_client_built_at_import_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without `lab.setup()`, the check's own mock answers the OpenAI API's base too (every mock
    does): a client built at import reaches it, and is still found to be built before start."""
    monkeypatch.setattr(lifespan, "NO_SOCKETS", True)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")  # the lab's placeholder is gone with it
    labsupport.teardown()
    result = check(corpus.answer_module_level_client())
    assert (result.passed, result.cause) == (False, "built_before_start"), str(result)
