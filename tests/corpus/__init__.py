"""Learner answers to the course's five exercises, each judged by its checker in the tests.

One module per exercise. Every answer is a function named `answer_*` whose docstring begins with
its expected verdict and cause, `PASSED, ok: …` or `NOT YET, <cause>: …`, followed by what the
learner wrote and why. `answers(module)` lists them for `pytest.mark.parametrize`.

The answers are written the way learners write them (half-knowing asyncio included); the correct
ones deliberately differ from the notebooks' solutions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

EXPECTATION = re.compile(r"^(PASSED|NOT YET), (\w+): ")


@dataclass(frozen=True)
class Answer:
    name: str
    passed: bool
    cause: str
    build: Callable[..., Any]


def answers(module: ModuleType) -> list[Any]:
    """The module's answers as pytest params (ids are the answers' names)."""
    found = []
    for name, build in vars(module).items():
        if not name.startswith("answer_"):
            continue
        match = EXPECTATION.match(build.__doc__ or "")
        if match is None:
            raise ValueError(f"{module.__name__}.{name}: docstring must start 'PASSED, ok: '…")
        verdict, cause = match.groups()
        answer = Answer(name.removeprefix("answer_"), verdict == "PASSED", cause, build)
        found.append(pytest.param(answer, id=answer.name))
    return found
