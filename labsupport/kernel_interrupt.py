"""Jupyter's ■ (interrupt) stops a cell that awaits at once, not when its event loop next wakes.

For a cell with a top-level `await`, ipykernel (7.4) installs a SIGINT handler that cancels the
cell's task. The handler runs promptly, on the main thread, while the event loop sleeps in
`select()`; but it schedules the cancel with `IOLoop.add_callback`, which from the loop's own
thread is a plain `call_soon`: nothing wakes the sleeping `select()`, so the cancel waits for the
loop's next timer or I/O. `await asyncio.sleep(10)` interrupted after 1 s stopped after 10 s.

`register(shell)` fixes that through IPython's public `pre_run_cell` event: before each cell,
if the kernel has installed a handler of its own for SIGINT (an awaiting cell), it wraps it in
one that calls it, then wakes the loop with `loop.call_soon_threadsafe`, the documented way to
wake a loop from a signal handler. The cancel then runs within one loop iteration. The kernel
puts its previous handler back after the cell, which drops the wrapper too; a cell without
`await` keeps Python's `KeyboardInterrupt`, untouched.

The course's kernel extension (`labsupport.kernel_hint`, loaded at start by every kernel of the
environment) registers it, and so does `lab.setup()`, for a kernel that does not load it.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import Any, Final

__all__ = ["register", "unregister"]

_EVENT: Final = "pre_run_cell"


def register(shell: Any) -> None:
    """Wake the event loop on every interrupt of an awaiting cell of `shell`; idempotent."""
    if _wrap_kernel_handler not in shell.events.callbacks[_EVENT]:
        shell.events.register(_EVENT, _wrap_kernel_handler)


def unregister(shell: Any) -> None:
    """Undo `register` (the kernel's handler alone again, from the next cell)."""
    if _wrap_kernel_handler in shell.events.callbacks[_EVENT]:
        shell.events.unregister(_EVENT, _wrap_kernel_handler)


def _wrap_kernel_handler(info: object = None) -> None:
    """Before a cell: wrap the kernel's SIGINT handler, if it installed one for this cell."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop runs the cell: Python's KeyboardInterrupt does the job
        return
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler) or handler is signal.default_int_handler:
        return  # a cell run without `await`: the interrupt raises KeyboardInterrupt in it
    if isinstance(handler, _Waking):
        return
    signal.signal(signal.SIGINT, _Waking(handler, loop))


class _Waking:
    """A SIGINT handler: the kernel's own, then a wake-up of the event loop it scheduled on."""

    def __init__(self, kernel_handler: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.kernel_handler, self.loop = kernel_handler, loop

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        try:
            self.kernel_handler(signum, frame)
        finally:
            if not self.loop.is_closed():
                self.loop.call_soon_threadsafe(_nothing)  # writes to the loop's self-pipe


def _nothing() -> None:
    """What the wake-up runs: the point is the write that ends `select()`."""
