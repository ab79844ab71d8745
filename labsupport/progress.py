"""Progress without a server: every check leaves one line in a file in the learner's home.

Each time a course check returns its `CheckResult`, `record` appends one JSON line to
``~/.async-llm-lab/progress.jsonl``: when, which user, which notebook and exercise, the verdict
and, for a failure, its cause. Nothing leaves the machine, and nothing names the learner but
the OS account (on a JupyterHub, the hub's user name). Two commands read these files:

    python -m labsupport progress              your table, and what to do next
    python -m labsupport class-report PATH...  learner × exercise, common causes, time spent

An instructor on a JupyterHub points ``class-report`` at the users' homes (``/home/*``): each PATH
is a progress file, a home that holds one, or a folder of homes.

``LAB_PROGRESS_FILE`` moves the file; ``LAB_PROGRESS=off`` turns recording off (the test suite
does, so that `make test` never adds solved exercises to a learner's progress). Recording never
breaks a check: if the file cannot be written, the check says so once and carries on.
"""

from __future__ import annotations

import argparse
import getpass
import itertools
import json
import os
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from ._text import shorten

__all__ = [
    "COURSE_EXERCISES",
    "Attempt",
    "ProgressLog",
    "class_report",
    "learner_table",
    "progress_file",
    "read_progress",
    "record",
]

FILE_VARIABLE = "LAB_PROGRESS_FILE"
SWITCH_VARIABLE = "LAB_PROGRESS"
#: Where a progress file lives inside a home folder.
HOME_RELATIVE = Path(".async-llm-lab") / "progress.jsonl"
#: The format of a line; a reader skips (and reports) lines of another one.
FORMAT = 1

#: The notebook of each course checker, by the checker's module in `labsupport.checks`, in course
#: order. Each public check names its notebook (`@recorded(notebook=…)`), which must be here; a
#: result built anywhere else (a test, a learner's own experiment) is not recorded.
COURSE_EXERCISES: dict[str, str] = {
    "async_client": "01_async_client",
    "gather": "02_gather",
    "semaphore": "03_semaphore",
    "background": "04_background_tasks",
    "lifespan": "05_lifespan",
    "shared_limit": "07_beyond_one_process",
    "streaming": "08_streaming",
}
_CHECKS_PACKAGE = "labsupport.checks."
#: Gaps between two checks longer than this are breaks, not time spent on the course.
BREAK = timedelta(minutes=20)


