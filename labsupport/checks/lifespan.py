"""Checker for notebook 05: one OpenAI client for the app's lifetime, opened and closed by the
lifespan.

What the lesson teaches, as invariants measured for any answer (the verdict is their
conjunction; the cause is the first that failed, in the order below; the hint is its fix):

1. the app starts and stops without errors, and never blocks the event loop for the watchdog's
   limit;
2. every request, sequential or concurrent, gets a `{"response": …}` reply, and that reply is
   what the upstream answered to a prompt holding that request's message (not a constant, not
   another request's reply);
3. the client is built while the app starts (it reads the check's `OPENAI_BASE_URL`);
4. one client serves every request over one connection (sequential requests reuse it);
5. the event loop stays free while concurrent requests wait for the upstream: one shared
   *async* client (a sync `OpenAI` client inside `async def` holds the loop for every call:
   it undoes lesson 01), and the requests sent at once all reach the upstream at once (no lock
   or single thread around the shared client);
6. shutdown closes it.

Two FastAPI traps get their own cause, when an invariant failed because of them:
`@app.on_event(...)` handlers beside `lifespan=` never run (FastAPI runs them only without a
lifespan; the decorator's DeprecationWarning is the only sign), and `client.close()` without
`await` closes nothing (a coroutine that never ran).

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
* "on_event_ignored" — an invariant failed, and the app has `@app.on_event` handlers beside
  its lifespan: FastAPI never ran them;
* "bad_reply" — other failed requests, or replies without a `"response"` text;
* "wrong_reply" — a reply was not what the upstream answered to that request's message (a
  constant, the message echoed, another request's reply);
* "built_before_start" — the check's upstream saw no calls: the client was built before the app
  started (at import), so it never read the check's `OPENAI_BASE_URL` (in a browser tab also:
  no client was built while the check ran, which there says the same);
* "client_per_request" — a client was built for each request (counted), or the requests used
  one TCP connection each;
* "sync_client" / "blocked_loop" — while concurrent requests waited for the upstream, the event
  loop was blocked for most of the calls' time (with a sync `OpenAI` client built: "sync_client");
* "concurrency_limited" — the requests sent at once did not all reach the upstream at once;
* "missing_await" — requests failed and a coroutine was never awaited (a call without `await`),
  or shutdown created a `close()` coroutine and never awaited it;
* "never_closed" — a client built during the check was still open after shutdown.

Clients are counted, and their state read, as they are built (`OpenAI(...)` / `AsyncOpenAI(...)`
during the check), so no verdict depends on timing or on the garbage collector.

In a browser tab (Pyodide, the course's JupyterLite site: `NO_SOCKETS`) no `FakeServer` can
listen, and httpx2 sends through the browser's `fetch`, which opens and reuses connections out of
Python's sight. There the check's own upstream is an in-process mock answering its own base URL
(`BROWSER_BASE_URL`), with the same counters; connections are not counted, so invariant 4 is
judged on the clients built alone, and the evidence and a pass's summary say the connections
were not counted.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args
from unittest import mock

from .._text import shorten
from ..load import LoadReport, fire
from ..looplag import LoopLagMonitor
from ..serving import asgi_client
from ..upstream import UpstreamCall
from ..upstream.fake_server import FakeServer
from ..upstream.mock import MockUpstream
from ..validation import check_int
from ._clients import built_clients
from ._common import caught_warnings, stopped_by_watchdog, upstream_or_none
from ._invariants import NO_SOCKETS, mismatched_replies
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
    "on_event_ignored",
    "bad_reply",
    "wrong_reply",
    "built_before_start",
    "sync_client",
    "concurrency_limited",
    "client_per_request",
    "missing_await",
    "never_closed",
]
CAUSES: Final[tuple[str, ...]] = get_args(Cause)

FAKE_LATENCY: Final = 0.02
"""Seconds per call on the check's own upstream: the check is about connections, not time."""

BURST_LATENCY: Final = 0.2
"""Seconds per call during the concurrent burst: long enough that a call holding the event loop
shows as most of the burst's time, whatever the machine's load."""

BLOCKED_SHARE: Final = 0.5
"""The share of the burst's calls' total time the loop must be blocked for to be judged so: a
sync client blocks it for all of it (n × latency), an async one for next to nothing."""

CLOSE_GRACE: Final = 0.5
"""Seconds a closed client's connections may take to be seen closed by the server."""

BROWSER_BASE_URL: Final = "http://lifespan-check.invalid/v1"
"""Where the check's own upstream answers in a browser tab, in process: a name reserved never to
exist on any network (RFC 2606), so a request the mock did not answer could reach nothing."""

NOT_COUNTED: Final = (
    "a browser tab has no sockets, and its `fetch` opens and reuses connections out of "
    "Python's sight"
)
"""Why the browser check counts no connections."""


