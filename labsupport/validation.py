"""Argument checks shared by labsupport's public API: pydantic decides, the message teaches.

A learner's typo should fail at the call that made it, saying which argument is wrong and what
to pass instead, not three frames deeper in asyncio, and not as a pydantic report. So every
check here is pydantic's validator (a pydantic-core `SchemaValidator`) over a strict schema (the
string "3" is not 3, and `True` is not 1: a bool is an `int` to Python, but never a meaningful
count or number of seconds), and one translation turns its verdict into one error per mistake:

* a value of the wrong type is a `TypeError`: "limit must be an int; got '3'";
* a value of the right type out of range is a `ValueError`:
  "limit must be an int from 2 to 50 (calls in flight); got 60".

Each message is one sentence that names the argument; pydantic's own report is not chained.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from pydantic_core import SchemaValidator

# pydantic's validator (pydantic-core) is imported at the first check, not with labsupport, and
# without pydantic's model layer: `lab.setup()` in a lesson's first cell checks its arguments,
# and pydantic itself would add about half a second to that cell.

__all__ = ["check_choice", "check_int", "check_number", "check_seconds", "check_text"]

_SYMBOLS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def check_int(
    name: str, value: object, *, minimum: int, maximum: int | None = None, why: str = ""
) -> int:
    """`value` as an int in [`minimum`, `maximum`]; `why`, if given, ends the message in
    parentheses ("n must be an int ≥ 2 (a burst needs company); got 1")."""
    bound = f"≥ {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    why = f" ({why})" if why else ""
    validator = _int_validator(minimum, maximum)
    return int(_checked(name, value, validator, "an int", f"an int {bound}{why}"))


def check_number(
    name: str,
    value: object,
    *,
    unit: str = "",
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """`value` as a float: a finite number (an int will do) within the given bounds, e.g.
    `check_number("rate", rate, unit="calls per second", gt=0)`."""
    bounds = {"gt": gt, "ge": ge, "lt": lt, "le": le}
    phrase = " and ".join(f"{_SYMBOLS[k]} {v:g}" for k, v in bounds.items() if v is not None)
    of_unit = f" of {unit}" if unit else ""
    validator = _number_validator(gt, ge, lt, le)
    finite = f"a finite number{of_unit} {phrase}".strip()
    return float(_checked(name, value, validator, f"a number{of_unit}", finite))


def check_seconds(
    name: str, value: object, *, allow_zero: bool = True, maximum: float | None = None
) -> float:
    """`value` as float seconds: a finite number ≥ 0 (> 0 unless `allow_zero`), at most
    `maximum`."""
    lower = {"ge": 0.0} if allow_zero else {"gt": 0.0}
    return check_number(name, value, unit="seconds", le=maximum, **lower)


def check_text(name: str, value: object, *, what: str = "") -> str:
    """`value` as a str with something in it besides whitespace; `what` ends the message in
    parentheses ("name must be a non-empty str (the Redis key); got ''")."""
    validator = _text_validator()
    noun = f"a non-empty str{f' ({what})' if what else ''}"
    return str(_checked(name, value, validator, noun, noun))


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """`value`, which must be one of the strings `choices`: anything else, of whatever type, is
    a `ValueError` listing them."""
    validator = _choice_validator(tuple(choices))
    noun = f"one of {', '.join(choices)}"
    return str(_checked(name, value, validator, None, noun))


def _checked(
    name: str, value: object, validator: SchemaValidator, kind: str | None, expected: str
) -> Any:
    """`validator`'s verdict on `value`, translated: the wrong type is a TypeError saying which
    `kind` of value to pass (None: any wrong value is a ValueError), anything else a ValueError
    saying what is `expected`."""
    from pydantic_core import ValidationError

    try:
        return validator.validate_python(value)
    except ValidationError as error:
        wrong_type = error.errors()[0]["type"].endswith("_type")  # int_type, float_type, ...
        if wrong_type and kind is not None:
            _refuse(TypeError, f"{name} must be {kind}; got {value!r}")
        _refuse(ValueError, f"{name} must be {expected}; got {value!r}")


def _refuse(kind: type[Exception], message: str) -> NoReturn:
    raise kind(message) from None  # pydantic's report would only repeat this, less clearly


@functools.cache
def _int_validator(minimum: int, maximum: int | None) -> SchemaValidator:
    from pydantic_core import SchemaValidator, core_schema

    return SchemaValidator(core_schema.int_schema(strict=True, ge=minimum, le=maximum))


@functools.cache
def _number_validator(
    gt: float | None, ge: float | None, lt: float | None, le: float | None
) -> SchemaValidator:
    from pydantic_core import SchemaValidator, core_schema

    schema = core_schema.float_schema(strict=True, allow_inf_nan=False, gt=gt, ge=ge, lt=lt, le=le)
    return SchemaValidator(schema)


@functools.cache
def _text_validator() -> SchemaValidator:
    from pydantic_core import SchemaValidator, core_schema

    return SchemaValidator(core_schema.str_schema(strict=True, pattern=r"\S"))


@functools.cache
def _choice_validator(choices: tuple[str, ...]) -> SchemaValidator:
    from pydantic_core import SchemaValidator, core_schema

    return SchemaValidator(core_schema.literal_schema(list(choices)))
