"""tools/drift.py: naming what moved, finding the failed tests in the output. (It reads
locks with `labsupport.instructor.doctor.read_lock`, tested in test_doctor.py.)"""

from __future__ import annotations

import http.server
import importlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import drift
import httpx
import pytest
import releases
from loopback_http import http_served
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from labsupport.network import free_port


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


# -- the release report (tools/releases.py), against a fake index on loopback -----------------

UPLOADED = {
    # name: [(filename, upload time, yanked)]
    "fresh": [
        ("fresh-2.0.0.tar.gz", "2026-11-01T10:00:00.000Z", False),
        ("fresh-2.0.0-py3-none-any.whl", "2026-11-01T09:30:00.000Z", False),
        ("fresh-1.9.0-py3-none-any.whl", "2026-06-01T09:30:00.000Z", False),
        ("fresh-3.0.0rc1-py3-none-any.whl", "2026-11-20T09:30:00.000Z", False),  # a pre-release
        ("fresh-2.1.0-py3-none-any.whl", "2026-11-10T09:30:00.000Z", True),  # yanked
    ],
    "frozen": [("frozen-0.28.0-py3-none-any.whl", "2024-04-16T08:00:00.000Z", False)],
}


class FakeIndex(http.server.BaseHTTPRequestHandler):
    """The JSON simple API (PEP 691, with PEP 700's upload times) for UPLOADED's projects."""

    accepts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        FakeIndex.accepts.append(self.headers.get("Accept", ""))
        name = self.path.removeprefix("/simple/").strip("/")
        if name not in UPLOADED:
            self.send_error(404)
            return
        files = [
            {"filename": f, "url": f"../../files/{f}", "hashes": {}, "upload-time": t, "yanked": y}
            for f, t, y in UPLOADED[name]
        ]
        body = json.dumps({"meta": {"api-version": "1.1"}, "name": name, "files": files}).encode()
        self.send_response(200)
        self.send_header("Content-Type", releases.SIMPLE_JSON)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


@pytest.fixture
def fake_index() -> Iterator[str]:
    with http_served(FakeIndex) as base:
        yield f"{base}/simple"


def test_the_newest_final_release_and_its_first_upload_come_from_the_index(
    fake_index: str,
) -> None:
    with httpx.Client() as client:
        newest = releases.newest_release(client, fake_index, "Fresh")
        assert releases.newest_release(client, fake_index, "absent") is None
    # Not the pre-release, not the yanked one; dated by its first file.
    assert newest == (Version("2.0.0"), datetime(2026, 11, 1, 9, 30, tzinfo=UTC))
    assert set(FakeIndex.accepts) == {releases.SIMPLE_JSON}


def test_a_frozen_or_held_back_dependency_is_flagged_and_a_lookup_failure_named(
    fake_index: str,
) -> None:
    allowed = {"fresh": SpecifierSet(">=1.9,<2"), "frozen": SpecifierSet(">=0.28,<1")}
    locked = {"fresh": "1.9.0", "frozen": "0.28.0"}
    report = releases.release_report(
        {**allowed, "absent": SpecifierSet()}, [fake_index], locked, locked
    )
    table = releases.format_report(report, now=datetime(2026, 12, 6, tzinfo=UTC)).splitlines()
    assert table[0].split() == ["dependency", "locked", "resolvable", "newest", "released"]
    absent, fresh, frozen = table[1:]
    assert absent.split()[:5] == ["absent", "-", "-", "?", "?"]
    assert absent.endswith("unknown (on no index)")
    assert fresh.split()[:6] == ["fresh", "1.9.0", "1.9.0", "2.0.0", "2026-11-01", "(34"]
    assert fresh.endswith("newest outside pyproject's <2,>=1.9")  # not frozen, nor held back
    assert frozen.endswith("no release for 963 days: frozen?")

    # The range allows 2.0.0, and the resolver still took 1.9.0: another dependency held it.
    wide = {"fresh": SpecifierSet(">=1.9,<3")}
    (held,) = releases.release_report(wide, [fake_index], locked, {"fresh": "1.9.0"})
    (resolved,) = releases.release_report(wide, [fake_index], locked, {"fresh": "2.0.0"})
    assert held.held_back and not held.outside_range and not resolved.held_back
    assert "held back by another dependency" in releases.format_report([held])

    closed = f"http://127.0.0.1:{free_port()}/simple"  # nobody listens: refused
    (unreachable,) = releases.release_report({"fresh": SpecifierSet()}, [closed], {}, {}, timeout=5)
    assert unreachable.newest is None and unreachable.problem.startswith("ConnectError")


def test_the_indexes_are_those_uv_wrote_into_the_lock_and_extras_add_dependencies(
    tmp_path: Path,
) -> None:
    lock = "# via uv\n--index-url http://127.0.0.1:8/simple\n--extra-index-url file:///x\nuv==1\n"
    assert releases.index_urls(lock) == ["http://127.0.0.1:8/simple", "file:///x"]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "p"\ndependencies = ["Redis>=8.2,<9"]\n'
        '[project.optional-dependencies]\ntest = ["pytest>=9,<10", "redis!=8.2.1"]\n'
    )
    assert releases.direct_dependencies(pyproject, []) == {"redis": SpecifierSet(">=8.2,<9")}
    with_test = releases.direct_dependencies(pyproject, ["test"])
    assert with_test == {
        "redis": SpecifierSet(">=8.2,<9,!=8.2.1"),
        "pytest": SpecifierSet(">=9,<10"),
    }
    with pytest.raises(ValueError, match=r"^pyproject\.toml has no extra named 'docs'$"):
        releases.direct_dependencies(pyproject, ["docs"])


def test_drift_prints_the_report_for_the_index_its_lock_names(
    fake_index: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"--index-url {fake_index}\nredis==8.2.0\n")
    drift.print_releases(lock, ["test"], stale_after=365)
    out = capsys.readouterr().out
    # Every direct dependency of the project has a row; none is on the fake index.
    names = set(releases.direct_dependencies(drift.REPO_ROOT / "pyproject.toml", ["test"]))
    rows = out.strip().splitlines()[2:]  # after the title and the header
    assert {row.split()[0] for row in rows} == names
    assert all("unknown (on no index)" in row for row in rows)
    (redis,) = [row for row in rows if row.split()[0] == "redis"]
    locked = drift.read_lock(drift.REPO_ROOT / "requirements.lock")["redis"]
    assert redis.split()[1:3] == [locked, "8.2.0"]  # the lock's pin, then the upgraded lock's

    lock.write_text("redis==8.2.0\n")  # uv was told to use no index
    drift.print_releases(lock, [], stale_after=365)
    assert "the lock names no index" in capsys.readouterr().out