@dataclass(frozen=True)
class _Measured:
    report: LoadReport
    burst: LoadReport
    blocked: float
    in_flight: int
    sync_clients: int
    sequential_calls: int
    connections: int | None
    """Distinct TCP connections of the sequential requests; None where none can be counted."""
    built_at_startup: int
    closed_at_startup: int
    built: int
    open_after: int
    timeline: tuple[UpstreamCall, ...]


@recorded(notebook="05_lifespan", app=an_app)
async def check_lifespan_client(app: Any, *, path: str = "/chat", n: int = 5) -> CheckResult:
    """Run `app` (lifespan included), send `n` requests one after another, then `n` at once
    while watching the event loop, shut it down, and judge its OpenAI clients: how many were
    built, when, of which kind, over how many TCP connections, and whether shutdown closed them
    (the invariants are in the module docstring).

    The app's client goes to a `FakeServer` on 127.0.0.1: during the check `OPENAI_BASE_URL`
    points at it, so `AsyncOpenAI()` built *during the check* (in the lifespan, or per request)
    uses it; the variable is restored afterwards. One shared client reuses one connection for
    sequential requests; a client per request opens one each. Learner code runs under the
    watchdog. In a browser tab the check's upstream is an in-process mock instead, and
    connections are not counted (see the module docstring).

    The app must answer `POST path` with `{"message": "…"}` by `{"response": "<the reply>"}`.
    """
    check_int("n", n, minimum=2, why="reuse needs a second request")
    upstream = upstream_or_none()

    def body(i: int) -> dict[str, str]:
        # The full stop: "ticket 1." is in no other request's message ("ticket 10.").
        return {"message": f"Summarize in 5 words: ticket {i}."}

    async def measure(server: FakeServer | MockUpstream) -> _Measured:
        with built_clients() as built:
            async with asgi_client(app) as client:
                at_startup, closed_at_startup = built.count, built.closed()
                report = await fire(client, "POST", path, n=n, concurrency=1, json=body)
                connections, calls = _connections(server), server.stats.calls
                sequential_timeline = server.stats.timeline
                server.configure(latency=BURST_LATENCY)  # counts afresh
                lag = LoopLagMonitor()
                lag.start()
                try:
                    burst = await fire(client, "POST", path, n=n, json=lambda i: body(n + i))
                finally:
                    lag.stop()
                in_flight = server.stats.max_in_flight
                timeline = (*sequential_timeline, *server.stats.timeline)
            return _Measured(
                report,
                burst,
                lag.blocked,
                in_flight,
                built.sync_count,
                calls,
                connections,
                at_startup,
                closed_at_startup,
                built.count,
                built.open(),
                timeline,
            )

    with _checks_own_upstream() as (server, base_url), caught_warnings() as caught:
        gc.collect()  # earlier garbage must not be blamed on this app
        caught.clear()
        with mock.patch.dict(os.environ, {"OPENAI_BASE_URL": base_url}):
            outcome = await guarded(measure(server), block_limit=2.0, time_limit=30.0 + 2 * n)
        left_open = await _open_connections_after(server, CLOSE_GRACE)
        gc.collect()  # clients dropped without close() are collected here: they warn
        unclosed = sum(issubclass(w.category, ResourceWarning) for w in caught)
        unawaited = [str(w.message) for w in caught if "was never awaited" in str(w.message)]
    if outcome.stopped:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, f"the app's {2 * n} requests")
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
    messages = [body(i)["message"] for i in range(2 * n)]
    seen = _Seen(left_open, unclosed, unawaited, mocked, messages)
    return _verdict(app, measured, n, path, seen)


@dataclass(frozen=True)
class _Seen:
    """What the check saw outside the app: connections left open, unclosed-resource warnings,
    coroutines never awaited, calls the in-process mock took."""

    left_open: int | None
    """Connections the check's server still had open; None where none can be counted."""
    unclosed: int
    unawaited: list[str]
    mocked: int
    messages: list[str]
    """The requests' messages, in the order sent (sequential, then the burst)."""


