"""Checker for notebook 05: one OpenAI client for the app's lifetime, opened and closed by the
lifespan.

Its causes (`CheckResult.cause`), in the order they are judged:

* "ok" — one client, built at startup, served every request over one connection, and shutdown
  closed it;
* "threading_primitive" / "blocked_loop" / "timed_out" — the watchdog had to stop the app;
* "app_error" — the app's lifespan (startup or shutdown) raised;
* "client_closed_before_yield" — the client built at startup was already closed when the first
  request came (closed before `yield`: the lifespan's `async with` ended too early);
* "lifespan_not_passed" — requests failed, and the app has no lifespan: it was never passed to
  `FastAPI(lifespan=...)`;
* "missing_return" — the endpoint returned nothing (`null`);
* "bad_reply" — other failed requests, or replies without a `"response"` text;
* "built_before_start" — the check's upstream saw no calls: the client was built before the app
  started (at import), so it never read the check's `OPENAI_BASE_URL`;
* "client_per_request" — a client was built for each request (counted), or the requests used
  one TCP connection each;
* "never_closed" — a client built during the check was still open after shutdown.

Clients are counted, and their state read, as they are built (`OpenAI(...)` / `AsyncOpenAI(...)`
during the check), so no verdict depends on timing or on the garbage collector.
"""

from __future__ import annotations

import asyncio
import gc
import os
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args
from unittest import mock

from .._text import shorten
from ..load import LoadReport, fire
from ..serving import asgi_client
from ..upstream.fake_server import FakeServer
from ..validation import check_int
from ._clients import built_clients
from ._common import caught_warnings, stopped_by_watchdog, upstream_or_none
from .result import CheckResult, an_app, recorded
from .watchdog import guarded

__all__ = ["CAUSES", "Cause", "check_lifespan_client"]

EXERCISE = "one lifespan-managed OpenAI client"

Cause = Literal[
    "ok",
    "threading_primitive",
    "blocked_loop",
    "timed_out",
    "app_error",
    "client_closed_before_yield",
    "lifespan_not_passed",
    "missing_return",
    "bad_reply",
    "built_before_start",
    "client_per_request",
    "never_closed",
]
CAUSES: Final[tuple[str, ...]] = get_args(Cause)

FAKE_LATENCY: Final = 0.02
"""Seconds per call on the check's own upstream: the check is about connections, not time."""

CLOSE_GRACE: Final = 0.5
"""Seconds a closed client's connections may take to be seen closed by the server."""


@dataclass(frozen=True)
class _Measured:
    report: LoadReport
    built_at_startup: int
    closed_at_startup: int
    built: int
    open_after: int


@recorded(notebook="05_lifespan", app=an_app)
async def check_lifespan_client(app: Any, *, path: str = "/chat", n: int = 5) -> CheckResult:
    """Run `app` (lifespan included), send `n` requests one after another, shut it down, and
    judge its OpenAI clients: how many were built, when, over how many TCP connections, and
    whether shutdown closed them.

    The app's client goes to a `FakeServer` on 127.0.0.1: during the check `OPENAI_BASE_URL`
    points at it, so `AsyncOpenAI()` built *during the check* (in the lifespan, or per request)
    uses it; the variable is restored afterwards. One shared client reuses one connection for
    sequential requests; a client per request opens one each. Learner code runs under the
    watchdog.

    The app must answer `POST path` with `{"message": "…"}` by `{"response": "<the reply>"}`.
    """
    check_int("n", n, minimum=2, why="reuse needs a second request")
    upstream = upstream_or_none()

    async def measure() -> _Measured:
        with built_clients() as built:
            async with asgi_client(app) as client:
                at_startup, closed_at_startup = built.count, built.closed()
                report = await fire(
                    client,
                    "POST",
                    path,
                    n=n,
                    concurrency=1,
                    json=lambda i: {"message": f"Summarize in 5 words: ticket {i}"},
                )
            return _Measured(report, at_startup, closed_at_startup, built.count, built.open())

    with FakeServer(latency=FAKE_LATENCY) as server, caught_warnings() as caught:
        gc.collect()  # earlier garbage must not be blamed on this app
        caught.clear()
        with mock.patch.dict(os.environ, {"OPENAI_BASE_URL": server.base_url}):
            outcome = await guarded(measure(), block_limit=2.0, time_limit=30.0 + 2 * n)
        left_open = await _open_connections_after(server, CLOSE_GRACE)
        gc.collect()  # clients dropped without close() are collected here: they warn
        unclosed = sum(issubclass(w.category, ResourceWarning) for w in caught)
        reached = server.stats.calls
        connections = server.connections
    if outcome.stopped:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, f"the app's {n} requests")
    if outcome.error is not None or outcome.value is None:
        error = outcome.error
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause="app_error",
            summary=f"the app's lifespan raised {type(error).__name__}: {shorten(str(error), 160)}",
            hint="startup must create the client, and shutdown close it, without errors.",
        )
    measured = outcome.value
    mocked = upstream.stats.calls if upstream is not None else 0
    return _verdict(app, measured, n, path, reached, connections, left_open, unclosed, mocked)


