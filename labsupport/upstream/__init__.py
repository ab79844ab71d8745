"""The OpenAI upstream of the lab. Offline: one brain (`core`), two bodies (`mock` in process,
`fake_server` over TCP), scripted `faults`, deterministic `replies`, and the `stats` they count.
Live: `observed` records the real API's calls into the same `stats`.

Names resolve on first use (PEP 562), as in `labsupport` itself: the notebooks' first cell
needs only the mock, not `observed` (which imports the `openai` SDK) or `fake_server` (uvicorn).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Upstream
    from .fake_server import FakeServer
    from .faults import Fault, RateLimit
    from .mock import OPENAI_API_BASE, MockUpstream, NetworkBlockedError, mock_openai
    from .observed import ObservedUpstream
    from .settings import UNCHANGED, LabUpstream, UpstreamSettings
    from .stats import UpstreamCall, UpstreamStats

__all__ = [
    "OPENAI_API_BASE",
    "UNCHANGED",
    "FakeServer",
    "Fault",
    "LabUpstream",
    "MockUpstream",
    "NetworkBlockedError",
    "ObservedUpstream",
    "RateLimit",
    "Upstream",
    "UpstreamCall",
    "UpstreamSettings",
    "UpstreamStats",
    "mock_openai",
]

#: The module of this package that defines each public name.
_HOMES: dict[str, str] = {
    "OPENAI_API_BASE": "mock",
    "UNCHANGED": "settings",
    "FakeServer": "fake_server",
    "Fault": "faults",
    "LabUpstream": "settings",
    "MockUpstream": "mock",
    "NetworkBlockedError": "mock",
    "ObservedUpstream": "observed",
    "RateLimit": "faults",
    "Upstream": "core",
    "UpstreamCall": "stats",
    "UpstreamSettings": "settings",
    "UpstreamStats": "stats",
    "mock_openai": "mock",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # the next lookup is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