def _verdict(app: Any, measured: _Measured, n: int, path: str, seen: _Seen) -> CheckResult:
    def s(count: int) -> str:
        return "" if count == 1 else "s"

    report, reached, connections = measured.report, measured.sequential_calls, measured.connections
    over = (
        f"over {connections} TCP connection{s(connections)}."
        if connections is not None
        else f"(TCP connections not counted: {NOT_COUNTED})."
    )
    still_open = (
        f", {seen.left_open} connection{s(seen.left_open)} still open."
        if seen.left_open is not None
        else "."
    )
    evidence = [
        f"{n} requests, one after another: the upstream got {reached} call{s(reached)} {over}",
        f"{n} requests at once, {BURST_LATENCY:.2f} s per upstream call: at most "
        f"{measured.in_flight} in flight at the upstream; the event loop was blocked for "
        f"{measured.blocked:.2f} s.",
        f"The app built {measured.built} OpenAI client{s(measured.built)} while the check ran, "
        f"{measured.built_at_startup} of them at startup.",
        f"After shutdown: {measured.open_after} of them not closed{still_open}",
    ]
    if seen.unclosed:
        evidence.append(
            f"Garbage collection found {seen.unclosed} unclosed socket(s) or transport(s)."
        )
    if seen.unawaited:
        evidence.append(f"Python warned: {shorten(seen.unawaited[0], 120)}.")

    def fail(cause: Cause, summary: str, hint: str, *extra: str) -> CheckResult:
        if cause != "on_event_ignored" and _ignored_event_handlers(app):
            return fail(
                "on_event_ignored",
                f"{summary[:1].upper()}{summary[1:]} The app has `@app.on_event` handlers "
                "beside its lifespan, and FastAPI never runs them: with `lifespan=`, only the "
                "lifespan runs.",
                'move what the `@app.on_event("startup")` / `("shutdown")` functions do '
                "into the lifespan: before `yield` for startup, after it for shutdown.",
                *extra,
            )
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause=cause,
            summary=summary,
            evidence=(*evidence, *extra),
            hint=hint,
        )

    requests = report.requests + measured.burst.requests
    failed = sum(r.status != 200 for r in requests)
    if failed:
        first = next(r for r in requests if r.status != 200)
        said = shorten(
            f"First: {first.error_type or first.status}: {first.error or first.body}", 200
        )
        if measured.built_at_startup and measured.closed_at_startup == measured.built_at_startup:
            return fail(
                "client_closed_before_yield",
                f"{failed} of {2 * n} requests failed: the client built at startup was already "
                "closed when the first request came.",
                "the `yield` must be inside the `async with AsyncOpenAI(...) as client:` block "
                "(or close the client after `yield`): leaving the block closes the client.",
                said,
            )
        if _no_lifespan(app):
            return fail(
                "lifespan_not_passed",
                f"{failed} of {2 * n} requests failed, and the app has no lifespan: nothing "
                "created the client.",
                "pass your lifespan to the app: `app = FastAPI(lifespan=lifespan)`.",
                said,
            )
        if seen.unawaited:
            return fail(
                "missing_await",
                f"{failed} of {2 * n} requests failed, and Python warned that a coroutine was "
                "never awaited: a call of the async client without `await`.",
                "write `await` before every call of the `AsyncOpenAI` client "
                "(`response = await client.chat.completions.create(...)`).",
                said,
            )
        return fail(
            "bad_reply",
            f"{failed} of {2 * n} requests failed.",
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
            said,
        )
    bodies = [r.body for r in requests]
    if all(body is None for body in bodies):
        return fail(
            "missing_return",
            f"all {2 * n} replies were empty (null): the endpoint returned nothing.",
            'end the endpoint with `return {"response": response.choices[0].message.content}`.',
        )
    if not all(isinstance(b, dict) and isinstance(b.get("response"), str) for b in bodies):
        return fail(
            "bad_reply",
            f'the replies had no "response" text (first: {shorten(str(bodies[0]), 80)}).',
            f'the endpoint must answer POST {path} with {{"response": "<the model\'s reply>"}}.',
        )
    # In process (no sockets), the check's own mock answers the OpenAI API's address too,
    # where the lab's does not first (no `lab.setup()`): a client built at import reaches it.
    # That no client was built while the check ran says the same then.
    if measured.built == 0 and (reached < n or connections is None):
        answered = (
            f"The in-process upstream answered {seen.mocked} call{s(seen.mocked)} instead."
            if reached < n
            else "It reached the check's own upstream only because, without `lab.setup()`, "
            "that one answers the OpenAI API's address too."
        )
        return fail(
            "built_before_start",
            "the check's upstream was not used: the client was built before the app started."
            if reached < n
            else "no client was built while the check ran: the app's client was built before "
            "the app started.",
            "create the client in the lifespan (startup), where it reads OPENAI_BASE_URL, "
            "not at import time.",
            answered,
        )
    # Each record's message: the sequential request i sent body(i), the burst's i body(n + i).
    texts = [seen.messages[r.index] for r in report.requests]
    texts += [seen.messages[n + r.index] for r in measured.burst.requests]
    replies = [body["response"] for body in bodies]
    wrong = mismatched_replies(replies, texts, measured.timeline)
    if wrong:
        index = wrong[0]
        return fail(
            "wrong_reply",
            f"{len(wrong)} of {2 * n} replies were not what the upstream answered to their "
            "request's message.",
            "answer each request with the model's reply to *its* message: "
            '`return {"response": response.choices[0].message.content}` of the call made with '
            "`request.message` (no constant, no reply kept from another request).",
            f"The request with {texts[index]!r} got {shorten(repr(replies[index]), 80)}.",
        )
    never_closed = measured.open_after > 0 or bool(seen.left_open) or seen.unclosed > 0
    if measured.built >= n or (connections or 0) > 1:
        counted = f" and {connections} connections" if connections is not None else ""
        return fail(
            "client_per_request",
            f"a new client per request: {measured.built} clients{counted} for {n} sequential "
            "requests" + (", and not all were closed." if never_closed else "."),
            "create ONE `AsyncOpenAI` in the lifespan, hand it to the endpoint (lifespan state, "
            "`app.state` or a dependency), and close it at shutdown.",
        )
    if measured.blocked >= BLOCKED_SHARE * n * BURST_LATENCY:
        if measured.sync_clients:
            return fail(
                "sync_client",
                "the event loop was blocked while the requests waited for the upstream: a sync "
                "`OpenAI` client answers inside `async def` one call at a time.",
                "create an `AsyncOpenAI` in the lifespan and `await` its calls; a sync `OpenAI` "
                "client blocks the whole event loop for every call (lesson 01).",
            )
        return fail(
            "blocked_loop",
            "the event loop was blocked while the requests waited for the upstream.",
            "inside `async def`, every wait must be an `await`: use `AsyncOpenAI` and "
            "`await asyncio.sleep(...)`, never a blocking call.",
        )
    if measured.in_flight < n:
        return fail(
            "concurrency_limited",
            f"the {n} requests sent at once reached the upstream at most {measured.in_flight} "
            "at a time: something in the app makes them wait for each other.",
            "one shared `AsyncOpenAI` serves concurrent requests by itself: no lock, semaphore "
            "or single worker thread around its calls.",
        )
    if never_closed and any("close" in message for message in seen.unawaited):
        return fail(
            "missing_await",
            "the client was never closed: `client.close()` was called without `await`, so it "
            "only made a coroutine that never ran.",
            "write `await client.close()` after the `yield` (`AsyncOpenAI.close` is a coroutine "
            "function).",
        )
    if never_closed:
        return fail(
            "never_closed",
            "the client was never closed: it outlived the app.",
            "close it after `yield` in the lifespan (`await client.close()`), or create it with "
            "`async with AsyncOpenAI(...) as client:` around the `yield`.",
        )
    if connections is None:
        summary = (
            f"for this check's {2 * n} requests, one client served every request, the event "
            "loop stayed free, and shutdown closed it (its TCP connections were not counted: "
            f"{NOT_COUNTED})."
        )
    else:
        summary = (
            f"for this check's {2 * n} requests, one client served every request (one "
            "connection for the sequential ones), the event loop stayed free, and shutdown "
            "closed it."
        )
    return CheckResult(
        exercise=EXERCISE, passed=True, cause="ok", summary=summary, evidence=tuple(evidence)
    )


