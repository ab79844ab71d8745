"""A check given something it cannot check says so in one sentence, with what to pass instead:
a failed result of cause "bad_input", never a traceback from inside labsupport. A check that
fails itself says so as cause "check_error"."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from fastapi import FastAPI

from labsupport.checks import (
    CheckResult,
    check_async_endpoint,
    check_background_audit,
    check_bounded_batch,
    check_lifespan_client,
    check_parallel_fanout,
    check_shared_limit,
)
from labsupport.checks.result import recorded

pytestmark = pytest.mark.usefixtures("offline_lab")


def build_app() -> FastAPI:
    return FastAPI()


async def chat_route(message: str) -> dict[str, str]:
    return {"response": message}


async def summarize_all(texts: list[str]) -> list[str]:
    return texts


def count_rows() -> int:
    return 0


def _run(
    check: Callable[..., Coroutine[Any, Any, CheckResult]], *args: Any, **kwargs: Any
) -> CheckResult:
    return asyncio.run(check(*args, **kwargs))


BAD_CALLS = [
    # (check, args, kwargs, words the one sentence must contain)
    (check_async_endpoint, (None,), {}, "FastAPI app"),
    (check_async_endpoint, (build_app,), {}, "pass what it returns"),
    (check_async_endpoint, (chat_route,), {}, "not the function chat_route()"),
    (check_async_endpoint, ("app",), {}, "got str"),
    (check_async_endpoint, (FastAPI(),), {"n": 1}, "n must be an int ≥ 2"),
    (check_async_endpoint, (FastAPI(),), {"paths": "/chat"}, "unexpected keyword argument"),
    (check_async_endpoint, (), {}, "missing a required argument"),
    (check_parallel_fanout, (42,), {}, "async def"),
    (check_parallel_fanout, (summarize_all(["a"]),), {}, "without the parentheses"),
    (check_bounded_batch, ([summarize_all],), {}, "got list"),
    (check_bounded_batch, (summarize_all,), {"limit": "5"}, "limit must be an int"),
    (check_bounded_batch, (summarize_all,), {"limit": 1}, "limit must be an int from 2"),
    (check_background_audit, (FastAPI(), 3), {"audit_seconds": 0.1}, "a function"),
    (check_background_audit, (FastAPI(), count_rows), {"audit_seconds": "1"}, "audit_seconds"),
    (check_background_audit, (FastAPI(), count_rows), {}, "audit_seconds"),
    (check_background_audit, (build_app, count_rows), {"audit_seconds": 0.1}, "FastAPI app"),
    (check_lifespan_client, ({"app": 1},), {}, "FastAPI app"),
    (check_lifespan_client, (FastAPI(),), {"n": True}, "n must be an int"),
    (check_shared_limit, (object,), {"limit": 50}, "limit must be an int from 2 to 10"),
]


@pytest.mark.parametrize(
    ("check", "args", "kwargs", "words"),
    BAD_CALLS,
    ids=[f"{call[0].__name__}-{i}" for i, call in enumerate(BAD_CALLS)],
)
def test_bad_input_is_one_sentence_saying_what_to_pass(
    check: Callable[..., Coroutine[Any, Any, CheckResult]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    words: str,
) -> None:
    result = _run(check, *args, **kwargs)
    assert (result.passed, result.cause) == (False, "bad_input"), result
    assert words in result.summary, result.summary
    assert "\n" not in result.summary and "Traceback" not in str(result)
    assert result.summary.startswith(check.__name__)
    assert result.hint is not None and f"lab.checks.{check.__name__}(" in result.hint
    assert "annotation" not in result.hint and "CheckResult" not in result.hint


def test_a_coroutine_passed_by_mistake_is_closed_not_left_to_warn(
    recwarn: pytest.WarningsRecorder,
) -> None:
    pending = summarize_all(["a"])
    result = _run(check_parallel_fanout, pending)
    assert result.cause == "bad_input"
    assert cast(Any, pending).cr_frame is None  # closed: Python will not warn "never awaited"


def test_an_app_whose_startup_raises_is_a_result_not_a_traceback() -> None:
    async def lifespan(app: FastAPI) -> Any:
        raise RuntimeError("no API key configured")
        yield  # pragma: no cover - an async generator that fails at startup

    app = FastAPI(lifespan=lifespan)
    result = _run(check_async_endpoint, app)
    assert not result.passed and "no API key configured" in str(result)
    assert result.cause != "check_error", result


def test_a_count_rows_that_raises_is_a_result_naming_the_learners_line() -> None:
    def broken_count() -> int:
        raise LookupError("no table audit")

    result = _run(check_background_audit, FastAPI(), broken_count, audit_seconds=0.1)
    assert not result.passed and "no table audit" in str(result)
    assert "Traceback" not in str(result)


def test_an_error_inside_the_check_is_said_as_a_bug_of_labsupport() -> None:
    @recorded(notebook="01_async_client")
    async def check_that_breaks(app: Any) -> CheckResult:
        missing: dict[str, CheckResult] = {}
        return missing["missing"]

    result = asyncio.run(check_that_breaks(FastAPI()))
    assert (result.passed, result.cause) == (False, "check_error")
    assert "a bug in labsupport" in result.summary and "KeyError" in result.summary
    assert result.evidence and result.evidence[0].startswith("raised at test_checks_bad_input.py")


def test_a_check_names_a_course_notebook() -> None:
    with pytest.raises(ValueError, match="not a course notebook"):
        recorded(notebook="99_nothing")
