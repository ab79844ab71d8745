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
    `status` is None while the call is in flight, or when the client gave up (a timeout)."""

    index: int
    start: float
    end: float
    status: int | None
    client: str
    prompt: str

    @property
    def duration(self) -> float:
        return self.end - self.start

    def ended(self, end: float, status: int | None, client: str) -> UpstreamCall:
        return replace(self, end=end, status=status, client=client)


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """A snapshot of the upstream's counters since its last reset.

    `status_counts` maps each HTTP status the upstream sent to how often; the key None counts calls
    the client abandoned before the answer came (timeouts). `cancelled` counts the calls whose
    client stopped reading for another reason: its task was cancelled (■ on the cell).
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

    def __str__(self) -> str:
        statuses = ", ".join(
            [
                f"{count} × {'timeout' if status is None else status}"
                for status, count in sorted(self.status_counts.items(), key=lambda kv: kv[0] or 0)
            ]
            + ([f"{self.cancelled} × cancelled"] if self.cancelled else [])
        )
        return (
            f"upstream: {self.calls} calls ({statuses or 'none finished'}), "
            f"max {self.max_in_flight} in flight"
        )
