"""What a browser tab cannot run says so in one line.

In the course's JupyterLite site the kernel is Pyodide, CPython compiled to WebAssembly, in a
browser tab: it has no threads, no processes and no TCP sockets. The parts of labsupport that need
one (a server on loopback, the explorers, worker processes) call `require_real_kernel` before
anything else, so that a lesson cell using them there ends with one sentence saying what is
missing and where to run it, not with "can't start new thread" from deep inside a library.
"""

from __future__ import annotations

import sys

__all__ = ["RealKernelRequired", "in_browser", "require_real_kernel"]

#: Where a lesson that needs them has threads, processes and sockets (the README's Quick start).
REAL_KERNEL = (
    "a real Python kernel (`make lab` on your machine, Binder, or a workshop's JupyterHub)"
)


class RealKernelRequired(RuntimeError):
    """What was called needs a thread, a process or a TCP socket, and this kernel runs in a
    browser tab. In a notebook it shows as its one line, not as a traceback."""

    def _render_traceback_(self) -> list[str]:
        # IPython (and the browser's Pyodide kernel) show what this returns instead of a
        # traceback: the frames inside labsupport would not help the learner.
        return [f"{type(self).__name__}: {self}"]


def in_browser() -> bool:
    """Whether this kernel is Pyodide in a browser tab (the course's JupyterLite site)."""
    return sys.platform == "emscripten"


def require_real_kernel(what: str, needs: str) -> None:
    """Raise `RealKernelRequired` in a browser tab: `what` (e.g. "lab.FakeServer") needs `needs`
    (e.g. "TCP sockets"), which the tab does not have. Does nothing in any other kernel."""
    if in_browser():
        raise RealKernelRequired(
            f"{what} needs {needs}, which a browser tab does not have: "
            f"run this lesson in {REAL_KERNEL}."
        )
