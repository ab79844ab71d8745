"""The plot functions a lesson calls (`lab.plot_timeline`, `lab.plot_latencies`,
`lab.plot_in_flight`), drawn by what the kernel has.

In a CPython kernel they are `labsupport.plots`' matplotlib figures. In a browser tab (Pyodide,
the course's JupyterLite site), where matplotlib cannot be installed, they are
`labsupport.vegalite`'s charts, which JupyterLab renders itself: the same arguments, data, colours
and summary (``.summary``) either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .browser import in_browser
from .plot_data import Calls, Runs

if TYPE_CHECKING:
    from .load import LoadReport
    from .plots import DescribedFigure
    from .vegalite import DescribedChart

__all__ = ["plot_in_flight", "plot_latencies", "plot_timeline"]


def plot_timeline(
    runs: Runs,
    *,
    upstream: Calls | Mapping[str, Calls] | None = None,
    latency: float | None = None,
    title: str | None = None,
) -> DescribedFigure | DescribedChart:
    """Each request as a bar from its start to its end, one panel per run (see
    `labsupport.plots.plot_timeline` for the arguments)."""
    if in_browser():
        from . import vegalite

        return vegalite.plot_timeline(runs, upstream=upstream, latency=latency, title=title)
    from . import plots

    return plots.plot_timeline(runs, upstream=upstream, latency=latency, title=title)


def plot_latencies(
    runs: Runs, *, latency: float | None = None, title: str | None = None
) -> DescribedFigure | DescribedChart:
    """Latency distribution per run as an ECDF (see `labsupport.plots.plot_latencies`)."""
    if in_browser():
        from . import vegalite

        return vegalite.plot_latencies(runs, latency=latency, title=title)
    from . import plots

    return plots.plot_latencies(runs, latency=latency, title=title)


def plot_in_flight(
    spans: LoadReport | Calls | Mapping[str, LoadReport | Calls],
    *,
    limit: int | None = None,
    title: str | None = None,
) -> DescribedFigure | DescribedChart:
    """How many requests or calls were running at each moment (see
    `labsupport.plots.plot_in_flight`)."""
    if in_browser():
        from . import vegalite

        return vegalite.plot_in_flight(spans, limit=limit, title=title)
    from . import plots

    return plots.plot_in_flight(spans, limit=limit, title=title)