def _verdict(
    app: Any,
    measured: _Measured,
    n: int,
    path: str,
    reached: int,
    connections: int,
    left_open: int,
    unclosed: int,
    mocked: int,
) -> CheckResult:
    def s(count: int) -> str:
        return "" if count == 1 else "s"

    report = measured.report
    evidence = [
        f"{n} requests, one after another: the upstream got {reached} call{s(reached)} over "
        f"{connections} TCP connection{s(connections)}.",
        f"The app built {measured.built} OpenAI client{s(measured.built)} while the check ran, "
        f"{measured.built_at_startup} of them at startup.",
        f"After shutdown: {measured.open_after} of them not closed, {left_open} "
        f"connection{s(left_open)} still open.",
    ]
    if unclosed:
        evidence.append(f"Garbage collection found {unclosed} unclosed socket(s) or transport(s).")

    def fail(cause: Cause, summary: str, hint: str, *extra: str) -> CheckResult:
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause=cause,
            summary=summary,
            evidence=(*evidence, *extra),
            hint=hint,
        )

    failed = sum(r.status != 200 for r in report.requests)
    if failed:
        first = next(r for r in report.requests if r.status != 200)
        said = shorten(
            f"First: {first.error_type or first.status}: {first.error or first.body}", 200
        )
        if measured.built_at_startup and measured.closed_at_startup == measured.built_at_startup:
            return fail(
                "client_closed_before_yield",
                f"{failed} of {n} requests failed: the client built at startup was already "
                "closed when the first request came.",
                "the `yield` must be inside the `async with AsyncOpenAI(...) as client:` block "
                "(or close the client after `yield`): leaving the block closes the client.",
                said,
            )
        if _no_lifespan(app):
            return fail(
                "lifespan_not_passed",
                f"{failed} of {n} requests failed, and the app has no lifespan: nothing created "
                "the client.",
                "pass your lifespan to the app: `app = FastAPI(lifespan=lifespan)`.",
                said,
            )
        return fail(
            "bad_reply",
            f"{failed} of {n} requests failed.",
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
            said,
        )
    if all(body is None for body in report.bodies):
        return fail(
            "missing_return",
            f"all {n} replies were empty (null): the endpoint returned nothing.",
            'end the endpoint with `return {"response": response.choices[0].message.content}`.',
        )
    if not all(isinstance(b, dict) and isinstance(b.get("response"), str) for b in report.bodies):
        return fail(
            "bad_reply",
            f'the replies had no "response" text (first: {shorten(str(report.bodies[0]), 80)}).',
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
        )
    if reached < n and measured.built == 0:
        return fail(
            "built_before_start",
            "the check's upstream was not used: the client was built before the app started.",
            "create the client in the lifespan (startup), where it reads OPENAI_BASE_URL, "
            "not at import time.",
            f"The in-process upstream answered {mocked} call{s(mocked)} instead.",
        )
    never_closed = measured.open_after > 0 or left_open > 0 or unclosed > 0
    if measured.built >= n or connections > 1:
        return fail(
            "client_per_request",
            f"a new client per request: {measured.built} clients and {connections} connections "
            f"for {n} sequential requests"
            + (", and not all were closed." if never_closed else "."),
            "create ONE `AsyncOpenAI` in the lifespan, hand it to the endpoint (lifespan state, "
            "`app.state` or a dependency), and close it at shutdown.",
        )
    if never_closed:
        return fail(
            "never_closed",
            "the client was never closed: it outlived the app.",
            "close it after `yield` in the lifespan (`await client.close()`), or create it with "
            "`async with AsyncOpenAI(...) as client:` around the `yield`.",
        )
    return CheckResult(
        exercise=EXERCISE,
        passed=True,
        cause="ok",
        summary=f"for this check's {n} requests, one client served every request over one "
        "connection, and shutdown closed it.",
        evidence=tuple(evidence),
    )


def _no_lifespan(app: Any) -> bool:
    """Whether a Starlette/FastAPI app runs only the framework's default (empty) lifespan."""
    router = getattr(app, "router", None)
    context = getattr(router, "lifespan_context", None)
    return context is not None and type(context).__name__ == "_DefaultLifespan"


async def _open_connections_after(server: FakeServer, grace: float) -> int:
    """How many client connections the server still has open, once closed ones had `grace`
    seconds to arrive as closed (the server runs in its own thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while (count := server.open_connections) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return count
