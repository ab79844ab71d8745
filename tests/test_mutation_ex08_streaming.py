"""Mutants of notebook 08's right answers (tests/corpus/ex08_streaming.py), made by the generic
operators that apply to a streaming relay and by the exercise's own (tests/mutation/
ex08_streaming.py): each must be refused with its cause."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from corpus import ex08_streaming as corpus
from mutation.engine import Judged, Mutant, judge, mutants
from mutation.ex08_streaming import OPERATORS
from mutation.operators import BLOCKING_IO, BLOCKING_SLEEP, THREADING_LOCK

from labsupport.checks import check_streaming_endpoint

pytestmark = pytest.mark.usefixtures("offline_lab")

N = 6
RIGHT = [
    "event_source_with_usage",
    "streaming_response_of_sse_lines",
    "lifespan_client_and_server_sent_events",
]
APPLYING = (
    BLOCKING_SLEEP.expecting("blocked_loop"),
    BLOCKING_IO.expecting("blocked_loop"),
    THREADING_LOCK.expecting("threading_primitive"),
    *OPERATORS,
)


def check(build: Any) -> Judged:
    audit: list[dict[str, Any]] = []
    return asyncio.run(check_streaming_endpoint(build(audit), lambda: audit, n=N))


@pytest.mark.corpus
@pytest.mark.parametrize("mutant", mutants(corpus, RIGHT, APPLYING))
def test_the_mutant_is_refused(mutant: Mutant, request: pytest.FixtureRequest) -> None:
    judge(mutant, request.node, check)
