"""The notebook 01 checker judges every answer of the corpus (tests/corpus/ex01_async_endpoint.py)
with its expected verdict and cause, and its evidence says what it measured."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from corpus import Answer, answers, judged
from corpus import ex01_async_endpoint as corpus
from corpus.ex01_async_endpoint import MODEL, ChatRequest, messages
from fastapi import FastAPI
from mutation import operators as ops
from mutation.engine import Mutant, judge, mutants
from openai import AsyncOpenAI

from labsupport.checks import CheckResult, check_async_endpoint
from labsupport.checks.async_client import CAUSES

pytestmark = pytest.mark.usefixtures("offline_lab")


@pytest.fixture
def lab_latency() -> float:
    return 0.1  # 4 requests at a time (20 in 5 waves) must stand out from one wave


def check(app: FastAPI) -> CheckResult:
    """The check's verdict; the app is then freed inside this test. An app that used one
    connection pool from several event loops leaves connections whose loop is closed: freeing
    them reports "Event loop is closed" as an unraisable exception, the answer's own mess, not
    the next test's."""
    result: CheckResult = judged(check_async_endpoint(app), app)
    return result


@pytest.mark.corpus
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
    assert verdicts.count(False) >= 23 and verdicts.count(True) >= 13


def test_the_evidence_names_what_was_measured() -> None:
    text = str(check(corpus.answer_lifespan_client_in_app_state()))
    assert "20 concurrent requests took" in text and "the time of a reference app" in text
    assert "from the async client, overlapping in time" in text
    assert "The app built 1 OpenAI client while the check ran." in text
    assert "your app answered this check's two bursts of 20 concurrent requests with the " in text
    assert "upstream's own replies, its calls overlapping at the upstream" in text
    assert "Served by uvicorn with the upstream over real TCP, two bursts: 20 of 20" in text


def test_a_client_per_request_is_counted_not_timed() -> None:
    result = check(corpus.answer_async_client_per_request())
    # One burst of 20, or two when the first was fast enough to be worth a second.
    assert re.search(
        r"the app built a new OpenAI client for each request: (20|40) clients for "
        r"\1 requests",
        result.summary,
    ), result.summary


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


def closes_its_client_and_is_slow_once(*, in_lifespan: bool) -> FastAPI:
    """An app that closes its shared client after each call (the in-process mock still answers
    a closed client's calls already under way), and whose first request blocks the loop once,
    as a busy machine would."""
    shared: list[AsyncOpenAI] = [] if in_lifespan else [AsyncOpenAI()]
    stalled: list[bool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if in_lifespan:
            shared[:] = [AsyncOpenAI()]  # each serving opens its own
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        if not stalled:
            stalled.append(True)
            time.sleep(1.5)
        client = shared[0]
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        await client.close()  # the mistake
        return {"response": response.choices[0].message.content}

    return app


@pytest.mark.parametrize("in_lifespan", [False, True], ids=["module_client", "lifespan_client"])
def test_a_first_burst_slowed_by_the_machine_still_gets_its_burst_after_the_pause(
    in_lifespan: bool,
) -> None:
    """Under load (Python 3.14, `make pythons`) a first burst was slow, so the burst after the
    pause was skipped; the second look (served again: a new client from the lifespan) found the
    app fast, and it passed with neither a burst after a pause nor TCP measured. The second look
    is a later burst: if it failed, that is the verdict; if it did not, the burst after the pause
    and the TCP run are measured before any pass."""
    result = check(closes_its_client_and_is_slow_once(in_lifespan=in_lifespan))
    assert (result.passed, result.cause) == (False, "client_closed"), str(result)
    assert "after a pause, although the first burst worked" in result.summary


def test_bad_arguments() -> None:
    result = asyncio.run(check_async_endpoint(FastAPI(), n=1))
    assert result.cause == "bad_input" and "n must be an int ≥ 2" in result.summary


# -- mutants of right answers: each must be refused with the cause its operator implies --------

MUTATED = (
    "solution_as_in_the_notebook",
    "lifespan_client_in_app_state",
    "def_endpoint_with_the_sync_client",
    "to_thread",
)
"""Right answers the operators rewrite: the notebook's solution, a lifespan client, a `def`
endpoint with the sync client (sync sites), and `asyncio.to_thread` (a thread handoff)."""

OPERATORS = (
    ops.ASYNCIO_LOCK.expecting("concurrency_limited"),
    ops.SEMAPHORE_ONE.expecting("concurrency_limited"),
    # On the loop a threading.Lock deadlocks the second request; in worker threads it serialises.
    ops.THREADING_LOCK.expecting("threading_primitive", "concurrency_limited"),
    ops.ONE_THREAD_EXECUTOR.expecting("concurrency_limited"),
    ops.CAPACITY_LIMITER_ONE.expecting("concurrency_limited"),
    ops.BLOCKING_SLEEP.expecting("blocked_loop"),
    ops.BLOCKING_IO.expecting("blocked_loop"),
    ops.CLOSE_SHARED_CLIENT.expecting("client_closed"),
    ops.CONSTANT_REPLY.expecting("wrong_reply"),
    ops.DROP_TASK_REFERENCE.expecting("wrong_reply"),
    ops.ASYNCIO_RUN_IN_THREAD.expecting("fails_over_tcp"),
    ops.REORDER_RESULTS.expecting("wrong_reply"),
)


@pytest.mark.corpus
@pytest.mark.parametrize("mutant", mutants(corpus, MUTATED, OPERATORS))
def test_the_mutant_is_refused(mutant: Mutant, request: pytest.FixtureRequest) -> None:
    result = judge(mutant, request.node, lambda build: check(build()))
    assert result.hint, "a failed check says what to do"
