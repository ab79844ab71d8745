"""tools/other_pythons.py: what it runs in a Debian root, how it counts, that `make pythons` (not
`make test` or, until it is green, `make check`) runs it, and that `requires-python` admits
exactly the Pythons tested. The roots themselves are exercised by `make pythons`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import other_pythons
import pytest
from packaging.specifiers import SpecifierSet

from labsupport.instructor import doctor

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"
PYPROJECT = MAKEFILE.with_name("pyproject.toml")


def _recipe(target: str) -> list[str]:
    """The recipe lines of `target` in the Makefile."""
    lines = MAKEFILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{target}:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_check_ends_with_the_other_pythons_and_make_test_stays_on_one() -> None:
    """`make check` runs them last, after the venv's own tiers; `make test` never."""
    assert not any("OTHER_PYTHONS" in line or "other_pythons" in line for line in _recipe("test"))
    assert _recipe("check")[-1] == "$(OTHER_PYTHONS)"
    assert _recipe("pythons") == ["$(OTHER_PYTHONS)"]


def test_the_tests_run_with_only_loopback_and_the_install_with_the_network() -> None:
    suite = other_pythons.SUITES["sid"]
    tests = other_pythons.in_root(suite, "python -m pytest", network=False)
    install = other_pythons.in_root(suite, "uv pip sync", network=True)
    assert tests[:3] == ["unshare", "--mount", "--net"]
    assert tests[-1].startswith("ip link set lo up && ")
    assert "LAB_NETNS=loopback-only" in tests[-1]
    assert "--net" not in install
    assert "LAB_NETNS" not in install[-1]
    # Nothing may skip in a root: it has every program the tests need.
    assert "LAB_NO_SKIP=1" in tests[-1]


def test_counts_come_from_the_junit_report(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    report.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">'
        '<testsuite name="pytest" errors="1" failures="2" skipped="3" tests="50" time="9.0">'
        "</testsuite></testsuites>"
    )
    assert other_pythons.junit_counts(report) == other_pythons.Counts(44, 3, 3)
    assert other_pythons.junit_counts(tmp_path / "never-written.xml") is None
    report.write_text("<testsuites><testsuite tests=")  # pytest stopped while writing
    assert other_pythons.junit_counts(report) is None


@pytest.mark.parametrize(
    ("status", "counts", "row"),
    [
        (0, other_pythons.Counts(126, 4, 0), "126 passed, 4 skipped, 0 failed"),
        (1, other_pythons.Counts(262, 0, 2), "262 passed, 0 skipped, 2 failed"),
        (4, None, "no results"),
    ],
)
def test_a_failed_part_says_so_in_the_table(
    status: int, counts: other_pythons.Counts | None, row: str
) -> None:
    outcome = other_pythons.Outcome("sid", "notebooks", status, 61.0, 40.0, counts)
    assert row in outcome.row()
    assert "61 s (40 s CPU)" in outcome.row()
    assert outcome.row().endswith("ok") == (status == 0)


def test_the_mirror_is_the_main_archive_of_this_machines_apt(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert other_pythons.debian_mirror(sources) == "http://mirror.example/debian"


def test_requires_python_admits_what_is_tested_and_nothing_newer() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    required = SpecifierSet(project["requires-python"])
    tested = ["3.11", *(suite.python for suite in other_pythons.SUITES.values())]
    assert all(f"{version}.0" in required for version in tested)
    newest = max(tested, key=lambda version: tuple(map(int, version.split("."))))
    untested = f"3.{int(newest.split('.')[1]) + 1}.0"
    assert untested not in required
    classified = {
        c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.fullmatch(r".* :: 3\.\d+", c)
    }
    assert classified == set(tested)
    # The doctor's fallback for a checkout whose package is not installed says the same.
    assert project["requires-python"] == doctor.REQUIRES_PYTHON
