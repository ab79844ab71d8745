"""The solution notebooks survive what learners do to them: see test_notebook_rerun.py, whose
checks these are; a file of their own, so that xdist runs them beside the learner notebooks.

A solution notebook is its learner notebook with the exercise cell swapped for the solution.
The cells before that one are the learner notebook's, already run twice and interrupted there,
so here they run once (still compared with the stored outputs) to build the kernel's state;
from the first cell that differs on, every cell is run twice and, if long, interrupted.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from test_notebook_rerun import ROOT, check_notebook, notebook_id

SOLUTION_NOTEBOOKS = sorted((ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.ipynb"))


def first_own_cell(solution: Path) -> int:
    """How many code cells the solution notebook shares with its learner notebook, in order."""

    def code(path: Path) -> list[str]:
        notebook = nbformat.read(path, as_version=4)
        return [cell.source for cell in notebook.cells if cell.cell_type == "code"]

    shared = 0
    for theirs, ours in zip(code(ROOT / "notebooks" / solution.name), code(solution), strict=False):
        if theirs != ours:
            break
        shared += 1
    return shared


@pytest.mark.parametrize("path", SOLUTION_NOTEBOOKS, ids=notebook_id)
@pytest.mark.timeout(600)
def test_solution_cells_run_twice_and_interrupted_keep_their_verdicts(path: Path) -> None:
    """From the solution cell on: run twice, interrupted; and no port left bound at the end."""
    check_notebook(path, repeat_from=first_own_cell(path))