def _ignored_event_handlers(app: Any) -> bool:
    """Whether the app has `on_event` handlers that FastAPI will not run: it runs them only in
    its default lifespan, never beside one given with `lifespan=`."""
    router = getattr(app, "router", None)
    handlers = [*getattr(router, "on_startup", ()), *getattr(router, "on_shutdown", ())]
    return bool(handlers) and not _no_lifespan(app)


def _no_lifespan(app: Any) -> bool:
    """Whether a Starlette/FastAPI app runs only the framework's default (empty) lifespan."""
    router = getattr(app, "router", None)
    context = getattr(router, "lifespan_context", None)
    return context is not None and type(context).__name__ == "_DefaultLifespan"


@contextmanager
def _checks_own_upstream() -> Iterator[tuple[FakeServer | MockUpstream, str]]:
    """The check's own upstream, and the base URL that reaches it: a `FakeServer` on loopback,
    or in a browser tab, which has no sockets, an in-process mock at `BROWSER_BASE_URL`."""
    if NO_SOCKETS:
        with MockUpstream(latency=FAKE_LATENCY, base_urls=[BROWSER_BASE_URL]) as in_process:
            yield in_process, BROWSER_BASE_URL
    else:
        with FakeServer(latency=FAKE_LATENCY) as server:
            yield server, server.base_url


def _connections(server: FakeServer | MockUpstream) -> int | None:
    """The distinct TCP connections the server saw since its last reset; None in process."""
    return server.connections if isinstance(server, FakeServer) else None


async def _open_connections_after(server: FakeServer | MockUpstream, grace: float) -> int | None:
    """How many client connections the server still has open, once closed ones had `grace`
    seconds to arrive as closed (the server runs in its own thread); None in process."""
    if not isinstance(server, FakeServer):
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while (count := server.open_connections) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return count
