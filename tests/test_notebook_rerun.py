"""Every notebook survives what learners do to it: cells run twice, long cells interrupted.

The checks themselves ride on strict nbval's run of every notebook (``tests/nbval_hygiene.py``):
each cell of a lesson runs a second time and must print what is stored again, a long one is then
interrupted halfway, and every later cell must still print what is stored. Here: that plugin
does fail what it should (a cell whose re-run counts on, a cell whose interruption leaves a
setting changed) and spares what it should (the cells a solution shares with its lesson run
once); and, after a notebook's cleanup cell (04, 05), a cell that needs what it removed says
which cell to re-run.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from xml.etree import ElementTree

import nbformat
import pytest
from nbformat import NotebookNode

from labsupport.instructor.kernels import notebook_client
from tests.test_notebook_hygiene import pytest_with_the_plugin

ROOT = Path(__file__).resolve().parent.parent
# pytest in a subprocess over trial notebooks, and lessons 04 and 05 executed: minutes.
pytestmark = [pytest.mark.slow, pytest.mark.notebook]


# ------------------------------------------------------------------ the plugin on trial notebooks


def _stored(source: str, printed: str) -> NotebookNode:
    cell: NotebookNode = nbformat.v4.new_code_cell(source, execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    return cell


SETUP = _stored(
    "import labsupport as lab\n\nupstream = lab.setup(latency=0.1)",
    "Offline lab: a simulated OpenAI API answers in this kernel (0.1 s per call). Nothing "
    "leaves this machine.\n",
)
COUNTS_ON = _stored('count = globals().get("count", 0) + 1\nprint(count)', "1\n")
#: Long enough to be interrupted; interrupted, it leaves `state` busy.
SLOW_CELL = 'import time\n\nstate = "busy"\ntime.sleep(1.5)\nstate = "idle"\nprint("done")'
TRIAL_LESSON = [
    SETUP,
    COUNTS_ON,  # a re-run prints 2
    _stored(SLOW_CELL, "done\n"),
    _stored("print(state)", "idle\n"),  # after the interrupted run: "busy"
    _stored('print("ok")', "ok\n"),
]
# The solution shares the lesson's first two cells: they run once there, so its count stays 1.
TRIAL_SOLUTION = [SETUP, COUNTS_ON, _stored('print("solved")', "solved\n")]


def _run_trial(folder: Path, *options: str) -> tuple[str, dict[str, str]]:
    """pytest with the plugin over the trial lesson and its solution: (its report, {cell id:
    whether it was interrupted} for each cell run a third time)."""
    (folder / "solutions").mkdir()
    for path, cells in (
        (folder / "01_trial.ipynb", TRIAL_LESSON),
        (folder / "solutions" / "01_trial.ipynb", TRIAL_SOLUTION),
    ):
        nbformat.write(nbformat.v4.new_notebook(cells=copy.deepcopy(cells)), path)
    junit = folder / "junit.xml"
    _, report = pytest_with_the_plugin(
        folder, "--nbval", "--junitxml", str(junit), *options, "01_trial.ipynb",
        "solutions/01_trial.ipynb",
    )  # fmt: skip
    interrupted = {
        f"{case.get('classname')}::{case.get('name')}": prop.get("value", "")
        for case in ElementTree.parse(junit).iter("testcase")
        for prop in case.iter("property")
        if prop.get("name") == "interrupted"
    }
    return report, interrupted


def test_the_plugin_fails_a_re_run_that_counts_on_and_an_interruption_that_leaves_state(
    tmp_path: Path,
) -> None:
    report, interrupted = _run_trial(tmp_path)

    # lesson: baseline, setup, slow, ok and probe pass; solution: all five pass
    assert "2 failed, 10 passed" in report, report[-3000:]
    assert "FAILED 01_trial.ipynb::Cell 1" in report, report[-3000:]
    assert "FAILED 01_trial.ipynb::Cell 3" in report, report[-3000:]
    assert "Cell 1: on its second run (a re-run must print what the first run printed)" in report
    assert interrupted == {"01_trial.ipynb::Cell 2": "True"}


def test_nbval_once_runs_each_cell_once(tmp_path: Path) -> None:
    report, interrupted = _run_trial(tmp_path, "--nbval-once")

    assert "12 passed" in report, report[-3000:]
    assert interrupted == {}


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
    # The last cell is the only one that may raise (notebook_client fails on any other).
    notebook.cells[-1].metadata.setdefault("tags", []).append("raises-exception")
    asyncio.run(notebook_client(notebook, cwd=path.parent).async_execute())
    raised = [
        [f"{out.ename}: {out.evalue}" for out in cell.outputs if out.output_type == "error"]
        for cell in notebook.cells
    ]
    assert raised[:-1] == [[]] * (user + 1)
    assert raised[-1] == [
        "RuntimeError: the last cell of this notebook removed the audit folder: re-run the cell "
        "that creates it (`workdir = tempfile.TemporaryDirectory()`"
        + (", under 'A durable audit log')" if name.startswith("04") else ", above)")
    ]
