"""aiohttp, answered in process by the running mocks (through aioresponses).

The SDK's `DefaultAioHttpClient` and litellm's async calls send their requests with aiohttp's
`ClientSession`, not httpx, so the pools' wrappers (`pools`) never see them. aioresponses, the
usual way to mock aiohttp, patches `ClientSession` and hands each request to callbacks; here one
callback takes every request to a host that is not loopback:

* a request for a running mock's API base is answered by that mock's upstream (the same
  counters, latency, faults and rate limits as the SDK's default client);
* any other is refused at once with `NetworkBlockedError` (see `refusal`);
* loopback requests are not matched, and aioresponses lets them through to the lab's servers.

A whole answer is handed over whole, after its latency (status and body together, as a server
sends one). A streamed one is sent as the httpx path sends it (`aiohttp_body`): its first event
after the time to first token, the others at the answer's pace, each only when the client reads,
and a response closed before its end is counted as abandoned, with the same counters as on httpx.

One interception serves every running mock: patches of one method must be undone in reverse
order, so the first mock to start installs it and the last to stop removes it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Awaitable, Callable
from http.client import responses
from typing import TYPE_CHECKING, Any, TypeAlias

from yarl import URL

if TYPE_CHECKING:
    from .aiohttp_body import AnswerParts

__all__ = ["AiohttpAnswer", "register", "unregister"]

#: Answers an aiohttp request (method, URL, the request's keyword arguments): (status, headers,
#: body, whole or as the parts that send it), or None when the URL is not this mock's API.
AiohttpAnswer: TypeAlias = Callable[
    [str, URL, dict[str, Any]],
    Awaitable["tuple[int, dict[str, str], bytes | AnswerParts] | None"],
]
#: Refuses a URL no mock answers for: the exception to raise.
Refuse = Callable[[URL], BaseException]

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
# Every URL whose host is not loopback, as aiohttp writes URLs. A loopback address spelled
# otherwise is matched too, and refused: the safe side.
_NOT_LOOPBACK = re.compile(
    r"(?!https?://(?:localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d+)?(?:[/?#]|$))"
)

_lock = threading.Lock()
_answerers: list[tuple[AiohttpAnswer, Refuse]] = []
_patch: Any = None  # the aioresponses instance while any mock runs


def register(answer: AiohttpAnswer, refuse: Refuse) -> None:
    """Answer aiohttp requests with `answer` (after mocks registered earlier); install the
    interception if this is the first. Does nothing when aiohttp is not installed."""
    global _patch
    try:
        from aioresponses import aioresponses
    except ImportError:  # no aiohttp in this environment: nothing to intercept
        return
    with _lock:
        _answerers.append((answer, refuse))
        if _patch is None:
            _patch = aioresponses(passthrough_unmatched=True)
            _patch.start()
            for method in _METHODS:
                _patch.add(_NOT_LOOPBACK, method=method, callback=_callback(method), repeat=True)


def unregister(answer: AiohttpAnswer) -> None:
    """Stop answering with `answer`; remove the interception once no mock is left."""
    global _patch
    with _lock:
        _answerers[:] = [pair for pair in _answerers if pair[0] != answer]
        if not _answerers and _patch is not None:
            _patch.stop()
            _patch = None


def _callback(method: str) -> Callable[..., Awaitable[Any]]:
    async def answer_or_refuse(url: URL, **request: Any) -> Any:
        from aioresponses import CallbackResult

        from .aiohttp_body import paced_response_class

        patch = _patch
        if patch is not None:
            # aioresponses records every request for its assertions; the lab makes none, and a
            # long-running mock must not keep every request it has answered.
            patch.requests.clear()
        with _lock:
            answerers = list(_answerers)
        for answer, _ in answerers:
            answered = await answer(method, url, request)
            if answered is not None:
                status, headers, body = answered
                # The reason phrase a server sends: aiohttp's `raise_for_status()` needs one
                # to build its error.
                reason = responses.get(status, "")
                content_type = headers.get("content-type", "application/json")
                if isinstance(body, bytes):
                    return CallbackResult(
                        method,
                        status,
                        body,
                        content_type=content_type,
                        headers=headers,
                        reason=reason,
                    )
                return CallbackResult(
                    method,
                    status,
                    content_type=content_type,
                    headers=headers,
                    response_class=paced_response_class(body),
                    reason=reason,
                )
        if not answerers:  # stopped while this request was on its way
            raise ConnectionError(f"the offline lab was stopped before answering {url}")
        raise answerers[0][1](url)

    return answer_or_refuse
