"""The course's plots as Vega-Lite charts, for the browser: the same calls as `labsupport.plots`.

In the course's JupyterLite site the kernel is Pyodide, which has no matplotlib here (no wheel for
its platform is published). JupyterLab itself renders Vega-Lite: an output of type
``application/vnd.vegalite.v5+json`` is drawn by the Vega-Lite 5 that the locked JupyterLab (4.6)
ships. So in the browser `lab.plot_timeline`, `lab.plot_latencies` and `lab.plot_in_flight`
(see `labsupport.charts`) return a `DescribedChart`: the same data, the same Okabe–Ito colours and
the same one-line summary as the matplotlib figure (`labsupport.plot_data` words both), drawn by
the browser.

What differs from the matplotlib figures: failed requests are outlined with a dash pattern per
outcome instead of hatched (Vega-Lite has no hatching), still not told apart by colour alone;
and the summary is the chart's ``description`` (Vega-Lite puts it on the chart as its ARIA
label) as well as its caption and plain-text form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .load import LoadReport, in_flight_steps
from .plot_data import (
    OKABE_ITO,
    OUTCOME_STYLES,
    UPSTREAM_STYLE,
    Calls,
    Runs,
    in_flight_series,
    in_flight_summary,
    latencies_summary,
    optional_seconds,
    outcome,
    runs_by_label,
    timeline_summary,
    upstream_by_label,
)

__all__ = ["MIME_TYPE", "DescribedChart", "plot_in_flight", "plot_latencies", "plot_timeline"]

MIME_TYPE = "application/vnd.vegalite.v5+json"
SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
"""The spec's `$schema`: an identifier the renderer reads for the version, never fetched."""

PANEL_WIDTH = 360  # pixels per side-by-side panel
PANEL_HEIGHT = 220
UPSTREAM_CALL = "upstream call"
#: A dash pattern per outcome for the bars' outlines: a failure is told apart without colour.
OUTCOME_DASHES: dict[str, list[int]] = {
    "2xx": [1, 0],
    "429 rate limited": [6, 2],
    "5xx server error": [2, 2],
    "other status": [1, 3],
    "no response (exception)": [8, 2, 2, 2],
    UPSTREAM_CALL: [1, 0],
}
#: Series lines differ in colour and in dash pattern, as in `labsupport.plots.series_style`.
SERIES_COLORS = [
    OKABE_ITO[name]
    for name in ("blue", "orange", "bluish green", "reddish purple", "vermillion", "sky blue")
] + ["#666666"]
SERIES_DASHES = [[1, 0], [2, 3], [6, 3, 2, 3], [8, 2, 2, 2, 2, 2], [2, 6], [12, 3], [5, 2, 2, 2]]
REFERENCE_RULE: dict[str, Any] = {"type": "rule", "color": "black", "strokeDash": [5, 4]}


class DescribedChart:
    """A Vega-Lite chart with a one-line text summary of what it shows (``chart.summary``).

    End a cell with it and JupyterLab draws the chart, with the summary as a caption under it;
    ``chart.spec`` is the Vega-Lite specification (a dict).
    """

    def __init__(self, spec: dict[str, Any], summary: str) -> None:
        self.spec = {"$schema": SCHEMA, "description": summary, **spec}
        self.summary = summary

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {MIME_TYPE: self.spec, "text/plain": self.summary}

    def _ipython_display_(self) -> None:
        # As `labsupport.plots.DescribedFigure`: the chart, then its summary as a caption.
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        display({"text/plain": self.summary}, raw=True)


