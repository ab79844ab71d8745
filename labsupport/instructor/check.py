"""`python -m labsupport check`: run every notebook headless and say which ones work.

For instructors before a session (and for live mode against a real API): each notebook runs top
to bottom in a fresh kernel of *this* Python environment, from the notebook's own folder, as
JupyterLab would run it. Nothing is compared or written back; a notebook passes when every cell
ran and none raised, except cells tagged `raises-exception`, which are meant to.

    python -m labsupport check                    # notebooks/*.ipynb
    python -m labsupport check --solutions        # … and notebooks/solutions/*.ipynb
    python -m labsupport check path/to/one.ipynb --jobs 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nbformat
from nbclient.exceptions import CellControlSignal, CellExecutionError, DeadKernelError
from nbformat import NotebookNode
from tqdm import tqdm

from .._text import shorten
from ..validation import check_int, check_seconds
from .kernels import CELL_TIMEOUT_SECONDS, notebook_client

__all__ = [
    "NotebookRun",
    "find_notebooks",
    "format_runs",
    "main",
    "run_notebook",
    "run_notebooks",
]

RAISES_TAG: Final = "raises-exception"


@dataclass(frozen=True)
class NotebookRun:
    """How one notebook ran: `cells` code cells, `ran` of them executed, in `seconds`; `error` is
    the first failure ("cell 7: ValueError: …"), None when the notebook passed; `notebook` is
    the executed notebook, outputs included."""

    path: Path
    cells: int
    ran: int
    seconds: float
    error: str | None
    notebook: NotebookNode = field(repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return self.error is None


def find_notebooks(folder: Path, *, solutions: bool = False) -> list[Path]:
    """The notebooks in `folder` (sorted), and with `solutions` those in `folder/solutions`."""
    if not folder.is_dir():
        raise ValueError(f"folder: expected an existing directory, got {folder}")
    found = sorted(folder.glob("*.ipynb"))
    if solutions:
        found += sorted((folder / "solutions").glob("*.ipynb"))
    return found


def _code_cells(notebook: NotebookNode) -> list[NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _first_error(notebook: NotebookNode) -> str | None:
    """The first error output of a cell that was not meant to raise, as "cell N: Type: value"."""
    for number, cell in enumerate(_code_cells(notebook), start=1):
        if RAISES_TAG in cell.metadata.get("tags", ()):
            continue
        for output in cell.get("outputs", ()):
            if output.get("output_type") == "error":
                return f"cell {number}: {output.ename}: {output.evalue}"
    return None


async def run_notebook(
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = CELL_TIMEOUT_SECONDS,
    on_cell: Callable[[], object] | None = None,
) -> NotebookRun:
    """Run the notebook at `path` in a fresh kernel and report how it went (never raises for a
    failing notebook). `env` replaces the kernel's environment (default: this process's);
    `on_cell`, if given, is called with no arguments after each code cell."""
    if not path.is_file():
        raise ValueError(f"path: expected a notebook file, got {path}")
    check_seconds("timeout", timeout, allow_zero=False)
    notebook = nbformat.read(path, as_version=4)
    for cell in _code_cells(notebook):
        cell.outputs, cell.execution_count = [], None

    async def cell_done(**_: Any) -> None:
        if on_cell is not None:
            on_cell()

    client = notebook_client(
        notebook, cwd=path.resolve().parent, timeout=timeout, on_cell_executed=cell_done
    )
    start = time.perf_counter()
    error: str | None = None
    try:
        # The kernel's own log lines (a warning about unencrypted local TCP) would tear through
        # the progress bar; the cells' output comes over Jupyter's messages, not stderr.
        await client.async_execute(
            env=dict(os.environ if env is None else env), stderr=subprocess.DEVNULL
        )
    except CellExecutionError:
        error = _first_error(notebook) or "a cell raised"
    except (CellControlSignal, DeadKernelError) as failure:
        error = f"{type(failure).__name__}: {str(failure).strip().splitlines()[0]}"
    cells = _code_cells(notebook)
    ran = sum(cell.execution_count is not None for cell in cells)
    return NotebookRun(path, len(cells), ran, time.perf_counter() - start, error, notebook)


async def run_notebooks(
    paths: Sequence[Path],
    *,
    jobs: int = 1,
    env: Mapping[str, str] | None = None,
    progress: bool = True,
) -> list[NotebookRun]:
    """Run `paths`, `jobs` at a time, with a progress bar over all their code cells (on stderr)
    unless `progress` is false; return the runs in the order of `paths`."""
    check_int("jobs", jobs, minimum=1)
    total = sum(len(_code_cells(nbformat.read(path, as_version=4))) for path in paths)
    slots = asyncio.Semaphore(jobs)
    with tqdm(total=total, unit="cell", disable=not progress, file=sys.stderr) as bar:

        async def one(path: Path) -> NotebookRun:
            async with slots:
                bar.set_postfix_str(str(path), refresh=True)
                run = await run_notebook(path, env=env, on_cell=bar.update)
                bar.update(run.cells - run.ran)  # cells skipped after a failure
                return run

        return list(await asyncio.gather(*(one(path) for path in paths)))


def format_runs(runs: Iterable[NotebookRun]) -> str:
    """A plain-text table: notebook, cells run, time, status, and the first error."""
    rows = [("Notebook", "Cells", "Time", "Status", "First error")]
    rows += [
        (
            str(run.path),
            f"{run.ran}/{run.cells}",
            f"{run.seconds:.1f} s",
            "ok" if run.passed else "FAILED",
            shorten(run.error or "", 120),
        )
        for run in runs
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 if any notebook failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport check",
        description="Run every notebook headless in this environment and report which pass.",
    )
    parser.add_argument(
        "notebooks", nargs="*", type=Path, help="notebooks to run (default: notebooks/*.ipynb)"
    )
    parser.add_argument(
        "--solutions", action="store_true", help="also run notebooks/solutions/*.ipynb"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="notebooks run at once (default 1: timings stay clean)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    paths: list[Path] = list(args.notebooks)
    if not paths:
        folder = Path("notebooks")
        if not folder.is_dir():
            parser.error("no notebooks/ folder here: run from the repository root or name files")
        paths = find_notebooks(folder, solutions=args.solutions)
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        parser.error(f"not a notebook file: {', '.join(missing)}")
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 2
    runs = asyncio.run(run_notebooks(paths, jobs=args.jobs, progress=not args.no_progress))
    print(format_runs(runs))
    failed = sum(not run.passed for run in runs)
    print(f"\n{len(runs) - failed} of {len(runs)} notebooks passed.")
    return 1 if failed else 0
