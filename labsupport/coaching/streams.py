"""The streams' explorer (notebook 08): how a relay's kind, the upstream's pace and the number of
concurrent streams change the first piece a user sees, and what a client who leaves still costs.

Every change really runs the scenario: a small FastAPI app served by uvicorn on loopback (a
client that leaves closes a real TCP connection), whose `POST /chat/stream` relays the offline
upstream's stream in one of the lesson's four ways:

* ``"buffered"``: the whole answer, then one event (the upstream takes as long for it as for the
  stream, so only the relay differs);
* ``"async"``: ``async for`` over ``AsyncOpenAI(stream=True)`` in the response's own generator;
* ``"sync"``: a sync generator over ``OpenAI(stream=True)`` in ``StreamingResponse``, each
  ``next()`` run in one of the thread pool's 40 threads;
* ``"task"``: ``async for`` in a task of its own, handing the pieces over through a queue.

`streams` clients read at once; then one more reads 3 events and closes its connection, and the
run waits until the upstream's call for it has ended (read to the end, or abandoned) or the
answer's time and a second more have passed, counting the tokens the upstream sent after that
client left. A run takes one to three seconds (more with many streams on a busy machine).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import anyio.to_thread
import httpx
import ipywidgets
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse
from openai import AsyncOpenAI, OpenAI

from ..browser import require_real_kernel
from ..lab import PLACEHOLDER_KEY
from ..serving import serve
from ..upstream import MockUpstream
from ..upstream.replies import count_tokens, reply_to
from ..validation import check_choice, check_int, check_seconds
from ._sliders import SliderExplorer, offline_upstream, run_apart

if TYPE_CHECKING:  # matplotlib, imported when a figure is drawn: in a browser tab (Pyodide),
    # where it is not installed, the explorer then says in one line what it needs
    from ..plots import DescribedFigure

__all__ = ["StreamExplorer", "StreamRun", "StreamScenario", "explore_streams", "run_streams"]

Relay = Literal["buffered", "async", "sync", "task"]
Ending = Literal["abandoned", "read", "open"]
RELAYS: Final[dict[str, str]] = {
    "buffered": "buffered answer",
    "async": "async for in the generator",
    "sync": "sync generator in threads",
    "task": "reader task and queue",
}
MAX_STREAMS: Final = 60
MAX_FIRST_TOKEN: Final = 0.3
MAX_PER_TOKEN: Final = 0.05
EVENTS_BEFORE_LEAVING: Final = 3
PROMPT: Final = "Explain to a new engineer why the first token of a reply matters"


@dataclass(frozen=True)
class StreamScenario:
    """One run: `streams` concurrent streams through one relay, then a client who leaves.

    Attributes:
        streams: how many clients read a stream at once (1 to 60; the pool has 40 threads).
        time_to_first_token: seconds before the upstream's first piece (0.01 to 0.3).
        time_per_token: seconds between the upstream's pieces (0.005 to 0.05).
        relay: ``"buffered"``, ``"async"``, ``"sync"`` or ``"task"`` (see the module).
    """

    streams: int = 10
    time_to_first_token: float = 0.1
    time_per_token: float = 0.02
    relay: Relay = "async"

    def __post_init__(self) -> None:
        check_int("streams", self.streams, minimum=1, maximum=MAX_STREAMS)
        check_seconds(
            "time_to_first_token",
            self.time_to_first_token,
            allow_zero=False,
            maximum=MAX_FIRST_TOKEN,
        )
        check_seconds(
            "time_per_token", self.time_per_token, allow_zero=False, maximum=MAX_PER_TOKEN
        )
        check_choice("relay", self.relay, tuple(RELAYS))

    def describe(self) -> str:
        """The scenario in words (durations in the sanitizer's ``0.05 s`` form)."""
        return (
            f"{self.streams} streams · first token {self.time_to_first_token:.2f} s · "
            f"{self.time_per_token:.3f} s per token · {RELAYS[self.relay]}"
        )

    def note(self) -> str | None:
        """What this relay does that its timeline alone does not say; None for the async
        relay, the lesson's fix. Shown under the figure, in the live widget and its text."""
        if self.relay == "buffered":
            return (
                "Buffered: each stream's first piece waits for the whole answer, so it comes "
                "with the last."
            )
        if self.relay == "task":
            return (
                "The reader task is not the response's generator: the disconnect cancels the "
                "generator only, and the task reads the upstream's answer to its end, tokens "
                "nobody sees."
            )
        if self.relay != "sync":
            return None
        threads = (
            "More streams than the pool's 40 threads: a stream whose next piece is ready waits "
            "for a free thread to fetch it."
            if self.streams > 40
            else "Each piece is fetched in a pool thread (the caption counts them); with fewer "
            "streams than the pool's 40 threads, none waits for one."
        )
        return (
            f"{threads} When its client leaves, the sync generator is not read on, nor closed: "
            "its upstream stream stays open until the garbage collector frees it."
        )


@dataclass(frozen=True)
class StreamRun:
    """What one run measured. Times are seconds since each request was sent.

    Attributes:
        scenario: what ran.
        pieces: per stream, when its first and its last piece arrived.
        threads: the most pool threads the streams held at once.
        leaver_pieces: when each event the leaving client read arrived; it left after the last.
        left: when the leaving client closed its connection.
        tokens_after: the upstream's pieces for the leaver, sent after it left, as times.
        ending: what the relay did with the leaver's upstream stream: ``"abandoned"`` it (closed
            it unfinished), ``"read"`` it to the end, or left it ``"open"``, neither.
    """

    scenario: StreamScenario
    pieces: tuple[tuple[float, float], ...]
    threads: int
    leaver_pieces: tuple[float, ...]
    left: float
    tokens_after: tuple[float, ...]
    ending: Ending

    @property
    def first(self) -> float:
        """The median stream's first piece."""
        return statistics.median(first for first, _ in self.pieces)

    @property
    def last(self) -> float:
        """The median stream's last piece."""
        return statistics.median(last for _, last in self.pieces)

    def figure(self) -> DescribedFigure:
        """Above, one line per stream from its first piece (a dot) to its last; below, the
        leaving client's events, the moment it left, and the tokens the upstream sent after."""
        import matplotlib.pyplot as plt

        from ..plots import DescribedFigure

        figure, (above, below) = plt.subplots(
            2,
            1,
            figsize=(7, 3.6),
            sharex=True,
            height_ratios=(3, 1),
            FigureClass=DescribedFigure,
            facecolor="white",  # opaque: the same in JupyterLab's light and dark themes
        )
        fig = cast(DescribedFigure, figure)
        for row, (first, last) in enumerate(self.pieces):
            above.plot([first, last], [row, row], color="#0072B2")
            above.plot([first], [row], "o", color="#E69F00", markersize=4)
        above.set_yticks([])
        above.set_ylabel("streams")
        above.set_title(self.scenario.describe(), fontsize=9)
        below.plot(self.leaver_pieces, [1] * len(self.leaver_pieces), "o", color="#E69F00")
        below.axvline(self.left, color="#000000", linestyle="--", linewidth=1)
        below.plot(
            self.tokens_after, [0] * len(self.tokens_after), "|", color="#D55E00", markersize=10
        )
        below.set_yticks([0, 1], ["upstream", "client"])
        below.set_ylim(-0.6, 1.6)
        below.set_xlim(left=0)
        below.set_xlabel(
            "seconds since the request (dot: a piece arrived; dashes: the client left; "
            "ticks: tokens sent after)"
        )
        plt.close(fig)
        ending = {
            "abandoned": "closed the upstream's stream unfinished",
            "read": "read the upstream's answer to its end",
            "open": "left the upstream's stream open, unread",
        }[self.ending]
        events, after = len(self.leaver_pieces), len(self.tokens_after)
        fig.summary = (
            f"{len(self.pieces)} streams: first piece after {self.first:.2f} s and last after "
            f"{self.last:.2f} s (medians), latest first piece {max(f for f, _ in self.pieces):.2f}"
            f" s; pool threads held at once: {self.threads}. A client who left after {events} "
            f"event{'s' * (events != 1)}: the relay {ending}, {after} token{'s' * (after != 1)} "
            "sent after it left."
        )
        return fig


def run_streams(scenario: StreamScenario, upstream: MockUpstream | None = None) -> StreamRun:
    """Run `scenario` against the offline upstream (the lab's, by default) and return what it
    measured. Blocks until done; safe to call from a widget callback or a cell."""
    require_real_kernel("run_streams", StreamExplorer.NEEDS)
    return run_apart(_run(scenario, upstream if upstream is not None else offline_upstream()))


async def _run(scenario: StreamScenario, upstream: MockUpstream) -> StreamRun:
    key = os.getenv("OPENAI_API_KEY") or PLACEHOLDER_KEY
    # The buffered relay's whole answer takes as long as the stream would: only the relay differs.
    events = count_tokens(reply_to(PROMPT).text) + 2  # the role's chunk and the finishing one
    whole = scenario.time_to_first_token + scenario.time_per_token * events
    with (
        OpenAI(api_key=key, max_retries=0) as sync_client,
        upstream.configured(
            latency=whole,
            time_to_first_token=scenario.time_to_first_token,
            time_per_token=scenario.time_per_token,
        ),
    ):
        async with AsyncOpenAI(api_key=key, max_retries=0) as async_client:
            app = _relay_app(scenario.relay, async_client, sync_client)
            async with serve(app) as client:
                limiter = anyio.to_thread.current_default_thread_limiter()
                threads = 0

                async def count_threads() -> None:
                    nonlocal threads
                    while True:
                        threads = max(threads, int(limiter.borrowed_tokens))
                        await asyncio.sleep(0.005)

                counting = asyncio.create_task(count_threads())
                reads = await asyncio.gather(
                    *(_read(client, f"{PROMPT} ({i})") for i in range(scenario.streams))
                )
                counting.cancel()
                upstream.reset()
                start = time.perf_counter()
                # A connection of its own: closing it mid-stream is a disconnect the server sees.
                async with httpx.AsyncClient(base_url=client.base_url, trust_env=False) as alone:
                    leaver = await _read(alone, PROMPT, leave_after=EVENTS_BEFORE_LEAVING)
                left = time.perf_counter()
                deadline = left + whole + 1.0  # a relay still reading has finished by then
                while upstream.stats.in_flight and time.perf_counter() < deadline:
                    await asyncio.sleep(0.02)
    stats = upstream.stats
    ending: Ending = "open" if stats.in_flight else "abandoned" if stats.abandoned else "read"
    return StreamRun(
        scenario,
        tuple((times[0], times[-1]) for times in reads),
        threads,
        leaver,
        left - start,
        tuple(t - start for call in stats.timeline for t in call.token_times if t > left),
        ending,
    )


async def _read(
    client: httpx.AsyncClient, prompt: str, *, leave_after: int | None = None
) -> tuple[float, ...]:
    """POST `prompt` to /chat/stream and return when each event arrived; with `leave_after`,
    stop reading and close the response after that many events."""
    start = time.perf_counter()
    arrived: list[float] = []
    async with client.stream("POST", "/chat/stream", json={"message": prompt}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrived.append(time.perf_counter() - start)
                if len(arrived) == leave_after:
                    break  # leaving the block closes the connection: the client left
    return tuple(arrived)


def _relay_app(relay: Relay, async_client: AsyncOpenAI, sync_client: OpenAI) -> FastAPI:
    """The lesson's relay of kind `relay` as `POST /chat/stream`, `{"message": …}` in."""
    app = FastAPI()
    readers: set[asyncio.Task[None]] = set()  # the reader tasks, kept until they end

    def messages(body: dict[str, str]) -> Any:
        return [{"role": "user", "content": body["message"]}]

    async def pieces(body: dict[str, str]) -> AsyncIterator[str]:
        async with await async_client.chat.completions.create(
            model="gpt-4o-mini", messages=messages(body), stream=True
        ) as stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    def sync_pieces(body: dict[str, str]) -> Iterator[str]:
        with sync_client.chat.completions.create(
            model="gpt-4o-mini", messages=messages(body), stream=True
        ) as stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield f"data: {json.dumps(chunk.choices[0].delta.content)}\n\n"

    async def buffered(body: dict[str, str]) -> AsyncIterator[str]:
        reply = await async_client.chat.completions.create(
            model="gpt-4o-mini", messages=messages(body)
        )
        yield reply.choices[0].message.content or ""

    async def in_task(body: dict[str, str]) -> AsyncIterator[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def read_all() -> None:
            async for piece in pieces(body):
                await queue.put(piece)
            await queue.put(None)

        reader = asyncio.create_task(read_all())
        readers.add(reader)
        reader.add_done_callback(readers.discard)
        while (piece := await queue.get()) is not None:
            yield piece
        await reader

    if relay == "sync":

        @app.post("/chat/stream")
        def sync_chat(body: dict[str, str]) -> StreamingResponse:
            return StreamingResponse(sync_pieces(body), media_type="text/event-stream")

        return app
    relays = {"buffered": buffered, "async": pieces, "task": in_task}

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat(body: dict[str, str]) -> AsyncIterator[str]:
        async for piece in relays[relay](body):
            yield piece

    return app


class StreamExplorer(SliderExplorer[StreamScenario, StreamRun]):
    """Controls for a `StreamScenario`; each change runs it again and redraws its figure."""

    NEEDS = (
        "TCP sockets (each run serves its relay with uvicorn on 127.0.0.1), a thread to run it "
        "in, and matplotlib to draw it"
    )

    def __init__(self, scenario: StreamScenario, *, upstream: MockUpstream | None = None) -> None:
        self._upstream = upstream
        controls: dict[str, ipywidgets.ValueWidget] = {
            "streams": ipywidgets.IntSlider(
                value=scenario.streams,
                min=1,
                max=MAX_STREAMS,
                description="streams",
                continuous_update=False,
            ),
            "time_to_first_token": ipywidgets.FloatSlider(
                value=scenario.time_to_first_token,
                min=0.01,
                max=MAX_FIRST_TOKEN,
                step=0.01,
                description="first token (s)",
                readout_format=".2f",
                continuous_update=False,
            ),
            "time_per_token": ipywidgets.FloatSlider(
                value=scenario.time_per_token,
                min=0.005,
                max=MAX_PER_TOKEN,
                step=0.005,
                description="per token (s)",
                readout_format=".3f",
                continuous_update=False,
            ),
            "relay": ipywidgets.Dropdown(
                options=[(label, kind) for kind, label in RELAYS.items()],
                value=scenario.relay,
                description="relay",
            ),
        }
        super().__init__(scenario, controls)

    def _run(self, scenario: StreamScenario) -> StreamRun:
        return run_streams(scenario, self._upstream)

    def _scenario_from(self, values: dict[str, Any]) -> StreamScenario:
        # The sliders' floats drift (0.30000000000000004): back to their steps.
        values["time_to_first_token"] = round(values["time_to_first_token"], 2)
        values["time_per_token"] = round(values["time_per_token"], 3)
        return replace(self.scenario, **values)


def explore_streams(scenario: StreamScenario | None = None, **settings: Any) -> StreamExplorer:
    """A `StreamExplorer` of `scenario` (or of ``StreamScenario(**settings)``); end a cell with
    it. Runs the scenario once now, so the cell shows its figure at once."""
    require_real_kernel("explore_streams", StreamExplorer.NEEDS)
    if scenario is not None and settings:
        raise TypeError("give a StreamScenario or its settings, not both")
    return StreamExplorer(scenario or StreamScenario(**settings))
