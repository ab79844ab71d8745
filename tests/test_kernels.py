"""The instructor tools' kernels talk over Unix sockets on POSIX, so no other connection on the
machine can take a port between jupyter_client choosing it and the kernel binding it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from labsupport.instructor.kernels import KERNEL_NAME, CurrentEnvKernelManager

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.name != "posix", reason="Unix sockets are a POSIX transport"),
]


async def _run_one_cell(manager: CurrentEnvKernelManager) -> list[Path]:
    """Start a kernel, run one cell, shut it down; the socket files that existed while it ran."""
    await manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        reply = await client.execute_interactive("1 + 1", timeout=60)
        assert reply["content"]["status"] == "ok"
        return sorted(Path(manager.ip).parent.glob(Path(manager.ip).name + "-*"))
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)


def test_two_kernels_use_their_own_socket_files_and_leave_none_behind() -> None:
    first, second = (CurrentEnvKernelManager(kernel_name=KERNEL_NAME) for _ in range(2))
    assert first.transport == second.transport == "ipc"
    assert Path(first.ip).is_absolute() and first.ip != second.ip

    async def both() -> tuple[list[Path], list[Path]]:
        return await asyncio.gather(_run_one_cell(first), _run_one_cell(second))

    sockets_first, sockets_second = asyncio.run(both())
    assert len(sockets_first) == len(sockets_second) == 5  # shell, iopub, stdin, control, hb
    assert not any(path.exists() for path in sockets_first + sockets_second)


def test_tcp_stays_available_when_asked_for() -> None:
    manager = CurrentEnvKernelManager(kernel_name=KERNEL_NAME, transport="tcp")
    assert manager.ip in {"127.0.0.1", "localhost"}
