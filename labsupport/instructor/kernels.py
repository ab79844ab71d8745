"""A Jupyter kernel of *this* environment, and the one way labsupport executes a notebook.

`python -m labsupport check`, `tools/build_notebooks.py` and the notebook tests all run notebooks
through `notebook_client`, so they agree on the kernel (this interpreter's ipykernel, never a
user-wide `python3` that may point at another Python), the working directory (the notebook's
own folder, as JupyterLab and nbval use), the cell timeout, and that no timing metadata is
recorded.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import ipykernel.kernelspec
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from nbclient import NotebookClient
from nbformat import NotebookNode
from traitlets import default

from ..validation import check_seconds

__all__ = [
    "CELL_TIMEOUT_SECONDS",
    "KERNEL_NAME",
    "CurrentEnvKernelManager",
    "CurrentEnvKernelSpecManager",
    "notebook_client",
]

KERNEL_NAME: Final = "python3"
CELL_TIMEOUT_SECONDS: Final = 120


class CurrentEnvKernelSpecManager(KernelSpecManager):
    """Resolve ``python3`` to *this* interpreter's ipykernel: a user-wide ``python3`` kernelspec
    may point at another Python, without labsupport and the locked dependencies."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name != KERNEL_NAME:
            return super().get_kernel_spec(kernel_name)
        return self.kernel_spec_class(
            resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict()
        )


class CurrentEnvKernelManager(AsyncKernelManager):
    """An ``AsyncKernelManager`` that looks kernels up with `CurrentEnvKernelSpecManager` and,
    on POSIX, talks to them over Unix sockets in Jupyter's runtime folder.

    Why not TCP: jupyter_client picks a kernel's five ports by binding port 0 and closing the
    socket; the kernel binds them again about a second later. Any connection opened in between
    (a lesson's load test opens thousands) can be given one of those ports, and the kernel dies
    with "Address already in use". A socket file with a fresh name cannot be taken that way.
    """

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return CurrentEnvKernelSpecManager(data_dir=self.data_dir)

    @default("transport")
    def _transport_default(self) -> str:
        return "ipc" if os.name == "posix" else "tcp"

    @default("ip")
    def _ip_default(self) -> str:
        if self.transport != "ipc":
            return super()._ip_default()
        # The kernel and this process resolve the path from different working folders, so it
        # must be absolute; the runtime folder is private to the user (0700).
        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        return str(runtime / f"kernel-{uuid.uuid4().hex[:12]}-ipc")


def notebook_client(
    notebook: NotebookNode,
    *,
    cwd: Path,
    timeout: float = CELL_TIMEOUT_SECONDS,
    on_cell_executed: Callable[..., Any] | None = None,
) -> NotebookClient:
    """An nbclient ``NotebookClient`` that runs `notebook` (in place) in a fresh kernel of this
    environment, from `cwd`, failing on a cell that raises unless it is tagged
    ``raises-exception``. Call its ``execute()`` or ``await`` its ``async_execute()``."""
    if not cwd.is_dir():
        raise ValueError(f"cwd: expected an existing directory, got {cwd}")
    check_seconds("timeout", timeout, allow_zero=False)
    return NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=CurrentEnvKernelManager,
        allow_errors=False,
        record_timing=False,
        on_cell_executed=on_cell_executed,
        resources={"metadata": {"path": str(cwd.resolve())}},
    )
