"""The clients matrix's surfaces and verdicts, shared by tests/test_clients_*.py.

Each case runs on three surfaces: in process as a notebook sets it up (`labsupport.setup()`),
with `mock_openai()` alone, and over TCP (`FakeServer`). Each ends as one of:

* works — the library got the answer it asked for;
* refused clearly — the offline lab refused it at once, and the learner is told so: the error
  is (or was caused by) `NetworkBlockedError`, and nothing on the way calls it a timeout;
* wrong — anything else: a wrong answer, another error, or a refusal that reads as a timeout.

A clearly refused case passes, a wrong one fails; `tests/conftest.py` prints the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import openai

import labsupport
from labsupport import FakeServer, NetworkBlockedError, mock_openai

__all__ = ["SURFACES", "WORKS", "on_surface", "verdict"]

SURFACES = ["setup", "mock_openai", "fake_server"]
WORKS = "works"
REFUSED = "refused clearly"


@contextmanager
def on_surface(surface: str) -> Iterator[str | None]:
    """The base URL a client on `surface` uses: None in process (the SDK's default base,
    which the mock answers), else the fake server's."""
    if surface == "setup":
        labsupport.setup(0.0)
        try:
            yield None
        finally:
            labsupport.teardown()
    elif surface == "mock_openai":
        with mock_openai(latency=0.0):
            yield None
    else:
        with FakeServer(latency=0.0) as server:
            yield server.base_url


def verdict(error: BaseException | None) -> str:
    """ "works", "refused clearly", or "wrong: why" for a case that raised `error` (or None)."""
    if error is None:
        return WORKS
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, openai.APITimeoutError | TimeoutError) for e in chain):
        return f"wrong: a timeout ({type(error).__name__})"
    if any(isinstance(e, NetworkBlockedError) for e in chain):
        return REFUSED
    return f"wrong: {type(error).__name__}"
