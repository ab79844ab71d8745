"""Pictures of what happened: request timelines, latency distributions, requests in flight.

Every function returns a `DescribedFigure`: a matplotlib ``Figure`` that carries a one-line text
summary of what it shows (``fig.summary``). End a notebook cell with the call and the figure is
shown once, with the summary as its caption, stored beside the image as its plain-text form and
as the image's alt text (the course site reads it from there); assign it
(``fig = plot_timeline(...)``) and it is not shown until you display it. No figure stays open
in pyplot, so repeated calls do not pile up.

Every reader can read them: colours come from the Okabe–Ito palette (distinct under the common
colour-vision deficiencies), no meaning rests on colour alone (failed requests are hatched as
well as coloured, lines differ in dash pattern, and every panel says in words how many failed),
and figures are opaque white, so they read the same in JupyterLab's light and dark themes.

Times are ``time.perf_counter()`` seconds, shared by ``fire``'s requests and the upstream's
calls; the plots draw them as seconds since the first request. The summaries print durations as
``1.23 s``, a form the notebooks' output sanitizer masks, so stored outputs stay comparable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import matplotlib.pyplot as plt
from cycler import cycler
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .load import LoadReport, in_flight_steps
from .plot_data import (
    OKABE_ITO,
    OUTCOME_STYLES,
    UPSTREAM_STYLE,
    BarStyle,
    Calls,
    Runs,
    TimedCall,
    in_flight_series,
    in_flight_summary,
    latencies_summary,
    optional_seconds,
    outcome,
    runs_by_label,
    timeline_summary,
    upstream_by_label,
)

__all__ = [
    "OKABE_ITO",
    "Calls",
    "DescribedFigure",
    "Runs",
    "TimedCall",
    "plot_in_flight",
    "plot_latencies",
    "plot_timeline",
    "series_style",
]


class DescribedFigure(Figure):
    """A ``Figure`` with a one-line text summary of what it shows, for readers who cannot see it.

    In a notebook the summary is shown as a caption under the image, and stored with the image
    as its ``text/plain`` form (what a text-only view shows) and as the ``alt`` text of its PNG
    in the output's metadata (what the course site puts on the image). ``print(fig.summary)``
    reads it.
    """

    summary: str = ""

    def _ipython_display_(self) -> None:
        # JupyterLab draws only the richest form of an output (the PNG), with no alt text, so the
        # words need an output of their own to be seen there: the caption.
        from IPython.core.interactiveshell import InteractiveShell
        from IPython.display import display

        formatter = InteractiveShell.instance().display_formatter
        assert formatter is not None  # IPython calls this method only from a running shell
        png = formatter.formatters["image/png"](self)
        image = {"image/png": png, "text/plain": self.summary}
        display(image, raw=True, metadata={"image/png": {"alt": self.summary}})
        display({"text/plain": self.summary}, raw=True)


#: Lines of several series differ in colour and in dash pattern; "--" in black is kept for the
#: reference lines (one upstream call, a limit). Seven colours and seven dash patterns: the
#: n-th series gets colour n mod 7 and, past the first seven, a dash pattern shifted by one per
#: round, so no two of 49 series share both (`series_style`). 07's "all workers" plus four
#: workers are five lines; a cycle of four once drew the fifth like the first.
SERIES_COLORS: tuple[str, ...] = (
    *(
        OKABE_ITO[name]
        for name in ("blue", "orange", "bluish green", "reddish purple", "vermillion", "sky blue")
    ),
    "#666666",  # grey: Okabe-Ito's yellow is too pale for a thin line on white
)
SERIES_DASHES: tuple[Any, ...] = (
    "-",
    ":",
    "-.",
    (0, (5, 1, 1, 1, 1, 1)),
    (0, (1, 3)),
    (0, (8, 2)),
    (0, (3, 1, 1, 1)),
)
SERIES_CYCLE = cycler(color=list(SERIES_COLORS), linestyle=list(SERIES_DASHES))
REFERENCE_LINE: dict[str, Any] = {"color": "black", "linestyle": "--", "linewidth": 1}


def series_style(index: int) -> dict[str, Any]:
    """The colour and dash pattern of the `index`-th series of a plot (from 0): unique pairs
    for the first 49 series."""
    colors, dashes = len(SERIES_COLORS), len(SERIES_DASHES)
    return {
        "color": SERIES_COLORS[index % colors],
        "linestyle": SERIES_DASHES[(index + index // colors) % dashes],
    }


PANEL_WIDTH = 5.0  # inches per side-by-side panel
PANEL_HEIGHT = 3.5


def plot_timeline(
    runs: Runs,
    *,
    upstream: Calls | Mapping[str, Calls] | None = None,
    latency: float | None = None,
    title: str | None = None,
) -> DescribedFigure:
    """Draw each request as a bar from its start to its end; one panel per run.

    Bars are coloured and hatched by outcome (2xx solid; 429, 5xx, other, exception hatched),
    and each panel's title counts the failures. Panels share the x axis, seconds since each
    run's first request, so a sequential run and a concurrent one can be compared at a glance:
    a staircase versus a block.

    Args:
        runs: a ``LoadReport`` from ``fire``, or a mapping ``{label: LoadReport}``.
        upstream: the upstream calls made meanwhile, drawn below the requests in another
            colour: ``upstream.stats`` (or its ``.timeline``) for a single run, or a mapping
            ``{label: calls}`` with labels of ``runs``.
        latency: the latency of one upstream call, in seconds, drawn as a dashed line.
        title: a title above all panels.
    """
    panels = runs_by_label(runs)
    calls_by_label = upstream_by_label(upstream, runs, panels)
    latency = optional_seconds(latency, "latency")

    fig, axes = _figure(len(panels), sharex=True)
    for ax, (label, report) in zip(axes, panels.items(), strict=True):
        origin = min(r.start for r in report.requests)
        for kind, style in OUTCOME_STYLES.items():
            group = [r for r in report.requests if outcome(r.status) == kind]
            if group:
                ax.barh(
                    [r.index for r in group],
                    [r.end - r.start for r in group],
                    left=[r.start - origin for r in group],
                    height=0.8,
                    **_bar(style),
                )
        rows = max(r.index for r in report.requests) + 1
        ticks = _integer_ticks(rows)
        labels = [f"{t:.0f}" for t in ticks]
        last_row = rows - 1
        calls = calls_by_label.get(label, ())
        if calls:
            first_row = rows + 1  # one empty row between requests and upstream calls
            last_row = first_row + len(calls) - 1
            ordered = sorted(calls, key=lambda call: call.start)
            ax.barh(
                range(first_row, last_row + 1),
                [c.end - c.start for c in ordered],
                left=[c.start - origin for c in ordered],
                height=0.8,
                **_bar(UPSTREAM_STYLE),
            )
            ax.axhline(rows, color="0.6", linewidth=0.8)
            ticks.append((first_row + last_row) / 2)
            labels.append("upstream")
        if latency is not None:
            ax.axvline(latency, **REFERENCE_LINE)
        ax.set_ylim(last_row + 0.5, -0.5)  # request 0 at the top, like a log read downwards
        ax.set_yticks(ticks, labels)
        failed = sum(outcome(r.status) != "2xx" for r in report.requests)
        heading = [label] if label else []
        heading.append(f"wall {report.wall:.2f} s")
        if failed:
            heading.append(f"{failed} of {len(report.requests)} failed")
        ax.set_title(" · ".join(heading))
        ax.set_xlabel("seconds since first request")
    axes[0].set_ylabel("request #")
    axes[0].set_xlim(left=0)

    handles: list[Artist] = [
        Patch(label=kind, **_bar(style))
        for kind, style in OUTCOME_STYLES.items()
        if any(outcome(r.status) == kind for report in panels.values() for r in report.requests)
    ]
    if any(calls_by_label.values()):
        handles.append(Patch(label="upstream call", **_bar(UPSTREAM_STYLE)))
    if latency is not None:
        handles.append(
            Line2D([], [], **REFERENCE_LINE, label=f"one upstream call ({latency:.2f} s)")
        )
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False
    )
    if title is not None:
        fig.suptitle(title)
    fig.summary = timeline_summary(panels, calls_by_label, latency, title)
    return fig


def plot_latencies(
    runs: Runs, *, latency: float | None = None, title: str | None = None
) -> DescribedFigure:
    """Latency distribution per run as an ECDF: x = latency, y = share of requests at most x.

    A vertical line means every request took the same time; a long slope to the right means
    some requests waited (a queue, a retry, a rate limit).

    Args:
        runs: a ``LoadReport`` from ``fire``, or a mapping ``{label: LoadReport}``.
        latency: the latency of one upstream call, in seconds, drawn as a dashed line.
        title: the plot's title.
    """
    panels = runs_by_label(runs)
    latency = optional_seconds(latency, "latency")
    fig, (ax,) = _figure(1)
    for index, (label, report) in enumerate(panels.items()):
        latencies = sorted(report.latencies)
        shares = [(i + 1) / len(latencies) for i in range(len(latencies))]
        ax.step(
            [0.0, *latencies],
            [0.0, *shares],
            where="post",
            linewidth=2,
            label=label or None,
            **series_style(index),
        )
    if latency is not None:
        ax.axvline(latency, **REFERENCE_LINE, label="one upstream call")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("latency (seconds)")
    ax.set_ylabel("share of requests")
    _legend_below(fig, ax)
    if title is not None:
        ax.set_title(title)
    fig.summary = latencies_summary(panels, latency, title)
    return fig


def plot_in_flight(
    spans: LoadReport | Calls | Mapping[str, LoadReport | Calls],
    *,
    limit: int | None = None,
    title: str | None = None,
) -> DescribedFigure:
    """How many requests (or upstream calls) were running at each moment, as a step line.

    Several series share one time axis, starting at the earliest start among them, so
    ``{"requests": report, "upstream": upstream.stats}`` shows both on the same clock.

    Args:
        spans: a ``LoadReport``, calls (``upstream.stats`` or a sequence of objects with
            ``start``/``end``), or a mapping ``{label: either}`` for several lines.
        limit: a concurrency limit (e.g. a semaphore's size), drawn as a dashed line.
        title: the plot's title.
    """
    by_label = in_flight_series(spans, limit)
    origin = min(s.start for items in by_label.values() for s in items)
    fig, (ax,) = _figure(1)
    for index, (label, items) in enumerate(by_label.items()):
        steps = in_flight_steps(items)
        if not steps:
            continue
        times = [0.0] + [moment - origin for moment, _ in steps]
        counts = [0] + [count for _, count in steps]
        style = series_style(index)
        ax.step(times, counts, where="post", linewidth=2, label=label or None, **style)
    if limit is not None:
        ax.axhline(limit, **REFERENCE_LINE, label=f"limit {limit}")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("seconds since first request")
    ax.set_ylabel("in flight")
    _legend_below(fig, ax)
    if title is not None:
        ax.set_title(title)
    fig.summary = in_flight_summary(by_label, limit, title)
    return fig


def _figure(panels: int, *, sharex: bool = False) -> tuple[DescribedFigure, list[Axes]]:
    """A white figure with ``panels`` axes side by side, already closed in pyplot.

    Creating it through pyplot loads the notebook's inline backend, which is what displays a
    Figure returned by a cell (a bare ``Figure()`` shows only as text in a fresh kernel).
    Closing it right away means pyplot does not show it a second time at the end of the cell.
    The face is opaque white, whatever the backend's default: a transparent PNG would put black
    text on JupyterLab's dark background.
    """
    width = min(max(PANEL_WIDTH * panels, 6.0), 15.0)
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(width, PANEL_HEIGHT),
        sharex=sharex,
        squeeze=False,
        layout="constrained",
        FigureClass=DescribedFigure,
        facecolor="white",
    )
    plt.close(fig)
    for ax in axes[0]:
        ax.set_facecolor("white")
        ax.set_prop_cycle(SERIES_CYCLE)
    return cast(DescribedFigure, fig), list(axes[0])


def _legend_below(fig: Figure, ax: Axes) -> None:
    """The legend of `ax`'s labelled lines, below the plot, outside the axes: a legend inside
    them, wherever placed, covers some run's data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(len(handles), 3), frameon=False
        )


def _bar(style: BarStyle) -> dict[str, Any]:
    """Bar (or legend patch) keywords: the colour, and a black hatch on white-edged bars."""
    if not style.hatch:
        return {"facecolor": style.color, "edgecolor": style.color, "linewidth": 0}
    return {"facecolor": style.color, "hatch": style.hatch, "edgecolor": "black", "linewidth": 0}


def _integer_ticks(rows: int) -> list[float]:
    """A few whole request numbers from 0 to ``rows - 1`` for the y axis."""
    candidates = MaxNLocator(nbins=6, integer=True).tick_values(0, max(rows - 1, 1))
    return [float(t) for t in candidates if 0 <= t < rows]
