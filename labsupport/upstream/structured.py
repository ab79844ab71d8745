"""Structured outputs: JSON that fits a JSON Schema, built from the prompt.

A structured-output request (`response_format` in Chat Completions, `text.format` in Responses)
and every function tool's `parameters` carry a JSON Schema. The offline model answers with an
instance of it: deterministic, valid against the schema, and taken from the prompt where the schema
says what a value means: a sentiment enum gets the prompt's sentiment, a number the prompt's next
number, a `city` the prompt's name, a `topics` array the prompt's topics. For the course's own
prompt kinds ("Sentiment (one word): …", "List 3 topics …", "Summarize …") the schema carries the
chat reply: a `label` string gets "Positive", a list of strings the topics.

A schema the upstream cannot honour is refused with `SchemaError` (the upstream answers it with a
400 that names the problem), never answered with JSON that only looks right: a keyword outside
`SUPPORTED`, a schema that is not valid JSON Schema, or, for `strict` schemas, the two rules the
real API enforces (every object closed with `additionalProperties: false`, every property required).
"""

from __future__ import annotations

import functools
import json
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .replies import course_kind, names_in, reply_to, sentiment, summary, topics

__all__ = ["SUPPORTED", "SchemaError", "check", "embedded_schema", "instance"]

# What the generator understands: the keywords pydantic, the SDK's `to_strict_json_schema` and
# the usual clients emit. Annotations are accepted and ignored.
_ANNOTATIONS = frozenset(
    [
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "discriminator",
    ]
)
_VALIDATION = frozenset(
    [
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minLength",
        "maxLength",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
    ]
)
SUPPORTED = _ANNOTATIONS | _VALIDATION

_MAX_DEPTH = 32  # deeper than this, a schema's required recursion has no finite instance
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class SchemaError(ValueError):
    """A schema the offline upstream cannot honour; the message says what and where."""


def check(schema: object, *, where: str, strict: bool) -> None:
    """Raise `SchemaError` unless the upstream can build instances of `schema`.

    `where` names the schema in the message ("response_format 'Person'", "function 'get_weather'").
    """
    if not isinstance(schema, dict):
        raise SchemaError(f"The JSON Schema of {where} must be an object; got {schema!r}.")
    _check_cached(json.dumps(schema, sort_keys=True), where, strict)


@functools.lru_cache(maxsize=256)
def _check_cached(text: str, where: str, strict: bool) -> None:
    schema = json.loads(text)
    import jsonschema  # imported here: plain chat never pays for it

    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        place = "/".join(str(p) for p in error.path) or "the root"
        raise SchemaError(
            f"The JSON Schema of {where} is not valid JSON Schema (at {place}): {error.message}"
        ) from None
    for path, node in _nodes(schema, ()):
        unknown = sorted(set(node) - SUPPORTED)
        if unknown:
            raise SchemaError(
                f"The JSON Schema of {where} uses {unknown[0]!r} at {_place(path)}, which the "
                "offline lab upstream does not support. It supports: "
                + ", ".join(sorted(_VALIDATION))
                + "."
            )
        ref = node.get("$ref")
        if ref is not None and _resolve(schema, ref) is None:
            raise SchemaError(
                f"The JSON Schema of {where} refers to {ref!r} at {_place(path)}; the offline lab "
                "upstream resolves only references inside the schema, such as '#/$defs/Name'."
            )
        if strict and _is_object(node):
            if node.get("additionalProperties") is not False:
                raise SchemaError(
                    f"Invalid schema for {where}: In context={_place(path)}, "
                    "'additionalProperties' is required to be supplied and to be false."
                )
            missing = sorted(set(node.get("properties", {})) - set(node.get("required", [])))
            if missing:
                raise SchemaError(
                    f"Invalid schema for {where}: In context={_place(path)}, 'required' is "
                    f"required to be supplied and to be an array including every key in "
                    f"properties. Missing {missing[0]!r}."
                )


def _nodes(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every subschema of `node` with its path."""
    if not isinstance(node, dict):
        return
    yield path, node
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (node.get(key) or {}).items():
            yield from _nodes(sub, (*path, key, name))
    for key in ("items", "additionalProperties"):
        yield from _nodes(node.get(key), (*path, key))
    for key in ("anyOf", "oneOf", "allOf"):
        for index, sub in enumerate(node.get(key) or []):
            yield from _nodes(sub, (*path, key, str(index)))


def _place(path: tuple[str, ...]) -> str:
    return "/".join(path) if path else "the root"


def _is_object(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind)


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any] | None:
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def embedded_schema(text: str) -> dict[str, Any] | None:
    """The first JSON Schema of an object written out in `text` (as instructor's JSON mode and
    many prompts put it in the system message), or None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    for _ in range(64):  # bounded: a long prompt full of braces costs little
        if start < 0:
            return None
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("properties"), dict):
            return value
        start = text.find("{", start + 1)
    return None


