"""The notebook 05 checker judges every answer of the corpus (tests/corpus/ex05_lifespan.py)
with its expected verdict and cause, by counting clients and TCP connections."""

from __future__ import annotations

import asyncio
import os

import pytest
from corpus import Answer, answers
from corpus import ex05_lifespan as corpus
from fastapi import FastAPI

from labsupport.checks import CheckResult, check_lifespan_client
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
    assert verdicts.count(False) >= 12 and verdicts.count(True) >= 4


def test_the_evidence_counts_clients_and_connections() -> None:
    text = str(check(corpus.answer_exit_stack_around_the_yield()))
    assert "the upstream got 5 calls over 1 TCP connection." in text
    assert "The app built 1 OpenAI client while the check ran, 1 of them at startup." in text
    assert "After shutdown: 0 of them not closed, 0 connections still open." in text
    per_request = check(corpus.answer_starter_client_per_request())
    assert "5 clients and 5 connections for 5 sequential requests" in per_request.summary


def test_bad_arguments() -> None:
    result = asyncio.run(check_lifespan_client(FastAPI(), n=1))
    assert result.cause == "bad_input" and "n must be an int ≥ 2" in result.summary
