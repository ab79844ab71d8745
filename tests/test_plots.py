"""Plots: the right panels and bars, nothing left open in pyplot, shown once in a notebook."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import nbclient
import nbformat
import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from labsupport.load import LoadReport, RequestRecord
from labsupport.plots import Calls, plot_in_flight, plot_latencies, plot_timeline

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Call:
    """Shaped like the upstream's UpstreamCall, as far as the plots care."""

    start: float
    end: float
    status: int


@dataclass(frozen=True)
class Stats:
    """Shaped like upstream.stats: calls in a ``timeline``."""

    timeline: tuple[Call, ...]


def report(
    statuses: list[int | None], *, overlapping: bool = True, t0: float = 100.0
) -> LoadReport:
    """One request per status, 0.1 s each: all together, or one after another."""
    records = []
    for i, status in enumerate(statuses):
        start = t0 if overlapping else t0 + 0.1 * i
        error = None if status is not None else "ReadTimeout('')"
        records.append(RequestRecord(i, start, start + 0.1, status, None, error))
    end = max(r.end for r in records)
    return LoadReport(tuple(records), wall=end - t0)


def bar_colors(fig: Figure, panel: int = 0) -> list[tuple[float, ...]]:
    return [to_rgba(patch.get_facecolor()) for patch in fig.axes[panel].patches]


def legend_labels(fig: Figure) -> list[str]:
    return [text.get_text() for text in fig.legends[0].get_texts()]


def test_timeline_draws_one_bar_per_request_colored_by_outcome() -> None:
    fig = plot_timeline(report([200, 200, 429, 503, None]), title="five requests")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    colors = bar_colors(fig)
    assert len(colors) == 5
    assert colors.count(to_rgba("tab:blue")) == 2
    assert colors.count(to_rgba("tab:orange")) == 1
    assert colors.count(to_rgba("tab:red")) == 1
    assert colors.count(to_rgba("tab:gray")) == 1
    assert legend_labels(fig) == [
        "2xx",
        "429 rate limited",
        "5xx server error",
        "no response (exception)",
    ]
    assert fig.axes[0].get_xlabel() == "seconds since first request"
    assert fig.axes[0].get_ylabel() == "request #"
    assert fig.get_suptitle() == "five requests"


def test_timeline_bars_start_at_zero_and_span_the_request() -> None:
    fig = plot_timeline(report([200, 200, 200], overlapping=False))
    bars = sorted(
        (bar for bar in fig.axes[0].patches if isinstance(bar, Rectangle)), key=Rectangle.get_x
    )
    assert [round(bar.get_x(), 6) for bar in bars] == [0.0, 0.1, 0.2]
    assert all(bar.get_width() == pytest.approx(0.1) for bar in bars)


def test_timeline_puts_runs_side_by_side_with_upstream_calls() -> None:
    sequential = report([200] * 4, overlapping=False)
    concurrent = report([200] * 4, t0=500.0)
    upstream: dict[str, Calls] = {
        "sequential": [Call(100.0 + 0.1 * i, 100.1 + 0.1 * i, 200) for i in range(4)],
        "concurrent": Stats(tuple(Call(500.0, 500.1, 200) for _ in range(3))),
    }
    fig = plot_timeline(
        {"sequential": sequential, "concurrent": concurrent}, upstream=upstream, latency=0.1
    )
    assert len(fig.axes) == 2
    assert tuple(fig.get_size_inches()) == pytest.approx((10.0, 3.5))
    assert [len(ax.patches) for ax in fig.axes] == [4 + 4, 4 + 3]
    assert bar_colors(fig, 1).count(to_rgba("tab:purple")) == 3
    assert fig.axes[1].get_title() == "concurrent · wall 0.10 s"
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()  # one time scale for both runs
    assert legend_labels(fig) == ["2xx", "upstream call", "one upstream call (0.10 s)"]


def test_timeline_accepts_upstream_stats_for_a_single_run() -> None:
    stats = Stats((Call(100.0, 100.1, 200), Call(100.0, 100.1, 429)))
    fig = plot_timeline(report([200, 200]), upstream=stats)
    assert len(fig.axes[0].patches) == 4


def test_timeline_rejects_mismatched_arguments() -> None:
    runs = {"a": report([200])}
    with pytest.raises(TypeError, match="runs must be"):
        plot_timeline([report([200])])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="runs must be"):
        plot_timeline({})
    with pytest.raises(TypeError, match="upstream must be a mapping"):
        plot_timeline(runs, upstream=[Call(0.0, 1.0, 200)])
    with pytest.raises(TypeError, match="not a mapping"):
        plot_timeline(report([200]), upstream={"a": []})
    with pytest.raises(ValueError, match=r"not in runs: \['b'\]"):
        plot_timeline(runs, upstream={"b": []})
    with pytest.raises(TypeError, match="start and end"):
        plot_timeline(report([200]), upstream=[1, 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="latency must be"):
        plot_timeline(runs, latency=0)


def test_latencies_draw_one_line_per_run() -> None:
    runs = {"sequential": report([200] * 3, overlapping=False), "concurrent": report([200] * 3)}
    fig = plot_latencies(runs, latency=0.1)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].get_lines()) == 3  # two runs and the latency line
    xs, ys = (np.asarray(data) for data in fig.axes[0].get_lines()[0].get_data())
    assert list(ys) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert list(xs[1:]) == pytest.approx([0.1, 0.1, 0.1])


def test_in_flight_steps_up_and_down() -> None:
    requests = report([200] * 5, overlapping=True)
    upstream = Stats(tuple(Call(100.0 + 0.02 * i, 100.05 + 0.02 * i, 200) for i in range(3)))
    fig = plot_in_flight({"requests": requests, "upstream": upstream}, limit=2)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3  # two series and the limit
    request_counts = np.asarray(lines[0].get_ydata())
    assert request_counts.max() == requests.in_flight_max == 5
    assert request_counts[-1] == 0
    assert np.asarray(lines[1].get_ydata()).max() == 3  # 0.00-0.05, 0.02-0.07, 0.04-0.09
    assert lines[2].get_label() == "limit 2"


def test_in_flight_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="limit must be"):
        plot_in_flight(report([200]), limit=0)
    with pytest.raises(ValueError, match="nothing to draw"):
        plot_in_flight([])
    with pytest.raises(TypeError, match="start and end"):
        plot_in_flight("abc")  # type: ignore[arg-type]


def test_plots_leave_no_figure_open_in_pyplot() -> None:
    plt.close("all")
    plot_timeline(report([200]))
    plot_latencies(report([200]))
    plot_in_flight(report([200]))
    assert plt.get_fignums() == []


def test_a_returned_figure_is_shown_exactly_once_in_a_notebook() -> None:
    cells = [
        "from labsupport.load import LoadReport, RequestRecord\n"
        "from labsupport.plots import plot_timeline\n"
        "report = LoadReport((RequestRecord(0, 0.0, 0.1, 200, None),), wall=0.1)",
        "plot_timeline(report)",
        "fig = plot_timeline(report)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    shown = [
        [output for output in cell.outputs if "image/png" in output.get("data", {})]
        for cell in notebook.cells
    ]
    assert [len(images) for images in shown] == [0, 1, 0]
