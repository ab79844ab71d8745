"""The first cell of every notebook: `labsupport.setup(latency=…)`.

Offline (the default): the mock upstream answers every OpenAI call in this kernel, a socket guard
keeps everything else on this machine, and a placeholder API key lets learner code construct
`AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))` unchanged. In a browser tab (Pyodide, the
course's JupyterLite site) the same mock answers the SDK through httpx2's fetch transport (see
`labsupport.upstream.pools`), with the same counters, latency, faults and rate limits.

Live (`LAB_MODE=live`): nothing is mocked. The SDK reads `OPENAI_API_KEY` and, if set,
`OPENAI_BASE_URL` (any OpenAI-compatible server) from the environment, as in production.
`setup()` returns an `ObservedUpstream` instead: it records the real calls with the same
`stats`, `reset()` and `latency` (measured with one tiny call), so the same notebooks run
unchanged and print real evidence. Scripted faults are skipped there, with a note.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Unpack

from .browser import in_browser
from .upstream.mock import OPENAI_API_BASE, PLACEHOLDER_KEY, MockUpstream
from .upstream.settings import LabUpstream, SettingsChanges, UpstreamSettings
from .validation import check_choice
from .warmup import warm_after_each_cell, warm_up

if TYPE_CHECKING:
    from .upstream.observed import ObservedUpstream

__all__ = [
    "MODE_VARIABLE",
    "PLACEHOLDER_KEY",
    "LabUpstream",
    "current_upstream",
    "lab_mode",
    "setup",
    "teardown",
]

MODE_VARIABLE = "LAB_MODE"
MODES = ("offline", "live")

_upstream: MockUpstream | None = None
_observer: ObservedUpstream | None = None


def lab_mode() -> str:
    """The configured mode: "offline" (default) or "live", from the LAB_MODE variable."""
    mode = os.environ.get(MODE_VARIABLE, "offline").strip().lower() or "offline"
    return check_choice(MODE_VARIABLE, mode, MODES)


def setup(latency: float = 0.1, /, **settings: Unpack[SettingsChanges]) -> LabUpstream:
    """Set up the lab for one notebook and say which mode it is in.

    Offline, returns the running mock upstream, configured afresh: `latency` seconds per call
    (by position or by name), the other `settings` (jitter, seed, faults, rate_limit; see
    `labsupport.UpstreamSettings`) as given or at their defaults, counters reset. So running
    the first cell again puts the lesson's upstream back as it started. Live, returns an
    `ObservedUpstream` recording the calls to the real API, its `latency` measured with one tiny
    call (the `latency` argument is ignored; faults and a rate limit are skipped with a note).
    """
    global _upstream, _observer
    requested = UpstreamSettings(latency=latency).replace(**settings)
    mode = lab_mode()
    if mode == "live":
        teardown()
        if not os.environ.get("OPENAI_API_KEY"):
            raise RuntimeError(
                f"{MODE_VARIABLE}=live needs OPENAI_API_KEY in the environment (never in a "
                "notebook). Unset LAB_MODE to work offline."
            )
        from .upstream.observed import ObservedUpstream  # the SDK: only live mode needs it here

        base = os.environ.get("OPENAI_BASE_URL") or OPENAI_API_BASE
        observer = ObservedUpstream(base).start()
        try:
            observer.measure_latency()
        except Exception as error:
            observer.stop()
            raise RuntimeError(
                f"Live mode: a test call to {base} failed ({type(error).__name__}). Check "
                "OPENAI_API_KEY and OPENAI_BASE_URL, or unset LAB_MODE to work offline."
            ) from error
        _observer = observer
        print(
            f"Live mode: calls go to {base} (API key: set, from OPENAI_API_KEY); "
            f"one call takes {observer.latency:.2f} s. Nothing is simulated."
        )
        if requested.scripted:
            observer.configure(faults=requested.faults, rate_limit=requested.rate_limit)
        return observer

    if _observer is not None:
        _observer.stop()
        _observer = None
    if _upstream is None:
        _upstream = MockUpstream()
    _upstream.start()  # with the socket guard, and the placeholder key if none is set
    _upstream.configure(requested)
    # The SDK's and FastAPI's cold start, over private transports (the upstream sees none of
    # it): now for what is imported, in a notebook after the cell that imports the rest.
    warm_up()
    warm_after_each_cell()
    if in_browser():
        # The interrupt hook is written for CPython's ipykernel and is left off here (not tried
        # in Pyodide).
        print(
            "Offline lab in your browser (Pyodide): a simulated OpenAI API answers in this tab "
            f"({requested.latency:g} s per call). The SDK's requests never leave this page."
        )
        return _upstream
    _interrupts_take_effect()
    print(
        "Offline lab: a simulated OpenAI API answers in this kernel "
        f"({requested.latency:g} s per call). Nothing leaves this machine."
    )
    return _upstream


def _interrupts_take_effect() -> None:
    """In IPython, make ■ stop an awaiting cell at once (`labsupport.kernel_interrupt`), also in a
    kernel whose environment's config does not load the course's extension (one that `make
    venv` did not set up). Registering it again does nothing."""
    shell = _ipython_shell()
    if shell is not None:
        from . import kernel_interrupt  # signal and asyncio only: the first cell stays light

        kernel_interrupt.register(shell)


def _ipython_shell() -> Any:
    ipython = sys.modules.get("IPython")  # never imported here: a plain script has no shell
    return ipython.get_ipython() if ipython is not None else None


def current_upstream() -> LabUpstream | None:
    """The running upstream: the offline mock, live mode's observer, or None (before `setup()`)."""
    if _observer is not None and _observer.active:
        return _observer
    return _upstream if _upstream is not None and _upstream.active else None


def teardown() -> None:
    """Turn the lab off: the offline upstream (with its socket guard and placeholder key) and
    live mode's observer."""
    global _observer
    if _upstream is not None:
        _upstream.stop()
    if _observer is not None:
        _observer.stop()
        _observer = None
