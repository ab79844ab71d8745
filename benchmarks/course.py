"""How long the whole course takes under strict nbval: the time a CI run or an instructor waits.

Runs `pytest notebooks/` (every learner and solution notebook, strict nbval with the project's
sanitizer) with pytest's two workers (the project's setting), twice: once with each cell run
once (`--nbval-once`: the course itself, against the target), and once as `make test` runs it
(each lesson cell a second time, long ones interrupted: tests/nbval_hygiene.py). Prints both
wall times. Not part of the test suite. Run: `python benchmarks/course.py`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The architecture issue's target for the whole course with the project's two workers.
TARGET_SECONDS = 40.0


def timed_run(*options: str) -> tuple[float, str]:
    """Wall seconds of one strict nbval run over notebooks/, and pytest's closing line."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "notebooks/",
         "--numprocesses=2", *options],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    closing = lines[-1] if lines else "(no output)"
    if done.returncode != 0:
        raise SystemExit(f"pytest failed ({done.returncode}): {closing}\n{done.stdout[-2000:]}")
    return wall, closing


def main() -> int:
    print(f"The course under strict nbval (target ≤ {TARGET_SECONDS:.0f} s with 2 workers)")
    missed = 0
    runs: list[tuple[str, list[str], bool]] = [
        ("each cell once", ["--nbval-once"], True),
        ("as make test runs it", [], False),
    ]
    for label, options, targeted in runs:
        wall, closing = timed_run(*options)
        verdict = "" if not targeted else "ok" if wall <= TARGET_SECONDS else "MISSED"
        missed += verdict == "MISSED"
        print(f"{label:<24}{wall:>7.1f} s  {verdict:<7}{closing}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
