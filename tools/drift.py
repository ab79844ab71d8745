"""`make drift`: would the newest releases that pyproject.toml allows break the course?

The course runs on `requirements.lock`, so a new `openai` (about one a week) changes nothing until
someone moves the lock. This tool tries that move in a scratch space, leaving the repository and
`.venv` untouched:

1. resolve the newest versions pyproject's ranges allow (`uv pip compile --upgrade`) into a
   temporary lock, for this platform and Python;
2. build a scratch virtual environment from it in a temporary directory, with labsupport;
3. run the tests there, all but those marked `notebook` (the notebook executions are left to
   `make check` after the move: they take most of the suite's minutes and test the same
   packages); the npm tools some tests drive are the repository's own `node_modules/`
   (`make node-tools`);
4. print which packages moved (old → new), which appeared or went, and which tests broke;
5. and for each direct dependency (pyproject's, and the extras asked for), its newest release
   and that release's date, from the index uv resolved against (tools/releases.py): a
   dependency with no release for a year is flagged, and so is one whose newest release is
   outside pyproject's range, before it holds another back.

The exit status is 0 when every test passed, 1 when one broke (or the environment could not be
built). Run it weekly; when it is green, move the lock with `make lock LOCK_FLAGS=--upgrade`.

    python tools/drift.py --extra test
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from releases import (
    STALE_AFTER_DAYS,
    direct_dependencies,
    format_report,
    index_urls,
    release_report,
)

from labsupport.instructor.doctor import read_lock

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
#: The tests run, by marker (pyproject.toml): all but those that execute the notebooks, minutes
#: each; `make check` runs them after the move.
TIERS: Final = "not notebook"
#: Tests that compare the environment with requirements.lock: by design not true here.
LOCK_TESTS: Final = ("tests/test_doctor.py::test_doctor_passes_on_this_machine",)
# pytest's short summary: "FAILED tests/x.py::test[param with spaces] - message".
_FAILED: Final = re.compile(
    r"^(?:FAILED|ERROR) ([^\s\[]+(?:\[.*?\](?= - |$))?)(?: - .*)?$", re.MULTILINE
)


def moved(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """One line per package whose pin differs: `name old → new`, `+ name new`, `- name old`."""
    lines = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None:
            lines.append(f"+ {name} {after}")
        elif after is None:
            lines.append(f"- {name} {before}")
        else:
            lines.append(f"  {name} {before} → {after}")
    return lines


def _run(
    command: Sequence[str], *, cwd: Path, capture_output: bool = False
) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=cwd, text=True, check=False, capture_output=capture_output)


def print_releases(lock: Path, extras: Sequence[str], stale_after: int) -> None:
    """The direct dependencies' newest releases and their dates (see tools/releases.py)."""
    indexes = index_urls(lock.read_text(encoding="utf-8"))
    dependencies = direct_dependencies(REPO_ROOT / "pyproject.toml", extras)
    print(f"\nDirect dependencies: newest release, and when ({len(dependencies)}):")
    if not indexes:
        print("  unknown: the lock names no index (uv was told not to use one)")
        return
    locked, resolvable = read_lock(REPO_ROOT / "requirements.lock"), read_lock(lock)
    report = release_report(dependencies, indexes, locked, resolvable)
    print(format_report(report, stale_after_days=stale_after))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 when the upgraded environment passes the tests."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--extra", action="append", default=[], help="pyproject extra to include")
    parser.add_argument("--uv", default=str(Path(sys.executable).parent / "uv"), help="uv to use")
    parser.add_argument(
        "--workers", default="logical", help="pytest-xdist workers (default: one per logical core)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--stale-after",
        type=int,
        default=STALE_AFTER_DAYS,
        help="flag a direct dependency with no release for this many days",
    )
    args = parser.parse_args(argv)

    old = read_lock(REPO_ROOT / "requirements.lock")
    scratch = Path(tempfile.mkdtemp(prefix="async-llm-lab-drift-"))
    lock, venv = scratch / "requirements.lock", scratch / "venv"
    python = venv / "bin" / "python"
    extras = [flag for extra in args.extra for flag in ("--extra", extra)]
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # As `make lock` resolves (universal, for this minor version), so what moved is what moving
    # the lock would move; `uv pip sync` installs the lines whose markers fit this machine. The
    # lock names the indexes uv used (its configuration's): the release report asks them.
    steps = [
        [
            args.uv,
            "pip",
            "compile",
            "pyproject.toml",
            *extras,
            "--upgrade",
            "--universal",
            "--quiet",
            "--python-version",
            python_version,
            "--emit-index-url",
            "-o",
            str(lock),
        ],
        [args.uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [args.uv, "pip", "sync", "--quiet", "--python", str(python), str(lock)],
        # Not editable: nothing of the scratch environment is written into the repository.
        [args.uv, "pip", "install", "--quiet", "--no-deps", "--python", str(python), "."],
        # What `make venv` sets up after installing: the kernels' hint for a missing setup().
        [str(python), "-m", "labsupport.kernel_hint"],
    ]
    try:
        for step in steps:
            if _run(step, cwd=REPO_ROOT).returncode != 0:
                print("\ndrift: could not build the upgraded environment (see above)")
                return 1
        changes = moved(old, read_lock(lock))
        print(f"\nPackages that moved ({len(changes)}):")
        print("\n".join(changes) if changes else "  none: the lock is up to date")
        print_releases(lock, args.extra, args.stale_after)
        pytest = [str(python), "-m", "pytest", "-p", "no:cacheprovider"]
        selected = ["tests", "-m", TIERS]
        selected += [flag for test in LOCK_TESTS for flag in ("--deselect", test)]
        tests = _run(
            [*pytest, *selected, "--numprocesses", args.workers, "-q", "--no-header"],
            cwd=REPO_ROOT,
            capture_output=True,
        )
        print(tests.stdout[-3000:], tests.stderr[-2000:], sep="\n")
        failed = sorted(set(_FAILED.findall(tests.stdout)))
        broken = failed
        if failed:
            # A timing test can miss on a busy machine; only a second failure, alone, counts.
            again = _run(
                [*pytest, *failed, "--numprocesses", "0", "-q", "--no-header"],
                cwd=REPO_ROOT,
                capture_output=True,
            )
            broken = sorted(set(_FAILED.findall(again.stdout)))
            if again.returncode not in (0, 1):  # the re-run itself went wrong: count them all
                print(again.stdout[-2000:], again.stderr[-2000:], sep="\n")
                broken = failed
            flaky = sorted(set(failed) - set(broken))
            if flaky:
                print("Failed once, passed alone (load-sensitive, not counted):")
                print("\n".join(f"  {test}" for test in flaky))
        if not broken:
            print("drift: green. Move the lock: make lock LOCK_FLAGS=--upgrade && make check")
            return 0
        print(f"drift: {len(broken)} test(s) broke with the newest versions:")
        print("\n".join(f"  {test}" for test in broken) or "  (see the pytest output above)")
        return 1
    finally:
        if args.keep:
            print(f"scratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
