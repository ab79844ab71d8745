"""What the offline upstream counts: calls, concurrency, statuses, and a timeline.

These numbers are the evidence of every lesson: "max in flight was 5" proves a semaphore held,
"20 calls, one after another" shows a blocked event loop, "0 × 429" shows a rate limit respected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["UpstreamCall", "UpstreamStats"]


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One call as the upstream saw it. `start` and `end` are `time.perf_counter()` seconds;
    `status` is None while the call is in flight, or when the client gave up (a timeout).

    A streamed call also has `token_times`, when each piece of the answer was sent, and
    `abandoned`: the client stopped reading after the stream began (it disconnected), so the
    rest of the answer was never sent."""

    index: int
    start: float
    end: float
    status: int | None
    client: str
    prompt: str
    token_times: tuple[float, ...] = ()
    abandoned: bool = False

    @property
    def tokens(self) -> int:
        """Pieces of the answer sent (0 for an answer that is not streamed)."""
        return len(self.token_times)

    @property
    def duration(self) -> float:
        return self.end - self.start

    def ended(
        self,
        end: float,
        status: int | None,
        client: str,
        token_times: tuple[float, ...] = (),
        *,
        abandoned: bool = False,
    ) -> UpstreamCall:
        return replace(
            self,
            end=end,
            status=status,
            client=client,
            token_times=token_times,
            abandoned=abandoned,
        )


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """A snapshot of the upstream's counters since its last reset.

    `status_counts` maps each HTTP status the upstream sent to how often; the key None counts calls
    the client gave up on before the answer came (timeouts). A stream the client stopped reading
    after it began counts under its status, and in `abandoned` too. `cancelled` counts the calls
    whose client stopped reading before the answer for another reason than a timeout: its task
    was cancelled (■ on the cell).
    """

    calls: int
    in_flight: int
    max_in_flight: int
    status_counts: dict[int | None, int]
    timeline: tuple[UpstreamCall, ...]
    cancelled: int = 0

    def count(self, status: int | None) -> int:
        """How many calls got `status` (None: timed out)."""
        return self.status_counts.get(status, 0)

    @property
    def abandoned(self) -> int:
        """Streams the client stopped reading after they began (disconnects, not timeouts)."""
        return sum(call.abandoned for call in self.timeline)

    @property
    def tokens(self) -> int:
        """Pieces of streamed answers sent, in all."""
        return sum(call.tokens for call in self.timeline)

    def tokens_sent_after(self, moment: float) -> int:
        """Pieces of streamed answers sent after `moment` (a `time.perf_counter()` reading),
        such as the moment a relay's own client left: what was paid for and never shown."""
        return sum(t > moment for call in self.timeline for t in call.token_times)

    def __str__(self) -> str:
        statuses = ", ".join(
            [
                f"{count} × {'timeout' if status is None else status}"
                for status, count in sorted(self.status_counts.items(), key=lambda kv: kv[0] or 0)
            ]
            + ([f"{self.cancelled} × cancelled"] if self.cancelled else [])
        )
        if self.abandoned:
            statuses += f"; {self.abandoned} abandoned"
        return (
            f"upstream: {self.calls} calls ({statuses or 'none finished'}), "
            f"max {self.max_in_flight} in flight"
        )