def plot_timeline(
    runs: Runs,
    *,
    upstream: Calls | Mapping[str, Calls] | None = None,
    latency: float | None = None,
    title: str | None = None,
) -> DescribedChart:
    """Each request as a bar from its start to its end, one panel per run; the upstream's calls
    below them (see `labsupport.plots.plot_timeline`, whose arguments these are)."""
    panels = runs_by_label(runs)
    calls_by_label = upstream_by_label(upstream, runs, panels)
    latency = optional_seconds(latency, "latency")
    shown = [kind for kind in OUTCOME_STYLES if _any_outcome(panels.values(), kind)]
    if any(calls_by_label.values()):
        shown.append(UPSTREAM_CALL)
    colors = [
        OUTCOME_STYLES[kind].color if kind in OUTCOME_STYLES else UPSTREAM_STYLE.color
        for kind in shown
    ]
    charts = []
    for label, report in panels.items():
        origin = min(r.start for r in report.requests)
        rows = [
            _bar(r.index, r.start - origin, r.end - origin, outcome(r.status))
            for r in report.requests
        ]
        first_row = max(r.index for r in report.requests) + 2  # one empty row between
        ordered = sorted(calls_by_label.get(label, ()), key=lambda call: call.start)
        rows += [
            _bar(first_row + i, c.start - origin, c.end - origin, UPSTREAM_CALL)
            for i, c in enumerate(ordered)
        ]
        failed = sum(outcome(r.status) != "2xx" for r in report.requests)
        heading = [label] if label else []
        heading.append(f"wall {report.wall:.2f} s")
        if failed:
            heading.append(f"{failed} of {len(report.requests)} failed")
        layers: list[dict[str, Any]] = [
            {
                "data": {"values": rows},
                "mark": {"type": "rect", "strokeWidth": 1},
                "encoding": {
                    "x": {
                        "field": "start",
                        "type": "quantitative",
                        "title": "seconds since first request",
                    },
                    "x2": {"field": "end"},
                    "y": {
                        "field": "top",
                        "type": "quantitative",
                        "scale": {"reverse": True, "nice": False},
                        "axis": {"tickMinStep": 1, "format": "d"},
                        "title": "request #",
                    },
                    "y2": {"field": "bottom"},
                    "color": {
                        "field": "outcome",
                        "type": "nominal",
                        "scale": {"domain": shown, "range": colors},
                        "legend": {"orient": "bottom", "title": None},
                    },
                    "strokeDash": {
                        "field": "outcome",
                        "type": "nominal",
                        "scale": {"domain": shown, "range": [OUTCOME_DASHES[k] for k in shown]},
                        "legend": None,
                    },
                    # Failures outlined in black (dashed), successes in their own colour.
                    "stroke": {
                        "field": "outcome",
                        "type": "nominal",
                        "scale": {"domain": shown, "range": [_outline(k) for k in shown]},
                        "legend": None,
                    },
                },
            }
        ]
        if latency is not None:
            layers.append(_reference("x", latency))
        charts.append(_panel(" · ".join(heading), layers))
    # One time axis for all panels, as matplotlib's sharex: a staircase beside a block.
    spec: dict[str, Any] = (
        {"hconcat": charts, "resolve": {"scale": {"x": "shared"}}} if len(charts) > 1 else charts[0]
    )
    if title is not None:
        spec = {"title": title, **spec} if len(charts) > 1 else {**spec, "title": title}
    return DescribedChart(spec, timeline_summary(panels, calls_by_label, latency, title))


def plot_latencies(
    runs: Runs, *, latency: float | None = None, title: str | None = None
) -> DescribedChart:
    """Latency distribution per run as an ECDF (see `labsupport.plots.plot_latencies`)."""
    panels = runs_by_label(runs)
    latency = optional_seconds(latency, "latency")
    points = []
    for label, report in panels.items():
        latencies = sorted(report.latencies)
        shares = [(i + 1) / len(latencies) for i in range(len(latencies))]
        points += [
            {"series": label, "x": x, "y": y}
            for x, y in zip([0.0, *latencies], [0.0, *shares], strict=True)
        ]
    layers = [_lines(points, list(panels), "latency (seconds)", "share of requests")]
    if latency is not None:
        layers.append(_reference("x", latency))
    return DescribedChart(_panel(title, layers), latencies_summary(panels, latency, title))


