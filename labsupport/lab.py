"""The first cell of every notebook: `labsupport.setup(latency=…)`.

Offline (the default): the mock upstream answers every OpenAI call in this kernel, a socket guard
keeps everything else on this machine, and a placeholder API key lets learner code construct
`AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))` unchanged.

Live (`LAB_MODE=live`): nothing is mocked. The SDK reads `OPENAI_API_KEY` and, if set,
`OPENAI_BASE_URL` (any OpenAI-compatible server) from the environment, as in production.
"""

from __future__ import annotations

import os

from .guard import install_guard, uninstall_guard
from .upstream import OPENAI_API_BASE, Fault, MockUpstream, RateLimit

__all__ = ["MODE_VARIABLE", "PLACEHOLDER_KEY", "current_upstream", "lab_mode", "setup", "teardown"]

MODE_VARIABLE = "LAB_MODE"
MODES = ("offline", "live")
#: Given to the SDK offline when no key is set. Not a secret, and not shaped like one.
PLACEHOLDER_KEY = "offline-lab-placeholder-key"

_upstream: MockUpstream | None = None


def lab_mode() -> str:
    """The configured mode: "offline" (default) or "live", from the LAB_MODE variable."""
    mode = os.environ.get(MODE_VARIABLE, "offline").strip().lower() or "offline"
    if mode not in MODES:
        raise ValueError(f"{MODE_VARIABLE} must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def setup(
    latency: float = 0.1,
    *,
    jitter: float = 0.0,
    seed: int = 0,
    faults: tuple[Fault, ...] = (),
    rate_limit: RateLimit | None = None,
) -> MockUpstream | None:
    """Set up the lab for one notebook and say which mode it is in.

    Offline, returns the running mock upstream (configured with `latency` seconds per call and
    freshly reset), so the lesson can read its counters. Live, returns None.
    """
    global _upstream
    mode = lab_mode()
    if mode == "live":
        teardown()
        if not os.environ.get("OPENAI_API_KEY"):
            raise RuntimeError(
                f"{MODE_VARIABLE}=live needs OPENAI_API_KEY in the environment (never in a "
                "notebook). Unset LAB_MODE to work offline."
            )
        base = os.environ.get("OPENAI_BASE_URL") or OPENAI_API_BASE
        print(f"Live mode: calls go to {base} (API key: set, from OPENAI_API_KEY).")
        return None

    if _upstream is None:
        _upstream = MockUpstream()
    _upstream.configure(
        latency=latency, jitter=jitter, seed=seed, faults=faults, rate_limit=rate_limit
    )
    _upstream.start()
    install_guard()
    os.environ.setdefault("OPENAI_API_KEY", PLACEHOLDER_KEY)
    print(
        f"Offline lab: a simulated OpenAI API answers in this kernel ({latency:g} s per call). "
        "Nothing leaves this machine."
    )
    return _upstream


def current_upstream() -> MockUpstream | None:
    """The running offline upstream, or None (live mode, or before `setup()`)."""
    return _upstream if _upstream is not None and _upstream.active else None


def teardown() -> None:
    """Turn the offline upstream and the socket guard off (tests and live mode use this)."""
    if _upstream is not None:
        _upstream.stop()
    uninstall_guard()
    if os.environ.get("OPENAI_API_KEY") == PLACEHOLDER_KEY:
        del os.environ["OPENAI_API_KEY"]
