"""Structured outputs, keyword by keyword: for every validation keyword the offline upstream
supports, the instance it builds is valid against the schema (checked by jsonschema, not by the
code that built it); a schema no value can satisfy is refused, never answered with JSON that
only looks right."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from labsupport.upstream import structured
from labsupport.upstream.replies import reply_to

PROMPT = "Alice is 34.7 and loves asyncio, queues and tasks."

SCHEMAS: dict[str, dict[str, Any]] = {
    "enum and const": {
        "type": "object",
        "properties": {"pet": {"enum": ["cat", "dog"]}, "kind": {"const": "review"}},
        "required": ["pet", "kind"],
    },
    "anyOf, oneOf, allOf": {
        "type": "object",
        "properties": {
            "a": {"anyOf": [{"type": "integer", "maximum": 10}, {"type": "null"}]},
            "b": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "c": {"allOf": [{"type": "object", "properties": {"x": {"type": "boolean"}}}]},
        },
        "required": ["a", "b", "c"],
    },
    "nullable type list": {"type": ["string", "null"], "maxLength": 5},
    "inclusive bounds": {"type": "integer", "minimum": 40, "maximum": 50},
    "exclusive bounds close together": {
        "type": "number",
        "exclusiveMinimum": 0,
        "exclusiveMaximum": 0.0005,
    },
    "multipleOf within bounds": {"type": "integer", "multipleOf": 7, "minimum": 10, "maximum": 20},
    "string lengths": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 6, "maxLength": 6},
            "note": {"type": "string", "minLength": 300},
        },
        "required": ["code", "note"],
    },
    "array lengths": {"type": "array", "items": {"type": "string"}, "minItems": 4, "maxItems": 4},
    "unique enum items": {
        "type": "array",
        "items": {"enum": ["a", "b", "c"]},
        "minItems": 3,
        "uniqueItems": True,
    },
    "unique bounded integers": {
        "type": "array",
        "items": {"type": "integer", "maximum": 2},
        "minItems": 3,
        "uniqueItems": True,
    },
    "unique short strings": {
        "type": "array",
        "items": {"type": "string", "maxLength": 3},
        "minItems": 3,
        "uniqueItems": True,
    },
    "unique items by reference": {
        "$defs": {"Level": {"enum": ["low", "high"]}},
        "type": "array",
        "items": {"$ref": "#/$defs/Level"},
        "minItems": 2,
        "uniqueItems": True,
    },
    "recursion through a nullable reference": {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}},
                "required": ["next"],
            }
        },
        "$ref": "#/$defs/Node",
    },
    "nested objects and arrays": {
        "type": "object",
        "properties": {
            "people": {
                "type": "array",
                "minItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                    "required": ["name", "age"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["people"],
    },
}


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_each_supported_keyword_gets_a_valid_instance(schema: dict[str, Any]) -> None:
    structured.check(schema, where="the test schema", strict=False)
    value = structured.instance(schema, PROMPT)
    jsonschema.validate(value, schema)
    assert structured.instance(schema, PROMPT) == value  # deterministic


UNSATISFIABLE: dict[str, tuple[dict[str, Any], str]] = {
    "no multiple in range": (
        {"type": "integer", "multipleOf": 7, "minimum": 8, "maximum": 13},
        "No multiple of 7",
    ),
    "no integer in range": ({"type": "integer", "minimum": 5, "maximum": 4}, "No integer lies"),
    "too few enum values for uniqueItems": (
        {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 3, "uniqueItems": True},
        "uniqueItems asks for 3 distinct items",
    ),
}


@pytest.mark.parametrize(("schema", "message"), UNSATISFIABLE.values(), ids=UNSATISFIABLE.keys())
def test_a_schema_no_value_satisfies_is_refused(schema: dict[str, Any], message: str) -> None:
    structured.check(schema, where="the test schema", strict=False)  # valid JSON Schema...
    with pytest.raises(structured.SchemaError, match=message):  # ...with no instance
        structured.instance(schema, PROMPT)


COURSE_PROMPTS = {
    "Sentiment (one word): I love this course": "Positive",
    "List 3 topics (comma-separated): Python asyncio makes network calls cheap for services.": (
        "python asyncio, network calls, services"
    ),
    "Summarize in one sentence: The release is fast. It is reliable too.": "The release is fast.",
}


@pytest.mark.parametrize("prompt", COURSE_PROMPTS)
def test_the_course_prompts_fill_a_schema_with_the_chat_reply(prompt: str) -> None:
    """A field named for nothing in particular ("label") carries what the chat reply says, and
    a list of strings the prompt's topics; other prompts keep their schema-valid values."""
    reply = reply_to(prompt).text
    assert reply == COURSE_PROMPTS[prompt]
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "items": {"type": "array", "items": {"type": "string"}},
        },
    }
    built = structured.instance(schema, prompt)
    assert built["label"] == reply
    if reply_to(prompt).text.count(",") == 2:
        assert built["items"] == reply.split(", ")
    assert structured.instance(schema, "Alice likes tea.")["label"] != reply
