"""Argument checks shared by labsupport's public API, with messages that name the argument.

A learner's typo should fail at the call that made it, saying which argument is wrong and what it
accepts, not three frames deeper in asyncio. `bool` is refused where a number is expected:
`True` is an `int` to Python, but never a meaningful count or number of seconds.
"""

from __future__ import annotations

import math

__all__ = ["check_int", "check_seconds"]


def check_seconds(
    name: str, value: object, *, allow_zero: bool = True, maximum: float | None = None
) -> float:
    """`value` as float seconds: a finite number ≥ 0 (> 0 unless `allow_zero`), at most
    `maximum`. Raises `TypeError` for a non-number, `ValueError` for one out of range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds; got {value!r}")
    too_big = maximum is not None and value > maximum
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or too_big:
        bound = "≥ 0" if allow_zero else "> 0"
        if maximum is not None:
            bound += f" and ≤ {maximum:g}"
        raise ValueError(f"{name} must be a finite number of seconds {bound}; got {value!r}")
    return float(value)


def check_int(
    name: str, value: object, *, minimum: int, maximum: int | None = None, why: str = ""
) -> int:
    """`value` as an int in [`minimum`, `maximum`]. Raises `TypeError` for a non-int (bools
    included), `ValueError` for one out of range; `why`, if given, ends the message in
    parentheses ("n must be an int ≥ 2 (a burst needs company); got 1")."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"≥ {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(
            f"{name} must be an int {bound}{f' ({why})' if why else ''}; got {value!r}"
        )
    return value
