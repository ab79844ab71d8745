"""Hints that escalate: the same check failing the same way again shows a little more each time.

Feedback that only says what is wrong leaves a stuck learner stuck; feedback that gives the answer
at once takes the exercise away. So a check's result, as a notebook shows it, climbs a ladder,
one rung per failure of the same exercise for the same cause (``CheckResult.cause``):

1. the measured diagnosis (what the check saw, and what that means) and the targeted hint
   (``CheckResult.hint``): a first failure always says what to try;
2. plus a faded example: the lesson's solution cell with the names and keywords it adds to the
   exercise blanked out (``___``), read from the lesson's source ``course/NN_name.py``;
3. plus where the full solution is: ``notebooks/solutions/NN_name.ipynb``.

The ladder counts attempts, not clicks: running the check cell again straight after itself, with
nothing run in between, shows the same rung (so a re-run repeats its output). A pass resets the
exercise. The count lives in this kernel; when the progress file is on
(`labsupport.progress`), the failures it holds since the exercise's last pass carry the count over
a kernel restart. ``str(result)`` is never coached: it always holds everything the check found.
"""

from __future__ import annotations

import builtins
import io
import json
import re
import sys
import tokenize
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from .. import progress

__all__ = [
    "COACHED_NOTEBOOKS",
    "LAST_RUNG",
    "HintLadder",
    "coach",
    "faded_example",
    "ladder",
]

#: The lessons whose notebooks show coached results. A lesson joins once its stored notebooks
#: have been rebuilt with the ladder (its first failure no longer shows the hint).
COACHED_NOTEBOOKS: frozenset[str] = frozenset(
    {
        "01_async_client",
        "02_gather",
        "03_semaphore",
        "04_background_tasks",
        "05_lifespan",
        "07_beyond_one_process",
        "08_streaming",
    }
)
LAST_RUNG: Final = 3
BLANK: Final = "___"
#: What a faded example never blanks: the control flow and the builtins are the skeleton of
#: any answer, not the answer (a lesson's answer is in the names it adds, and in the keywords
#: that carry its idea: `await`, `async with`, `try`/`except`). Blanking `for`, `in`, `if`
#: and `range` too turned notebook 07's example into rows of blanks.
_SKELETON: Final = frozenset(
    {"def", "return", "class", "self", "for", "in", "while", "if", "elif", "else", "not"}
    | {"and", "or", "is", "break", "continue", "pass", "True", "False", "None"}
    | {name for name in dir(builtins) if not name.startswith("_")}
)
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
_CHECKS_PACKAGE: Final = "labsupport.checks."
_CELL_MARKER = re.compile(r"^# %%(?P<options>.*)$")
_TAGS = re.compile(r"tags=(?P<tags>\[[^\]]*\])")


