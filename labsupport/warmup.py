"""The cold start of the SDK and of FastAPI, paid before a lesson can time it.

The first call through each `openai` client in a process imports modules lazily and builds
pydantic validators, and a FastAPI app's first request does the same: tens of milliseconds
that would otherwise land inside a lesson's first measurement. `warm_up()` pays them with one
call through each SDK client and one request to a FastAPI app, over private in-memory
transports, so the lab's upstream sees none of it: its counters, call numbers and scripted
faults stay the lesson's, whenever the warm-up runs.

It warms only what is already imported. Importing the SDK takes about a second, and the
lesson's own import cell (`from openai import AsyncOpenAI`) pays that anyway; the first cell
should not pay it too. So in a notebook `setup()` warms what is loaded and leaves the rest to
`warm_after_each_cell()`: an IPython `post_run_cell` callback that warms a part right after the
cell that imported it, before the next cell can time anything, and then unregisters itself.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from .upstream import wire

__all__ = ["cold_parts", "warm_after_each_cell", "warm_up"]

MODEL = "gpt-4o-mini"
_MESSAGES: Any = [{"role": "user", "content": "warm-up"}]
_warmed: set[str] = set()
_lock = threading.Lock()


def warm_up() -> None:
    """Warm each part (the `openai` SDK, FastAPI) that is imported and not yet warm; once per
    process, and thread-safe."""
    with _lock:
        for module, warm in _PARTS.items():
            if module in sys.modules and module not in _warmed:
                warm()
                _warmed.add(module)


def cold_parts() -> list[str]:
    """The parts not warmed yet (imported or not), by module name."""
    return [module for module in _PARTS if module not in _warmed]


def warm_after_each_cell() -> None:
    """In an IPython kernel, warm the parts still cold after each cell, until all are warm.
    Outside IPython (a script, a test), nothing: the caller warms up if it times first calls."""
    shell = _ipython_shell()
    if shell is None or not cold_parts():
        return
    if _after_cell not in shell.events.callbacks["post_run_cell"]:
        shell.events.register("post_run_cell", _after_cell)


def _after_cell(result: object) -> None:
    try:
        warm_up()
    except KeyboardInterrupt:
        return  # meant for the cell, which has ended: warm up after the next one instead
    if not cold_parts():
        shell = _ipython_shell()
        if shell is not None:
            shell.events.unregister("post_run_cell", _after_cell)


def _ipython_shell() -> Any:
    """The running IPython shell, or None; never imports IPython."""
    ipython = sys.modules.get("IPython")
    return None if ipython is None else ipython.get_ipython()


def _run_in_thread(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run `coroutine` to the end on an event loop of its own: a notebook's loop is already
    running in this thread. In a browser tab (Pyodide), which has no threads, on the tab's own
    loop instead, to the end before this returns (Pyodide's `run_sync`, through the browser's
    stack switching)."""
    # sys.platform, not browser.in_browser(): mypy then checks this import only for the
    # platform that has it.
    if sys.platform == "emscripten":
        from pyodide.ffi import run_sync

        run_sync(coroutine)
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as error:
            failure.append(error)

    worker = threading.Thread(target=run, name="lab warm-up")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


def _warm_sdk() -> None:
    import httpx2
    from openai import AsyncOpenAI, OpenAI

    body = wire.chat_completion(1, MODEL, "Warm.", "stop", (8, 1))
    headers = {"content-type": wire.JSON}

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers=headers, content=body)

    async def answer_async(request: httpx2.Request) -> httpx2.Response:
        return answer(request)

    sync_http = httpx2.Client(transport=httpx2.MockTransport(answer))
    with OpenAI(api_key="warm-up", http_client=sync_http) as client:
        client.chat.completions.create(model=MODEL, messages=_MESSAGES)

    async def one_async_call() -> None:
        async_http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer_async))
        async with AsyncOpenAI(api_key="warm-up", http_client=async_http) as aclient:
            await aclient.chat.completions.create(model=MODEL, messages=_MESSAGES)

    _run_in_thread(one_async_call())


def _warm_fastapi() -> None:
    from fastapi import FastAPI
    from pydantic import BaseModel

    from .serving import asgi_client

    class Message(BaseModel):
        message: str

    app = FastAPI()

    @app.post("/warm-up")
    async def warm(request: Message) -> dict[str, str]:
        return {"response": request.message}

    async def one_request() -> None:
        async with asgi_client(app) as client:
            await client.post("/warm-up", json={"message": "hi"})

    _run_in_thread(one_request())


#: What to warm once each module is imported.
_PARTS: dict[str, Callable[[], None]] = {"openai": _warm_sdk, "fastapi": _warm_fastapi}
