"""In a browser tab, what needs a thread, a process or a TCP socket says so in one line.

The course's JupyterLite site runs lessons in Pyodide, where `sys.platform` is "emscripten" and
there are no threads, processes or sockets. Here, on CPython, the platform is set to that, and
starting a thread or opening a socket fails the test: each entry point must raise
`RealKernelRequired` before it tries either. (tests/test_lite.py sees the same line in Chromium.)
"""

from __future__ import annotations

import importlib
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI

import labsupport
from labsupport import checks
from labsupport.browser import REAL_KERNEL, RealKernelRequired, require_real_kernel
from labsupport.coaching import (
    Explorer,
    Scenario,
    StreamExplorer,
    StreamScenario,
    explore,
    explore_streams,
    run_scenario,
    run_streams,
)


async def _fake_server() -> None:
    labsupport.FakeServer(latency=0.01)


async def _serve() -> None:
    async with labsupport.serve(FastAPI()):
        pass


async def _explore() -> None:
    explore(requests=5)


async def _explorer() -> None:
    Explorer(Scenario())


async def _run_scenario() -> None:
    run_scenario(Scenario())


async def _explore_streams() -> None:
    explore_streams(streams=2)


async def _stream_explorer() -> None:
    StreamExplorer(StreamScenario())


async def _run_streams() -> None:
    run_streams(StreamScenario())


async def _check_async_endpoint() -> None:
    await checks.check_async_endpoint(FastAPI())


async def _check_background_audit() -> None:
    await checks.check_background_audit(FastAPI(), lambda: 0, audit_seconds=0.1)


async def _check_streaming_endpoint() -> None:
    await checks.check_streaming_endpoint(FastAPI(), list)


async def _distributed() -> None:
    # Imported afresh (the fixture puts the modules back): the check runs at import.
    importlib.import_module("labsupport.distributed")


#: Each entry point, and the name its message starts with.
ENTRY_POINTS: dict[str, Callable[[], Awaitable[None]]] = {
    "lab.FakeServer": _fake_server,
    "lab.serve": _serve,
    "explore": _explore,
    "Explorer": _explorer,
    "run_scenario": _run_scenario,
    "explore_streams": _explore_streams,
    "StreamExplorer": _stream_explorer,
    "run_streams": _run_streams,
    "lab.checks.check_async_endpoint": _check_async_endpoint,
    "lab.checks.check_background_audit": _check_background_audit,
    "lab.checks.check_streaming_endpoint": _check_streaming_endpoint,
    "labsupport.distributed": _distributed,
}


def as_in_a_browser_tab(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sys.platform` as Pyodide's, and no thread or socket to be had, as in a browser tab.
    (Called in the test, once its event loop, which has sockets of its own, is running.)"""

    def no_thread(self: threading.Thread) -> None:
        raise AssertionError(f"a thread was started: {self.name}")

    def no_socket(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a socket was opened")

    for name in [name for name in sys.modules if name.startswith("labsupport.distributed")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "platform", "emscripten")
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    monkeypatch.setattr(socket, "socket", no_socket)


@pytest.mark.anyio
@pytest.mark.parametrize("what", ENTRY_POINTS)
async def test_an_entry_point_needing_a_real_kernel_says_so_in_one_line(
    what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    as_in_a_browser_tab(monkeypatch)
    with pytest.raises(RealKernelRequired) as raised:
        await ENTRY_POINTS[what]()
    monkeypatch.undo()
    message = str(raised.value)
    assert message.startswith(f"{what} needs ")
    assert message.endswith(
        f", which a browser tab does not have: run this lesson in {REAL_KERNEL}."
    )
    assert "\n" not in message
    # What IPython (and Pyodide's kernel) shows instead of a traceback: this one line.
    assert raised.value._render_traceback_() == [f"RealKernelRequired: {message}"]


def test_a_real_kernel_is_not_refused() -> None:
    require_real_kernel("lab.FakeServer", "TCP sockets")  # CPython on Linux: nothing raised
    assert labsupport.RealKernelRequired is RealKernelRequired
