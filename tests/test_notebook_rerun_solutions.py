"""The solution notebooks survive what learners do to them: see test_notebook_rerun.py, whose
checks these are; a file of their own, so that xdist runs them beside the learner notebooks."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_notebook_rerun import ROOT, check_notebook, notebook_id

SOLUTION_NOTEBOOKS = sorted((ROOT / "notebooks" / "solutions").glob("0[0-6]_*.ipynb"))


@pytest.mark.parametrize("path", SOLUTION_NOTEBOOKS, ids=notebook_id)
@pytest.mark.timeout(600)
def test_solution_cells_run_twice_and_interrupted_keep_their_verdicts(path: Path) -> None:
    """Run twice, interrupted, and no port left bound, as test_notebook_rerun.py says."""
    check_notebook(path)