# -- building an instance --------------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    """What the instance is built from: the prompt, and the numbers in it, used in order."""

    root: dict[str, Any]
    text: str
    numbers: Iterator[float] = field(init=False)
    refs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.numbers = (float(n) for n in _NUMBER.findall(self.text))

    @property
    def recursing(self) -> bool:
        """Whether a reference is being expanded inside itself: choose the way out (null, [])."""
        return len(self.refs) != len(set(self.refs))


def instance(schema: dict[str, Any], text: str) -> Any:
    """A deterministic instance of `schema` (already `check`ed), with values from `text`."""
    return _build(schema, _Context(schema, text), "", 0)


def _build(node: dict[str, Any], ctx: _Context, name: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise SchemaError("The JSON Schema requires an instance nested deeper than 32 levels.")
    if "$ref" in node:
        ref = node["$ref"]
        target = _resolve(ctx.root, ref) or {}
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        ctx.refs.append(ref)
        try:
            return _build({**target, **siblings}, ctx, name, depth + 1)
        finally:
            ctx.refs.pop()
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return _pick(node["enum"], ctx.text)
    if "allOf" in node:
        return _build(_merged(node), ctx, name, depth + 1)
    if "default" in node:
        return node["default"]
    branches = node.get("anyOf") or node.get("oneOf")
    if branches:
        nulls = [b for b in branches if b.get("type") == "null"]
        values = [b for b in branches if b.get("type") != "null"]
        chosen = nulls[0] if nulls and (ctx.recursing or not values) else values[0]
        return _build(chosen, ctx, name, depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = "null" if not kinds or (ctx.recursing and "null" in kind) else kinds[0]
    if kind is None:
        kind = "object" if "properties" in node else "array" if "items" in node else "string"
    if kind == "object":
        properties = node.get("properties") or {}
        return {key: _build(sub, ctx, key, depth + 1) for key, sub in properties.items()}
    if kind == "array":
        return _array(node, ctx, name, depth)
    if kind in ("integer", "number"):
        return _number(node, ctx, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(node, ctx, name)


def _merged(node: dict[str, Any]) -> dict[str, Any]:
    """allOf's branches as one schema: properties and required combined."""
    merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
    for branch in node["allOf"]:
        for key, value in branch.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _pick(options: list[Any], text: str) -> Any:
    """The enum value the prompt means: its sentiment for a sentiment enum, else the first value
    the prompt mentions, else the first value."""
    by_word = {str(o).lower(): o for o in options}
    if len(by_word.keys() & {"positive", "negative", "neutral"}) >= 2:
        return by_word.get(sentiment(text).lower(), options[0])
    lowered = text.lower()
    mentioned = [
        (match.start(), option)
        for option in options
        if isinstance(option, str)
        and (match := re.search(rf"\b{re.escape(option.lower())}\b", lowered))
    ]
    return min(mentioned, key=lambda m: m[0])[1] if mentioned else options[0]


def _array(node: dict[str, Any], ctx: _Context, name: str, depth: int) -> list[Any]:
    low, high = node.get("minItems", 0), node.get("maxItems", math.inf)
    given = node.get("items")
    items: dict[str, Any] = given if isinstance(given, dict) else {}
    wanted = low if ctx.recursing else max(low, min(high, 1))
    if items.get("type") == "string" and not {"enum", "const", "format"} & set(items):
        count = _requested_count(ctx.text)
        if course_kind(ctx.text) == "topics":  # the topics the chat reply lists
            words = reply_to(ctx.text).text.split(", ")
        else:
            words = topics(ctx.text, count or 3) if _means(name, _TOPIC_NAMES) else []
        values = [_bounded(w, items) for w in words]
        if count:
            wanted = max(low, min(high, count))
        if len(values) >= wanted:
            return values[: int(min(high, len(values)))]
    built = [_build(items, ctx, name, depth + 1) for _ in range(int(wanted))]
    if not node.get("uniqueItems"):
        return built
    resolved = _resolve(ctx.root, items["$ref"]) if "$ref" in items else items
    return _distinct(built, {**(resolved or {}), **items})


def _distinct(values: list[Any], items: dict[str, Any]) -> list[Any]:
    """Make duplicates distinct, for uniqueItems, with values `items` still allows: another
    value of its enum, a number moved within its bounds, a string with a counter."""
    seen: list[Any] = []
    for value in values:
        if value in seen:
            value = next((c for c in _alternatives(value, items) if c not in seen), seen)
            if value is seen:
                raise SchemaError(
                    f"uniqueItems asks for {len(values)} distinct items, and the items' schema "
                    f"allows only {len(seen)} the offline lab upstream can build."
                )
        seen.append(value)
    return seen


def _alternatives(value: Any, items: dict[str, Any]) -> Iterator[Any]:
    """Other values than `value` that `items` allows, nearest first (a bounded number)."""
    if "const" in items:
        return
    if "enum" in items:
        yield from items["enum"]
    elif isinstance(value, bool):
        yield not value
    elif isinstance(value, int | float):
        low, high = _bounds(items, integer=isinstance(value, int))
        step = items.get("multipleOf") or 1
        for distance in range(1, 1_000):
            for candidate in (value + distance * step, value - distance * step):
                if low <= candidate <= high:
                    yield candidate
    elif isinstance(value, str):
        longest = items.get("maxLength", math.inf)
        for number in range(2, 1_000):
            suffix = f" {number}"
            if len(suffix) < longest:
                yield _bounded(value[: int(min(len(value), longest - len(suffix)))] + suffix, items)


_COUNT = re.compile(r"\b(\d+)\s+(?:\w+\s+)?(?:topics?|items?|tags?|keywords?|examples?|names?)\b")


def _requested_count(text: str) -> int | None:
    match = _COUNT.search(text.lower())
    return int(match[1]) if match else None


def _number(node: dict[str, Any], ctx: _Context, *, integer: bool) -> float | int:
    """The prompt's next number, brought inside the schema's bounds (0 when it has none)."""
    low, high = _bounds(node, integer=integer)
    value = next(ctx.numbers, 0.0)
    value = min(max(round(value) if integer else value, low), high)
    multiple = node.get("multipleOf")
    if multiple:
        value = math.ceil(value / multiple) * multiple
        if value > high:
            value -= multiple
        if value < low:
            raise SchemaError(f"No multiple of {multiple} lies between {low} and {high}.")
    return int(value) if integer else float(value)


def _bounds(node: dict[str, Any], *, integer: bool) -> tuple[float, float]:
    """The least and greatest value `node` allows, as inclusive bounds; `SchemaError` if none."""
    floor = max(node.get("minimum", -math.inf), node.get("exclusiveMinimum", -math.inf))
    ceiling = min(node.get("maximum", math.inf), node.get("exclusiveMaximum", math.inf))
    # Just inside an exclusive bound: the next integer, or a small step (less when bounds are near).
    step = 1 if integer else min(1e-3, (ceiling - floor) / 4 or 1e-3)
    low = floor + step if floor == node.get("exclusiveMinimum") else floor
    high = ceiling - step if ceiling == node.get("exclusiveMaximum") else ceiling
    if integer:
        low = math.ceil(low) if math.isfinite(low) else low
        high = math.floor(high) if math.isfinite(high) else high
    if low > high:
        kind = "integer" if integer else "number"
        raise SchemaError(f"No {kind} lies between the bounds {floor} and {ceiling}.")
    return low, high


_TOPIC_NAMES = ("topic", "tag", "keyword", "categor", "theme", "subject")
_PLACE_NAMES = ("city", "location", "place", "country", "town", "region")
_NAME_NAMES = ("name", "person", "author", "company", "who")
_PLACE = re.compile(r"\b(?:in|at|from|to|near)\s+([A-Z][\w'-]*)")
_SUMMARY_NAMES = ("summary", "gist", "abstract", "tldr")
_ANSWER_NAMES = ("answer", "reply", "response", "text", "content", "message", "explanation")
_SENTIMENT_NAMES = ("sentiment", "mood", "tone")
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "duration": "PT1S",
    "uri": "https://example.com/",
    "hostname": "localhost",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
}


def _means(name: str, words: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in words)


def _string(node: dict[str, Any], ctx: _Context, name: str) -> str:
    text, form = ctx.text, node.get("format")
    if form == "email" or _means(name, ("email",)):
        value = f"{(names_in(text) or ['learner'])[0].lower()}@example.com"
    elif form == "uuid":
        value = str(uuid.uuid5(uuid.NAMESPACE_URL, text))
    elif form in _FORMATS:
        value = _FORMATS[form]
    elif _means(name, _SENTIMENT_NAMES):
        value = sentiment(text).lower()
    elif _means(name, _SUMMARY_NAMES):
        value = reply_to(text).text if course_kind(text) == "summary" else summary(text)
    elif _means(name, _TOPIC_NAMES):
        value = topics(text, 1)[0]
    elif _means(name, _PLACE_NAMES) and (match := _PLACE.search(text)):
        value = match[1]
    elif _means(name, (*_PLACE_NAMES, *_NAME_NAMES)):
        value = (names_in(text) or topics(text, 1))[0]
    elif _means(name, _ANSWER_NAMES) or not name or course_kind(text):
        # A field the prompt's kind fills ("label" for "Sentiment (one word): …") carries
        # what the chat reply says.
        value = reply_to(text).text
    else:
        value = topics(text, 1)[0]
    return _bounded(value, node)


def _bounded(value: str, node: dict[str, Any]) -> str:
    """`value` cut to maxLength and padded to minLength."""
    value = value[: node.get("maxLength", len(value))]
    short = node.get("minLength", 0) - len(value)
    return value + "." * short if short > 0 else value
