"""Send a burst of requests to an app and see how long it took.

``fire`` sends ``n`` requests with an ``httpx.AsyncClient`` (from ``serve`` or ``asgi_client``),
all at once or at most ``concurrency`` at a time, and returns a ``LoadReport`` with a timeline of
every request::

    report = await fire(client, "POST", "/chat", json={"prompt": "hi"}, n=20)
    print(report.summary(latency=0.1))
    # 20 requests · 20 × 200 · wall 0.11 s (≈ 1.1× latency 0.10 s) · p50 0.10 s · p95 0.11 s

``wall`` is the time for the whole burst. Compared with the latency of one upstream call it
tells the story of a lesson: about ``n``× means the requests were handled one after another,
about 1× means they overlapped.

Timestamps are ``time.perf_counter()`` seconds, like the upstream's call timeline, so both can
be drawn on one axis (see ``labsupport.plots``).
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from .validation import check_int, check_seconds

__all__ = ["LoadReport", "RequestRecord", "Span", "fire", "in_flight_steps"]

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class Span(Protocol):
    """Anything that ran from ``start`` to ``end`` (``time.perf_counter()`` seconds)."""

    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request sent by ``fire``: when it ran and what came back.

    Attributes:
        index: position in the burst, 0 to n - 1 (the ``i`` given to a ``json`` callable).
        start: ``time.perf_counter()`` just before the request was sent.
        end: ``time.perf_counter()`` once the whole response was read, or the request failed.
        status: the HTTP status code, or ``None`` if no response arrived.
        body: the response body parsed as JSON; the raw text if it is not JSON; ``None``
            without a response.
        error: ``repr()`` of the exception that stopped the request, else ``None``.
        error_type: that exception's class name (``"ReadTimeout"``), else ``None``.
    """

    index: int
    start: float
    end: float
    status: int | None
    body: Any
    error: str | None = None
    error_type: str | None = None

    @property
    def latency(self) -> float:
        """Seconds from sending the request to having the full response (or the error)."""
        return self.end - self.start

    @property
    def outcome(self) -> int | str:
        """The status code, or the exception's class name when there was no response."""
        if self.status is not None:
            return self.status
        return self.error_type or "no response"


@dataclass(frozen=True, slots=True, repr=False)
class LoadReport:
    """What ``fire`` measured: every request, and the wall-clock time of the whole burst.

    ``str(report)`` (and a notebook cell ending in ``report``) shows ``summary()``.
    """

    requests: tuple[RequestRecord, ...]
    wall: float

    def __post_init__(self) -> None:
        if not self.requests or not all(isinstance(r, RequestRecord) for r in self.requests):
            raise ValueError("requests must be a non-empty tuple of RequestRecord")
        if not self.wall >= 0:
            raise ValueError(f"wall must be a duration in seconds >= 0, got {self.wall!r}")

    @classmethod
    def from_calls(cls, calls: Sequence[Any]) -> LoadReport:
        """A report with one record per upstream call (objects with ``start``, ``end``,
        ``status`` and ``prompt``, such as ``upstream.stats.timeline``), so that
        ``plot_timeline`` can draw what the upstream saw when no HTTP requests were fired."""
        if not calls:
            raise ValueError("calls must be a non-empty sequence of upstream calls")
        records = tuple(
            RequestRecord(i, c.start, c.end, c.status, getattr(c, "prompt", None))
            for i, c in enumerate(calls)
        )
        return cls(records, max(c.end for c in calls) - min(c.start for c in calls))

    @property
    def latencies(self) -> tuple[float, ...]:
        """Each request's latency in seconds, in request order."""
        return tuple(r.latency for r in self.requests)

    @property
    def status_counts(self) -> dict[int | str, int]:
        """How many requests ended with each status code (or exception class name)."""
        counts = Counter(r.outcome for r in self.requests)
        # Status codes in numeric order first, then exception names alphabetically.
        ordered = sorted(counts, key=lambda k: (0, k, "") if isinstance(k, int) else (1, 0, k))
        return {outcome: counts[outcome] for outcome in ordered}

    @property
    def errors(self) -> tuple[RequestRecord, ...]:
        """The requests that got no response because an exception was raised."""
        return tuple(r for r in self.requests if r.error is not None)

    @property
    def ok(self) -> bool:
        """True if every request got a 2xx response."""
        return all(r.status is not None and 200 <= r.status < 300 for r in self.requests)

    @property
    def p50(self) -> float:
        """Median latency in seconds: half of the requests were faster."""
        return _percentile(self.latencies, 50)

    @property
    def p95(self) -> float:
        """95th percentile latency in seconds: 95 % of the requests were at least this fast."""
        return _percentile(self.latencies, 95)

    @property
    def max_latency(self) -> float:
        """The slowest request's latency in seconds."""
        return max(self.latencies)

    @property
    def in_flight_max(self) -> int:
        """The largest number of requests that were in flight at the same moment."""
        return max(count for _, count in in_flight_steps(self.requests))

    @property
    def bodies(self) -> tuple[Any, ...]:
        """Each response body (JSON-decoded when possible), in request order."""
        return tuple(r.body for r in self.requests)

    def ratio(self, latency: float) -> float:
        """``wall / latency``: how many single calls of ``latency`` seconds the burst took."""
        return self.wall / check_seconds("latency", latency, allow_zero=False)

    def summary(self, latency: float | None = None) -> str:
        """One line: request count, outcomes, wall time, and p50/p95 latency.

        With ``latency`` (seconds of one upstream call) the wall time is also shown as a
        multiple of it. Times read ``N.NN s`` and ratios ``N.N×``.
        """
        count = len(self.requests)
        outcomes = ", ".join(f"{n} × {outcome}" for outcome, n in self.status_counts.items())
        wall = f"wall {self.wall:.2f} s"
        if latency is not None:
            wall += f" (≈ {self.ratio(latency):.1f}× latency {latency:.2f} s)"
        parts = [
            f"{count} request{'s' if count != 1 else ''}",
            outcomes,
            wall,
            f"p50 {self.p50:.2f} s",
            f"p95 {self.p95:.2f} s",
        ]
        return " · ".join(parts)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"<LoadReport {self.summary()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.summary())


