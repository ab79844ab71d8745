"""The widget every explorer is: controls over a scenario, its figure, and a caption.

An explorer (`explorer.Explorer` for calls, `streams.StreamExplorer` for streams) says which
controls it has, how their values make a scenario, and how a scenario runs; this base does the
rest the same way for all of them: every change runs the scenario again and redraws, a failed
run is a caption (never a traceback under a slider), and the notebook output is the live widget
with a PNG of the first run and a fixed plain-text form, so a stored notebook re-runs to the
same text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import ipywidgets

from ..browser import require_real_kernel
from ..lab import current_upstream
from ..upstream import MockUpstream
from ._display import png_bytes, widget_bundle

if TYPE_CHECKING:  # matplotlib, imported when a figure is drawn: the explorers' module loads in
    # a browser tab (Pyodide) too, where matplotlib is not installed
    from ..plots import DescribedFigure

__all__ = ["SliderExplorer", "offline_upstream", "run_apart"]

T = TypeVar("T")


def run_apart(run: Coroutine[Any, Any, T]) -> T:
    """Run `run` to its end in a worker thread with its own event loop, and return its result.

    A slider's callback runs while the kernel's own loop is busy delivering it, so a scenario
    cannot run on that loop; blocking here is safe from a widget callback or a cell."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="explorer") as pool:
        return pool.submit(asyncio.run, run).result()


def offline_upstream() -> MockUpstream:
    """The lab's offline upstream, which every explorer runs on; a live one is refused."""
    upstream = current_upstream()
    if not isinstance(upstream, MockUpstream):
        raise RuntimeError(
            "the explorer runs on the offline upstream only: run lab.setup() without "
            "LAB_MODE=live (a live API would be billed for every slider move)"
        )
    return upstream


class _Scenario(Protocol):
    def describe(self) -> str: ...

    def note(self) -> str | None: ...


class _Run(Protocol):
    def figure(self) -> DescribedFigure: ...


S = TypeVar("S", bound=_Scenario)
R = TypeVar("R", bound=_Run)


class SliderExplorer(ABC, Generic[S, R]):
    """Controls for a scenario (a frozen dataclass); each change runs it again and redraws.

    `run` is the latest run and `scenario` its scenario; `controls` maps each control's name
    (a field of the scenario) to its widget. Nothing a learner does with the controls raises: a
    run that fails shows its error under the figure.
    """

    #: What each run needs that a browser tab does not have (`labsupport.browser`).
    NEEDS: ClassVar[str] = "a thread to run each scenario in, and matplotlib to draw it"

    def __init__(self, scenario: S, controls: dict[str, ipywidgets.ValueWidget]) -> None:
        # Now, not in the first run: `_draw` shows a failed run as a caption, not an error.
        require_real_kernel(type(self).__name__, self.NEEDS)
        self.scenario = scenario
        self.controls = controls
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        self.image = ipywidgets.Image(format="png")
        self.caption = ipywidgets.HTML()
        self.caption.add_class("lab-explorer-caption")
        self.widget = ipywidgets.VBox(
            [
                ipywidgets.HBox(
                    list(self.controls.values()), layout=ipywidgets.Layout(flex_flow="row wrap")
                ),
                self.image,
                self.caption,
            ]
        )
        self.widget.add_class("lab-explorer")
        self.run: R | None = None
        self.figure: DescribedFigure | None = None
        self._draw()

    @abstractmethod
    def _run(self, scenario: S) -> R:
        """Run `scenario` (blocking) and return what it measured."""

    def _scenario_from(self, values: dict[str, Any]) -> S:
        """The scenario the controls' `values` make (a slider's 0 may mean None, and so on)."""
        return replace(self.scenario, **values)  # type: ignore[type-var]

    def _on_change(self, change: dict[str, Any]) -> None:
        values = {name: control.value for name, control in self.controls.items()}
        try:
            self.scenario = self._scenario_from(values)
        except (TypeError, ValueError) as error:
            self.caption.value = html.escape(f"✗ {error}")
            return
        self._draw()

    def _draw(self) -> None:
        self.caption.value = html.escape(f"running: {self.scenario.describe()} …")
        try:
            run = self._run(self.scenario)
        except Exception as error:  # shown to the learner, never a traceback under a slider
            self.caption.value = html.escape(f"✗ could not run it: {type(error).__name__}: {error}")
            return
        self.run, self.figure = run, run.figure()
        self.image.value = png_bytes(self.figure)
        note = self.scenario.note()
        self.caption.value = html.escape(self.figure.summary + (f" {note}" if note else ""))

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        note = self.scenario.note()
        text = f"Explorer: {self.scenario.describe()}. Move a control to run it again."
        text += f" {note}" if note else ""
        return widget_bundle(self.widget, text, self.figure)