def plot_in_flight(
    spans: LoadReport | Calls | Mapping[str, LoadReport | Calls],
    *,
    limit: int | None = None,
    title: str | None = None,
) -> DescribedChart:
    """How many were running at each moment, as a step line per series, with the limit dashed
    (see `labsupport.plots.plot_in_flight`)."""
    by_label = in_flight_series(spans, limit)
    origin = min(s.start for items in by_label.values() for s in items)
    points = []
    for label, items in by_label.items():
        steps = [(origin, 0), *in_flight_steps(items)] if items else []
        points += [{"series": label, "x": moment - origin, "y": count} for moment, count in steps]
    layers = [_lines(points, list(by_label), "seconds since first request", "in flight")]
    if limit is not None:
        layers.append(_reference("y", limit))
    return DescribedChart(_panel(title, layers), in_flight_summary(by_label, limit, title))


def _any_outcome(reports: Any, kind: str) -> bool:
    return any(outcome(r.status) == kind for report in reports for r in report.requests)


def _outline(kind: str) -> str:
    """A bar's outline: black for a failure (hatched in the matplotlib figure), else its fill."""
    if kind in OUTCOME_STYLES:
        style = OUTCOME_STYLES[kind]
        return "black" if style.hatch else style.color
    return UPSTREAM_STYLE.color


def _bar(row: int, start: float, end: float, kind: str) -> dict[str, Any]:
    """One bar of the timeline, 0.8 of a row high, as matplotlib's `barh(height=0.8)`."""
    return {"top": row - 0.4, "bottom": row + 0.4, "start": start, "end": end, "outcome": kind}


def _lines(
    points: Sequence[dict[str, Any]], series: list[str], x_title: str, y_title: str
) -> dict[str, Any]:
    """Step lines of `points` ({series, x, y}), one per series, by colour and dash pattern."""
    count = len(series)
    return {
        "data": {"values": list(points)},
        "mark": {"type": "line", "interpolate": "step-after", "strokeWidth": 2},
        "encoding": {
            "x": {"field": "x", "type": "quantitative", "title": x_title},
            "y": {"field": "y", "type": "quantitative", "title": y_title},
            "color": {
                "field": "series",
                "type": "nominal",
                "scale": {"domain": series, "range": [_color(i) for i in range(count)]},
                "legend": {"orient": "bottom", "title": None} if any(series) else None,
            },
            "strokeDash": {
                "field": "series",
                "type": "nominal",
                "scale": {"domain": series, "range": [_dash(i) for i in range(count)]},
                "legend": None,
            },
        },
    }


def _color(index: int) -> str:
    return SERIES_COLORS[index % len(SERIES_COLORS)]


def _dash(index: int) -> list[int]:
    """The `index`-th series' dash pattern: past the seventh series, shifted by one per round of
    colours, so no two of 49 series share both (as `labsupport.plots.series_style`)."""
    return SERIES_DASHES[(index + index // len(SERIES_COLORS)) % len(SERIES_DASHES)]


def _reference(channel: str, value: float) -> dict[str, Any]:
    """A dashed black reference line: one upstream call's latency (x) or a limit (y)."""
    return {
        "data": {"values": [{}]},  # one rule (a layer without data of its own draws none)
        "mark": REFERENCE_RULE,
        "encoding": {channel: {"datum": value, "type": "quantitative"}},
    }


def _panel(title: str | None, layers: list[dict[str, Any]]) -> dict[str, Any]:
    """One white panel of layered marks (white in JupyterLab's dark theme too, as the figures)."""
    panel: dict[str, Any] = {
        "width": PANEL_WIDTH,
        "height": PANEL_HEIGHT,
        "background": "white",
        "layer": layers,
    }
    if title:
        panel["title"] = title
    return panel
