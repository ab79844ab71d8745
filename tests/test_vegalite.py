"""labsupport.vegalite: the plots as Vega-Lite charts for the browser, from the same calls as the
matplotlib figures, with the same summary; and `lab.plot_*` picks them where the kernel is
Pyodide (labsupport.charts). tests/test_lite.py renders them in JupyterLab in Chromium."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from test_plots import Call, Stats, report

import labsupport
from labsupport import charts, plots, vegalite
from labsupport.plot_data import OUTCOME_STYLES


def _runs() -> dict[str, Any]:
    return {
        "sequential": report([200] * 4, overlapping=False),
        "mixed": report([200, 429, 503, None]),
    }


def _upstream() -> dict[str, Any]:
    return {"sequential": [Call(100.0 + 0.1 * i, 100.1 + 0.1 * i, 200) for i in range(4)]}


def _in_flight_series() -> dict[str, Any]:
    upstream = Stats(tuple(Call(100.0 + 0.02 * i, 100.05 + 0.02 * i, 200) for i in range(3)))
    return {"requests": report([200, 429, 503, None]), "upstream": upstream}


def test_each_chart_says_what_the_matplotlib_figure_says() -> None:
    pairs = [
        (
            plots.plot_timeline(_runs(), upstream=_upstream(), latency=0.1, title="Two runs"),
            vegalite.plot_timeline(_runs(), upstream=_upstream(), latency=0.1, title="Two runs"),
        ),
        (plots.plot_latencies(_runs(), latency=0.1), vegalite.plot_latencies(_runs(), latency=0.1)),
        (
            plots.plot_in_flight(_in_flight_series(), limit=3),
            vegalite.plot_in_flight(_in_flight_series(), limit=3),
        ),
    ]
    for figure, chart in pairs:
        assert chart.summary == figure.summary
        bundle = chart._repr_mimebundle_()
        assert bundle["text/plain"] == figure.summary
        spec = bundle["application/vnd.vegalite.v5+json"]
        assert spec["description"] == figure.summary  # the chart's ARIA label
        json.dumps(spec)  # plain JSON, as a notebook output must be


def test_the_timeline_draws_every_request_and_upstream_call_by_outcome() -> None:
    chart = vegalite.plot_timeline(_runs(), upstream=_upstream(), latency=0.1)
    sequential, mixed = chart.spec["hconcat"]
    bars = sequential["layer"][0]["data"]["values"]
    assert [bar["outcome"] for bar in bars] == ["2xx"] * 4 + ["upstream call"] * 4
    assert mixed["title"] == "mixed · wall 0.10 s · 3 of 4 failed"
    color = mixed["layer"][0]["encoding"]["color"]["scale"]
    shown = [kind for kind in OUTCOME_STYLES if kind != "other status"]  # none in these runs
    assert color["domain"] == [*shown, "upstream call"]
    assert color["range"][:4] == [OUTCOME_STYLES[kind].color for kind in shown]
    dashes = mixed["layer"][0]["encoding"]["strokeDash"]["scale"]["range"]
    assert len({str(dash) for dash in dashes[:4]}) == 4  # failures differ without colour too
    assert mixed["layer"][1]["encoding"]["x"]["datum"] == 0.1  # the latency, dashed
    assert chart.spec["resolve"] == {"scale": {"x": "shared"}}  # one time axis, as sharex


def test_in_flight_steps_start_at_zero_and_the_limit_is_drawn() -> None:
    chart = vegalite.plot_in_flight(_in_flight_series()["upstream"], limit=3)
    points = chart.spec["layer"][0]["data"]["values"]
    assert [point["y"] for point in points] == [0, 1, 2, 3, 2, 1, 0]
    assert chart.spec["layer"][1]["encoding"]["y"]["datum"] == 3


def test_bad_input_is_the_same_clear_error_as_for_the_figures() -> None:
    with pytest.raises(TypeError, match="runs must be a LoadReport"):
        vegalite.plot_timeline([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every series is empty"):
        vegalite.plot_in_flight({"none": []})


def test_the_lessons_plot_calls_draw_charts_in_the_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    assert labsupport.plot_timeline is charts.plot_timeline
    assert isinstance(labsupport.plot_in_flight(report([200])), plots.DescribedFigure)
    monkeypatch.setattr(sys, "platform", "emscripten")
    for chart in (
        labsupport.plot_timeline(report([200])),
        labsupport.plot_latencies(report([200])),
        labsupport.plot_in_flight(report([200])),
    ):
        assert isinstance(chart, vegalite.DescribedChart)


def test_only_failures_are_outlined_in_black() -> None:
    chart = vegalite.plot_timeline(_runs()["mixed"])
    stroke = chart.spec["layer"][0]["encoding"]["stroke"]["scale"]
    outlines = dict(zip(stroke["domain"], stroke["range"], strict=True))
    assert outlines["2xx"] == OUTCOME_STYLES["2xx"].color
    assert {outlines[kind] for kind in outlines if kind != "2xx"} == {"black"}
