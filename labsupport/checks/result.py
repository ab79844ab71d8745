"""What a checker returns: a verdict with its evidence and its cause, never a bare assert.

A wrong answer is the normal case for an exercise, so a checker never raises for one. It runs the
learner's code against the offline upstream, measures, and explains what it saw in plain words:
what was measured (the evidence), what that means (the summary), what to do (the hint). Each
result also carries a `cause`: a short, stable, machine-readable name for the diagnosis (such as
"bound_above_limit"), one of the closed set its checker module lists in its `Cause` type, or one
of `COMMON_CAUSES` below, which any check can give. Tests and the progress log read the cause;
learners read the sentences.

A `CheckResult` is a plain value: building one has no side effect. The check that makes it
records it, once, through `@recorded(notebook=…)` on the public check function, which also turns
bad input into a result that says what to pass instead, and an error inside labsupport into a
result that says so: a learner never sees a traceback from inside labsupport.

Printed numbers keep the forms the nbval sanitizer knows (`1.23 s`, `20.4×`), so a notebook's
stored output stays comparable, and the first line is always `✅ PASSED — …` or `❌ NOT YET — …`.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import CodeType
from typing import Any, Final, ParamSpec

from .. import validation
from .._text import shorten
from ..browser import require_real_kernel
from ..coaching.hints import coach
from ..progress import COURSE_EXERCISES, record
from .watchdog import Blocked, guarded, is_learner_code

__all__ = [
    "COMMON_CAUSES",
    "CheckResult",
    "Expectation",
    "WatchdogLimits",
    "a_class",
    "a_function",
    "an_app",
    "an_async_function",
    "recorded",
    "stopped_by_watchdog",
]

OK = "ok"
"""The cause of every passed result."""

COMMON_CAUSES: Final = (
    "bad_input",
    "check_error",
    "threading_primitive",
    "blocked_loop",
    "timed_out",
)
"""Causes any check can give: it was called with something it cannot check ("bad_input"), the
check itself failed ("check_error", a bug in labsupport), or the watchdog stopped the learner's
code (the other three, see `stopped_by_watchdog`)."""


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """The outcome of one exercise check.

    `passed` is the verdict and `cause` its machine-readable reason ("ok" exactly when passed);
    `summary` is one sentence about it, `evidence` the measurements behind it, and `hint` (when
    failed) what to try next.
    """

    exercise: str
    passed: bool
    cause: str
    summary: str
    evidence: tuple[str, ...] = field(default_factory=tuple)
    hint: str | None = None

    def __post_init__(self) -> None:
        if (self.cause == OK) != self.passed:
            raise ValueError(
                f"a CheckResult's cause is {OK!r} exactly when it passed; got passed="
                f"{self.passed!r} with cause {self.cause!r}"
            )

    def __str__(self) -> str:
        mark = "✅ PASSED" if self.passed else "❌ NOT YET"
        lines = [f"{mark} — {self.exercise}: {self.summary}"]
        lines += [f"  • {line}" for line in self.evidence]
        if self.hint and not self.passed:
            lines.append(f"  Hint: {self.hint}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # A notebook shows a repeated failure one rung further each time: diagnosis, hint,
        # faded example, solution (labsupport.coaching.hints); str() always holds it all.
        printer.text(coach(self))

    def __bool__(self) -> bool:
        return self.passed


def stopped_by_watchdog(exercise: str, blocked: Blocked | None, what: str) -> CheckResult:
    """The result of a scenario the watchdog had to stop: cause "threading_primitive" or
    "blocked_loop" (the loop was blocked), or "timed_out" (`what` did not finish in time)."""
    if blocked is None:
        return CheckResult(
            exercise=exercise,
            passed=False,
            cause="timed_out",
            summary=f"{what} did not finish within the check's time limit; the check stopped it.",
            hint="does something wait forever (a lock nobody releases, a queue nobody reads, an "
            "event nobody sets)?",
        )
    if blocked.kind == "threading":
        return CheckResult(
            exercise=exercise,
            passed=False,
            cause="threading_primitive",
            summary=f"{blocked.describe()}; the check stopped it.",
            hint="a threading lock, semaphore, event or queue blocks the whole event loop while "
            "it waits, so the task that would release it never runs. Use their asyncio "
            "counterparts (`asyncio.Semaphore` / `asyncio.Lock` with `async with`, "
            "`await event.wait()`, `await queue.get()`): they wait with `await`.",
        )
    sleep = (
        "use `await asyncio.sleep(...)`, not `time.sleep(...)`: " if blocked.kind == "sleep" else ""
    )
    return CheckResult(
        exercise=exercise,
        passed=False,
        cause="blocked_loop",
        summary=f"{blocked.describe()}; the check stopped it.",
        hint=f"{sleep}inside `async def`, every wait must be an `await`; run blocking code with "
        "`await asyncio.to_thread(...)`.",
    )


# ------------------------------------------------------------------------------ bad input

Expectation = Callable[[object], str | None]
"""What a check expects of one argument: the problem with a value, as the end of a sentence that
begins "`name` must be …" (it says what to pass instead), or None when the value will do."""


def _passed_a_call(value: object) -> str | None:
    if inspect.iscoroutine(value):
        value.close()  # never to run: spare the learner a "never awaited" warning
        return (
            f"the coroutine {value.__qualname__}(…), which calling an `async def` function "
            "makes: pass the function itself, without the parentheses"
        )
    return None


def an_app(value: object) -> str | None:
    """An ASGI application: a `FastAPI()` instance (or any `async (scope, receive, send)`)."""
    called = _passed_a_call(value)
    if called is not None:
        return f"your FastAPI app (the `app = FastAPI(...)` object); got {called}"
    if value is None or isinstance(value, type) or not callable(value):
        return f"your FastAPI app (the `app = FastAPI(...)` object); got {_shown(value)}"
    if inspect.isfunction(value) or inspect.ismethod(value):
        try:
            takes_three = len(inspect.signature(value).parameters) == 3
        except (TypeError, ValueError):
            takes_three = True
        if not takes_three:  # a route function, or a factory that builds the app
            return (
                f"your FastAPI app (the `app = FastAPI(...)` object), not the function "
                f"{value.__qualname__}(); if that function builds the app, pass what it "
                "returns"
            )
    return None


def an_async_function(value: object) -> str | None:
    """A function to call (the check calls it and awaits what it returns)."""
    called = _passed_a_call(value)
    if called is not None:
        return f"your `async def` function itself; got {called}"
    if isinstance(value, type) or not callable(value):
        return f"your `async def` function itself (its name, no parentheses); got {_shown(value)}"
    return None


def a_function(value: object) -> str | None:
    """A plain function to call."""
    if isinstance(value, type) or not callable(value):
        return f"a function (its name, no parentheses); got {_shown(value)}"
    return None


def a_class(value: object) -> str | None:
    """A class (not an instance of it)."""
    called = _passed_a_call(value)
    if called is not None or not isinstance(value, type):
        return (
            "the class itself (its name, as in `class SlotLeases:`), not an instance or a "
            f"function; got {called or _shown(value)}"
        )
    return None


def _shown(value: object) -> str:
    return f"{type(value).__name__} {shorten(repr(value), 60)}"


# ------------------------------------------------------------------------------ recording


@dataclass(frozen=True)
class WatchdogLimits:
    """Run a whole check under the watchdog (`labsupport.checks.watchdog.guarded`), for a check
    that does not run its learner code under its own: seconds the same learner frame may hold the
    event loop, and seconds the whole check may take."""

    block_limit: float
    time_limit: float


P = ParamSpec("P")
Check = Callable[P, Coroutine[Any, Any, CheckResult]]


def recorded(
    *,
    notebook: str,
    watchdog: WatchdogLimits | None = None,
    needs: str | None = None,
    **expects: Expectation,
) -> Callable[[Check[P]], Check[P]]:
    """Make an `async def check_…` a course check of `notebook` ("01_async_client").

    The decorated check:

    * with `needs` (what it needs that a browser tab does not have, e.g. "TCP sockets"), raises
      `labsupport.browser.RealKernelRequired` in a browser tab, one line before anything runs:
      a verdict there would not have measured what the check is about;
    * refuses bad input with a failed result of cause "bad_input" whose summary says, in one
      sentence, what to pass instead: a call that does not fit the check's signature, an
      argument an `Expectation` in `expects` (by parameter name) refuses, or a `TypeError` /
      `ValueError` raised by the check's own module or by `labsupport.validation` (a checker
      raises those itself only for its arguments, or for what a function it was given returns);
    * with `watchdog`, runs entirely under the watchdog, so learner code that blocks the event
      loop (a threading lock, `time.sleep`) is stopped, named, and cleaned up after;
    * turns any other exception escaping the check into a failed result of cause "check_error"
      (a bug in labsupport, said as one), never a traceback;
    * records its result once in the learner's progress file (`labsupport.progress.record`).
    """
    if notebook not in COURSE_EXERCISES.values():
        raise ValueError(f"{notebook!r} is not a course notebook of labsupport.progress")

    def decorate(check: Check[P]) -> Check[P]:
        signature = inspect.signature(check)
        call = _plain(signature)
        unknown = set(expects) - set(signature.parameters)
        if unknown:
            raise ValueError(f"{check.__name__} has no parameter {', '.join(sorted(unknown))}")
        code: CodeType = check.__code__

        @functools.wraps(check)
        async def run(*args: P.args, **kwargs: P.kwargs) -> CheckResult:
            if needs is not None:
                require_real_kernel(f"lab.checks.{check.__name__}", needs)
            exercise = str(getattr(sys.modules[check.__module__], "EXERCISE", check.__name__))
            problem = _bad_call(check.__name__, signature, expects, args, kwargs)
            if problem is None:
                try:
                    result = await _run_check(check(*args, **kwargs), exercise, watchdog)
                except (TypeError, ValueError) as error:
                    if not _raised_by_argument_check(error, code):
                        result = _check_error(exercise, error, code)
                    else:
                        problem = f"{check.__name__}(): {error}."
                except Exception as error:  # a bug of ours: said plainly, never a traceback
                    result = _check_error(exercise, error, code)
            if problem is not None:
                result = CheckResult(
                    exercise=exercise,
                    passed=False,
                    cause="bad_input",
                    summary=problem,
                    hint=f"call it as `await lab.checks.{check.__name__}{call}`.",
                )
            record(result, notebook=notebook)
            return result

        return run

    return decorate


def _plain(signature: inspect.Signature) -> inspect.Signature:
    """`signature` as a call shows it: names and defaults, no annotations."""
    return signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=signature.empty,
    )


async def _run_check(
    check: Awaitable[CheckResult], exercise: str, limits: WatchdogLimits | None
) -> CheckResult:
    if limits is None:
        return await check
    outcome = await guarded(check, block_limit=limits.block_limit, time_limit=limits.time_limit)
    if outcome.stopped:  # whatever the check made of the interrupted code, the block is the news
        return stopped_by_watchdog(exercise, outcome.blocked, "the check")
    if outcome.error is not None:
        raise outcome.error
    assert outcome.value is not None  # a check returns a CheckResult
    return outcome.value


def _bad_call(
    name: str,
    signature: inspect.Signature,
    expects: dict[str, Expectation],
    args: tuple[object, ...],
    kwargs: dict[str, object],
) -> str | None:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        for value in (*args, *kwargs.values()):
            _passed_a_call(value)  # close a coroutine passed by mistake
        return f"{name}() cannot take these arguments: {error}."
    for parameter, expect in expects.items():
        if parameter in bound.arguments:
            problem = expect(bound.arguments[parameter])
            if problem is not None:
                return f"{name}() checks {problem}."
    return None


def _raised_by_argument_check(error: BaseException, check: CodeType) -> bool:
    """Whether `error` was raised by a `raise` in the check's own module (a checker raises
    `TypeError` / `ValueError` itself only for its arguments, or for what a function it was given
    returned), or by `labsupport.validation`: not by learner code, nor deeper in a library."""
    codes = [frame.f_code for frame, _ in traceback.walk_tb(error.__traceback__)]
    if not codes:
        return False
    raiser = _module_path(codes[-1].co_filename)
    return raiser in (_module_path(check.co_filename), _module_path(validation.__file__))


def _module_path(filename: str) -> str:
    return os.path.splitext(os.path.realpath(filename))[0]


def _check_error(exercise: str, error: BaseException, check: CodeType) -> CheckResult:
    """The result of `error` escaping the check `check`: raised in learner code the check called
    (said as the learner's error) or in labsupport (said as a bug of ours)."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    learner = [f for f in frames if f.f_code is not check and is_learner_code(f)]
    where = learner[-1] if learner else (frames[-1] if frames else None)
    evidence = (
        (f"raised at {os.path.basename(where.f_code.co_filename)}, line {where.f_lineno}",)
        if where is not None
        else ()
    )
    if learner:
        summary = (
            f"your code raised {type(error).__name__}: {shorten(str(error), 160)}, where the "
            "check did not expect it."
        )
        hint = "run your code on its own first (one request, or one call) and fix that error."
    else:
        summary = (
            f"the check itself failed ({type(error).__name__}: {shorten(str(error), 160)}): "
            "a bug in labsupport, not in your answer."
        )
        hint = "please report it to your instructor, with this message."
    return CheckResult(
        exercise=exercise,
        passed=False,
        cause="check_error",
        summary=summary,
        evidence=evidence,
        hint=hint,
    )
