"""The offline OpenAI upstream: one brain (`core`), two bodies (`mock` in process, `fake_server`
over TCP), scripted `faults`, deterministic `replies`, and the `stats` they count."""

from .core import Upstream
from .faults import Fault, RateLimit
from .mock import OPENAI_API_BASE, MockUpstream, NetworkBlockedError, mock_openai
from .stats import UpstreamCall, UpstreamStats

__all__ = [
    "OPENAI_API_BASE",
    "Fault",
    "MockUpstream",
    "NetworkBlockedError",
    "RateLimit",
    "Upstream",
    "UpstreamCall",
    "UpstreamStats",
    "mock_openai",
]
