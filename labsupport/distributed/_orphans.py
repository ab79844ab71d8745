"""Child processes that die with their parent: a killed kernel must not leave workers behind."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import NoReturn

__all__ = ["die_with_parent", "exec_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the one that started it (`LAB_PARENT_PID`) dies.

    Elsewhere (and for a parent that exits normally) the lab stops its children at exit.
    """
    parent = os.environ.get("LAB_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def exec_with_parent(argv: list[str]) -> NoReturn:
    """Become `argv` (a program the lab cannot change, like redis-server) after
    `die_with_parent()`: Linux keeps the death signal across exec.

        python -m labsupport.distributed._orphans redis-server …
    """
    die_with_parent()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    exec_with_parent(sys.argv[1:])
