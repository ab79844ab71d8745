"""Predict, then run: the learner guesses a number before a measurement, and the lesson compares.

A guess written down before a cell runs turns watching into testing an idea: a wrong guess is the
moment to ask why (PRIMM's predict → run → investigate). In a lesson::

    guess = predict("20 requests, sync client in async def: how many seconds?", unit="s")
    guess                      # a small box to type the number into (or: value=2.5)

    ...                        # the measurement
    guess.compare(run.wall, because="each request waited for the one before",
                  investigate="the loop-lag line: how long could the loop run nothing else?")

`compare` never raises for what the learner typed: no number gives "No prediction entered: …",
a word, a negative count or NaN gives a sentence saying what a prediction must be. Durations
print as ``2.07 s`` and ratios as ``21×``, the forms the notebooks' sanitizer masks, so a stored
notebook (committed without a prediction) re-runs to the same text.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any, Final

import ipywidgets

from ..validation import check_int, check_text
from ._display import widget_bundle

__all__ = ["Comparison", "Prediction", "compare", "parse_prediction", "predict"]

SECONDS: Final = "s"
#: A guess within this factor of a measured duration is "close".
CLOSE_FACTOR: Final = 1.5
_SECONDS_SUFFIX = re.compile(r"\s*(s|sec|secs|second|seconds)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    """What a prediction was read as: a number, nothing (``None``), or why it is not one."""

    number: float | None
    problem: str | None = None


def parse_prediction(raw: object, *, unit: str = SECONDS, maximum: int | None = None) -> Parsed:
    """Read a prediction typed in a box or assigned to a variable; never raises.

    Seconds (``unit="s"``) are a finite number ≥ 0, optionally written with its unit (``"2.5 s"``);
    any other unit is a count, a whole number ≥ 0 and at most `maximum`. ``None`` and blank text
    are no prediction.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return Parsed(None)
    what = "a number of seconds, such as 2.5" if unit == SECONDS else f"a whole number of {unit}"
    if isinstance(raw, bool):
        return Parsed(None, f"{raw!r} is a yes/no, not a number: enter {what}")
    if isinstance(raw, str):
        text = raw.strip().replace(",", ".") if raw.count(",") == 1 and "." not in raw else raw
        text = _SECONDS_SUFFIX.sub("", text.strip()) if unit == SECONDS else text.strip()
        try:
            number = float(text)
        except ValueError:
            return Parsed(None, f"{raw.strip()!r} is not a number: enter {what}")
    elif isinstance(raw, int | float):
        number = float(raw)
    else:
        return Parsed(None, f"a {type(raw).__name__} is not a number: enter {what}")
    if not math.isfinite(number):
        return Parsed(None, f"{raw!r} is not a finite number: enter {what}")
    if number < 0:
        noun = "a duration" if unit == SECONDS else "a count"
        return Parsed(None, f"{_plain(number)} is negative, and {noun} cannot be: enter {what}")
    if unit != SECONDS:
        if number != int(number):
            return Parsed(None, f"{_plain(number)} is not a whole number: enter {what}")
        if maximum is not None and number > maximum:
            return Parsed(
                None, f"{_plain(number)} is more than the {maximum} possible: enter {what}"
            )
    return Parsed(number)


@dataclass(frozen=True)
class Comparison:
    """A prediction next to its measurement, in words (``str()``), and whether it was close."""

    text: str
    close: bool | None
    """True or False for a comparable prediction; None without one (missing or unreadable)."""

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text)


def compare(
    raw: object,
    measured: float,
    *,
    because: str,
    investigate: str,
    unit: str = SECONDS,
    maximum: int | None = None,
) -> Comparison:
    """Compare the prediction `raw` with `measured`; the sentence ends with `because` (why it
    came out so) and a line on what to `investigate` next."""
    parsed = parse_prediction(raw, unit=unit, maximum=maximum)
    result = _measured(measured, unit)
    next_line = f"  Investigate: {investigate}"
    if parsed.problem is not None:
        first = f"Your prediction cannot be compared: {parsed.problem}. Measured: {result}: "
        return Comparison(f"{first}{because}.\n{next_line}", None)
    if parsed.number is None:
        return Comparison(f"No prediction entered: {result}: {because}.\n{next_line}", None)
    guess = parsed.number
    if unit == SECONDS:
        close = _within_factor(guess, measured)
        said = f"You predicted {_seconds(guess)}; {result}"
        verdict = "close" if close else _ratio_words(guess, measured)
    else:
        close = abs(guess - measured) <= max(1.0, 0.1 * measured)
        said = f"You predicted {guess:.0f}; {result}"
        difference = round(measured - guess)
        verdict = (
            "exactly"
            if difference == 0
            else "close"
            if close
            else f"{abs(difference)} {'more' if difference > 0 else 'fewer'} than you predicted"
        )
    return Comparison(f"{said}, {verdict}: {because}.\n{next_line}", close)


