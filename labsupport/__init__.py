"""labsupport — the support package of the async-llm-lab course.

Every notebook starts with `labsupport.setup(latency=…)`. After that, lesson code is the real,
production-shaped code (`AsyncOpenAI`, FastAPI, asyncio), and labsupport provides the rest:

* an offline OpenAI upstream the real SDK talks to (`mock_openai`, `FakeServer`, `Fault`,
  `RateLimit`), with counters that are the evidence of each lesson;
* serving a FastAPI app in process (`asgi_client`) or on a real socket (`serve`);
* load, timing and plots (`fire`, `loop_lag`, `plot_timeline`);
* exercise checkers (`labsupport.checks`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import checks
    from .guard import (
        NetworkGuard,
        guard_active,
    )
    from .lab import (
        MODE_VARIABLE,
        PLACEHOLDER_KEY,
        LabUpstream,
        current_upstream,
        lab_mode,
        setup,
        teardown,
    )
    from .load import (
        LoadReport,
        RequestRecord,
        fire,
    )
    from .looplag import (
        LoopLagMonitor,
        loop_lag,
    )
    from .network import (
        NetworkBlockedError,
    )
    from .plots import (
        plot_in_flight,
        plot_latencies,
        plot_timeline,
    )
    from .serving import (
        asgi_client,
        serve,
    )
    from .upstream import (
        OPENAI_API_BASE,
        UNCHANGED,
        FakeServer,
        Fault,
        MockUpstream,
        ObservedUpstream,
        RateLimit,
        Upstream,
        UpstreamCall,
        UpstreamSettings,
        UpstreamStats,
        mock_openai,
    )

__all__ = [
    "MODE_VARIABLE",
    "OPENAI_API_BASE",
    "PLACEHOLDER_KEY",
    "UNCHANGED",
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
    "Upstream",
    "UpstreamCall",
    "UpstreamSettings",
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

# Where each public name lives. Nothing is imported until a name is first used (PEP 562), so
# `python -m labsupport doctor` starts in a blink and can report a missing package instead of
# dying on it; `import labsupport as lab` costs nothing until `lab.setup()`.
_HOMES: dict[str, str] = {
    "MODE_VARIABLE": "lab",
    "OPENAI_API_BASE": "upstream",
    "PLACEHOLDER_KEY": "lab",
    "UNCHANGED": "upstream",
    "FakeServer": "upstream",
    "Fault": "upstream",
    "LabUpstream": "lab",
    "LoadReport": "load",
    "LoopLagMonitor": "looplag",
    "MockUpstream": "upstream",
    "NetworkBlockedError": "network",
    "NetworkGuard": "guard",
    "ObservedUpstream": "upstream",
    "RateLimit": "upstream",
    "RequestRecord": "load",
    "Upstream": "upstream",
    "UpstreamCall": "upstream",
    "UpstreamSettings": "upstream",
    "UpstreamStats": "upstream",
    "asgi_client": "serving",
    "checks": "checks",
    "current_upstream": "lab",
    "fire": "load",
    "guard_active": "guard",
    "lab_mode": "lab",
    "loop_lag": "looplag",
    "mock_openai": "upstream",
    "plot_in_flight": "plots",
    "plot_latencies": "plots",
    "plot_timeline": "plots",
    "serve": "serving",
    "setup": "lab",
    "teardown": "lab",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{home}", __name__)
    value = module if home == name else getattr(module, name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
