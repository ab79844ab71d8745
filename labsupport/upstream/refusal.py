"""How the mock refuses a request: at once, and in words that say it was refused.

A refused request raises `NetworkBlockedError`, a connection error to every HTTP library. The
`openai` SDK retries connection errors (twice by default, with backoff) and then reports
"Connection error." — or, for aiohttp's connection errors, "Request timed out." — so a learner
would wait seconds and then look for a slow network that does not exist. The SDK passes its own
errors through untouched, without retrying: so when the SDK is loaded, the refusal is also an
`openai.APIConnectionError`, and its message (the SDK prints it) says what the lab blocked.
"""

from __future__ import annotations

import functools
import sys

from ..network import NetworkBlockedError

__all__ = ["blocked_request", "refusal"]


def blocked_request(url: str) -> NetworkBlockedError:
    """The refusal of a request to `url` (scheme, host and path), a host off this machine."""
    return refusal(
        f"The offline lab blocked a request to {url}: while the mock upstream is on, nothing "
        "leaves this machine. To reach a real server, set LAB_MODE=live (see the README)."
    )


def refusal(message: str) -> NetworkBlockedError:
    """The error to raise for a request the offline lab refuses."""
    if "openai" not in sys.modules:  # no SDK in this process: nothing would retry it
        return NetworkBlockedError(message)
    return _sdk_refusal_class()(message)


@functools.cache
def _sdk_refusal_class() -> type[NetworkBlockedError]:
    import openai

    class NetworkBlockedAPIError(NetworkBlockedError, openai.APIConnectionError):  # type: ignore[misc]
        """`NetworkBlockedError` that the SDK raises as it is: an `APIConnectionError` it does
        not retry, whose message names the lab's guard."""

        def __init__(self, message: str) -> None:
            super().__init__(message)
            # APIConnectionError's own fields (its __init__ needs a request, which a refusal
            # made before sending has not got).
            self.message, self.request, self.body = message, None, None  # type: ignore[assignment]
            self.code = self.param = self.type = None

    # Tracebacks and libraries that print the class name show the name the lab documents.
    NetworkBlockedAPIError.__module__ = __name__
    NetworkBlockedAPIError.__name__ = NetworkBlockedAPIError.__qualname__ = "NetworkBlockedError"
    return NetworkBlockedAPIError
