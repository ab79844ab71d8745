"""Every notebook survives what learners do to it: cells run twice, long cells interrupted.

The checks themselves ride on strict nbval's run of every notebook (``tests/nbval_hygiene.py``):
each cell of a lesson runs a second time and must print what is stored again, a long one is then
interrupted halfway, and every later cell must still print what is stored. Here: that plugin
does fail what it should (a cell whose re-run counts on, a cell whose interruption leaves a
setting changed) and spares what it should (the cells a solution shares with its lesson run
once); and "Run All, then fix the exercise": after a whole notebook, its exercise cells and its
check run again and the solution passes.
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


# "Run All, then fix the exercise": after a whole notebook ran, its exercise cells and its check
# run again and the solution still passes: no cell after them closed or removed what they use.
SOLVED = sorted(path.name for path in (ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("name", SOLVED)
@pytest.mark.timeout(600)
def test_after_run_all_the_exercise_and_its_check_run_again_and_pass(name: str) -> None:
    path = ROOT / "notebooks" / "solutions" / name
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    solution = [i for i, cell in enumerate(code) if "solution" in cell.metadata.get("tags", [])]
    checks = [i for i, cell in enumerate(code) if "await lab.checks.check_" in cell.source]
    assert solution and checks, f"{name}: no solution cell or no check cell"
    again = [*solution, checks[-1]]
    client = notebook_client(nbformat.v4.new_notebook(cells=code), cwd=path.parent)

    async def run_all_then_again() -> list[str]:
        async with client.async_setup_kernel():
            for index, cell in enumerate(client.nb.cells):
                await client.async_execute_cell(cell, index)
            for index in again:
                await client.async_execute_cell(client.nb.cells[index], index)
        return [_printed(client.nb.cells[index]) for index in again]

    printed = asyncio.run(run_all_then_again())
    assert "✅ PASSED" in printed[-1], printed[-1]


def _printed(cell: NotebookNode) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return "".join(parts)
