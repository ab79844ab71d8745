"""What the course's plots show, whatever draws them: the calls and runs they take, their
colours and outcome styles, and the one-line summary of each figure.

`labsupport.plots` draws with matplotlib (a CPython kernel); `labsupport.vegalite` draws the same
figures as Vega-Lite charts, which JupyterLab renders in the browser, for the course's JupyterLite
site, where matplotlib has no wheel. Both take their inputs through the checks below and word
their summaries with the functions below, so a figure says the same in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol, TypeAlias

from .load import LoadReport, Span, in_flight_steps
from .validation import check_int, check_seconds

__all__ = [
    "OKABE_ITO",
    "OUTCOME_STYLES",
    "UPSTREAM_STYLE",
    "BarStyle",
    "Calls",
    "HasTimeline",
    "Runs",
    "TimedCall",
    "in_flight_series",
    "in_flight_summary",
    "latencies_summary",
    "optional_seconds",
    "outcome",
    "runs_by_label",
    "timeline_summary",
    "upstream_by_label",
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

# ------------------------------------------------------------------------------ summaries


def timeline_summary(
    panels: Mapping[str, LoadReport],
    upstream: Mapping[str, Sequence[TimedCall]],
    latency: float | None,
    title: str | None,
) -> str:
    """`plot_timeline`'s summary: each run's requests by outcome, their shape and wall time."""
    described = [
        _describe_run(label, report, len(upstream[label]) if upstream.get(label) else None)
        for label, report in panels.items()
    ]
    return _sentence(
        title, "Request timeline, one bar per request from start to end", described, latency
    )


def latencies_summary(
    panels: Mapping[str, LoadReport], latency: float | None, title: str | None
) -> str:
    """`plot_latencies`' summary: each run's median and slowest request."""
    described = [
        f"{_labelled(label)}{_count(len(report.latencies), 'request')}, median "
        f"{report.p50:.2f} s, slowest {report.max_latency:.2f} s"
        for label, report in panels.items()
    ]
    return _sentence(
        title, "Latency distribution, share of requests at most x seconds", described, latency
    )


def in_flight_summary(
    series: Mapping[str, Sequence[Span]], limit: int | None, title: str | None
) -> str:
    """`plot_in_flight`'s summary: each series' peak, or which side of the limit it stays."""
    described = [
        f"{_labelled(label)}{_peak(max(count for _, count in steps), limit)}"
        for label, items in series.items()
        if (steps := in_flight_steps(items))
    ]
    reference = f"Dashed line: the limit of {limit}." if limit is not None else ""
    return " ".join(
        part
        for part in (
            _lead(title, "How many were in flight over time") + "; ".join(described) + ".",
            reference,
        )
        if part
    )


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
        kind = outcome(record.status)
        outcomes[kind] = outcomes.get(kind, 0) + 1
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


# ------------------------------------------------------------------------------ inputs


def runs_by_label(runs: Runs) -> dict[str, LoadReport]:
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


def upstream_by_label(
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


def outcome(status: int | None) -> str:
    if status is None:
        return "no response (exception)"
    if 200 <= status < 300:
        return "2xx"
    if status == 429:
        return "429 rate limited"
    if status >= 500:
        return "5xx server error"
    return "other status"


def optional_seconds(value: float | None, argument: str) -> float | None:
    return None if value is None else check_seconds(argument, value, allow_zero=False)


def in_flight_series(
    spans: LoadReport | Calls | Mapping[str, LoadReport | Calls], limit: int | None
) -> dict[str, Sequence[TimedCall]]:
    """`plot_in_flight`'s series by label (one unlabelled series for a single argument), checked:
    not empty, and `limit` a whole number from 1 if given."""
    series = dict(spans) if isinstance(spans, Mapping) else {"": spans}
    if not series:
        raise ValueError("spans must not be an empty mapping")
    by_label = {label: _spans(value, "spans") for label, value in series.items()}
    if limit is not None:  # None: no limit line
        check_int("limit", limit, minimum=1)
    if not any(by_label.values()):
        raise ValueError("spans has nothing to draw: every series is empty")
    return by_label
