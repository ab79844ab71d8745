"""Learner answers to the course's five exercises, each judged by its checker in the tests.

One module per exercise. Every answer is a function named `answer_*` whose docstring begins with
its expected verdict and cause, `PASSED, ok: …` or `NOT YET, <cause>: …`, followed by what the
learner wrote and why. `answers(module)` lists them for `pytest.mark.parametrize`.

The answers are written the way learners write them (half-knowing asyncio included); the correct
ones deliberately differ from the notebooks' solutions.
"""

from __future__ import annotations

import asyncio
import gc
import re
import sys
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import FunctionType, ModuleType
from typing import Any, TypeVar

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


T = TypeVar("T")


def judged(check: Coroutine[Any, Any, T], answer: object) -> T:
    """Run a check of `answer` to its verdict, then free what the answer holds, inside this test.

    An answer that used one client from several event loops (`asyncio.run` per request) leaves
    connections whose loop is closed; freed, they report "Event loop is closed" or an unclosed
    transport as unraisable exceptions: the answer's own mess, said by its verdict. FastAPI keeps
    endpoint functions in a bounded cache, so without help they would be freed in whatever later
    test evicts them. So the closures of the answer's functions (its app's endpoints, or the
    function itself) are emptied, and collected here with unraisable exceptions ignored.
    """
    try:
        with warnings.catch_warnings():
            # A coroutine made, then stranded by the watchdog's stop (a deadlocked mutant).
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            return asyncio.run(check)
    finally:
        functions = [getattr(route, "endpoint", None) for route in getattr(answer, "routes", ())]
        _empty_closures([*functions, answer], seen=set())
        del answer, functions
        hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
        try:
            gc.collect()
        finally:
            sys.unraisablehook = hook


def _empty_closures(functions: list[object], seen: set[int]) -> None:
    """Empty the closure cells of `functions` and of the functions those cells held."""
    for function in functions:
        if not isinstance(function, FunctionType) or id(function) in seen:
            continue
        seen.add(id(function))
        for cell in function.__closure__ or ():
            try:
                held = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            _empty_closures([held], seen)
            cell.cell_contents = None
