"""The mutation report, printed at the end of a pytest run that judged mutants.

`engine.judge` records each mutant on its test item (`user_properties`, which pytest-xdist sends
back to the controller with the test's report); this plugin gathers them and prints, per
operator and exercise, how many applicable mutants were refused, how many were not applicable,
and the causes the checkers gave.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pytest

from .engine import PROPERTY

_judged: list[dict[str, Any]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.skipped):
        return
    for key, value in report.user_properties:
        if key == PROPERTY:
            record = json.loads(value)
            record["failed"] = report.failed
            _judged.append(record)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _judged:
        return
    terminalreporter.write_sep("=", "mutation report")
    for line in report_lines(_judged):
        terminalreporter.write_line(line)


def report_lines(judged: list[dict[str, Any]]) -> list[str]:
    """One line per (exercise, operator): refused/applicable, not applicable, causes seen."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in judged:
        cells[record["exercise"], record["operator"]].append(record)
    lines = []
    totals: Counter[str] = Counter()
    for (exercise, operator), records in sorted(cells.items()):
        applicable = [r for r in records if r["applicable"]]
        refused = [r for r in applicable if not r["passed"] and r["cause"] in r["expected"]]
        causes = Counter(r["cause"] if not r["passed"] else "ACCEPTED" for r in applicable)
        seen = ", ".join(f"{cause} ×{count}" for cause, count in sorted(causes.items()))
        lines.append(
            f"{exercise:22} {operator:22} refused {len(refused)}/{len(applicable)}"
            f"  n/a {len(records) - len(applicable)}  {seen}"
        )
        totals[f"{exercise} refused"] += len(refused)
        totals[f"{exercise} applicable"] += len(applicable)
    for exercise in sorted({exercise for exercise, _ in cells}):
        lines.append(
            f"{exercise}: {totals[f'{exercise} refused']}/{totals[f'{exercise} applicable']} "
            "applicable mutants refused with the operator's cause"
        )
    return lines
