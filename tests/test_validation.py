"""labsupport's one argument check: pydantic decides, and each mistake gets one error type and a
one-sentence message that names the argument and says what to pass instead."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest

from labsupport.validation import (
    check_choice,
    check_int,
    check_number,
    check_seconds,
    check_text,
)


@pytest.mark.parametrize(
    ("check", "error", "message"),
    [
        (lambda: check_int("n", "3", minimum=1), TypeError, "n must be an int; got '3'"),
        (lambda: check_int("n", True, minimum=1), TypeError, "n must be an int; got True"),
        (lambda: check_int("n", 2.0, minimum=1), TypeError, "n must be an int; got 2.0"),
        (
            lambda: check_int("n", 1, minimum=2, why="a burst needs company"),
            ValueError,
            "n must be an int ≥ 2 (a burst needs company); got 1",
        ),
        (
            lambda: check_int("count", 9, minimum=1, maximum=8),
            ValueError,
            "count must be an int from 1 to 8; got 9",
        ),
        (
            lambda: check_seconds("latency", "fast"),
            TypeError,
            "latency must be a number of seconds; got 'fast'",
        ),
        (
            lambda: check_seconds("latency", False),
            TypeError,
            "latency must be a number of seconds; got False",
        ),
        (
            lambda: check_seconds("latency", -1),
            ValueError,
            "latency must be a finite number of seconds ≥ 0; got -1",
        ),
        (
            lambda: check_seconds("wait", math.inf),
            ValueError,
            "wait must be a finite number of seconds ≥ 0; got inf",
        ),
        (
            lambda: check_seconds("timeout", 0, allow_zero=False, maximum=5),
            ValueError,
            "timeout must be a finite number of seconds > 0 and ≤ 5; got 0",
        ),
        (
            lambda: check_number("lease", 3600, unit="seconds", gt=0, lt=3600),
            ValueError,
            "lease must be a finite number of seconds > 0 and < 3600; got 3600",
        ),
        (
            lambda: check_text("name", 7, what="the Redis key"),
            TypeError,
            "name must be a non-empty str (the Redis key); got 7",
        ),
        (
            lambda: check_text("name", "  ", what="the Redis key"),
            ValueError,
            "name must be a non-empty str (the Redis key); got '  '",
        ),
        (
            lambda: check_choice("limiter", "global", ("local", "shared")),
            ValueError,
            "limiter must be one of local, shared; got 'global'",
        ),
        (  # a choice of the wrong type is still "not one of the choices"
            lambda: check_choice("limiter", 3, ("local", "shared")),
            ValueError,
            "limiter must be one of local, shared; got 3",
        ),
    ],
)
def test_each_mistake_gets_its_error_and_one_sentence(
    check: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$") as caught:
        check()
    # Nothing of pydantic's report is chained to it: the traceback ends at the call.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_choice_is_matched_whole_and_literally() -> None:
    with pytest.raises(ValueError):
        check_choice("mode", "offline!", ("offline", "live"))
    with pytest.raises(ValueError):
        check_choice("pattern", "ab", ("a.",))  # "." is a character here, not a wildcard
    assert check_choice("pattern", "a.", ("a.",)) == "a."


def test_a_good_value_comes_back_in_its_type() -> None:
    assert check_int("n", 3, minimum=1, maximum=3) == 3
    seconds = check_seconds("latency", 2)
    assert seconds == 2.0 and isinstance(seconds, float)
    assert check_number("rate", 0.5, gt=0, le=1) == 0.5
    assert check_text("question", " How long? ") == " How long? "
    assert check_choice("client", "async", ("sync", "async")) == "async"
