"""labsupport — the support package of the async-llm-lab course.

Every notebook starts with `labsupport.setup(latency=…)`. After that, lesson code is the real,
production-shaped code (`AsyncOpenAI`, FastAPI, asyncio), and labsupport provides the rest:

* an offline OpenAI upstream the real SDK talks to (`mock_openai`, `FakeServer`, `Fault`,
  `RateLimit`), with counters that are the evidence of each lesson;
* serving a FastAPI app in process (`asgi_client`) or on a real socket (`serve`);
* load, timing and plots (`fire`, `loop_lag`, `plot_timeline`);
* exercise checkers (`labsupport.checks`).
"""

from . import checks
from .guard import NetworkGuard, guard_active
from .lab import PLACEHOLDER_KEY, LabUpstream, current_upstream, lab_mode, setup, teardown
from .load import LoadReport, RequestRecord, fire
from .looplag import LoopLagMonitor, loop_lag
from .plots import plot_in_flight, plot_latencies, plot_timeline
from .serving import asgi_client, serve
from .upstream import (
    OPENAI_API_BASE,
    FakeServer,
    Fault,
    MockUpstream,
    NetworkBlockedError,
    ObservedUpstream,
    RateLimit,
    UpstreamCall,
    UpstreamStats,
    mock_openai,
)

__all__ = [
    "OPENAI_API_BASE",
    "PLACEHOLDER_KEY",
    "FakeServer",
    "Fault",
    "LabUpstream",
    "LoadReport",
    "LoopLagMonitor",
    "MockUpstream",
    "NetworkBlockedError",
    "NetworkGuard",
    "ObservedUpstream",
    "RateLimit",
    "RequestRecord",
    "UpstreamCall",
    "UpstreamStats",
    "asgi_client",
    "checks",
    "current_upstream",
    "fire",
    "guard_active",
    "lab_mode",
    "loop_lag",
    "mock_openai",
    "plot_in_flight",
    "plot_latencies",
    "plot_timeline",
    "serve",
    "setup",
    "teardown",
]
