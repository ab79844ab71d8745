"""Checker for notebook 05: one OpenAI client for the app's lifetime, opened and closed by the
lifespan."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from ..load import fire
from ..serving import asgi_client
from ..upstream.fake_server import FakeServer
from ._common import caught_warnings, upstream_or_none
from .result import CheckResult

__all__ = ["check_lifespan_client"]

EXERCISE = "one lifespan-managed OpenAI client"

FAKE_LATENCY: Final = 0.02
"""Seconds per call on the check's own upstream: the check is about connections, not time."""

CLOSE_GRACE: Final = 0.5
"""Seconds a closed client's connections may take to be seen closed by the server."""


async def check_lifespan_client(app: Any, *, path: str = "/chat", n: int = 5) -> CheckResult:
    """Run `app` (lifespan included), send `n` requests one after another, shut it down, and
    judge the OpenAI client by the TCP connections it made.

    The app's client goes to a `FakeServer` on 127.0.0.1: during the check `OPENAI_BASE_URL`
    points at it, so `AsyncOpenAI()` built *during the check* (in the lifespan, or per request)
    uses it; the variable is restored afterwards. One shared client reuses one connection for
    sequential requests; a client per request opens one each. After shutdown no connection may
    be left open: the lifespan must close the client.

    The app must answer `POST path` with `{"message": "…"}` by `{"response": "<the reply>"}`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int ≥ 2 (reuse needs a second request); got {n!r}")
    upstream = upstream_or_none()
    with FakeServer(latency=FAKE_LATENCY) as server, caught_warnings() as caught:
        gc.collect()  # earlier garbage must not be blamed on this app
        caught.clear()
        try:
            with _environment("OPENAI_BASE_URL", server.base_url):
                async with asgi_client(app) as client:
                    report = await fire(
                        client,
                        "POST",
                        path,
                        n=n,
                        concurrency=1,
                        json=lambda i: {"message": f"Summarize in 5 words: ticket {i}"},
                    )
        except Exception as error:  # the app's own startup or shutdown failed
            return CheckResult(
                EXERCISE,
                False,
                f"the app's lifespan raised {type(error).__name__}: {error}",
                (),
                "startup must create the client, and shutdown close it, without errors.",
            )
        left_open = await _open_connections_after(server, CLOSE_GRACE)
        gc.collect()  # clients dropped without close() are collected here: they warn
        unclosed = sum(issubclass(w.category, ResourceWarning) for w in caught)
        reached = server.stats.calls
        connections = server.connections

    def s(count: int) -> str:
        return "" if count == 1 else "s"

    evidence = [
        f"{n} requests, one after another: the upstream got {reached} call{s(reached)} over "
        f"{connections} TCP connection{s(connections)}.",
        f"After shutdown: {left_open} connection{s(left_open)} still open.",
    ]
    if unclosed:
        evidence.append(f"Garbage collection found {unclosed} unclosed socket(s) or transport(s).")
    mocked = upstream.stats.calls if upstream is not None else 0

    if not report.ok:
        problem = next((r for r in report.requests if r.status != 200), report.requests[0])
        return CheckResult(
            EXERCISE,
            False,
            f"{sum(r.status != 200 for r in report.requests)} of {n} requests failed.",
            (
                *evidence,
                f"First: {problem.error_type or problem.status}: {problem.error or problem.body}"[
                    :200
                ],
            ),
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
        )
    if reached < n:
        return CheckResult(
            EXERCISE,
            False,
            "the check's upstream was not used: the client was built before the app started.",
            (*evidence, f"The in-process upstream answered {mocked} call{s(mocked)} instead."),
            "create the client in the lifespan (startup), where it reads OPENAI_BASE_URL, "
            "not at import time.",
        )
    per_request = connections > 1
    never_closed = left_open > 0 or unclosed > 0
    if per_request:
        return CheckResult(
            EXERCISE,
            False,
            f"a new client per request: {connections} connections for {n} sequential requests"
            + (", and they were never closed." if never_closed else "."),
            tuple(evidence),
            "create ONE `AsyncOpenAI` in the lifespan, hand it to the endpoint (lifespan state, "
            "`app.state` or a dependency), and close it at shutdown.",
        )
    if never_closed:
        return CheckResult(
            EXERCISE,
            False,
            "the client was never closed: its connection outlived the app.",
            tuple(evidence),
            "close it after `yield` in the lifespan (`await client.close()`), or create it with "
            "`async with AsyncOpenAI(...) as client:` around the `yield`.",
        )
    return CheckResult(
        EXERCISE,
        True,
        "one client served every request over one connection, and shutdown closed it.",
        tuple(evidence),
    )


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """Set an environment variable inside the block; restore (or remove) it after."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous


async def _open_connections_after(server: FakeServer, grace: float) -> int:
    """How many client connections the server still has open, once closed ones had `grace`
    seconds to arrive as closed (the server runs in its own thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while (count := server.open_connections) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return count
