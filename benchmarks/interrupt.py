"""How soon Jupyter's ■ (interrupt) stops a cell that awaits, in a real kernel of this venv.

A cell runs `await asyncio.sleep(10)`; one second later the client interrupts the kernel, as the
stop button does. Printed: seconds from the cell's start to its reply, and the reply's error
name. Measured twice: without the course's kernel extension (`%unload_ext
labsupport.kernel_hint`: ipykernel alone), then as every course kernel runs, after the first cell
`import labsupport as lab; lab.setup()`. Not part of the test
suite; tests/test_kernel_interrupt.py asserts the effect without wall-clock bounds.

Run: `.venv/bin/python benchmarks/interrupt.py`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from labsupport.instructor.kernels import KERNEL_NAME, CurrentEnvKernelManager

CELL = "import asyncio\nawait asyncio.sleep(10)"
INTERRUPT_AFTER = 1.0


async def interrupted(setup: str) -> tuple[float, str]:
    """Seconds from a cell's start to its reply when interrupted after `INTERRUPT_AFTER`."""
    manager = CurrentEnvKernelManager(kernel_name=KERNEL_NAME)
    await manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        if setup:
            await client.execute_interactive(setup, timeout=60, output_hook=lambda _: None)
        start = time.perf_counter()
        msg_id = client.execute(CELL)
        await asyncio.sleep(INTERRUPT_AFTER)
        await manager.interrupt_kernel()
        while True:
            reply: dict[str, Any] = await client.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        return time.perf_counter() - start, str(reply["content"].get("ename", "ok"))
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)


async def main() -> None:
    for name, setup in [
        ("ipykernel alone", "%unload_ext labsupport.kernel_hint"),
        ("course kernel", "import labsupport as lab\nupstream = lab.setup()"),
    ]:
        seconds, error = await interrupted(setup)
        stopped = f"stopped the cell at {seconds:.2f} s ({error})"
        print(f"{name:>18}: ■ at {INTERRUPT_AFTER:.1f} s {stopped}")


if __name__ == "__main__":
    asyncio.run(main())
