"""What the lessons teach, as measurements any checker can make of any answer.

A checker that recognises the mistakes it was shown passes every other one; these measure the
lesson's properties directly, whatever the answer looks like:

* `Watch` — one run's wall time, the process's CPU time (all threads: what the run's own work
  cost), the event loop's total and longest block, and the upstream's counters (calls in
  flight at once, and every prompt with the reply it got);
* `bursts()` — the same app, served once, sent one burst of requests, a pause, and another
  burst: the second finds what the first broke (a shared client closed after its first use);
  the tasks the app left running after each burst (a call fired and forgotten) are counted;
* `over_tcp()` — the lab's upstream as a real server on loopback (`FakeServer`), with the
  in-process mock sending its API's requests there, through each client's own connection pool;
  `bursts(..., tcp=True)` also serves the app with uvicorn. Only over TCP does a connection pool
  bound its calls (`httpx2.Limits`), or a connection made in one event loop break in another
  (`asyncio.run` per call: "Event loop is closed");
* `mismatched_replies()` — which replies are not what the upstream answered to that request's
  prompt (a constant, another request's reply);
* `loop_blocked()` — the loop's longest block against the latency;
* `unkept_tasks()` — the tasks started while it runs that nobody keeps a reference to (asyncio
  keeps only a weak one): nothing can await them at shutdown, whether or not they happened to
  finish in time on this run;
* `Measured.cpu` beside `Measured.wall` — calls that overlap take about one latency plus the
  CPU work that has to run one piece at a time, which the process's CPU time measures (the
  checkers show both in their evidence).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from ..browser import in_browser
from ..lab import LabUpstream
from ..load import LoadReport, fire
from ..looplag import LoopLagMonitor
from ..serving import asgi_client, serve
from ..upstream import FakeServer, MockUpstream, UpstreamCall, UpstreamStats
from ._scenario import expected_replies, reply_matches
from .watchdog import is_learner_code

__all__ = [
    "NO_SOCKETS",
    "Burst",
    "Measured",
    "Watch",
    "bursts",
    "loop_blocked",
    "mismatched_replies",
    "over_tcp",
    "unkept_tasks",
]

BLOCK_LATENCIES: Final = 2.0
"""A loop block this many upstream latencies long (at least `BLOCK_FLOOR`) is the answer's own:
far above what one request's CPU work does to it. A busy machine's scheduling can stall the loop
that long once, so the checkers that use it count a block only when a second run blocks too. (At
three latencies a `time.sleep` of exactly three passed: the watcher's wake-up was due a few
milliseconds into the sleep.)"""

BLOCK_FLOOR: Final = 0.5 if in_browser() else 0.15
"""Seconds: the shortest block `loop_blocked` counts, whatever the latency. In a browser tab
(Pyodide) Python runs several times slower and shares its thread with the page: there a correct
answer, 03's `BoundedSemaphore(len(texts))` (its 20 replies arrive together), was measured
blocking the loop past 0.15 s in both runs on a busy machine. Under JSPI `time.sleep` does not
block the loop at all, so in a tab only code that keeps the CPU busy is counted, from half a
second."""

NO_SOCKETS: Final = in_browser()
"""In a browser tab (Pyodide) there are no sockets, so no `over_tcp()`: the checkers judge what
only real connections show (a pool's limit, a connection tied to a closed loop) in process
only, and say so in their docstrings."""


@dataclass(frozen=True)
class Measured:
    """One run, as `Watch` saw it."""

    wall: float
    cpu: float
    """Seconds of CPU time the whole process used (every thread) during the run."""
    blocked: float
    """Seconds the event loop was blocked, summed over its stalls."""
    longest: float
    """The event loop's longest single block, in seconds."""
    stats: UpstreamStats | None
    """The upstream's counters for the run; None without one (live mode before setup)."""

    @property
    def peak(self) -> int:
        """The most upstream calls in flight at once (0 without counters)."""
        return self.stats.max_in_flight if self.stats is not None else 0

    @property
    def timeline(self) -> tuple[UpstreamCall, ...]:
        return self.stats.timeline if self.stats is not None else ()


class Watch:
    """`async with Watch(upstream) as watch: ...`, then `watch.measured`.

    The upstream's counters are reset on entry, so they cover the block only; a `FakeServer`
    is waited for until it has recorded every call it answered.
    """

    def __init__(self, upstream: LabUpstream | FakeServer | None) -> None:
        self.upstream = upstream
        self._lag = LoopLagMonitor()
        self._started = (0.0, 0.0)
        self._measured: Measured | None = None

    @property
    def measured(self) -> Measured:
        if self._measured is None:
            raise RuntimeError("the Watch has not finished: read it after its `async with`")
        return self._measured

    async def __aenter__(self) -> Self:
        if self.upstream is not None:
            self.upstream.reset()
        await self._lag.__aenter__()
        self._started = (time.perf_counter(), time.process_time())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        wall = time.perf_counter() - self._started[0]
        cpu = time.process_time() - self._started[1]
        await self._lag.__aexit__(exc_type, exc, traceback)
        stats = None
        if isinstance(self.upstream, FakeServer):
            with contextlib.suppress(TimeoutError):  # a stuck call shows in the counters
                await asyncio.to_thread(self.upstream.wait_idle, 5.0)
        if self.upstream is not None:
            stats = self.upstream.stats
        self._measured = Measured(wall, cpu, self._lag.blocked, self._lag.longest, stats)


@contextlib.contextmanager
def over_tcp(upstream: MockUpstream) -> Iterator[FakeServer]:
    """Inside the block, the mock's API requests go over real TCP to a `FakeServer` on loopback
    that behaves as `upstream` does (its settings now); the server counts the calls."""
    with FakeServer(upstream.settings) as server, upstream.tunnel(server.port):
        yield server


@dataclass(frozen=True)
class Burst:
    """One burst of requests to an app: what came back, and what was measured meanwhile."""

    report: LoadReport
    measured: Measured
    left_running: int
    """Tasks the app started during the burst that were still running once every reply was in
    (a call fired and not awaited)."""
    texts: tuple[str, ...] = field(default=())

    @property
    def replies(self) -> list[object]:
        """Each request's `"response"` value (None when the reply had none)."""
        return [
            body.get("response") if isinstance(body, dict) else None for body in self.report.bodies
        ]


async def bursts(
    app: Any,
    path: str,
    texts: Sequence[str],
    *,
    upstream: LabUpstream | FakeServer | None,
    count: int = 2,
    pause: float = 0.1,
    tcp: bool = False,
    body: Callable[[str], Any] = lambda text: {"message": text},
    go_on: Callable[[Burst], bool] = lambda burst: True,
) -> list[Burst]:
    """Serve `app` once (its lifespan runs once), and send it `count` bursts of one `POST path`
    per text, all at once, `pause` seconds apart; measure each with a `Watch` on `upstream`.

    `tcp=True` serves the app with uvicorn on loopback (pass the `FakeServer` of `over_tcp()`
    as `upstream`); otherwise requests are ASGI calls in this event loop. After each burst,
    `go_on(burst)` says whether the next is worth sending (a failed first burst already says
    what is wrong, and a slow one would only make the check slower)."""
    results: list[Burst] = []
    serving = serve(app) if tcp else asgi_client(app)
    async with serving as client:
        for index in range(count):
            if index:
                await asyncio.sleep(pause)
            before = asyncio.all_tasks()
            async with Watch(upstream) as watch:
                report = await fire(
                    client, "POST", path, n=len(texts), json=lambda i: body(texts[i])
                )
            running = sum(not task.done() for task in asyncio.all_tasks() - before)
            results.append(Burst(report, watch.measured, running, tuple(texts)))
            if not go_on(results[-1]):
                break
    return results


def mismatched_replies(
    replies: Sequence[object], texts: Sequence[str], timeline: Sequence[UpstreamCall]
) -> list[int]:
    """The indices of the replies that are not what the upstream answered to a prompt holding
    that request's text (possibly cut short, or stripped)."""
    expected = expected_replies(texts, timeline)
    return [
        index
        for index, (reply, wanted) in enumerate(zip(replies, expected, strict=True))
        if not reply_matches(reply, wanted)
    ]


def loop_blocked(measured: Measured, latency: float) -> bool:
    """Whether the event loop's longest block was the answer's own: `BLOCK_LATENCIES` latencies
    long, at least `BLOCK_FLOOR` seconds."""
    return measured.longest >= max(BLOCK_LATENCIES * latency, BLOCK_FLOOR)


@contextlib.contextmanager
def unkept_tasks() -> Iterator[list[str]]:
    """Inside a running loop: `with unkept_tasks() as unkept:` lists, by their coroutines' names,
    the tasks the learner's code created in the block that nobody kept a reference to.

    A task's creator gets the only strong reference to it; the loop keeps a weak one and, while
    the task waits, one wake-up callback. A task nobody keeps (a bare `asyncio.create_task(...)`)
    can be garbage-collected mid-way, and nothing can await it at shutdown: whether its work got
    done is then a race with the shutdown, which a busy machine can win. So the references
    themselves are counted, once per task, right after the code that created it has run on (the
    loop's next round): a task kept by anything (a set, a list, an object's attribute, a
    `gather`, a task group, a local of a coroutine still running) has more than a probe task
    nobody keeps, counted the same way just before. Installed as the loop's task factory for the
    block (the factory before it still makes the tasks).
    """
    loop = asyncio.get_running_loop()
    previous: Any = loop.get_task_factory()  # called with `context=` too, which its type omits
    unkept: list[str] = []
    bare: list[int] = []

    def calibrate(probe: weakref.ref[asyncio.Task[Any]]) -> None:
        bare.append(_references(probe) or 0)
        found = probe()
        if found is not None:
            found.cancel()

    def look(task: weakref.ref[asyncio.Task[Any]]) -> None:
        references = _references(task)
        found = task()
        if references is not None and bare and references <= bare[0] and found is not None:
            unkept.append(getattr(found.get_coro(), "__qualname__", found.get_name()))

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, /, **options: Any) -> Any:
        task = (
            previous(loop, coro, **options)
            if previous is not None
            else asyncio.Task(coro, loop=loop, **options)
        )
        if isinstance(task, asyncio.Task) and _created_by_the_learner():
            loop.call_soon(look, weakref.ref(task))
        return task

    # Created before the factory, scheduled first: counted before any task of the block.
    loop.call_soon(calibrate, weakref.ref(loop.create_task(asyncio.sleep(3600))))
    loop.set_task_factory(factory)
    try:
        yield unkept
    finally:
        loop.set_task_factory(previous)


_ASYNCIO: Final = os.path.dirname(asyncio.__file__)
_MAKERS: Final = frozenset({"create_task", "ensure_future", "_ensure_future"})
"""asyncio's functions that make a task for their caller (the caller is whose task it is)."""


def _created_by_the_learner() -> bool:
    """Whether the code that asked asyncio for the task being made is the learner's: servers
    (asyncio's own, uvicorn) and libraries make and keep tasks of their own."""
    frame = inspect.currentframe()
    while frame is not None and (
        frame.f_code.co_filename == __file__  # this function and the task factory
        or (frame.f_code.co_filename.startswith(_ASYNCIO) and frame.f_code.co_name in _MAKERS)
    ):
        frame = frame.f_back
    return frame is not None and is_learner_code(frame)


def _references(task: weakref.ref[asyncio.Task[Any]]) -> int | None:
    """How many references the pending task behind `task` has (None once it is done or gone),
    counted the same way for the probe and for every task, whatever the Python version counts
    for the local and the call's argument."""
    found = task()
    if found is None or found.done():
        return None
    return sys.getrefcount(found)
