"""Scripted, deterministic faults: how the offline upstream misbehaves on purpose.

A lesson about error handling needs errors that happen every run, at the same place. A `Fault` says
*which* calls go wrong (the n-th call, calls whose prompt matches a pattern, or a seeded fraction)
and *how* (an HTTP error status, or a slow answer), and with `after=N`, *when* in a stream: after
its N-th piece (an error event in the stream, or a stall before the next piece). A `RateLimit`
answers 429 once too many calls are in flight, or too many arrived within a time window.

Errors come back with OpenAI-shaped bodies, so the real SDK raises its real exceptions:
`RateLimitError` (429), `InternalServerError` (5xx), `BadRequestError` (400), … and, for a slow
answer past the client's `timeout=`, `APITimeoutError`.

Mind the SDK's own retries: by default it retries 408, 409, 429 and 5xx twice, waiting about
0.5 s · 2ⁿ (or what a `retry-after` header says). So `Fault.on_call(3)` alone is invisible to a
default client: the retry is call 4, which succeeds. To *see* a failure, make the client not retry
(`AsyncOpenAI(max_retries=0)`) or make every attempt fail (`Fault.matching("…")`). To keep a demo
fast while retries stay on, give the fault a short `retry_after`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..validation import check_int, check_number, check_seconds

__all__ = ["ERROR_STATUSES", "Fault", "RateLimit"]

#: Statuses a fault may answer with, and the SDK exception each becomes.
ERROR_STATUSES: dict[int, str] = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "InternalServerError",
    503: "InternalServerError",
    504: "InternalServerError",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted misbehaviour. Build it with `on_call`, `matching` or `fraction`.

    Exactly one of `status` (answer with this HTTP error) and `delay` (answer normally, but only
    after `delay` seconds) is set.

    `after=N` makes a *streamed* answer fail mid-way: its first N pieces are sent as usual, then
    with `status`, an error event in the stream's error shape ends it (the SDK raises
    `openai.APIError` in the `async for`), and with `delay`, the next piece comes only `delay`
    seconds later (past the client's timeout: `openai.APITimeoutError`). An answer that is not
    streamed fails as without `after`.
    """

    calls: frozenset[int] = frozenset()
    pattern: re.Pattern[str] | None = None
    rate: float = 0.0
    status: int | None = None
    delay: float | None = None
    retry_after: float | None = None
    after: int | None = None

    @classmethod
    def on_call(
        cls,
        *numbers: int,
        status: int | None = None,
        delay: float | None = None,
        retry_after: float | None = None,
        after: int | None = None,
    ) -> Fault:
        """Fail the given calls, counted from 1 since the upstream started or was reset."""
        if not numbers:
            raise ValueError("Fault.on_call needs at least one call number, e.g. Fault.on_call(3)")
        for number in numbers:
            check_int("call number", number, minimum=1)
        return cls._make(
            calls=frozenset(numbers), status=status, delay=delay, retry=retry_after, after=after
        )

    @classmethod
    def matching(
        cls,
        pattern: str,
        *,
        status: int | None = None,
        delay: float | None = None,
        retry_after: float | None = None,
        after: int | None = None,
    ) -> Fault:
        """Fail every call whose prompt matches the regular expression `pattern` (retries too)."""
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(
                f"pattern must be a non-empty regular expression string; got {pattern!r}"
            )
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"pattern {pattern!r} is not a valid regular expression: {error}"
            ) from None
        return cls._make(
            pattern=compiled, status=status, delay=delay, retry=retry_after, after=after
        )

    @classmethod
    def fraction(
        cls,
        rate: float,
        *,
        status: int | None = None,
        delay: float | None = None,
        retry_after: float | None = None,
        after: int | None = None,
    ) -> Fault:
        """Fail about `rate` (0–1) of all calls, chosen by the upstream's seeded random numbers."""
        check_number("rate", rate, gt=0, le=1)  # a share of all calls
        return cls._make(
            rate=float(rate), status=status, delay=delay, retry=retry_after, after=after
        )

    @classmethod
    def _make(
        cls,
        *,
        calls: frozenset[int] = frozenset(),
        pattern: re.Pattern[str] | None = None,
        rate: float = 0.0,
        status: int | None,
        delay: float | None,
        retry: float | None,
        after: int | None = None,
    ) -> Fault:
        if (status is None) == (delay is None):
            raise ValueError("a fault needs exactly one of status=… (an HTTP error) or delay=… (s)")
        if status is not None and status not in ERROR_STATUSES:
            allowed = ", ".join(map(str, ERROR_STATUSES))
            raise ValueError(f"status must be one of {allowed}; got {status!r}")
        if delay is not None:
            check_seconds("delay", delay)
        if retry is not None:
            check_seconds("retry_after", retry)
        if after is not None:
            check_int("after", after, minimum=0)  # pieces of a stream sent before it fails
        return cls(calls, pattern, rate, status, delay, retry, after)

    def selects(self, number: int, prompt: str, draw: float) -> bool:
        """Whether this fault hits call `number` with `prompt`; `draw` is uniform in [0, 1)."""
        if self.calls:
            return number in self.calls
        if self.pattern is not None:
            return self.pattern.search(prompt) is not None
        return draw < self.rate


@dataclass(frozen=True, slots=True)
class RateLimit:
    """An upstream's limit: at most `max_concurrent` calls in flight, and/or at most
    `max_per_window` calls started per `window` seconds. Calls over the limit get 429 at once,
    with `retry-after` telling the client when to come back.
    """

    max_concurrent: int | None = None
    max_per_window: int | None = None
    window: float = 1.0
    retry_after: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "max_per_window"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, minimum=1)
        if self.max_concurrent is None and self.max_per_window is None:
            raise ValueError("a RateLimit needs max_concurrent=… and/or max_per_window=…")
        check_seconds("window", self.window, allow_zero=False)
        check_seconds("retry_after", self.retry_after)
