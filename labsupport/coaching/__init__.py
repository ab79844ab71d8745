"""Coaching: predict before a measurement, explore a scenario, hints that escalate.

* `predict(question)`: a box for the learner's guess; ``.compare(measured, …)`` after the run.
* `explore(Scenario(…))`: sliders that rerun a small scenario and redraw its timeline.
* `hints`: the ladder a failed check climbs in a notebook (diagnosis → hint → faded example →
  the solution notebook).

The widgets come from ipywidgets, imported on first use: a checker that only needs `hints`
does not load them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .explorer import Explorer, Scenario, ScenarioRun, explore, run_scenario
    from .predict import Comparison, Prediction, compare, predict

__all__ = [
    "Comparison",
    "Explorer",
    "Prediction",
    "Scenario",
    "ScenarioRun",
    "compare",
    "explore",
    "predict",
    "run_scenario",
]

_HOMES = {
    "Comparison": "predict",
    "Prediction": "predict",
    "compare": "predict",
    "predict": "predict",
    "Explorer": "explorer",
    "Scenario": "explorer",
    "ScenarioRun": "explorer",
    "explore": "explorer",
    "run_scenario": "explorer",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
