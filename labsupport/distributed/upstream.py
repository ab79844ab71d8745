"""The fake upstream, telling worker processes apart.

One `FakeServer` answers every worker, so its counters are the truth about the provider's limit:
calls in flight across all processes. `WorkerTaggedServer` also notes which worker sent each
call, from the `x-lab-worker` header the lab's service sends with its process id, so a plot can
show each worker's share.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any, Final

from ..upstream import FakeServer, UpstreamCall
from ..upstream.core import Answer

__all__ = ["WORKER_HEADER", "WorkerTaggedServer"]

WORKER_HEADER: Final = "x-lab-worker"
"""The request header that names the worker process (its pid) that sent a call."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Each request runs in its own task, so the header read at the door is still there (and only
# there) when the same task asks the upstream for its answer.
_sender: ContextVar[str] = ContextVar("lab_worker_sender", default="")


class WorkerTaggedServer(FakeServer):
    """A `FakeServer` that records which worker (the `x-lab-worker` header) sent each call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._senders: dict[int, str] = {}
        super().__init__(*args, **kwargs)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._senders.clear()

    def calls_by_worker(self) -> dict[str, tuple[UpstreamCall, ...]]:
        """The timeline split by sender: {worker pid (or "" if untagged): its calls}."""
        timeline = self.stats.timeline
        with self._lock:
            senders = dict(self._senders)
        split: dict[str, list[UpstreamCall]] = {}
        for call in timeline:
            split.setdefault(senders.get(call.index, ""), []).append(call)
        return {sender: tuple(calls) for sender, calls in sorted(split.items())}

    def answer(self, method: str, endpoint: str, body: bytes, client: str) -> Answer:
        planned = super().answer(method, endpoint, body, client)
        if planned.call:
            with self._lock:
                self._senders[planned.call] = _sender.get()
        return planned

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            _sender.set(headers.get(WORKER_HEADER.encode(), b"").decode(errors="replace"))
        await super()._app(scope, receive, send)
