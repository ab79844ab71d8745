"""No check can hang: learner code that blocks the main thread on a threading primitive is
stopped by the watchdog, named, and cleaned up after (servers, worker processes, redis-server),
and the process runs the next check. Here, the classic deadlock: a `threading.BoundedSemaphore(1)`
acquired twice by the same thread, which waits for good in a futex."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import signal
import textwrap
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from labsupport.checks import check_async_endpoint, check_shared_limit
from labsupport.distributed import redis_server_path

pytestmark = pytest.mark.timeout(240)


class ChatRequest(BaseModel):
    message: str


def _deadlocking_app() -> FastAPI:
    app = FastAPI()
    slot = threading.BoundedSemaphore(1)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, str]:
        slot.acquire()
        slot.acquire()  # the same thread again: waits for good
        return {"response": request.message}

    return app


DEADLOCKING_LIMITER = """
import threading

class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.slot = threading.BoundedSemaphore(1)

    async def acquire(self):
        self.slot.acquire()
        self.slot.acquire()  # the same thread again: waits for good
        return "token"

    async def release(self, token):
        self.slot.release()
"""


def _children() -> list[str]:
    names = []
    for child in psutil.Process().children(recursive=True):
        try:
            names.append(child.name())
        except psutil.NoSuchProcess:
            continue
    return names


def _assert_cleaned_up(handler: Any) -> None:
    assert signal.getsignal(signal.SIGUSR1) == handler  # put back
    assert not [t.name for t in threading.enumerate() if "watchdog" in t.name]
    assert not [name for name in _children() if "redis" in name or "uvicorn" in name]
    # A learner task the check gave up on is not left to print "Task exception was never
    # retrieved" when collected; on 3.11 that finalizer, run inside `ast.parse`, made the parse
    # fail, and the next cell could not even compile.
    ast.parse(Path(ast.__file__).read_text(encoding="utf-8") * 20)
    assert asyncio.run(asyncio.sleep(0, result="next")) == "next"  # the next cell answers


@pytest.mark.usefixtures("offline_lab")
def test_an_endpoint_deadlocked_on_a_bounded_semaphore_is_stopped_and_named() -> None:
    handler = signal.getsignal(signal.SIGUSR1)
    result = asyncio.run(check_async_endpoint(_deadlocking_app()))
    assert (result.passed, result.cause) == (False, "threading_primitive"), result
    assert "threading.Semaphore.acquire()" in result.summary
    assert "`slot.acquire()" in result.summary
    _assert_cleaned_up(handler)


@pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed")
def test_07s_limiter_deadlocked_on_a_bounded_semaphore_is_stopped_and_redis_stopped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cell.py"
    path.write_text(textwrap.dedent(DEADLOCKING_LIMITER))
    spec = importlib.util.spec_from_file_location("deadlocking_cell", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    handler = signal.getsignal(signal.SIGUSR1)
    result = asyncio.run(check_shared_limit(module.SlotLeases))
    assert (result.passed, result.cause) == (False, "threading_primitive"), result
    assert "threading.Semaphore.acquire()" in result.summary
    assert "SlotLeases.acquire" in result.summary
    _assert_cleaned_up(handler)
