"""■ stops a cell in a real kernel of this environment before the cell would have ended by
itself: an awaiting cell (ipykernel alone would wait for the loop's next wake-up, here the end of
the sleep) and a blocking one (Python's KeyboardInterrupt, untouched)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from labsupport.instructor.kernels import KERNEL_NAME, CurrentEnvKernelManager

pytestmark = pytest.mark.timeout(180)

SLEEP = 40.0
"""Seconds each cell would run uninterrupted; interrupted, it must reply before."""


async def _interrupted(client: Any, manager: Any, code: str) -> tuple[float, str]:
    """Run `code`, interrupt it once it has started, as ■ does; seconds until the reply
    (from the start), and the reply's error name."""
    start = time.perf_counter()
    msg_id = client.execute(code)
    while True:  # the cell has started once the kernel says it is busy with it
        message = await client.get_iopub_msg(timeout=SLEEP)
        if (
            message["parent_header"].get("msg_id") == msg_id
            and message["msg_type"] == "execute_input"
        ):
            break
    await asyncio.sleep(0.5)
    await manager.interrupt_kernel()
    while True:
        reply: dict[str, Any] = await client.get_shell_msg(timeout=2 * SLEEP)
        if reply["parent_header"].get("msg_id") == msg_id:
            return time.perf_counter() - start, str(reply["content"].get("ename"))


async def _session() -> list[tuple[float, str]]:
    manager = CurrentEnvKernelManager(kernel_name=KERNEL_NAME)
    await manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        results = []
        for code in (
            f"import asyncio\nawait asyncio.sleep({SLEEP})",
            f"import time\ntime.sleep({SLEEP})",
            f"await asyncio.sleep({SLEEP})",  # again: the next awaiting cell is stopped too
        ):
            results.append(await _interrupted(client, manager, code))
        return results
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)


def test_stop_ends_awaiting_and_blocking_cells_before_they_would_end() -> None:
    (awaiting, error), (blocking, blocking_error), (again, again_error) = asyncio.run(_session())
    assert error == again_error == "CancelledError"
    assert blocking_error == "KeyboardInterrupt"
    assert max(awaiting, blocking, again) < SLEEP  # stopped early, not when the sleep ended


def test_an_interrupted_cell_says_so_in_one_line_and_other_errors_are_left_alone() -> None:
    from labsupport.kernel_hint import interrupted_line

    assert interrupted_line(asyncio.CancelledError()) == (
        "CancelledError: the cell was interrupted (■)"
    )
    assert (
        interrupted_line(KeyboardInterrupt()) == "KeyboardInterrupt: the cell was interrupted (■)"
    )
    assert interrupted_line(RuntimeError("the service exited (0)")) is None
