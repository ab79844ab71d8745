"""tools/drift.py: naming what moved, finding the failed tests in the output. (It reads
locks with `labsupport.instructor.doctor.read_lock`, tested in test_doctor.py.)"""

from __future__ import annotations

import importlib

import drift


def test_moved_names_upgrades_additions_and_removals() -> None:
    old = {"openai": "3.57.0", "gone": "1.0", "same": "2.0"}
    new = {"openai": "3.58.1", "fresh": "0.1", "same": "2.0"}
    assert drift.moved(old, new) == ["+ fresh 0.1", "- gone 1.0", "  openai 3.57.0 → 3.58.1"]


def test_failed_tests_are_found_whole_even_with_spaces_in_their_ids() -> None:
    summary = (
        "FAILED tests/a.py::t[x - y < z] - AssertionError: [1] != [2]\n"
        "FAILED tests/d.py::w[ok]\n"
        "ERROR tests/b.py::u\n"
        "PASSED tests/c.py::v\n"
    )
    assert drift._FAILED.findall(summary) == [
        "tests/a.py::t[x - y < z]",
        "tests/d.py::w[ok]",
        "tests/b.py::u",
    ]


def test_every_rerun_of_the_notebooks_is_left_to_make_check() -> None:
    """Each of them executes every notebook again (minutes): marked `notebook`, which drift's
    selection leaves out; `make check` runs them after a move."""
    reruns = sorted(drift.REPO_ROOT.glob("tests/test_notebook_rerun*.py"))
    assert reruns
    for path in reruns:
        module = importlib.import_module(f"tests.{path.stem}")
        marks = getattr(module, "pytestmark", [])
        assert "notebook" in {mark.name for mark in marks}, path.name
    assert drift.TIERS == "not notebook"
