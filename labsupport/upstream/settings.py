"""How an upstream behaves, as one value: `UpstreamSettings`, changed by copying.

The offline upstream has seven settings: `latency`, `jitter`, `seed`, `faults`, `rate_limit`, and
for streamed answers `time_to_first_token` and `time_per_token`.
They live together in a frozen dataclass, so a configuration can be saved, compared and put back
as a whole. Changes are keyword arguments; a setting left out, or given as `UNCHANGED`, keeps its
value (`rate_limit=None` removes the rate limit: None is a value, not "unchanged"):

    upstream.configure(latency=1.0)              # one setting changed, counters reset
    with upstream.configured(faults=[Fault.on_call(1, status=500)]):
        ...                                      # the previous settings come back on exit,
                                                 # even when the block is interrupted

`LabUpstream` is what every upstream a lesson talks to can do, offline (the mock, the fake
server) or live (the observer of a real API).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, Self, TypedDict, Unpack, runtime_checkable

from ..validation import check_seconds
from .faults import Fault, RateLimit
from .stats import UpstreamStats

__all__ = [
    "UNCHANGED",
    "LabUpstream",
    "SettingsChanges",
    "Unchanged",
    "UpstreamSettings",
    "combine",
]


class Unchanged(enum.Enum):
    """The type of `UNCHANGED`: "keep this setting as it is" (like httpx's USE_CLIENT_DEFAULT)."""

    UNCHANGED = "UNCHANGED"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED


class SettingsChanges(TypedDict, total=False):
    """The keyword arguments of `configure()` and `configured()`: any of the settings."""

    latency: float | Literal[Unchanged.UNCHANGED]
    jitter: float | Literal[Unchanged.UNCHANGED]
    seed: int | Literal[Unchanged.UNCHANGED]
    faults: Iterable[Fault] | Literal[Unchanged.UNCHANGED]
    rate_limit: RateLimit | Literal[Unchanged.UNCHANGED] | None
    time_to_first_token: float | Literal[Unchanged.UNCHANGED] | None
    time_per_token: float | Literal[Unchanged.UNCHANGED] | None


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """How the offline upstream answers.

    * `latency` — seconds each call takes;
    * `jitter` — a seeded random ± spread added to each call's latency (never below 0);
    * `seed` — the seed of that spread and of `Fault.fraction`'s draws;
    * `faults` — scripted failures (`labsupport.Fault`), the first that selects a call wins;
    * `rate_limit` — a `labsupport.RateLimit`, or None for no limit;
    * `time_to_first_token` — seconds before a streamed answer's first event (None: a quarter
      of the call's latency);
    * `time_per_token` — seconds between a streamed answer's events (None: the rest of the
      latency, spread evenly). `latency` stays the time of a whole answer that is not streamed.

    Invalid values raise at once, with the setting's name: `TypeError` for a wrong type,
    `ValueError` for a value out of range.
    """

    latency: float = 0.1
    jitter: float = 0.0
    seed: int = 0
    faults: tuple[Fault, ...] = ()
    rate_limit: RateLimit | None = None
    time_to_first_token: float | None = None
    time_per_token: float | None = None

    def __post_init__(self) -> None:
        check_seconds("latency", self.latency)
        check_seconds("jitter", self.jitter)
        for name in ("time_to_first_token", "time_per_token"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_seconds(name, value))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int; got {self.seed!r}")
        if not (self.rate_limit is None or isinstance(self.rate_limit, RateLimit)):
            raise TypeError(
                f"rate_limit must be a labsupport.RateLimit or None; got {self.rate_limit!r}"
            )
        # Normalised in place (the dataclass is frozen): seconds as floats, faults as a tuple.
        object.__setattr__(self, "latency", float(self.latency))
        object.__setattr__(self, "jitter", float(self.jitter))
        object.__setattr__(self, "faults", _fault_tuple(self.faults))

    def replace(self, **changes: Unpack[SettingsChanges]) -> Self:
        """A copy with `changes` applied; `UNCHANGED` values are ignored."""
        unknown = set(changes) - {field.name for field in dataclasses.fields(self)}
        if unknown:
            raise TypeError(
                f"unknown upstream setting {sorted(unknown)[0]!r}; the settings are latency, "
                "jitter, seed, faults, rate_limit, time_to_first_token and time_per_token"
            )
        # Any: each value has its field's type (SettingsChanges says which), unknown ones are
        # refused above, and __post_init__ checks them all again.
        given: dict[str, Any] = {k: v for k, v in changes.items() if v is not UNCHANGED}
        return dataclasses.replace(self, **given)

    @property
    def scripted(self) -> bool:
        """Whether these settings script misbehaviour (faults or a rate limit)."""
        return bool(self.faults) or self.rate_limit is not None


def combine(
    current: UpstreamSettings, settings: UpstreamSettings | None, changes: SettingsChanges
) -> UpstreamSettings:
    """What `configure(settings, **changes)` asks for: `settings` (or `current` when None)
    with `changes` on top."""
    if settings is not None and not isinstance(settings, UpstreamSettings):
        raise TypeError(
            f"settings must be a labsupport.UpstreamSettings; got {settings!r} (to change one "
            "setting, name it: configure(latency=0.2))"
        )
    return (settings or current).replace(**changes)


def _fault_tuple(faults: object) -> tuple[Fault, ...]:
    if isinstance(faults, Fault):
        return (faults,)
    if isinstance(faults, str | bytes) or not isinstance(faults, Iterable):
        raise TypeError(f"faults must be a list of labsupport.Fault objects; got {faults!r}")
    fault_tuple = tuple(faults)
    for fault in fault_tuple:
        if not isinstance(fault, Fault):
            raise TypeError(
                "faults must be labsupport.Fault objects (Fault.on_call, Fault.matching, "
                f"Fault.fraction); got {fault!r}"
            )
    return fault_tuple


@runtime_checkable
class LabUpstream(Protocol):
    """What a lesson can do with its upstream, offline or live.

    `latency` is the seconds one call takes: configured offline, measured live. `stats` counts
    the calls since the last `reset()` (or `configure()`). Live, a real API cannot be scripted,
    so `configure()` and `configured()` accept the same arguments and say so in one line.
    """

    @property
    def latency(self) -> float: ...

    @property
    def settings(self) -> UpstreamSettings: ...

    @property
    def stats(self) -> UpstreamStats: ...

    @property
    def active(self) -> bool: ...

    def reset(self) -> None: ...

    def configure(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> UpstreamSettings: ...

    def configured(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> AbstractContextManager[Self]: ...

    def start(self) -> Self: ...

    def stop(self) -> None: ...
