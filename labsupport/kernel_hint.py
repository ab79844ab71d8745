"""One line instead of a traceback when a cell runs before the notebook's first cell.

Every notebook starts with `lab.setup(...)`: it turns the offline upstream on and provides the
placeholder API key. A learner who opens a notebook and runs a cell further down first would
get 40 lines of `OpenAIError: Missing credentials` from the SDK, or `NameError: name 'lab' is
not defined`, and nothing that says why. This IPython extension answers those two errors,
while the lab is not set up, with one line:

    run the first cell (`lab.setup(...)`) first (this cell raised OpenAIError: Missing ...)

A cell stopped by ■ gets one line too, `CancelledError: the cell was interrupted (■)`, instead
of a traceback through the libraries it was waiting in. Every other exception, and the first
two once the lab is set up, keep IPython's usual traceback.
The extension also makes Jupyter's ■ stop an awaiting cell at once (`labsupport.kernel_interrupt`).

The cell that is run first is the learner's choice, so the extension must be in the kernel
before any cell: `python -m labsupport.kernel_hint` (run by `make venv` and Binder's
postBuild) asks every IPython kernel of this environment to load it at start, in the
environment's own IPython config (`<sys.prefix>/etc/ipython/ipython_kernel_config.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import openai

from . import kernel_interrupt
from ._text import shorten
from .lab import current_upstream

__all__ = [
    "HINT",
    "config_path",
    "hint_for",
    "install",
    "load_ipython_extension",
    "unload_ipython_extension",
]

HINT: Final = "run the first cell (`lab.setup(...)`) first"
#: What the first cell of every notebook defines.
FIRST_CELL_NAMES: Final = frozenset({"lab", "upstream", "LATENCY"})
CONFIG_LINE: Final = 'c.InteractiveShellApp.extensions.append("labsupport.kernel_hint")'


def hint_for(error: BaseException) -> str | None:
    """The one line for `error` if it comes from running a cell before `lab.setup()`, else
    None. Those errors are a `NameError` for a name the first cell defines, and an SDK error
    raised before any request (an `OpenAIError` that is not an `APIError`: missing
    credentials), both while no upstream is set up."""
    if current_upstream() is not None:
        return None
    if isinstance(error, NameError) and error.name in FIRST_CELL_NAMES:
        pass
    elif not isinstance(error, openai.OpenAIError) or isinstance(error, openai.APIError):
        return None
    what = shorten(f"{type(error).__name__}: {error}", 90)
    return f"{HINT} (this cell raised {what})"


INTERRUPTED: Final = "the cell was interrupted (■)"


def interrupted_line(error: BaseException) -> str | None:
    """The one line for a cell stopped by ■ (`KeyboardInterrupt`, or `CancelledError` for an
    awaiting cell), else None. Its traceback runs through asyncio, uvicorn, httpx…: dozens of
    library frames that say nothing to a learner, and that IPython takes seconds to format on a
    busy machine, so the cell's reply (and the next cell) would wait for them."""
    if isinstance(error, KeyboardInterrupt | asyncio.CancelledError):
        return f"{type(error).__name__}: {INTERRUPTED}"
    return None


def load_ipython_extension(shell: Any) -> None:
    """Called by IPython (`%load_ext labsupport.kernel_hint`, or the kernel config)."""

    def handler(
        shell: Any,
        etype: type[BaseException],
        value: BaseException,
        tb: TracebackType | None,
        tb_offset: int | None = None,
    ) -> None:
        line = interrupted_line(value) or hint_for(value)
        if line is None:
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
        else:
            # IPython's protocol for an exception that renders its own traceback: also what
            # IPython 9 stores in its history for the cell, instead of formatting every
            # library frame again (seconds, for an interrupt deep in uvicorn).
            with contextlib.suppress(AttributeError, TypeError):
                value._render_traceback_ = lambda: [line]  # type: ignore[attr-defined]
            # What showtraceback() ends with: the error reaches the notebook as the cell's
            # error output, with this one line as its whole traceback.
            shell._showtraceback(etype, value, [line])

    shell.set_custom_exc(
        (NameError, openai.OpenAIError, KeyboardInterrupt, asyncio.CancelledError), handler
    )
    # The course's one kernel extension also makes ■ stop an awaiting cell at once.
    kernel_interrupt.register(shell)


def unload_ipython_extension(shell: Any) -> None:
    """Called by IPython (`%unload_ext labsupport.kernel_hint`): the kernel as it was."""
    shell.set_custom_exc((), None)
    kernel_interrupt.unregister(shell)


def config_path(prefix: str = sys.prefix) -> Path:
    """The IPython kernel config of the environment at `prefix`, which its kernels read."""
    return Path(prefix) / "etc" / "ipython" / "ipython_kernel_config.py"


def install(prefix: str = sys.prefix) -> Path:
    """Ask the kernels of the environment at `prefix` to load this extension; idempotent, and
    keeps whatever else that config file says. Returns the file's path."""
    path = config_path(prefix)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if CONFIG_LINE not in text.splitlines():
        path.parent.mkdir(parents=True, exist_ok=True)
        note = "# Written by `python -m labsupport.kernel_hint`: the course's first-cell hint.\n"
        separator = "\n" if text and not text.endswith("\n") else ""
        path.write_text(f"{text}{separator}{note}{CONFIG_LINE}\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"IPython kernels load labsupport.kernel_hint (config: {install()})")
