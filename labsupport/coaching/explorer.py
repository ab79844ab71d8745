"""An explorer: move a slider, and the scenario runs again and its timeline is redrawn.

A lesson measures one case; the explorer lets the learner vary it (how many requests, how slow
the upstream, the sync or the async client, a semaphore's bound) and see the timeline change, the
"modify" step after predict → run → investigate. Every change really runs the scenario: a small
FastAPI app whose endpoint calls the offline upstream with the real SDK, under `fire`, drawn by
`plot_timeline`. It is kept small (at most 30 requests, at most 0.1 s each) so a run takes about
a second even with the sync client.

The runs happen in a worker thread with its own event loop: a slider's callback runs while the
kernel's own loop is busy delivering it, so the scenario cannot run on that loop. Like every
measuring cell, a run starts the upstream's counters afresh, and its settings (latency, rate
limit) apply only while it runs.

In a notebook the explorer is one output: the live widget, and beside it a PNG of the first run
with a fixed plain-text form, so a viewer without a kernel sees a figure and a stored notebook
re-runs to the same text (`_sliders.SliderExplorer`, shared with the streams' explorer).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal

import ipywidgets
import openai
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from openai import AsyncOpenAI, OpenAI

from ..browser import require_real_kernel
from ..lab import PLACEHOLDER_KEY
from ..load import LoadReport, fire
from ..serving import asgi_client
from ..upstream import MockUpstream, RateLimit, UpstreamCall
from ..validation import check_choice, check_int, check_seconds
from ._sliders import SliderExplorer, offline_upstream, run_apart

if TYPE_CHECKING:  # matplotlib, imported when a figure is drawn: `from labsupport.coaching
    # import explore, predict` also loads in a browser tab (Pyodide), where it is not installed
    from ..plots import DescribedFigure

__all__ = ["Explorer", "Scenario", "ScenarioRun", "explore", "run_scenario"]

Client = Literal["sync", "async"]
MAX_REQUESTS: Final = 30
MAX_LATENCY: Final = 0.1
PROMPT: Final = "Summarize in 5 words: The event loop runs one task at a time."


@dataclass(frozen=True)
class Scenario:
    """One run: `requests` at once to a `/chat` endpoint that calls the upstream once each.

    Attributes:
        requests: how many requests `fire` sends together (1 to 30).
        latency: seconds each upstream call takes (0.01 to 0.1).
        client: ``"sync"``: ``OpenAI`` called inside ``async def`` (it blocks the loop);
            ``"async"``: ``AsyncOpenAI``, awaited.
        bound: the size of one ``asyncio.Semaphore`` shared by all requests; ``None``: none.
        upstream_limit: the upstream refuses calls over this many in flight with a 429 (the
            endpoint passes it on); ``None``: no limit.
    """

    requests: int = 20
    latency: float = 0.05
    client: Client = "async"
    bound: int | None = None
    upstream_limit: int | None = None

    def __post_init__(self) -> None:
        check_int("requests", self.requests, minimum=1, maximum=MAX_REQUESTS)
        check_seconds("latency", self.latency, allow_zero=False, maximum=MAX_LATENCY)
        check_choice("client", self.client, ("sync", "async"))
        if self.bound is not None:
            check_int("bound", self.bound, minimum=1)
        if self.upstream_limit is not None:
            check_int("upstream_limit", self.upstream_limit, minimum=1)

    def describe(self) -> str:
        """The scenario in words (durations in the sanitizer's ``0.05 s`` form)."""
        client = "sync OpenAI in async def" if self.client == "sync" else "AsyncOpenAI, awaited"
        bound = f"Semaphore({self.bound})" if self.bound else "no semaphore"
        limit = f", upstream allows {self.upstream_limit}" if self.upstream_limit else ""
        return f"{self.requests} requests · {self.latency:.2f} s each · {client} · {bound}{limit}"

    def note(self) -> str | None:
        """What this scenario's timeline shows that the lessons would not lead one to expect;
        None when nothing does. Shown under the figure, in the live widget and its text."""
        if self.client == "sync" and self.bound:
            return (
                f"The Semaphore({self.bound}) changes nothing here: the sync client blocks the "
                "event loop until its call is done, so no other request runs, and none ever "
                "finds the semaphore taken."
            )
        limit = self.upstream_limit
        if self.client == "sync" or not limit or self.requests <= limit:
            return None
        if self.bound is None:
            return f"No semaphore: every call over the limit of {limit} gets a 429 at once."
        if self.bound > limit:
            return (
                f"Semaphore({self.bound}) against a limit of {limit}: the call over the limit "
                "gets a 429 at once (no retries here), and a refused call gives its permit back "
                "at once, so the next waiting request takes it and is refused too, again and "
                f"again while the first {limit} calls are still running: most requests beyond "
                f"the first {limit} are refused."
            )
        return None


@dataclass(frozen=True)
class ScenarioRun:
    """What one run of a scenario measured: the requests, and the upstream calls they made."""

    scenario: Scenario
    report: LoadReport
    calls: tuple[UpstreamCall, ...]

    def figure(self) -> DescribedFigure:
        """The run's timeline: one bar per request, the upstream calls below them."""
        from ..plots import plot_timeline

        return plot_timeline(
            self.report,
            upstream=self.calls,
            latency=self.scenario.latency,
            title=self.scenario.describe(),
        )


def run_scenario(scenario: Scenario, upstream: MockUpstream | None = None) -> ScenarioRun:
    """Run `scenario` against the offline upstream (the lab's, by default) and return what it
    measured. Blocks until done; safe to call from a widget callback or a cell."""
    require_real_kernel("run_scenario", Explorer.NEEDS)
    upstream = upstream if upstream is not None else offline_upstream()
    return run_apart(_run(scenario, upstream))


async def _run(scenario: Scenario, upstream: MockUpstream) -> ScenarioRun:
    key = os.getenv("OPENAI_API_KEY") or PLACEHOLDER_KEY
    slots = asyncio.Semaphore(scenario.bound) if scenario.bound else None
    limit = scenario.upstream_limit
    rate_limit = RateLimit(max_concurrent=limit, retry_after=0.25) if limit else None
    app = FastAPI()
    with OpenAI(api_key=key, max_retries=0) as sync_client:
        async with AsyncOpenAI(api_key=key, max_retries=0) as async_client:

            async def ask() -> JSONResponse:
                messages: Any = [{"role": "user", "content": PROMPT}]
                try:
                    if scenario.client == "sync":  # blocks the event loop, as in lesson 01
                        reply = sync_client.chat.completions.create(
                            model="gpt-4o-mini", messages=messages
                        )
                    else:
                        reply = await async_client.chat.completions.create(
                            model="gpt-4o-mini", messages=messages
                        )
                except openai.RateLimitError:
                    return JSONResponse({"error": "rate limited"}, status_code=429)
                return JSONResponse({"response": reply.choices[0].message.content})

            @app.post("/chat")
            async def chat() -> JSONResponse:
                if slots is None:
                    return await ask()
                async with slots:
                    return await ask()

            with upstream.configured(latency=scenario.latency, rate_limit=rate_limit):
                async with asgi_client(app) as http:
                    report = await fire(http, "POST", "/chat", n=scenario.requests)
                calls = tuple(upstream.stats.timeline)
    return ScenarioRun(scenario, report, calls)


class Explorer(SliderExplorer[Scenario, ScenarioRun]):
    """Sliders for a `Scenario`; each change runs it again and redraws its timeline.

    `run` is the latest `ScenarioRun` and `scenario` its scenario; `controls` maps each
    control's name to its widget. Nothing a learner does with the controls raises: a run that
    fails shows its error under the figure.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        controls: tuple[str, ...] = ("requests", "latency", "client", "bound"),
        upstream: MockUpstream | None = None,
    ) -> None:
        unknown = set(controls) - {"requests", "latency", "client", "bound"}
        if unknown:
            raise ValueError(
                f"unknown controls {sorted(unknown)}; choose from requests, latency, client, bound"
            )
        self._upstream = upstream
        every: dict[str, ipywidgets.ValueWidget] = {
            "requests": ipywidgets.IntSlider(
                value=scenario.requests,
                min=1,
                max=MAX_REQUESTS,
                description="requests",
                continuous_update=False,
            ),
            "latency": ipywidgets.FloatSlider(
                value=scenario.latency,
                min=0.01,
                max=MAX_LATENCY,
                step=0.01,
                description="latency (s)",
                readout_format=".2f",
                continuous_update=False,
            ),
            "client": ipywidgets.ToggleButtons(
                options=[("sync OpenAI", "sync"), ("AsyncOpenAI", "async")],
                value=scenario.client,
                description="client",
            ),
            "bound": ipywidgets.IntSlider(
                value=scenario.bound or 0,
                min=0,
                max=MAX_REQUESTS,
                description="semaphore",
                tooltip="0: no semaphore",
                continuous_update=False,
            ),
        }
        super().__init__(scenario, {name: every[name] for name in controls})

    def _run(self, scenario: Scenario) -> ScenarioRun:
        return run_scenario(scenario, self._upstream)

    def _scenario_from(self, values: dict[str, Any]) -> Scenario:
        if "bound" in values:
            values["bound"] = values["bound"] or None  # 0 on the slider: no semaphore
        if "latency" in values:
            values["latency"] = round(values["latency"], 2)  # the slider's floats drift
        return replace(self.scenario, **values)


def explore(
    scenario: Scenario | None = None,
    *,
    controls: tuple[str, ...] = ("requests", "latency", "client", "bound"),
    **settings: Any,
) -> Explorer:
    """An `Explorer` of `scenario` (or of ``Scenario(**settings)``); end a cell with it.

    Runs the scenario once now, so the cell shows its timeline at once.
    """
    require_real_kernel("explore", Explorer.NEEDS)
    if scenario is not None and settings:
        raise TypeError("give a Scenario or its settings, not both")
    return Explorer(scenario or Scenario(**settings), controls=controls)