class Result(Protocol):
    """What the ladder reads from a `CheckResult`."""

    @property
    def exercise(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def summary(self) -> str: ...
    @property
    def evidence(self) -> Sequence[str]: ...
    @property
    def hint(self) -> str | None: ...


def cause_of(result: Result) -> str:
    """The result's machine-readable cause; its summary where a checker gives none yet."""
    cause = getattr(result, "cause", None)
    return cause if isinstance(cause, str) and cause else result.summary


@dataclass
class HintLadder:
    """How many times each (exercise, cause) has failed since the exercise last passed.

    `climb` is called once per result the learner sees and returns its rung (1 to `LAST_RUNG`;
    0 for a pass). `seed` supplies the failures recorded before this kernel started, if any.
    """

    failures: dict[tuple[str, str], int]

    def __init__(self) -> None:
        self.failures = {}
        self._seeded: set[str] = set()
        self._cells: dict[tuple[str, str], int] = {}
        self._last: tuple[weakref.ref[Result], int] | None = None

    def climb(self, result: Result, *, notebook: str | None = None, cell: int | None = None) -> int:
        """The rung of `result`, one higher than the last failure of its (exercise, cause)
        unless nothing ran since that one: `cell` is the number of the notebook cell showing
        it, and a check re-run straight after itself (cell n, then n + 1) is the same attempt,
        so it gets the same rung. The ladder counts attempts, not clicks."""
        if self._last is not None and self._last[0]() is result:
            return self._last[1]  # the same result shown again: the same rung
        if result.passed:
            self.reset(result.exercise)
            rung = 0
        else:
            key = (result.exercise, cause_of(result))
            if result.exercise not in self._seeded:
                self._seeded.add(result.exercise)
                self.failures[key] = max(self.failures.get(key, 0), _recorded(key, notebook))
            previous = self._cells.get(key)
            again = cell is not None and previous is not None and cell - previous <= 1
            if not (again and self.failures.get(key, 0)):
                self.failures[key] = self.failures.get(key, 0) + 1
            if cell is not None:
                self._cells[key] = cell
            rung = min(self.failures[key], LAST_RUNG)
        try:
            self._last = (weakref.ref(result), rung)
        except TypeError:  # a result that cannot be weakly referenced is never deduplicated
            self._last = None
        return rung

    def reset(self, exercise: str) -> None:
        """Forget the failures of `exercise` (it passed)."""
        for key in [key for key in self.failures if key[0] == exercise]:
            del self.failures[key]
        for key in [key for key in self._cells if key[0] == exercise]:
            del self._cells[key]
        self._seeded.add(exercise)


ladder = HintLadder()
"""This kernel's ladder."""


def coach(result: Result, *, notebook: str | None = None, rung: int | None = None) -> str:
    """`result` as a notebook shows it: climbs `ladder` (unless `rung` is given) and returns the
    text of that rung. Results of lessons outside `COACHED_NOTEBOOKS` are shown whole."""
    notebook = notebook or notebook_of(result.exercise)
    if notebook is None or notebook not in COACHED_NOTEBOOKS:
        return str(result)
    if rung is None:
        rung = ladder.climb(result, notebook=notebook, cell=_cell_number())
    return render(result, rung, notebook)


def _cell_number() -> int | None:
    """The execution count of the notebook cell running now; None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    count = getattr(shell, "execution_count", None)
    return count if isinstance(count, int) else None


def render(result: Result, rung: int, notebook: str) -> str:
    """The text of `rung` (0: passed) for `result` of the lesson `notebook`."""
    mark = "✅ PASSED" if result.passed else "❌ NOT YET"
    lines = [f"{mark} — {result.exercise}: {result.summary}"]
    lines += [f"  • {line}" for line in result.evidence]
    if result.passed:
        return "\n".join(lines)
    if result.hint:
        lines.append(f"  Hint: {result.hint}")
    if rung >= 2:
        example = faded_example(lesson_source(notebook))
        if example:
            lines.append(f"  Fill in the blanks ({BLANK}): the solution, with what it adds hidden:")
            lines += [f"    {line}" if line else "" for line in example.splitlines()]
    if rung >= LAST_RUNG:
        lines.append(
            f"  The full solution: notebooks/solutions/{notebook}.ipynb, under “Your turn”."
        )
    else:
        more = {1: "an example with blanks", 2: "where the solution is"}[max(rung, 1)]
        lines.append(f"  (Change your code and check again; if it fails the same way: {more}.)")
    return "\n".join(lines)


def faded_example(source: Path | None) -> str | None:
    """The solution cells of a lesson source with every name or keyword that its exercise cells
    do not use replaced by ``___``: the shape of the answer, without the answer. None if the
    source or its cells are missing."""
    if source is None or not source.is_file():
        return None
    cells = _tagged_cells(source.read_text(encoding="utf-8"))
    solution, exercise = cells.get("solution"), cells.get("exercise")
    if not solution or not exercise:
        return None
    known = _names("\n".join(exercise))
    return "\n\n".join(_blank_new_names(code, known) for code in solution)


def lesson_source(notebook: str) -> Path | None:
    """``course/<notebook>.py`` in this checkout, if it is there."""
    path = REPO_ROOT / "course" / f"{notebook}.py"
    return path if path.is_file() else None


def notebook_of(exercise: str) -> str | None:
    """The lesson whose checker module names `exercise` (its ``EXERCISE``), as
    `labsupport.progress.COURSE_EXERCISES` names the lessons; None for any other."""
    for module, notebook in progress.COURSE_EXERCISES.items():
        checker = sys.modules.get(f"{_CHECKS_PACKAGE}{module}")
        if checker is not None and getattr(checker, "EXERCISE", None) == exercise:
            return notebook
    return None


def _recorded(key: tuple[str, str], notebook: str | None) -> int:
    """The failures for `key` in the progress file since the exercise's last pass, not counting
    the last line (the result being shown, which the check has just recorded)."""
    path = progress.progress_file()
    if notebook is None or path is None or not path.is_file():
        return 0
    try:
        attempts = progress.read_progress(path).attempts
    except OSError:
        return 0
    exercise, cause = key
    mine = [a for a in attempts if a.notebook == notebook and a.exercise == exercise]
    since_pass: list[progress.Attempt] = []
    for attempt in mine:
        since_pass = [] if attempt.passed else [*since_pass, attempt]
    same = [a for a in since_pass[:-1] if (a.cause or a.summary) == cause]
    return len(same)


def _tagged_cells(text: str) -> dict[str, list[str]]:
    """The code of a jupytext percent-format source's cells, by tag."""
    cells: dict[str, list[str]] = {}
    tags: Iterable[str] = ()
    body: list[str] = []

    def flush() -> None:
        code = "\n".join(body).strip("\n")
        for tag in tags:
            cells.setdefault(tag, []).append(code)

    for line in text.splitlines():
        marker = _CELL_MARKER.match(line)
        if marker is None:
            body.append(line)
            continue
        flush()
        found = _TAGS.search(marker["options"])
        tags = json.loads(found["tags"]) if found and "[markdown]" not in line else ()
        body = []
    flush()
    return cells


def _names(code: str) -> set[str]:
    return {
        token.string
        for token in tokenize.generate_tokens(io.StringIO(code).readline)
        if token.type == tokenize.NAME
    }


def _blank_new_names(code: str, known: set[str]) -> str:
    lines = code.splitlines()
    spans: dict[int, list[tuple[int, int]]] = {}
    previous = ""
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        attribute, previous = previous == ".", token.string
        if token.type != tokenize.NAME or token.string in known:
            continue
        if token.string in _SKELETON and not attribute:  # `redis.set` is not the builtin
            continue
        (row, start), (_, end) = token.start, token.end
        spans.setdefault(row - 1, []).append((start, end))
    for row, columns in spans.items():
        line = lines[row]
        for start, end in sorted(columns, reverse=True):
            line = line[:start] + BLANK + line[end:]
        lines[row] = line
    return "\n".join(lines)
