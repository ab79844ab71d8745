"""Plots: the right panels and bars, readable by everyone (palette, hatches, a white face, a text
summary), nothing left open in pyplot, shown once in a notebook with the summary as alt text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import nbclient
import nbformat
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from labsupport.load import LoadReport, RequestRecord
from labsupport.plots import (
    OKABE_ITO,
    OUTCOME_STYLES,
    REFERENCE_LINE,
    Calls,
    DescribedFigure,
    plot_in_flight,
    plot_latencies,
    plot_timeline,
    series_style,
)

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


def bar_hatches(fig: Figure, panel: int = 0) -> list[str]:
    return [patch.get_hatch() or "" for patch in fig.axes[panel].patches]


def test_timeline_draws_one_bar_per_request_colored_and_hatched_by_outcome() -> None:
    fig = plot_timeline(report([200, 200, 429, 503, None]), title="five requests")
    assert isinstance(fig, DescribedFigure)
    assert len(fig.axes) == 1
    colors = bar_colors(fig)
    assert len(colors) == 5
    assert colors.count(to_rgba(OKABE_ITO["blue"])) == 2
    assert colors.count(to_rgba(OKABE_ITO["orange"])) == 1
    assert colors.count(to_rgba(OKABE_ITO["vermillion"])) == 1
    assert colors.count(to_rgba(OKABE_ITO["reddish purple"])) == 1
    # Not by colour alone: successes are solid, and each kind of failure has its own hatch.
    hatches = bar_hatches(fig)
    assert hatches.count("") == 2
    assert len({hatch for hatch in hatches if hatch}) == 3
    assert legend_labels(fig) == [
        "2xx",
        "429 rate limited",
        "5xx server error",
        "no response (exception)",
    ]
    assert [patch.get_hatch() or "" for patch in fig.legends[0].get_patches()] == [
        OUTCOME_STYLES[label].hatch for label in legend_labels(fig)
    ]
    assert fig.axes[0].get_title() == "wall 0.10 s · 3 of 5 failed"  # in words, too
    assert fig.axes[0].get_xlabel() == "seconds since first request"
    assert fig.axes[0].get_ylabel() == "request #"
    assert fig.get_suptitle() == "five requests"


def test_every_outcome_has_its_own_okabe_ito_colour_and_only_successes_are_solid() -> None:
    styles = list(OUTCOME_STYLES.values())
    assert len({style.color for style in styles}) == len(styles)
    assert {style.color for style in styles} <= set(OKABE_ITO.values())
    assert [bool(style.hatch) for style in styles] == [False, True, True, True, True]
    assert len({style.hatch for style in styles}) == len(styles)


def test_figures_are_opaque_white_for_dark_themes() -> None:
    for fig in (
        plot_timeline(report([200])),
        plot_latencies(report([200])),
        plot_in_flight(report([200])),
    ):
        assert to_rgba(fig.get_facecolor()) == (1.0, 1.0, 1.0, 1.0)
        assert all(to_rgba(ax.get_facecolor()) == (1.0, 1.0, 1.0, 1.0) for ax in fig.axes)


def test_series_lines_differ_in_dash_pattern_as_well_as_colour() -> None:
    runs = {name: report([200] * 3) for name in ("a", "b", "c")}
    lines = plot_latencies(runs).axes[0].get_lines()
    assert len({line.get_color() for line in lines}) == 3
    assert len({str(line.get_linestyle()) for line in lines}) == 3


def test_every_figure_carries_a_one_line_summary_with_its_numbers() -> None:
    sequential = report([200] * 4, overlapping=False)
    mixed = report([200, 429, 503, None])
    timeline = plot_timeline(
        {"sequential": sequential, "mixed": mixed},
        upstream={"sequential": [Call(100.0 + 0.1 * i, 100.1 + 0.1 * i, 200) for i in range(4)]},
        latency=0.1,
        title="Two runs",
    )
    assert timeline.summary == (
        "Two runs. Request timeline, one bar per request from start to end: "
        "sequential: 4 requests (all 2xx), one at a time, wall 0.40 s, 4 upstream calls below "
        "them; mixed: 4 requests (1 × 2xx, 1 × 429 rate limited, 1 × 5xx server error, "
        "1 × no response (exception)), overlapping, wall 0.10 s. "
        "Dashed line: one upstream call (0.10 s)."
    )
    latencies = plot_latencies(sequential)
    assert latencies.summary == (
        "Latency distribution, share of requests at most x seconds: "
        "4 requests, median 0.10 s, slowest 0.10 s."
    )
    upstream = Stats(tuple(Call(100.0 + 0.02 * i, 100.05 + 0.02 * i, 200) for i in range(3)))
    in_flight = plot_in_flight({"requests": mixed, "upstream": upstream}, limit=3)
    assert in_flight.summary == (
        "How many were in flight over time: requests: rises above the limit of 3; "
        "upstream: never above the limit of 3. Dashed line: the limit of 3."
    )
    assert plot_in_flight(upstream).summary == "How many were in flight over time: peak 3."
    for fig in (timeline, latencies, in_flight):
        assert "\n" not in fig.summary


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
    assert bar_colors(fig, 1).count(to_rgba(OKABE_ITO["bluish green"])) == 3
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


@pytest.mark.slow
def test_a_returned_figure_is_shown_exactly_once_in_a_notebook_with_its_alt_text() -> None:
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
    (figure,) = shown[1]
    summary = "Request timeline, one bar per request from start to end: 1 request (all 2xx), "
    assert figure["data"]["text/plain"].startswith(summary)
    assert figure["metadata"]["image/png"]["alt"] == figure["data"]["text/plain"]
    # JupyterLab shows only the PNG of that output: the words follow as a caption of their own.
    after = notebook.cells[1].outputs[notebook.cells[1].outputs.index(figure) + 1]
    assert after["data"] == {"text/plain": figure["data"]["text/plain"]}


def _all_plots(series: int) -> dict[str, Figure]:
    """Each plot function's figure, with `series` runs (07: "all workers" and four workers)."""
    runs = {
        f"run {i}": report([200, 429, None][: 1 + i % 3] * 2, t0=100.0 + i) for i in range(series)
    }
    return {
        "plot_timeline": plot_timeline(runs, latency=0.1),
        "plot_latencies": plot_latencies(runs, latency=0.1),
        "plot_in_flight": plot_in_flight(runs, limit=2),
    }


def test_series_styles_are_unique_pairs_and_never_the_reference_line() -> None:
    styles = [series_style(i) for i in range(49)]
    pairs = {(style["color"], str(style["linestyle"])) for style in styles}
    assert len(pairs) == 49
    assert all(style["color"] != REFERENCE_LINE["color"] for style in styles)
    assert all(style["linestyle"] != REFERENCE_LINE["linestyle"] for style in styles)


@pytest.mark.parametrize("series", [5, 7])
def test_no_two_lines_of_a_figure_share_colour_and_style(series: int) -> None:
    labels = {f"run {i}" for i in range(series)}
    for name, fig in _all_plots(series).items():
        if name == "plot_timeline":
            continue  # one panel per run, its bars coloured by outcome
        lines = [line for line in fig.axes[0].get_lines() if line.get_label() in labels]
        assert len(lines) == series, name
        assert len({to_rgba(line.get_color()) for line in lines}) == series, name


def test_legends_sit_outside_the_axes_so_they_cover_no_data() -> None:
    for name, fig in _all_plots(5).items():
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)  # lays the figure out: the legend's and the axes' boxes are final
        assert not any(ax.get_legend() for ax in fig.axes), name  # no legend inside an axes
        assert fig.legends, name
        for legend in fig.legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), name
