"""The OpenAI upstream of the lab. Offline: one brain (`core`), two bodies (`mock` in process,
`fake_server` over TCP), scripted `faults`, deterministic `replies`, and the `stats` they count.
Live: `observed` records the real API's calls into the same `stats`."""

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
