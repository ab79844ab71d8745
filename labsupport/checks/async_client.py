"""Checker for notebook 01: an endpoint that calls the upstream without blocking the event loop."""

from __future__ import annotations

import gc
from typing import Any

from .._text import shorten
from ..load import LoadReport, fire
from ..looplag import loop_lag
from ..serving import asgi_client
from ._common import caught_warnings, never_awaited, reference_latency, upstream_or_none
from .result import CheckResult

__all__ = ["check_async_endpoint"]

EXERCISE = "a non-blocking /chat endpoint"


async def check_async_endpoint(app: Any, *, path: str = "/chat", n: int = 20) -> CheckResult:
    """Send `n` concurrent requests to `app`'s `path` (in process) and judge whether they ran
    together (≈ 1× the upstream latency) or queued behind a blocked event loop (≈ n×).

    The app must answer `POST path` with `{"message": "…"}` by `{"response": "<the reply>"}`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int ≥ 2 (concurrency needs company); got {n!r}")
    latency = await reference_latency()
    upstream = upstream_or_none()
    with caught_warnings() as caught:
        async with asgi_client(app) as client, loop_lag() as lag:
            report = await fire(
                client, "POST", path, n=n, json=lambda i: {"message": f"Summarize: Ticket {i}."}
            )
        gc.collect()  # a coroutine that was never awaited only warns when it is collected
    ratio = report.ratio(latency)
    timing = (
        f"{n} concurrent requests took {report.wall:.2f} s ≈ {ratio:.1f}× the upstream "
        f"latency ({latency:.2f} s); the event loop was blocked for {lag.blocked:.2f} s."
    )
    evidence = [timing]
    clients: set[str] = set()
    if upstream is not None:
        stats = upstream.stats
        clients = {call.client for call in stats.timeline}
        kinds = " and ".join(sorted(clients)) or "no"
        evidence.append(
            f"The upstream saw {stats.calls} calls from the {kinds} client, "
            f"{'one at a time' if stats.max_in_flight <= 1 else 'overlapping in time'}."
        )

    if never_awaited(caught) or _mentions_coroutine(report):
        return CheckResult(
            EXERCISE,
            False,
            "a coroutine was never awaited, so the endpoint never got a reply.",
            (*evidence, _first_problem(report)),
            "add `await` in front of `aclient.chat.completions.create(...)`.",
        )
    if not report.ok or not _replies_ok(report):
        return CheckResult(
            EXERCISE,
            False,
            f"{len(report.errors) or n} of {n} requests did not get a proper reply.",
            (*evidence, _first_problem(report)),
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
        )
    if ratio > n / 3:
        blocked = lag.blocked > 0.5 * report.wall
        why = (
            "the event loop was blocked: each request waited for the one before"
            if blocked
            else "the requests were served one after another"
        )
        hint = (
            "a synchronous call inside `async def`? Use one shared `AsyncOpenAI` client and "
            "`await` its calls."
            if "sync" in clients or blocked
            else "is something serializing the requests (a lock, a single worker)?"
        )
        return CheckResult(EXERCISE, False, f"{why}.", tuple(evidence), hint)
    return CheckResult(
        EXERCISE,
        True,
        "the requests ran together, and the event loop stayed free.",
        tuple(evidence),
    )


def _replies_ok(report: LoadReport) -> bool:
    return all(
        isinstance(body, dict) and isinstance(body.get("response"), str) and body["response"]
        for body in report.bodies
    )


def _mentions_coroutine(report: LoadReport) -> bool:
    return any("coroutine" in f"{r.error}{r.body}" for r in report.requests)


def _first_problem(report: LoadReport) -> str:
    for record in report.requests:
        if record.error:
            return f"First error: {record.error_type}: {shorten(record.error, 160)}"
        if record.status != 200 or not isinstance(record.body, dict):
            return f"First bad reply: HTTP {record.status}: {shorten(str(record.body), 160)}"
        if not record.body.get("response"):
            return f"First bad reply: {shorten(str(record.body), 160)}"
    return "Every reply looked fine."
