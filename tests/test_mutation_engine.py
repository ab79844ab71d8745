"""The mutation engine (tests/mutation): an operator rewrites a right answer into a working
mutant that behaves as the operator says; an operator with nothing to rewrite is reported "not
applicable", never counted as refused; judge() records and asserts."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest
from corpus import ex01_async_endpoint, ex02_gather
from mutation.engine import PROPERTY, Mutant, judge, mutant, mutants
from mutation.operators import (
    ASYNCIO_LOCK,
    CLOSE_SHARED_CLIENT,
    CONSTANT,
    CONSTANT_REPLY,
    GENERIC,
    ONE_THREAD_EXECUTOR,
    REORDER_RESULTS,
    SEMAPHORE_ONE,
)

import labsupport

TEXTS = ["Ticket 1: refund.", "Ticket 2: login.", "Ticket 3: invoice.", "Ticket 4: crash."]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    cause: str


class Item:
    """The part of a pytest item judge() uses."""

    def __init__(self) -> None:
        self.user_properties: list[tuple[str, object]] = []


def run(made: Mutant) -> list[object]:
    assert made.build is not None
    return asyncio.run(made.build()(TEXTS))


def test_an_operator_rewrites_the_upstream_call_and_names_the_state() -> None:
    made = mutant(ex01_async_endpoint, "lifespan_client_in_app_state", ASYNCIO_LOCK)
    assert made.applicable and made.id == "lifespan_client_in_app_state-asyncio_lock"
    assert "__mutation__ = __mutation_state__()" in made.source
    assert "await __mutation__.awaitable(http.app.state.openai.chat.completions.create(" in (
        made.source
    )
    assert made.build is not None and made.build.__doc__.startswith("NOT YET, concurrency_limited")


def test_a_sync_site_goes_through_the_executor() -> None:
    made = mutant(ex01_async_endpoint, "def_endpoint_with_the_sync_client", ONE_THREAD_EXECUTOR)
    assert "__mutation__.sync(lambda: client.chat.completions.create(" in made.source


def test_close_the_client_names_the_client_the_call_goes_through() -> None:
    made = mutant(ex01_async_endpoint, "client_from_a_dependency_with_options", CLOSE_SHARED_CLIENT)
    assert "__mutation__.awaitable(client.with_options(timeout=30), client.with_options(" in (
        made.source
    )


@pytest.mark.usefixtures("offline_lab")
def test_a_serialised_mutant_lets_one_call_through_at_a_time(
    offline_lab: labsupport.MockUpstream,
) -> None:
    run(mutant(ex02_gather, "return_exceptions_converted", REORDER_RESULTS))
    assert offline_lab.stats.max_in_flight == len(TEXTS)  # the original's overlap, kept
    offline_lab.reset()
    run(mutant(ex02_gather, "return_exceptions_converted", SEMAPHORE_ONE))
    assert offline_lab.stats.max_in_flight == 1


@pytest.mark.usefixtures("offline_lab")
def test_reorder_and_constant_change_the_results() -> None:
    reordered = run(mutant(ex02_gather, "return_exceptions_converted", REORDER_RESULTS))
    assert [entry["text"] for entry in reordered] == TEXTS[::-1]  # type: ignore[index]
    constant = run(mutant(ex02_gather, "return_exceptions_converted", CONSTANT_REPLY))
    assert {entry["summary"] for entry in constant} == {CONSTANT}  # type: ignore[index]


def test_not_applicable_is_reported_and_skipped_never_refused() -> None:
    made = mutant(ex01_async_endpoint, "to_thread", REORDER_RESULTS)
    assert not made.applicable and "not a function" in made.reason
    helper_only = mutant(ex02_gather, "return_exceptions_converted", CLOSE_SHARED_CLIENT)
    assert not helper_only.applicable and "helper" in helper_only.reason
    item = Item()
    with pytest.raises(pytest.skip.Exception, match="not applicable"):
        judge(made, item, lambda build: Verdict(False, "concurrency_limited"))  # type: ignore[arg-type]
    ((key, value),) = item.user_properties
    assert key == PROPERTY and json.loads(value)["applicable"] is False


def test_judge_fails_an_accepted_mutant_and_a_wrong_cause() -> None:
    made = mutant(ex01_async_endpoint, "lifespan_client_in_app_state", ASYNCIO_LOCK)
    with pytest.raises(AssertionError, match="was accepted"):
        judge(made, Item(), lambda build: Verdict(True, "ok"))  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="expected one of"):
        judge(made, Item(), lambda build: Verdict(False, "bad_reply"))  # type: ignore[arg-type]
    item = Item()
    judge(made, item, lambda build: Verdict(False, "concurrency_limited"))  # type: ignore[arg-type]
    assert json.loads(item.user_properties[0][1])["cause"] == "concurrency_limited"


def test_mutants_are_params_with_answer_operator_ids() -> None:
    params = mutants(ex01_async_endpoint, ["to_thread", "run_in_threadpool"], GENERIC)
    assert len(params) == 2 * len(GENERIC)
    assert params[0].id == f"to_thread-{GENERIC[0].name}"
    with pytest.raises(ValueError, match="no answer_missing"):
        mutant(ex01_async_endpoint, "missing", ASYNCIO_LOCK)