class Result(Protocol):
    """What `record` reads from a `CheckResult` (`cause` may be missing: then it is null)."""

    @property
    def exercise(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def summary(self) -> str: ...


@dataclass(frozen=True)
class Attempt:
    """One recorded check: one line of a progress file."""

    time: datetime
    user: str
    notebook: str
    exercise: str
    passed: bool
    cause: str | None
    summary: str


@dataclass(frozen=True)
class ProgressLog:
    """A progress file as read: its attempts in file order, and the lines that could not be read
    (``"line 3: not JSON"``), which a report mentions instead of failing on them."""

    path: Path
    attempts: tuple[Attempt, ...]
    problems: tuple[str, ...]

    @property
    def learner(self) -> str:
        """The OS user who made most of the attempts, else the home folder's name."""
        users = Counter(attempt.user for attempt in self.attempts)
        if users:
            return users.most_common(1)[0][0]
        home = (
            self.path.parent.parent if self.path.parent.name == HOME_RELATIVE.parent.name else None
        )
        return home.name if home is not None else self.path.stem


# ------------------------------------------------------------------------------------ writing


def progress_file() -> Path | None:
    """The file checks append to, or None when recording is off (``LAB_PROGRESS=off``)."""
    if os.environ.get(SWITCH_VARIABLE, "").strip().lower() in ("off", "0", "no", "false"):
        return None
    override = os.environ.get(FILE_VARIABLE, "").strip()
    return Path(override).expanduser() if override else Path.home() / HOME_RELATIVE


_unsaved_said = False


def record(result: Result, *, notebook: str) -> None:
    """Append `result`, a check of the lesson `notebook`, to the progress file; never raises.

    The course's checks call it once per result (`labsupport.checks.result.recorded`); a result
    built anywhere else is not recorded. Failing to write prints one line to stderr, once per
    process.
    """
    global _unsaved_said
    path = progress_file()
    if path is None:
        return
    line = {
        "format": FORMAT,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "user": _os_user(),
        "notebook": notebook,
        "exercise": result.exercise,
        "verdict": "passed" if result.passed else "not yet",
        "cause": getattr(result, "cause", None),
        "summary": shorten(result.summary, 200),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
    except (OSError, ValueError) as error:
        if not _unsaved_said:
            _unsaved_said = True
            print(
                f"(progress not saved: cannot write {path}: {error}. The check itself is fine; "
                f"set {FILE_VARIABLE} to a writable file, or {SWITCH_VARIABLE}=off.)",
                file=sys.stderr,
            )


def _os_user() -> str:
    """The learner's name: their JupyterHub user on a hub (where every learner may share one OS
    account), else the OS user."""
    hub_user = os.environ.get("JUPYTERHUB_USER", "").strip()
    if hub_user:
        return hub_user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return f"uid{os.getuid()}"


# ------------------------------------------------------------------------------------ reading


def read_progress(path: Path) -> ProgressLog:
    """Read a progress file; unreadable lines are skipped and listed, never fatal.

    Raises OSError only when the file itself cannot be opened.
    """
    attempts: list[Attempt] = []
    problems: list[str] = []
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                attempts.append(_attempt(json.loads(raw.decode("utf-8"))))
            except UnicodeDecodeError:
                problems.append(f"line {number}: not UTF-8 text")
            except json.JSONDecodeError:
                problems.append(f"line {number}: not JSON")
            except ValueError as error:
                problems.append(f"line {number}: {error}")
    return ProgressLog(path, tuple(attempts), tuple(problems))


def _attempt(data: Any) -> Attempt:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
    fields: dict[str, str] = {}
    for key in ("time", "user", "notebook", "exercise", "verdict"):
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"no {key!r}")
        fields[key] = value
    if fields["verdict"] not in ("passed", "not yet"):
        raise ValueError(f"unknown verdict {fields['verdict']!r}")
    try:
        time = datetime.fromisoformat(fields["time"])
    except ValueError:
        raise ValueError(f"time {fields['time']!r} is not ISO 8601") from None
    if time.tzinfo is None:
        time = time.replace(tzinfo=UTC)
    cause, summary = data.get("cause"), data.get("summary", "")
    return Attempt(
        time=time,
        user=fields["user"],
        notebook=fields["notebook"],
        exercise=fields["exercise"],
        passed=fields["verdict"] == "passed",
        cause=cause if isinstance(cause, str) and cause else None,
        summary=summary if isinstance(summary, str) else "",
    )


# ------------------------------------------------------------------------------------ reports


def learner_table(log: ProgressLog) -> str:
    """The learner's own view: one row per course exercise, then what to do next."""
    attempts = sorted(log.attempts, key=lambda attempt: attempt.time)
    rows = [("notebook", "exercise", "status", "tries", "last try")]
    next_step: str | None = None
    for notebook in _notebooks(attempts):
        mine = [attempt for attempt in attempts if attempt.notebook == notebook]
        exercise = mine[-1].exercise if mine else _exercise_title(notebook)
        passed = any(attempt.passed for attempt in mine)
        status = "passed" if passed else ("not yet" if mine else "not tried")
        last = mine[-1].time.astimezone().strftime("%Y-%m-%d %H:%M") if mine else ""
        rows.append((notebook, shorten(exercise, 44), status, str(len(mine)), last))
        if next_step is None and not passed:
            if mine:
                why = mine[-1].summary or mine[-1].cause or "see the check's hint"
                next_step = (
                    f"back to notebooks/{notebook}.ipynb: your last check said: {shorten(why, 90)}"
                )
            else:
                next_step = f"open notebooks/{notebook}.ipynb and solve its exercise"
    lines = [f"Progress of {log.learner} ({log.path})", "", *_columns(rows), ""]
    lines.append(f"Next: {next_step}" if next_step else "Next: every exercise passed. Well done!")
    return "\n".join(lines)


def class_report(logs: Sequence[ProgressLog]) -> str:
    """The instructor's view of several learners' progress files."""
    learners = _unique_learners(logs)
    attempts = [attempt for log in logs for attempt in log.attempts]
    notebooks = _notebooks(attempts)
    short = {notebook: notebook.split("_", 1)[0] for notebook in notebooks}
    rows = [("learner", *short.values(), "time spent")]
    for name, log in learners.items():
        cells = []
        for notebook in notebooks:
            mine = [attempt for attempt in log.attempts if attempt.notebook == notebook]
            if not mine:
                cells.append("-")
            elif any(attempt.passed for attempt in mine):
                cells.append(f"passed/{len(mine)}")
            else:
                cells.append(f"not yet/{len(mine)}")
        rows.append((name, *cells, _minutes(_active_time(log.attempts))))
    lines = [
        f"Class report: {len(learners)} learners, {len(attempts)} checks",
        "",
        *_columns(rows),
        "",
        "passed/N: passed, after N tries in all; not yet/N: N tries, none passed; -: not tried.",
        f"Time spent: from a learner's first check to the last, without breaks over "
        f"{BREAK.seconds // 60} min.",
        "",
        "Most common causes of failure, per exercise:",
    ]
    for notebook in notebooks:
        mine = [attempt for attempt in attempts if attempt.notebook == notebook]
        failures = [attempt for attempt in mine if not attempt.passed]
        passers = {attempt.user for attempt in mine if attempt.passed}
        to_pass = _times_to_pass(mine)
        took = ""
        if to_pass:
            median = statistics.median(span.total_seconds() for span in to_pass)
            took = f"; median time to pass {_minutes(timedelta(seconds=median))}"
        title = shorten(mine[-1].exercise, 50) if mine else _exercise_title(notebook)
        if not mine:
            lines.append(f"  {notebook} ({title}): not tried yet")
            continue
        lines.append(
            f"  {notebook} ({title}): {len(passers)} of {len(learners)} passed, "
            f"{len(failures)} failed tries{took}"
        )
        causes = Counter(attempt.cause or "(no cause recorded)" for attempt in failures)
        lines += [f"    {count} × {cause}" for cause, count in causes.most_common(3)]
    problems = [f"{log.path}: {problem}" for log in logs for problem in log.problems]
    if problems:
        lines += ["", f"Skipped {len(problems)} unreadable lines:"]
        lines += [f"  {problem}" for problem in problems[:10]]
        if len(problems) > 10:
            lines.append(f"  … and {len(problems) - 10} more")
    return "\n".join(lines)


def _notebooks(attempts: Iterable[Attempt]) -> list[str]:
    """The course's exercise notebooks, then any other recorded ones, in name order."""
    seen = {attempt.notebook for attempt in attempts}
    return sorted(set(COURSE_EXERCISES.values()) | seen)


def _exercise_title(notebook: str) -> str:
    """The exercise's title, from its checker's module (if it still names one)."""
    import importlib

    for module, name in COURSE_EXERCISES.items():
        if name == notebook:
            try:
                checker = importlib.import_module(_CHECKS_PACKAGE + module)
            except ImportError:  # a checker of a newer course than this labsupport
                return "-"
            return str(getattr(checker, "EXERCISE", "")) or "-"
    return "-"


def _unique_learners(logs: Sequence[ProgressLog]) -> dict[str, ProgressLog]:
    """Logs by learner name; two files of one name get their paths to tell them apart."""
    names = Counter(log.learner for log in logs)
    return {
        (log.learner if names[log.learner] == 1 else f"{log.learner} ({log.path})"): log
        for log in logs
    }


def _active_time(attempts: Iterable[Attempt]) -> timedelta:
    times = sorted(attempt.time for attempt in attempts)
    gaps = (later - earlier for earlier, later in itertools.pairwise(times))
    return sum((gap for gap in gaps if gap <= BREAK), timedelta())


def _times_to_pass(attempts: Sequence[Attempt]) -> list[timedelta]:
    """Per learner: from their first try at an exercise to their first pass."""
    result = []
    for user in {attempt.user for attempt in attempts}:
        mine = sorted((a for a in attempts if a.user == user), key=lambda a: a.time)
        first_pass = next((a.time for a in mine if a.passed), None)
        if first_pass is not None:
            result.append(first_pass - mine[0].time)
    return result


def _minutes(span: timedelta) -> str:
    return f"{round(span.total_seconds() / 60)} min"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


# ------------------------------------------------------------------------------ command line


def progress_main(argv: Sequence[str] | None = None) -> int:
    """`python -m labsupport progress`: the learner's table; exit status 1 if unreadable."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport progress",
        description="Show which exercises you have passed, and what to do next.",
    )
    parser.add_argument(
        "--file", type=Path, help=f"progress file (default: ${FILE_VARIABLE} or ~/{HOME_RELATIVE})"
    )
    args = parser.parse_args(argv)
    path = args.file or progress_file() or Path.home() / HOME_RELATIVE
    if not path.exists():
        print(
            f"No checks recorded yet ({path} does not exist).\n"
            "Next: open notebooks/00_start_here.ipynb; every exercise's check is recorded here."
        )
        return 0
    try:
        log = read_progress(path)
    except OSError as error:
        print(f"error: cannot read {path}: {error}", file=sys.stderr)
        return 1
    print(learner_table(log))
    _say_problems(log)
    return 0


def class_report_main(argv: Sequence[str] | None = None) -> int:
    """`python -m labsupport class-report PATH...`; exit status 1 if no file could be read."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport class-report",
        description="Learner × exercise, the most common causes of failure, and time spent.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        help="progress files, homes that hold one, or folders of homes (e.g. /home/*)",
    )
    args = parser.parse_args(argv)
    files, unreadable = find_progress_files(args.paths)
    logs = []
    for path in files:
        try:
            logs.append(read_progress(path))
        except OSError as error:
            unreadable.append(f"{path}: {error}")
    for problem in unreadable:
        print(f"warning: {problem}", file=sys.stderr)
    if not logs:
        print("error: no progress file found in the paths given", file=sys.stderr)
        return 1
    print(class_report(logs))
    return 0


def find_progress_files(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Progress files in `paths` (files, homes, folders of homes), and what was not found."""
    found: list[Path] = []
    missing: list[str] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif (path / HOME_RELATIVE).is_file():
            found.append(path / HOME_RELATIVE)
        elif path.is_dir() and (inside := sorted(path.glob(f"*/{HOME_RELATIVE}"))):
            found += inside
        else:
            missing.append(f"{path}: no progress file there (nor in {path / HOME_RELATIVE})")
    return list(dict.fromkeys(found)), missing


def _say_problems(log: ProgressLog) -> None:
    if log.problems:
        listed = "; ".join(log.problems[:5]) + (" …" if len(log.problems) > 5 else "")
        print(
            f"warning: skipped {len(log.problems)} unreadable lines of {log.path}: {listed}",
            file=sys.stderr,
        )
