"""fire() and LoadReport: timelines, bodies, errors, summaries."""

from __future__ import annotations

import asyncio
import math
import random
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse
from IPython.lib.pretty import pretty
from openai import OpenAI

import labsupport
from labsupport.load import LoadReport, RequestRecord, fire, in_flight_steps
from labsupport.serving import asgi_client, serve


def make_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: dict[str, Any], response: Response) -> dict[str, Any]:
        await asyncio.sleep(0.1)
        response.status_code = body.get("status", 200)
        return body

    @app.get("/text")
    async def text() -> PlainTextResponse:
        return PlainTextResponse("not json")

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(0.5)
        return {"status": "done"}

    return app


def record(index: int, start: float, end: float, status: int | None = 200) -> RequestRecord:
    return RequestRecord(index=index, start=start, end=end, status=status, body=None)


@pytest.mark.anyio
async def test_fire_records_each_request_in_order_with_its_body() -> None:
    async with asgi_client(make_app()) as client:
        report = await fire(client, "post", "/echo", json=lambda i: {"i": i}, n=5)
    assert [r.index for r in report.requests] == [0, 1, 2, 3, 4]
    assert report.bodies == ({"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}, {"i": 4})
    assert report.status_counts == {200: 5}
    assert report.ok
    assert report.errors == ()
    assert all(r.end > r.start for r in report.requests)
    assert all(latency >= 0.1 for latency in report.latencies)


@pytest.mark.anyio
async def test_fire_sends_all_at_once_or_within_the_concurrency_limit() -> None:
    async with asgi_client(make_app()) as client:
        together = await fire(client, "POST", "/echo", json={}, n=10)
        limited = await fire(client, "POST", "/echo", json={}, n=10, concurrency=3)
        one_by_one = await fire(client, "POST", "/echo", json={}, n=10, concurrency=1)
    assert together.in_flight_max == 10
    assert limited.in_flight_max == 3
    assert one_by_one.in_flight_max == 1
    assert limited.wall >= 4 * 0.1  # 10 requests, 3 at a time: four rounds
    assert one_by_one.ratio(0.1) >= 10
    assert 3 * together.wall < one_by_one.wall  # paired runs: ideal 1 latency against 10


@pytest.mark.anyio
async def test_fire_counts_statuses_and_keeps_non_json_bodies() -> None:
    async with asgi_client(make_app()) as client:
        mixed = await fire(
            client, "POST", "/echo", json=lambda i: {"status": (200, 429, 503)[i % 3]}, n=6
        )
        text = await fire(client, "GET", "/text")
    assert mixed.status_counts == {200: 2, 429: 2, 503: 2}
    assert not mixed.ok
    assert text.bodies == ("not json",)


@pytest.mark.anyio
async def test_fire_records_failures_instead_of_raising() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        report = await fire(client, "GET", "/", n=3)
    assert report.status_counts == {"ConnectError": 3}
    assert not report.ok
    assert len(report.errors) == 3
    assert report.errors[0].error == "ConnectError('connection refused')"
    assert report.errors[0].status is None
    assert "3 × ConnectError" in report.summary()


@pytest.mark.anyio
async def test_fire_applies_the_timeout_per_request() -> None:
    async with serve(make_app()) as client:
        report = await fire(client, "GET", "/slow", n=2, timeout=0.05)
    # Timed out, not answered: the client stopped waiting before the 0.5 s answer came.
    assert report.status_counts == {"ReadTimeout": 2}
    assert min(report.latencies) >= 0.05


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("arguments", "options", "message"),
    [
        (("GET", "/"), {"n": 0}, "n must be"),
        (("GET", "/"), {"n": True}, "n must be"),
        (("GET", "/"), {"concurrency": 0}, "concurrency must be"),
        (("GET", "/"), {"timeout": 0}, "timeout must be"),
        (("FETCH", "/"), {}, "method must be one of"),
        (("GET", "chat"), {}, "path must be"),
    ],
)
async def test_fire_rejects_bad_input(
    arguments: tuple[str, str], options: dict[str, Any], message: str
) -> None:
    async with asgi_client(make_app()) as client:
        with pytest.raises((ValueError, TypeError), match=message):  # TypeError: not a number
            await fire(client, *arguments, **options)


@pytest.mark.anyio
async def test_fire_needs_an_async_client() -> None:
    with httpx.Client() as client, pytest.raises(TypeError, match="client must be"):
        await fire(client, "GET", "/")  # type: ignore[arg-type]


def test_summary_prints_times_and_ratios_in_sanitizable_forms() -> None:
    report = LoadReport(
        (record(0, 0.0, 0.1), record(1, 0.0, 0.2), record(2, 0.0, 0.3), record(3, 0.0, 0.5, 429)),
        wall=1.0,
    )
    assert report.p50 == pytest.approx(0.25)
    assert report.p95 == pytest.approx(0.47)
    assert report.max_latency == pytest.approx(0.5)
    assert report.summary() == (
        "4 requests · 3 × 200, 1 × 429 · wall 1.00 s · p50 0.25 s · p95 0.47 s"
    )
    assert report.summary(latency=0.1) == (
        "4 requests · 3 × 200, 1 × 429 · wall 1.00 s (≈ 10.0× latency 0.10 s) · "
        "p50 0.25 s · p95 0.47 s"
    )
    # Everything that varies between runs is `N.NN s` or `N.N×`; the rest is fixed text.
    stable = re.sub(r"\d+\.\d\d s|\d+\.\d×", "…", report.summary(latency=0.1))
    assert stable == "4 requests · 3 × 200, 1 × 429 · wall … (≈ … latency …) · p50 … · p95 …"
    assert str(report) == report.summary()
    assert repr(report) == f"<LoadReport {report.summary()}>"


def test_summary_of_one_request() -> None:
    assert LoadReport((record(0, 1.0, 1.5),), wall=0.5).summary().startswith("1 request · ")


def test_status_counts_put_codes_first_then_exception_names() -> None:
    failed = RequestRecord(2, 0.0, 0.1, None, None, "ReadTimeout('')", "ReadTimeout")
    report = LoadReport((record(0, 0.0, 0.1, 503), failed, record(1, 0.0, 0.1, 200)), wall=0.1)
    assert list(report.status_counts) == [200, 503, "ReadTimeout"]


def test_in_flight_counts_overlaps_but_not_touching_spans() -> None:
    spans = [record(0, 0.0, 1.0), record(1, 1.0, 2.0), record(2, 0.5, 1.5)]
    assert in_flight_steps(iter(spans)) == [(0.0, 1), (0.5, 2), (1.0, 2), (1.5, 1), (2.0, 0)]
    assert LoadReport(tuple(spans), wall=2.0).in_flight_max == 2


def test_in_flight_accepts_any_objects_with_start_and_end() -> None:
    @dataclass(frozen=True)
    class Call:
        start: float
        end: float

    assert in_flight_steps([Call(0.0, 1.0), Call(0.2, 0.4)]) == [
        (0.0, 1),
        (0.2, 2),
        (0.4, 1),
        (1.0, 0),
    ]


def test_ratio_and_construction_reject_bad_values() -> None:
    report = LoadReport((record(0, 0.0, 0.1),), wall=0.2)
    assert report.ratio(0.1) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="latency must be"):
        report.ratio(0)
    with pytest.raises(ValueError, match="requests must be"):
        LoadReport((), wall=0.1)
    with pytest.raises(ValueError, match="wall must be"):
        LoadReport((record(0, 0.0, 0.1),), wall=-1.0)


