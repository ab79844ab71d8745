"""Function tools: which one the offline model calls, and with what arguments.

A request with `tools` lets the model answer with tool calls instead of text. The offline model
decides as a simple, predictable model would:

* `tool_choice="none"` — never calls a tool;
* a named function (`{"type": "function", ...}`) — always calls that one;
* `"required"` — calls the tool that best fits the prompt; once tool results are back, the next
  tool not yet called this turn (so an agent's "final result" tool comes after its data tool);
* `"auto"` (the default) — calls the best-fitting tool if the prompt mentions what any tool is
  about (a word of its name, its description or its parameters: their names, descriptions and
  enum values), and answers in text once tool results are back.

Arguments are an instance of the function's JSON Schema (`structured.instance`) built from the
prompt and the tool results so far, so they are valid against it, `strict` or not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import structured
from .replies import STOPWORDS

__all__ = ["Tool", "ToolCall", "ToolError", "call", "choose", "read_choice", "read_tools"]

_WORD = re.compile(r"[a-z]+")
# Words that say a tool does something, not what it is about ("get", "tell"): never a match.
_VERBS = frozenset(
    [
        "get",
        "gets",
        "tell",
        "tells",
        "find",
        "return",
        "returns",
        "give",
        "fetch",
        "look",
        "show",
        "current",
    ]
)


class ToolError(ValueError):
    """A `tools` or `tool_choice` the upstream cannot honour; the message says which."""


@dataclass(frozen=True, slots=True)
class Tool:
    """One function tool, as either API spells it."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool

    @property
    def words(self) -> frozenset[str]:
        """What the tool is about: the words of its name, its description and its parameters
        (their names, descriptions and the values their enums offer)."""
        text = " ".join([self.name, self.description, *_parameter_words(self.parameters)])
        return frozenset(_WORD.findall(text.replace("_", " ").lower())) - STOPWORDS - _VERBS


def _parameter_words(node: Any) -> list[str]:
    """The names, descriptions and string enum values anywhere in a JSON Schema."""
    if isinstance(node, list):
        return [word for item in node for word in _parameter_words(item)]
    if not isinstance(node, dict):
        return []
    words = [str(node.get("description") or "")]
    words += [str(value) for value in node.get("enum") or [] if isinstance(value, str)]
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            words += list(value)
            words += _parameter_words(list(value.values()))
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties"):
            words += _parameter_words(value)
    return words


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model makes: a tool's name and its arguments as JSON text."""

    name: str
    arguments: str


def read_tools(fields: dict[str, Any], *, chat: bool) -> tuple[Tool, ...]:
    """The request's function tools; anything else in `tools` raises `ToolError`."""
    given = fields.get("tools")
    if given is None:
        return ()
    if not isinstance(given, list):
        raise ToolError("'tools' must be an array of tools.")
    tools = []
    for index, spec in enumerate(given):
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind != "function":
            raise ToolError(
                f"tools[{index}] is of type {kind!r}; the offline lab upstream runs only "
                "function tools (type 'function'), no built-in tools."
            )
        function = spec.get("function") if chat else spec
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            where = f"tools[{index}].function.name" if chat else f"tools[{index}].name"
            raise ToolError(f"Missing required parameter: '{where}'.")
        name = function["name"]
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        strict = bool(function.get("strict"))
        try:
            structured.check(parameters, where=f"function {name!r}", strict=strict)
        except structured.SchemaError as error:
            raise ToolError(str(error)) from None
        tools.append(Tool(name, str(function.get("description") or ""), parameters, strict))
    return tuple(tools)


def read_choice(fields: dict[str, Any], tools: Sequence[Tool], *, chat: bool) -> str | Tool:
    """ "none", "auto", "required", or the named tool."""
    choice = fields.get("tool_choice", "auto")
    if choice in ("none", "auto", "required"):
        if choice == "required" and not tools:
            raise ToolError("tool_choice 'required' needs at least one tool in 'tools'.")
        return str(choice)
    if isinstance(choice, dict) and choice.get("type") == "function":
        named = (choice.get("function") or {}) if chat else choice
        name = named.get("name") if isinstance(named, dict) else None
        for tool in tools:
            if tool.name == name:
                return tool
        raise ToolError(f"tool_choice names the function {name!r}, which is not in 'tools'.")
    raise ToolError(
        f"tool_choice {choice!r} is not supported by the offline lab upstream; use 'none', "
        "'auto', 'required' or a function."
    )


def choose(
    tools: Sequence[Tool], choice: str | Tool, prompt: str, called: Sequence[str]
) -> Tool | None:
    """The tool the model calls now, or None to answer in text. `called` names the tools whose
    results came back since the last user message."""
    if isinstance(choice, Tool):
        return choice
    if choice == "none" or not tools:
        return None
    if called:
        if choice == "auto":
            return None
        fresh = [tool for tool in tools if tool.name not in called]
        return (fresh or list(tools))[0]
    words = frozenset(_WORD.findall(prompt.lower()))
    overlap = [len(tool.words & words) for tool in tools]
    best = max(range(len(tools)), key=lambda i: overlap[i])
    if choice == "auto" and overlap[best] == 0:
        return None
    return tools[best]


def call(tool: Tool, text: str) -> ToolCall:
    """Call `tool` with arguments built from `text` (the prompt and tool results so far)."""
    return ToolCall(tool.name, json.dumps(structured.instance(tool.parameters, text)))
