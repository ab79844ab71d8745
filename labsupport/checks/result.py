"""What a checker returns: a verdict with its evidence and its cause, never a bare assert.

A wrong answer is the normal case for an exercise, so a checker never raises for one. It runs the
learner's code against the offline upstream, measures, and explains what it saw in plain words:
what was measured (the evidence), what that means (the summary), what to do (the hint). Each
result also carries a `cause`: a short, stable, machine-readable name for the diagnosis (such as
"bound_above_limit"), one of the closed set its checker module lists in its `Cause` type. Tests
and the progress log read the cause; learners read the sentences.

Printed numbers keep the forms the nbval sanitizer knows (`1.23 s`, `20.4×`), so a notebook's
stored output stays comparable, and the first line is always `✅ PASSED — …` or `❌ NOT YET — …`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..coaching.hints import coach
from ..progress import record

__all__ = ["CheckResult"]

OK = "ok"
"""The cause of every passed result."""


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """The outcome of one exercise check.

    `passed` is the verdict and `cause` its machine-readable reason ("ok" exactly when passed);
    `summary` is one sentence about it, `evidence` the measurements behind it, and `hint` (when
    failed) what to try next.
    """

    exercise: str
    passed: bool
    cause: str
    summary: str
    evidence: tuple[str, ...] = field(default_factory=tuple)
    hint: str | None = None

    def __post_init__(self) -> None:
        if (self.cause == OK) != self.passed:
            raise ValueError(
                f"a CheckResult's cause is {OK!r} exactly when it passed; got passed="
                f"{self.passed!r} with cause {self.cause!r}"
            )
        record(self)  # the learner's progress file (labsupport.progress); never raises

    def __str__(self) -> str:
        mark = "✅ PASSED" if self.passed else "❌ NOT YET"
        lines = [f"{mark} — {self.exercise}: {self.summary}"]
        lines += [f"  • {line}" for line in self.evidence]
        if self.hint and not self.passed:
            lines.append(f"  Hint: {self.hint}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # A notebook shows a repeated failure one rung further each time: diagnosis, hint,
        # faded example, solution (labsupport.coaching.hints); str() always holds it all.
        printer.text(coach(self))

    def __bool__(self) -> bool:
        return self.passed