async def fire(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    json: Any = None,
    n: int = 1,
    concurrency: int | None = None,
    timeout: float | None = None,
) -> LoadReport:
    """Send ``n`` requests and record when each started, ended and what came back.

    All ``n`` requests start together, or, with ``concurrency``, at most that many are in flight
    at any moment (the rest wait for a free slot; their ``start`` is when they got one). A
    request that fails (timeout, refused connection, ...) is recorded with its error instead of
    raising, so one bad request never hides the others.

    Args:
        client: an ``httpx.AsyncClient``, e.g. from ``serve(app)`` or ``asgi_client(app)``.
        method: the HTTP method, such as ``"GET"`` or ``"POST"``.
        path: the URL path, starting with ``/`` (joined to the client's ``base_url``).
        json: the JSON body for every request, or a function ``i -> body`` giving request
            ``i`` (0 to n - 1) its own body. ``None`` sends no body.
        n: how many requests to send (at least 1).
        concurrency: the most requests in flight at once; ``None`` sends all ``n`` at once.
        timeout: seconds before one request gives up; ``None`` keeps the client's timeout.
    """
    if not isinstance(client, httpx.AsyncClient):
        raise TypeError(f"client must be an httpx.AsyncClient, got {type(client).__name__}")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ValueError(f"method must be one of {', '.join(sorted(METHODS))}, got {method!r}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path must be a str starting with '/', got {path!r}")
    check_int("n", n, minimum=1)
    if concurrency is not None:  # None: no limit
        check_int("concurrency", concurrency, minimum=1)
    if timeout is not None:  # None: the client's own timeout
        check_seconds("timeout", timeout, allow_zero=False)

    # Build every body first: a bug in a json callable raises here, before anything is sent.
    bodies = [json(i) for i in range(n)] if callable(json) else [json] * n
    slots = asyncio.Semaphore(concurrency or n)
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}

    async def send(index: int) -> RequestRecord:
        async with slots:
            start = time.perf_counter()
            try:
                response = await client.request(method.upper(), path, json=bodies[index], **options)
            except Exception as exc:  # recorded, not raised: see the docstring
                return RequestRecord(
                    index=index,
                    start=start,
                    end=time.perf_counter(),
                    status=None,
                    body=None,
                    error=repr(exc),
                    error_type=type(exc).__name__,
                )
            end = time.perf_counter()
        return RequestRecord(index, start, end, response.status_code, _decode(response))

    began = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(send(i)) for i in range(n)]
    wall = time.perf_counter() - began
    return LoadReport(tuple(task.result() for task in tasks), wall)


def in_flight_steps(spans: Iterable[Span]) -> list[tuple[float, int]]:
    """How many spans were running over time, as ``(moment, count from then on)`` steps.

    The first step is the earliest start; a span that ends exactly when another starts does
    not overlap it. Ready for ``matplotlib``'s ``step(..., where="post")``.
    """
    spans = list(spans)
    # At equal times -1 sorts before +1, so ends are counted before starts.
    events = sorted([(s.start, 1) for s in spans] + [(s.end, -1) for s in spans])
    steps: list[tuple[float, int]] = []
    running = 0
    for moment, change in events:
        running += change
        if steps and steps[-1][0] == moment:
            steps[-1] = (moment, running)
        else:
            steps.append((moment, running))
    return steps


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (jsonlib.JSONDecodeError, UnicodeDecodeError):
        return response.text


def _percentile(values: Sequence[float], percent: int) -> float:
    """The `percent`-th percentile, interpolated between the closest ranks (numpy's default)."""
    if len(values) == 1:
        return values[0]  # statistics.quantiles needs two points to interpolate between
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]
