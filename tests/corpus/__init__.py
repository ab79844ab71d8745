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
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import FunctionType, ModuleType
from typing import Any, Final, TypeVar

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
    socket or transport as unraisable exceptions: the answer's own mess, said by its verdict.
    They are freed whenever the garbage collector runs, during the check as well as after it, so
    while the answer is judged those unraisable exceptions (and only those) are dropped. FastAPI
    keeps endpoint functions in a bounded cache, so without help they would be freed in whatever
    later test evicts them: the closures of the answer's functions (its app's endpoints, or the
    function itself) are emptied, and collected here.
    """
    hook = sys.unraisablehook

    def drop_the_answers_mess(unraisable: Any) -> None:
        if not _mess_of_closed_loops(unraisable.exc_value):
            hook(unraisable)

    sys.unraisablehook = drop_the_answers_mess
    with warnings.catch_warnings():
        # A coroutine made, then stranded by the watchdog's stop (a deadlocked mutant).
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        try:
            with asyncio.Runner() as runner:
                # The answer's `asyncio.to_thread` calls run here: a thread it left waiting for
                # good (a connection of a closed loop) must not hold the test at the loop's close.
                runner.get_loop().set_default_executor(AnswerThreads())
                return runner.run(check)
        finally:
            routes = getattr(answer, "routes", ())
            _empty_closures([*(getattr(r, "endpoint", None) for r in routes), answer], set())
            del answer, routes
            try:
                gc.collect()
            finally:
                sys.unraisablehook = hook


class AnswerThreads(ThreadPoolExecutor):
    """The default executor of a judged answer's event loop: a daemon thread per call, at most as
    many running at once as asyncio's default executor would run, and a shutdown that waits for
    them at most `SHUTDOWN_WAIT` seconds.

    asyncio's own waits for every thread it started, for ever, when its loop closes, and Python
    joins a `ThreadPoolExecutor`'s threads at exit. A right answer's threads are done long before;
    a wrong one's may wait for good (`asyncio.run` in a thread on a client whose connection
    belongs to a closed loop). In a notebook such a thread is leaked, not waited for; so here."""

    SHUTDOWN_WAIT: Final = 10.0

    def __init__(self) -> None:
        workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's documented default
        super().__init__(workers)
        self._slots = threading.BoundedSemaphore(workers)
        self._started: list[threading.Thread] = []

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()

        def run() -> None:
            with self._slots:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as error:
                        future.set_exception(error)

        thread = threading.Thread(target=run, name="answer-thread", daemon=True)
        self._started.append(thread)
        thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        deadline = time.monotonic() + self.SHUTDOWN_WAIT
        for thread in self._started if wait else ():
            thread.join(max(0.0, deadline - time.monotonic()))
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


def _mess_of_closed_loops(error: BaseException | None) -> bool:
    """Whether `error` is what a connection left by a closed event loop reports when freed."""
    if isinstance(error, ResourceWarning):
        return str(error).startswith(("unclosed <socket.socket", "unclosed transport"))
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


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
