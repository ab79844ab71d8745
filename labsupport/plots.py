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

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeAlias, cast

import matplotlib.pyplot as plt
from cycler import cycler
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .load import LoadReport, Span, in_flight_steps
from .validation import check_int, check_seconds

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


class TimedCall(Span, Protocol):
    """A request or upstream call: ``start``/``end`` in perf_counter seconds and a ``status``.

    ``fire``'s ``RequestRecord`` and the upstream's ``UpstreamCall`` both fit.
    """

    @property
    def status(self) -> int | None: ...


class HasTimeline(Protocol):
    """Something with a ``timeline`` of calls, such as ``upstream.stats``."""

    @property
    def timeline(self) -> Sequence[TimedCall]: ...


Calls: TypeAlias = Sequence[TimedCall] | HasTimeline
"""Calls to draw: a sequence of them, or an object with a ``timeline`` (``upstream.stats``)."""

Runs: TypeAlias = LoadReport | Mapping[str, LoadReport]
"""One ``fire`` result, or several by label (``{"sequential": r1, "concurrent": r2}``)."""


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


#: Okabe & Ito's palette (2008): eight colours that stay distinct under protanopia,
#: deuteranopia and tritanopia.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}


class BarStyle(NamedTuple):
    """How the bars of one outcome look: a colour and a hatch (``""``: solid)."""

    color: str
    hatch: str