def _numpy_linear_percentile(values: list[float], fraction: float) -> float:
    """The hand-rolled percentile load.py used before statistics.quantiles: the reference."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@pytest.mark.parametrize("size", [1, 2, 3, 10, 99, 100, 101, 1000])
def test_p50_and_p95_are_numpys_linear_percentiles(size: int) -> None:
    generator = random.Random(size)
    durations = [generator.uniform(0.05, 2.0) for _ in range(size)]
    report = LoadReport(
        tuple(record(i, 0.0, duration) for i, duration in enumerate(durations)), wall=2.0
    )
    # Equal up to the last bits of float rounding (the two interpolate in a different order).
    assert report.p50 == pytest.approx(_numpy_linear_percentile(durations, 0.50), rel=1e-12)
    assert report.p95 == pytest.approx(_numpy_linear_percentile(durations, 0.95), rel=1e-12)


def test_pretty_repr_in_a_notebook_is_the_summary() -> None:
    report = LoadReport((record(0, 0.0, 0.1),), wall=0.1)
    assert pretty(report) == report.summary()


def test_from_calls_turns_upstream_calls_into_a_plottable_run() -> None:
    with labsupport.mock_openai(latency=0.0) as upstream:
        client = OpenAI(api_key="test-key")
        for prompt in ("one", "two"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
            )
    report = LoadReport.from_calls(upstream.stats.timeline)
    assert [r.status for r in report.requests] == [200, 200]
    assert [r.body for r in report.requests] == ["one", "two"]
    calls = upstream.stats.timeline
    assert [(r.start, r.end) for r in report.requests] == [(c.start, c.end) for c in calls]
    assert report.wall == max(c.end for c in calls) - min(c.start for c in calls)
    with pytest.raises(ValueError, match="non-empty sequence"):
        LoadReport.from_calls([])
