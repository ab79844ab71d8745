"""The course map in notebook 00 lists every lesson in course/, and only those, in order; the
capstone's recap points to the lesson after it."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parent.parent
MAP_ROW = re.compile(r"^\| (\d\d) · ([^|]+?) \|", re.MULTILINE)


def lessons() -> list[str]:
    """The numbers of the lessons after 00, from their sources' names."""
    return sorted(path.name[:2] for path in (REPO_ROOT / "course").glob("[0-9][0-9]_*.py"))[1:]


def markdown(notebook: str) -> str:
    stored = nbformat.read(REPO_ROOT / "notebooks" / notebook, as_version=4)
    return "\n".join(cell.source for cell in stored.cells if cell.cell_type == "markdown")


def test_the_course_map_lists_every_lesson_in_order() -> None:
    rows = [number for number, _ in MAP_ROW.findall(markdown("00_start_here.ipynb"))]
    assert rows == lessons()


def test_the_capstone_recap_points_to_notebook_07() -> None:
    recap = markdown("06_capstone.ipynb").rsplit("## Recap", 1)[-1]
    assert "Notebook 07" in recap
    assert "07" in lessons()
