"""The offline upstream's brain: what it answers, when, and what it counts.

`Upstream` knows nothing about transports, nor how the API spells its JSON (that is `wire`). The
respx mock (`mock.py`, in process) and the TCP fake server (`fake_server.py`, real sockets) both
ask it for an `Answer` when a request arrives, wait `answer.wait` seconds the way their client
expects (blocking a thread for the sync SDK client, sleeping on the event loop for the async one),
send the answer, and report back with `finish()`. So both forms reply, fail and count in exactly
the same way.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Self, Unpack

from . import wire
from .replies import count_tokens, reply_to
from .settings import SettingsChanges, UpstreamSettings, combine
from .stats import UpstreamCall, UpstreamStats

__all__ = ["Answer", "Upstream"]


@dataclass(slots=True)
class Answer:
    """One planned answer: send `status`, `headers` and `body` (or the SSE `chunks`) after `wait`
    seconds; a stream spaces its chunks `chunk_gap` seconds apart."""

    call: int
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    wait: float = 0.0
    chunk_gap: float = 0.0
    finished: bool = False
    in_flight: bool = True

    @property
    def streaming(self) -> bool:
        return bool(self.chunks)


class Upstream:
    """A deterministic stand-in for the OpenAI API. Thread-safe: the sync SDK client calls it
    from worker threads while the async client calls it from the event loop.

    Its behaviour is one `UpstreamSettings` value (`settings`), given whole or as changes:
    `Upstream(latency=0.2)`, `Upstream(UpstreamSettings(...))`.
    """

    def __init__(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> None:
        self._lock = threading.Lock()
        self._settings = combine(UpstreamSettings(), settings, changes)
        self.reset()

    # -- configuration ---------------------------------------------------------------------
    @property
    def settings(self) -> UpstreamSettings:
        """How the upstream behaves now (a frozen value: change it with `configure()`)."""
        return self._settings

    @property
    def latency(self) -> float:
        """Seconds each call takes (before jitter and delay faults)."""
        return self._settings.latency

    def configure(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> UpstreamSettings:
        """Change how the upstream behaves, and start counting afresh (as `reset()` does).

        Give whole `settings`, or keyword changes (settings left out keep their value;
        `rate_limit=None` removes the rate limit), or both (changes apply on top). Returns the
        new settings. Invalid settings raise, and leave the upstream as it was.
        """
        new = combine(self._settings, settings, changes)
        with self._lock:
            self._settings = new
        self.reset()
        return new

    @contextmanager
    def configured(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> Iterator[Self]:
        """`configure()` for the length of a `with` block, then put the previous settings back,
        even when the block raises or is interrupted. Counters reset on entry only, so what
        the block caused can still be read after it."""
        saved = self._settings
        self.configure(settings, **changes)
        try:
            yield self
        finally:
            with self._lock:
                self._settings = saved

    def reset(self) -> None:
        """Forget all calls: counters, timeline, call numbering, and the random sequence."""
        with self._lock:
            self._random = random.Random(self._settings.seed)
            self._calls = 0
            self._in_flight = 0
            self._max_in_flight = 0
            self._status_counts: dict[int | None, int] = {}
            self._timeline: list[UpstreamCall] = []
            self._window: deque[float] = deque()
            self._epoch = time.perf_counter()

    @property
    def stats(self) -> UpstreamStats:
        """A snapshot of what the upstream has seen since the last reset."""
        with self._lock:
            return UpstreamStats(
                calls=self._calls,
                in_flight=self._in_flight,
                max_in_flight=self._max_in_flight,
                status_counts=dict(self._status_counts),
                timeline=tuple(self._timeline),
            )

    # -- one request -----------------------------------------------------------------------
    def answer(self, method: str, endpoint: str, body: bytes, client: str) -> Answer:
        """Plan the answer to one request. `endpoint` is the path after the API base, such as
        "chat/completions"; `client` is "sync" or "async". Call `finish()` once it is sent."""
        if method == "GET" and endpoint == "models":
            return Answer(0, 200, {"content-type": wire.JSON}, wire.models_list(), finished=True)
        if method != "POST" or endpoint not in ("chat/completions", "responses"):
            message = f"The offline lab upstream has no {method} /{endpoint}."
            return _error_answer(404, "invalid_request_error", message, finished=True)
        chat = endpoint == "chat/completions"
        request = wire.parse_request(body, chat=chat)
        problem, prompt = request.problem, request.prompt

        now = time.perf_counter()
        with self._lock:
            settings = self._settings
            self._calls += 1
            number = self._calls
            draw = self._random.random()
            wait = settings.latency
            if settings.jitter:
                wait = max(0.0, wait + self._random.uniform(-settings.jitter, settings.jitter))
            limited = None if problem else self._over_rate_limit(settings, now)
            fault = None
            if not (problem or limited):
                fault = next((f for f in settings.faults if f.selects(number, prompt, draw)), None)
                self._in_flight += 1
                self._max_in_flight = max(self._max_in_flight, self._in_flight)
                limit = settings.rate_limit
                if limit is not None and limit.max_per_window is not None:
                    self._window.append(now)
            self._timeline.append(UpstreamCall(number, now, now, None, client, prompt))

        if problem or limited:
            # Refused at the door: answered at once, never in flight.
            if problem:
                answer = _error_answer(400, "invalid_request_error", problem)
            else:
                retry = None if settings.rate_limit is None else settings.rate_limit.retry_after
                answer = _error_answer(429, "rate_limit_exceeded", limited or "", retry_after=retry)
            answer.call, answer.in_flight = number, False
            self.finish(answer)
            return answer
        if fault is not None and fault.status is not None:
            kind = _ERROR_TYPES.get(fault.status, "server_error")
            message = f"Scripted fault on call {number}: HTTP {fault.status}."
            answer = _error_answer(fault.status, kind, message, retry_after=fault.retry_after)
            answer.call, answer.wait = number, wait
            return answer
        if fault is not None and fault.delay is not None:
            wait = fault.delay

        model = request.model
        reply = reply_to(prompt, request.token_limit(chat=chat))
        usage = (count_tokens(prompt) + 8, count_tokens(reply.text))
        if chat and request.streaming:
            chunks = wire.chat_chunks(
                number,
                model,
                reply.text,
                reply.finish_reason,
                usage,
                include_usage=request.include_usage,
            )
            gap = 0.75 * wait / max(1, len(chunks) - 1)
            return Answer(number, 200, {"content-type": wire.SSE}, b"", chunks, 0.25 * wait, gap)
        build = wire.chat_completion if chat else wire.response
        body_bytes = build(number, model, reply.text, reply.finish_reason, usage)
        return Answer(number, 200, {"content-type": wire.JSON}, body_bytes, wait=wait)

    def finish(self, answer: Answer, *, delivered: bool = True, client: str | None = None) -> None:
        """Record that `answer` was sent, or with `delivered=False` that the client gave up
        waiting (a timeout) before it was; `client` corrects which kind of client read it.
        Safe to call twice; the first call counts."""
        end = time.perf_counter()
        with self._lock:
            if answer.finished:
                return
            answer.finished = True
            status = answer.status if delivered else None
            entry = self._timeline[answer.call - 1]
            self._timeline[answer.call - 1] = entry.ended(end, status, client or entry.client)
            self._status_counts[status] = self._status_counts.get(status, 0) + 1
            if answer.in_flight:
                self._in_flight -= 1

    # -- helpers ---------------------------------------------------------------------------
    def _over_rate_limit(self, settings: UpstreamSettings, now: float) -> str | None:
        """Why this call is over the rate limit, or None. Called with the lock held."""
        limit = settings.rate_limit
        if limit is None:
            return None
        if limit.max_concurrent is not None and self._in_flight >= limit.max_concurrent:
            return (
                f"Rate limit reached: at most {limit.max_concurrent} requests in flight. "
                "Please retry after a short wait."
            )
        if limit.max_per_window is not None:
            while self._window and self._window[0] <= now - limit.window:
                self._window.popleft()
            if len(self._window) >= limit.max_per_window:
                return (
                    f"Rate limit reached: at most {limit.max_per_window} requests per "
                    f"{limit.window:g} s. Please retry after a short wait."
                )
        return None


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found_error",
    409: "conflict",
    422: "invalid_request_error",
}


def _error_answer(
    status: int,
    kind: str,
    message: str,
    *,
    retry_after: float | None = None,
    finished: bool = False,
) -> Answer:
    headers, body = wire.error(status, kind, message, retry_after=retry_after)
    return Answer(0, status, headers, body, finished=finished)