#: The request bars by outcome, in legend order. Every failure is hatched, so it stands out
#: without colour (in greyscale, for a colour-blind reader, on a projector).
OUTCOME_STYLES: dict[str, BarStyle] = {
    "2xx": BarStyle(OKABE_ITO["blue"], ""),
    "429 rate limited": BarStyle(OKABE_ITO["orange"], "///"),
    "5xx server error": BarStyle(OKABE_ITO["vermillion"], "xxx"),
    "other status": BarStyle(OKABE_ITO["yellow"], "..."),
    "no response (exception)": BarStyle(OKABE_ITO["reddish purple"], "\\\\\\"),
}
UPSTREAM_STYLE = BarStyle(OKABE_ITO["bluish green"], "")
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
    panels = _runs_by_label(runs)
    upstream_by_label = _upstream_by_label(upstream, runs, panels)
    latency = _optional_seconds(latency, "latency")

    fig, axes = _figure(len(panels), sharex=True)
    described = []
    for ax, (label, report) in zip(axes, panels.items(), strict=True):
        origin = min(r.start for r in report.requests)
        for outcome, style in OUTCOME_STYLES.items():
            group = [r for r in report.requests if _outcome(r.status) == outcome]
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
        calls = upstream_by_label.get(label, ())
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
        failed = sum(_outcome(r.status) != "2xx" for r in report.requests)
        heading = [label] if label else []
        heading.append(f"wall {report.wall:.2f} s")
        if failed:
            heading.append(f"{failed} of {len(report.requests)} failed")
        ax.set_title(" · ".join(heading))
        ax.set_xlabel("seconds since first request")
        described.append(_describe_run(label, report, len(calls) if calls else None))
    axes[0].set_ylabel("request #")
    axes[0].set_xlim(left=0)

    handles: list[Artist] = [
        Patch(label=outcome, **_bar(style))
        for outcome, style in OUTCOME_STYLES.items()
        if any(_outcome(r.status) == outcome for report in panels.values() for r in report.requests)
    ]
    if any(upstream_by_label.values()):
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
    fig.summary = _sentence(
        title, "Request timeline, one bar per request from start to end", described, latency
    )
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
    panels = _runs_by_label(runs)
    latency = _optional_seconds(latency, "latency")
    fig, (ax,) = _figure(1)
    described = []
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
        described.append(
            f"{_labelled(label)}{_count(len(latencies), 'request')}, median {report.p50:.2f} s, "
            f"slowest {report.max_latency:.2f} s"
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
    fig.summary = _sentence(
        title, "Latency distribution, share of requests at most x seconds", described, latency
    )
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
    series = dict(spans) if isinstance(spans, Mapping) else {"": spans}
    if not series:
        raise ValueError("spans must not be an empty mapping")
    by_label = {label: _spans(value, "spans") for label, value in series.items()}
    if limit is not None:  # None: no limit line
        check_int("limit", limit, minimum=1)

    starts = [s.start for items in by_label.values() for s in items]
    if not starts:
        raise ValueError("spans has nothing to draw: every series is empty")
    origin = min(starts)
    fig, (ax,) = _figure(1)
    described = []
    for index, (label, items) in enumerate(by_label.items()):
        steps = in_flight_steps(items)
        if not steps:
            continue
        times = [0.0] + [moment - origin for moment, _ in steps]
        counts = [0] + [count for _, count in steps]
        style = series_style(index)
        ax.step(times, counts, where="post", linewidth=2, label=label or None, **style)
        described.append(f"{_labelled(label)}{_peak(max(counts), limit)}")
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
    reference = f"Dashed line: the limit of {limit}." if limit is not None else ""
    fig.summary = " ".join(
        part
        for part in (
            _lead(title, "How many were in flight over time") + "; ".join(described) + ".",
            reference,
        )
        if part
    )
    return fig


# ------------------------------------------------------------------------------ summaries


def _lead(title: str | None, kind: str) -> str:
    return f"{title}. {kind}: " if title else f"{kind}: "


def _labelled(label: str) -> str:
    return f"{label}: " if label else ""


def _sentence(title: str | None, kind: str, described: Sequence[str], latency: float | None) -> str:
    """One line: what kind of plot, what each run shows, what the reference line is."""
    text = _lead(title, kind) + "; ".join(described) + "."
    if latency is not None:
        text += f" Dashed line: one upstream call ({latency:.2f} s)."
    return text


def _describe_run(label: str, report: LoadReport, upstream_calls: int | None) -> str:
    outcomes: dict[str, int] = {}
    for record in report.requests:
        outcome = _outcome(record.status)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if list(outcomes) == ["2xx"]:
        counted = "all 2xx"
    else:
        counted = ", ".join(
            f"{outcomes[name]} × {name}" for name in OUTCOME_STYLES if name in outcomes
        )
    shape = "overlapping" if report.in_flight_max > 1 else "one at a time"
    text = (
        f"{_labelled(label)}{_count(len(report.requests), 'request')} ({counted}), {shape}, "
        f"wall {report.wall:.2f} s"
    )
    if upstream_calls is not None:
        text += f", {_count(upstream_calls, 'upstream call')} below them"
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _peak(peak: int, limit: int | None) -> str:
    """A peak in words; next to a limit, only which side of it (stable from run to run: whether
    one of several workers sharing a limit reaches it is up to the scheduling)."""
    if limit is None:
        return f"peak {peak}"
    if peak <= limit:
        return f"never above the limit of {limit}"
    return f"rises above the limit of {limit}"


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


def _runs_by_label(runs: Runs) -> dict[str, LoadReport]:
    if isinstance(runs, LoadReport):
        return {"": runs}
    if (
        isinstance(runs, Mapping)
        and runs
        and all(isinstance(k, str) and isinstance(v, LoadReport) for k, v in runs.items())
    ):
        return dict(runs)
    raise TypeError(
        "runs must be a LoadReport from fire() or a non-empty mapping {label: LoadReport}, "
        f"got {runs!r:.80}"
    )


def _upstream_by_label(
    upstream: Calls | Mapping[str, Calls] | None, runs: Runs, panels: Mapping[str, LoadReport]
) -> dict[str, Sequence[TimedCall]]:
    if upstream is None:
        return {}
    if isinstance(runs, LoadReport):
        if isinstance(upstream, Mapping):
            raise TypeError("upstream must be calls (not a mapping) when runs is one LoadReport")
        return {"": _spans(upstream, "upstream")}
    if not isinstance(upstream, Mapping):
        raise TypeError("upstream must be a mapping {label: calls} when runs is a mapping")
    unknown = sorted(set(upstream) - set(panels))
    if unknown:
        raise ValueError(f"upstream has labels that are not in runs: {unknown}")
    return {label: _spans(calls, "upstream") for label, calls in upstream.items()}


def _spans(source: object, argument: str) -> Sequence[TimedCall]:
    """The calls in ``source``: a LoadReport's requests, a ``.timeline``, or a sequence."""
    if isinstance(source, LoadReport):
        return source.requests
    items = getattr(source, "timeline", source)
    if (
        isinstance(items, Sequence)
        and not isinstance(items, str)
        and all(hasattr(item, "start") and hasattr(item, "end") for item in items)
    ):
        return list(items)
    raise TypeError(
        f"{argument} must hold objects with start and end times (a LoadReport, upstream.stats, "
        f"or a sequence of calls), got {source!r:.80}"
    )


def _outcome(status: int | None) -> str:
    if status is None:
        return "no response (exception)"
    if 200 <= status < 300:
        return "2xx"
    if status == 429:
        return "429 rate limited"
    if status >= 500:
        return "5xx server error"
    return "other status"


def _optional_seconds(value: float | None, argument: str) -> float | None:
    return None if value is None else check_seconds(argument, value, allow_zero=False)


def _integer_ticks(rows: int) -> list[float]:
    """A few whole request numbers from 0 to ``rows - 1`` for the y axis."""
    candidates = MaxNLocator(nbins=6, integer=True).tick_values(0, max(rows - 1, 1))
    return [float(t) for t in candidates if 0 <= t < rows]
