"""Every notebook survives what learners do to it: cells run twice, long cells interrupted.

nbval (run by the same `pytest`) proves that a notebook run once, top to bottom, prints what is
stored. Learners do not run notebooks that way: they re-run a cell to see it again, and stop a
slow one with ■ (JupyterLab sends SIGINT to the kernel). One execution per notebook (learner and
solution, every lesson) checks both, cell by cell:

* **run twice**: each code cell runs twice in a row; neither run raises, and both print what the
  stored notebook printed (compared as nbval compares: text outputs, images skipped, after the
  sanitizer of notebooks/nbval_sanitize.cfg). So a re-run counts from where it starts, restarts
  what it started, and repeats its verdicts.
* **interrupted**: a cell whose second run took longer than `LONG_CELL` seconds runs a third time
  and is interrupted halfway through (`interrupt_kernel()`, SIGINT, as Jupyter does). Every later
  cell still prints what is stored: an interrupted cell leaves no setting changed, no server
  running and no count off.
* **no port left bound**: when the notebook is done, the kernel listens on no TCP port it did
  not listen on before its first cell (its own Jupyter channels).

And after a notebook's cleanup cell (04, 05), a cell that needs what it removed says which cell
to re-run.

The notebook's cells are executed in a fresh kernel of this environment, from the notebook's
folder, as nbval does; nothing is written back.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode
from nbval.plugin import coalesce_streams, get_sanitize_patterns

from labsupport.instructor.kernels import KERNEL_NAME, CurrentEnvKernelManager

ROOT = Path(__file__).resolve().parent.parent
LEARNER_NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SANITIZE = get_sanitize_patterns((ROOT / "notebooks" / "nbval_sanitize.cfg").read_text())
#: A cell whose (second) run takes longer than this is also interrupted halfway through.
LONG_CELL = 1.0
CELL_TIMEOUT = 120
#: What nbval does not compare either.
UNCOMPARED = frozenset({"image/png", "image/jpeg", "application/vnd.jupyter.widget-view+json"})
RAISES_TAG = "raises-exception"


def _sanitize(text: str) -> str:
    for pattern, replacement in SANITIZE:
        text = re.sub(pattern, replacement, text)
    return text


def printed(outputs: list[NotebookNode]) -> dict[str, list[str]]:
    """A cell's outputs as nbval compares them: per stream or MIME type, the sanitized texts in
    order (streams coalesced, images left out); an error as "Type: message"."""
    found: dict[str, list[str]] = defaultdict(list)
    for output in coalesce_streams(copy.deepcopy(outputs)):
        if output.output_type == "stream":
            found[output.name].append(_sanitize(output.text))
        elif output.output_type == "error":
            found["error"].append(f"{output.ename}: {_sanitize(output.evalue)}")
        else:
            for mime, value in output.get("data", {}).items():
                if mime not in UNCOMPARED:
                    found[mime].append(_sanitize(value if isinstance(value, str) else str(value)))
    return dict(found)


@dataclass
class Exercise:
    """What went wrong while exercising one notebook, and what was interrupted."""

    problems: list[str] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)
    seconds: float = 0.0


def _listening_ports(client: NotebookClient) -> set[int]:
    """TCP ports the kernel process listens on."""
    km = client.km
    assert km is not None and km.provisioner is not None
    connections = psutil.Process(km.provisioner.pid).net_connections(kind="tcp")  # type: ignore[attr-defined]
    return {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}


async def exercise(path: Path, *, repeat_from: int = 0) -> Exercise:
    """Run `path` cell by cell as the module docstring says, and collect what went wrong. Code
    cells before the `repeat_from`-th (counted from 0) run once only, still compared."""
    stored = nbformat.read(path, as_version=4)
    notebook = copy.deepcopy(stored)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=CurrentEnvKernelManager,
        allow_errors=True,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    result = Exercise()
    start = time.perf_counter()
    async with client.async_setup_kernel():
        own_ports = _listening_ports(client)  # the kernel's Jupyter channels, before any cell
        bound_since: dict[int, int] = {}  # port → the cell after which it was first seen
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            number = sum(c.cell_type == "code" for c in notebook.cells[: index + 1])
            expected = printed(stored.cells[index].outputs)
            may_raise = RAISES_TAG in cell.metadata.get("tags", ())
            took = 0.0
            runs = ("first run", "second run") if number > repeat_from else ("only run",)
            for run in runs:
                began = time.perf_counter()
                await client.async_execute_cell(cell, index)
                took = time.perf_counter() - began
                got = printed(cell.outputs)
                if "error" in got and not may_raise:
                    result.problems.append(f"cell {number}, {run}: raised {got['error'][0]}")
                elif got != expected:
                    result.problems.append(
                        f"cell {number}, {run}: printed\n{_show(got)}\n  instead of\n"
                        f"{_show(expected)}"
                    )
            if took > LONG_CELL and number > repeat_from:
                running = asyncio.ensure_future(client.async_execute_cell(cell, index))
                done, _ = await asyncio.wait({running}, timeout=took / 2)
                if not done:
                    await client.km.interrupt_kernel()  # type: ignore[union-attr]
                    result.interrupted.append(number)
                await running
            for port in _listening_ports(client) - own_ports:
                bound_since.setdefault(port, number)
        ports = _listening_ports(client) - own_ports
        if ports and not result.problems:
            since = ", ".join(f"{port} (since cell {bound_since.get(port)})" for port in ports)
            result.problems.append(
                f"ports still bound at the end: {since}; cells interrupted: {result.interrupted}"
            )
    result.seconds = time.perf_counter() - start
    return result


def _show(found: dict[str, list[str]]) -> str:
    return "\n".join(f"  [{key}] {text!r}" for key, texts in found.items() for text in texts)


def check_notebook(path: Path, *, repeat_from: int = 0) -> None:
    """Exercise `path`; fail with every problem found, one per line."""
    result = asyncio.run(exercise(path, repeat_from=repeat_from))
    # Shown with `pytest -s`: which cells were interrupted, and what the notebook cost.
    print(f"{path.name}: interrupted cells {result.interrupted}, {result.seconds:.1f} s")
    if result.problems:
        pytest.fail("\n".join(result.problems), pytrace=False)


def notebook_id(path: Path) -> str:
    return str(path.relative_to(ROOT / "notebooks"))


# The solution notebooks are in test_notebook_rerun_solutions.py: one file per xdist worker
# (`--dist loadfile`), so the two halves run side by side.
@pytest.mark.parametrize("path", LEARNER_NOTEBOOKS, ids=notebook_id)
@pytest.mark.timeout(600)
def test_learner_cells_run_twice_and_interrupted_keep_their_verdicts(path: Path) -> None:
    """Run twice, interrupted, and no port left bound, as the module docstring says."""
    check_notebook(path)


# After the last cell removed the notebook's audit folder, a cell that needs it says which cell
# to re-run, instead of aiosqlite's "unable to open database file".
AFTER_CLEANUP = [
    ("04_background_tasks.ipynb", "rows_before = count_rows()"),
    ("05_lifespan.ipynb", "async with lab.asgi_client(app) as client:"),
]


@pytest.mark.parametrize(("name", "needs_the_folder"), AFTER_CLEANUP)
@pytest.mark.timeout(300)
def test_a_cell_run_after_the_cleanup_cell_says_what_to_re_run(
    name: str, needs_the_folder: str
) -> None:
    """The cells before one that uses the database, then the cleanup cell, then that one."""
    path = ROOT / "notebooks" / name
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    user = next(i for i, cell in enumerate(code) if needs_the_folder in cell.source)
    (cleanup,) = [cell for cell in code if "workdir.cleanup()" in cell.source]
    notebook.cells = [*code[:user], cleanup, code[user]]
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=CurrentEnvKernelManager,
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    asyncio.run(client.async_execute())
    printed_before = [printed(cell.outputs).get("error") for cell in notebook.cells[:-1]]
    assert printed_before == [None] * (user + 1)
    assert printed(notebook.cells[-1].outputs)["error"] == [
        "RuntimeError: the last cell of this notebook removed the audit folder: re-run the cell "
        "that creates it (`workdir = tempfile.TemporaryDirectory()`"
        + (", under 'A durable audit log')" if name.startswith("04") else ", above)")
    ]