class Prediction:
    """One prediction: a question, a box to type the answer into, and `compare`.

    The box (``ipywidgets.Text``) says at once whether what was typed can be read; `value` is
    the box's current text (or the `value` it was created with), read when `compare` runs, so a
    number typed after the cell ran still counts.
    """

    def __init__(
        self,
        question: str,
        *,
        unit: str = SECONDS,
        value: object = None,
        maximum: int | None = None,
    ) -> None:
        check_text("question", question)
        check_text("unit", unit, what="'s' for seconds, or the name of what is counted")
        if maximum is not None:  # None: no upper bound on a count
            check_int("maximum", maximum, minimum=0)
        self.question, self.unit, self.maximum = question, unit, maximum
        placeholder = "seconds, e.g. 2.5" if unit == SECONDS else f"number of {unit}"
        initial = "" if value is None else str(value)
        self.box = ipywidgets.Text(value=initial, placeholder=placeholder, description="Predict:")
        self.feedback = ipywidgets.HTML()
        self.box.observe(self._on_change, names="value")
        self.widget = ipywidgets.VBox(
            [ipywidgets.HTML(html.escape(question)), ipywidgets.HBox([self.box, self.feedback])]
        )
        self.widget.add_class("lab-prediction")
        self._raw: object = value
        self._show(value)

    @property
    def value(self) -> object:
        """The prediction as entered: what the box holds (or the `value` given), unparsed."""
        return self._raw

    @value.setter
    def value(self, raw: object) -> None:
        self._raw = raw
        self.box.value = "" if raw is None else str(raw)

    def compare(self, measured: float, *, because: str, investigate: str) -> Comparison:
        """This prediction against `measured` (seconds, or the count): see `compare`."""
        return compare(
            self._raw,
            measured,
            because=because,
            investigate=investigate,
            unit=self.unit,
            maximum=self.maximum,
        )

    def _on_change(self, change: dict[str, Any]) -> None:
        self._raw = change["new"]
        self._show(change["new"])

    def _show(self, raw: object) -> None:
        parsed = parse_prediction(raw, unit=self.unit, maximum=self.maximum)
        if parsed.problem is not None:
            text = f"✗ {parsed.problem}"
        elif parsed.number is None:
            text = "type your guess, then run the measurement"
        else:
            shown = _seconds(parsed.number) if self.unit == SECONDS else f"{parsed.number:.0f}"
            text = f"✓ your prediction: {shown}"
        self.feedback.value = html.escape(text)

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        # The same plain text on every run, whatever was typed: the stored notebook stays stable.
        return widget_bundle(self.widget, f"Prediction: {self.question} (type it in the box)")


def predict(
    question: str, *, unit: str = SECONDS, value: object = None, maximum: int | None = None
) -> Prediction:
    """Ask for a prediction before a measurement; show the result in a cell to get the box.

    Args:
        question: what to predict, as the learner reads it.
        unit: ``"s"`` for seconds, else the name of what is counted (``"429s"``).
        value: a prediction given in code instead of in the box (``None``: none yet).
        maximum: the largest count that makes sense (100 calls → at most 100 429s).
    """
    return Prediction(question, unit=unit, value=value, maximum=maximum)


def _within_factor(guess: float, measured: float) -> bool:
    if guess == 0 or measured <= 0:
        return guess == measured
    return max(guess, measured) / min(guess, measured) <= CLOSE_FACTOR


def _ratio_words(guess: float, measured: float) -> str:
    if guess == 0:
        return "and nothing takes no time"
    ratio = measured / guess
    if ratio > 1:
        return f"{_ratio(ratio)} what you predicted"
    return f"{_ratio(1 / ratio)} faster than you predicted"


def _measured(measured: float, unit: str) -> str:
    if unit == SECONDS:
        return f"it took {_seconds(measured)}"
    if round(measured) == 1:  # "1 connection", "1 call refused with 429"
        first, _, rest = unit.partition(" ")
        singular = " ".join(part for part in (first.removesuffix("s"), rest) if part)
        return f"there was 1 {singular}"
    return f"there were {measured:.0f} {unit}"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 0.01 or value == 0 else f"{value * 1000:.1f} ms"


def _ratio(value: float) -> str:
    return f"{value:.1f}×" if value < 10 else f"{value:.0f}×"


def _plain(number: float) -> str:
    return f"{number:g}"
