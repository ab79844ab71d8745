"""The notebook 08 checker judges every answer of the corpus (tests/corpus/ex08_streaming.py)
with its expected verdict and cause: a buffered answer, a sync generator's pool threads, a relay
that keeps reading after its client left, audits too early, missing or without usage."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from corpus import Answer, answers
from corpus import ex08_streaming as corpus
from fastapi import FastAPI

from labsupport.checks import CheckResult, check_streaming_endpoint
from labsupport.checks.streaming import CAUSES, _kept_reading
from labsupport.upstream.stats import UpstreamCall, UpstreamStats

pytestmark = pytest.mark.usefixtures("offline_lab")

N = 6


def check(app: FastAPI, audit: list[dict[str, Any]]) -> CheckResult:
    return asyncio.run(check_streaming_endpoint(app, lambda: audit, n=N))


@pytest.mark.corpus
@pytest.mark.parametrize("answer", answers(corpus))
def test_the_corpus_answer_gets_its_verdict_and_cause(answer: Answer) -> None:
    audit: list[dict[str, Any]] = []
    result = check(answer.build(audit), audit)
    assert (result.passed, result.cause) == (answer.passed, answer.cause), str(result)
    assert result.cause in CAUSES
    assert str(result).startswith("✅ PASSED — " if answer.passed else "❌ NOT YET — ")
    if not answer.passed:
        assert result.hint, "a failed check says what to do"


def test_the_corpus_is_big_enough() -> None:
    verdicts = [param.values[0].passed for param in answers(corpus)]
    assert verdicts.count(False) >= 10 and verdicts.count(True) >= 3


def test_the_evidence_counts_tokens_after_leaving_and_rows() -> None:
    audit: list[dict[str, Any]] = []
    text = str(check(corpus.answer_event_source_with_usage(audit), audit))
    assert f"Audit rows written: {N + 1} for {N + 1} requests." in text
    assert "the upstream's stream was abandoned, 0 tokens sent more than 100 ms" in text
    audit = []
    trap = check(corpus.answer_producer_task_keeps_reading(audit), audit)
    assert "the upstream's stream was read to the end" in str(trap)


def test_a_stream_left_neither_finished_nor_abandoned_was_not_read_on() -> None:
    """The leaver's stream as FastAPI's SSE can leave it (the relay suspended at its `yield`,
    never resumed): still open, no token after the client left. Not a relay that read on."""

    def stats(*calls: UpstreamCall) -> UpstreamStats:
        return UpstreamStats(len(calls), 0, 1, {}, calls)

    tokens = (1.0, 1.02, 1.04)
    open_call = UpstreamCall(1, 0.9, 0.9, None, "async", "p", tokens)
    finished = UpstreamCall(1, 0.9, 2.0, 200, "async", "p", tokens)
    abandoned = UpstreamCall(1, 0.9, 1.1, 200, "async", "p", tokens, abandoned=True)
    assert not _kept_reading(stats(open_call), tokens_after=0)
    assert _kept_reading(stats(open_call), tokens_after=5)  # still reading, on a slow machine
    assert _kept_reading(stats(finished), tokens_after=0)
    assert not _kept_reading(stats(abandoned), tokens_after=0)


def test_bad_arguments() -> None:
    app = FastAPI()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"audit_rows": 3}, "a function"),
        ({"audit_rows": lambda: [], "path": "chat"}, "path must be a URL path"),
        ({"audit_rows": lambda: [], "n": 1}, "n must be"),
    ]
    for kwargs, words in cases:
        result = asyncio.run(check_streaming_endpoint(app, **kwargs))
        assert result.cause == "bad_input" and words in result.summary, result
