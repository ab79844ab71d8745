"""What a checker returns: a verdict with its evidence, never a bare assert.

A wrong answer is the normal case for an exercise, so a checker never raises for one. It runs the
learner's code against the offline upstream, measures, and explains what it saw in plain words:
the numbers first, then what they mean, then a hint. Printed numbers keep the forms the nbval
sanitizer knows (`1.23 s`, `20.4×`), so a notebook's stored output stays comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..progress import record

__all__ = ["CheckResult"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one exercise check.

    `passed` is the verdict, `summary` one sentence about it, `evidence` the measurements behind
    it, and `hint` (when failed) what to try next.
    """

    exercise: str
    passed: bool
    summary: str
    evidence: tuple[str, ...] = field(default_factory=tuple)
    hint: str | None = None

    def __post_init__(self) -> None:
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
        printer.text(str(self))

    def __bool__(self) -> bool:
        return self.passed
