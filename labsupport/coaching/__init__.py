"""Coaching: predict before a measurement, explore a scenario, hints that escalate.

* `predict(question)`: a box for the learner's guess; ``.compare(measured, …)`` after the run.
* `explore(Scenario(…))`: sliders that rerun a small scenario and redraw its timeline;
  `explore_streams(…)` does the same for streamed answers (notebook 08).
* `hints`: the ladder a failed check climbs in a notebook (diagnosis → hint → faded example →
  the solution notebook).

The widgets come from ipywidgets, imported on first use: a checker that only needs `hints`
does not load them.
"""

import lazy_loader

# The names and their modules are listed once, in __init__.pyi.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
