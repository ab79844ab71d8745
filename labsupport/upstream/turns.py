"""One turn of the offline model beyond plain text: tool calls, structured output, tool results.

Plain chat (text in, text out) never comes here: the upstream answers it from `replies` directly,
on its fast path. A request with `tools`, `tool_choice`, a structured-output format or `n` is read
here into a `Turn`, what the model says this time, which `wire` then spells for the API asked:

* a tool call, when `tools.choose` picks a tool (arguments built from the conversation);
* JSON, when the request asks for a JSON Schema (`structured.instance`) or a JSON object (an
  instance of the schema the prompt spells out, as instructor's JSON mode does, else
  `{"answer": …}`);
* an answer from the tool results, once they are back;
* otherwise the plain reply.

What it cannot honour raises `RequestError`, which the upstream answers with a 400 naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import structured, tools, wire
from .replies import count_tokens, reply_to, truncate_to_tokens

__all__ = ["RequestError", "Turn", "take_turn"]

_MAX_CHOICES = 128


class RequestError(ValueError):
    """A request the offline upstream cannot honour; `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Turn:
    """What the model answers: text or tool calls, why it stopped, tokens in and out (per
    choice), and how many identical choices."""

    text: str | None
    tool_calls: tuple[tools.ToolCall, ...]
    finish_reason: str
    usage: tuple[int, int]
    n: int = 1


def take_turn(request: wire.Request, *, chat: bool) -> Turn:
    """Decide the answer to a chat completions (`chat=True`) or Responses request."""
    fields = request.fields
    n = _choices(fields) if chat else 1
    try:
        offered = tools.read_tools(fields, chat=chat)
        if "tool_choice" in fields and not offered:
            raise tools.ToolError("'tool_choice' is only allowed when 'tools' are specified.")
        choice = tools.read_choice(fields, offered, chat=chat)
    except tools.ToolError as error:
        raise RequestError(str(error), "tools") from None
    kind, schema = _output_format(fields, chat=chat)
    convo = wire.conversation(fields, chat=chat)
    called = [name for name, _ in convo.results]
    context = " ".join([request.prompt, *(output for _, output in convo.results)])
    prompt_tokens = count_tokens(request.prompt) + 8

    tool = tools.choose(offered, choice, request.prompt, called)
    if tool is not None:
        try:
            call = tools.call(tool, context)
        except structured.SchemaError as error:
            raise RequestError(_unbuildable(f"function {tool.name!r}", error), "tools") from None
        # A forced function ends with "stop" in the real API; a chosen one with "tool_calls".
        finish = "stop" if isinstance(choice, tools.Tool) else "tool_calls"
        return Turn(None, (call,), finish, (prompt_tokens, count_tokens(call.arguments)), n)

    if kind == "json_object":
        if "json" not in convo.text.lower():
            where = "response_format" if chat else "text.format"
            raise RequestError(
                f"'messages' must contain the word 'json' in some form, to use '{where}' of "
                "type 'json_object'.",
                where,
            )
        schema = structured.embedded_schema(convo.system) or structured.embedded_schema(convo.text)
        if schema is not None:
            try:
                structured.check(schema, where="the schema in the prompt", strict=False)
            except structured.SchemaError as error:
                raise RequestError(str(error), "messages") from None
    if schema is not None:
        try:
            text = json.dumps(structured.instance(schema, context))
        except structured.SchemaError as error:
            where = "response_format" if chat else "text.format"
            raise RequestError(_unbuildable(where, error), where) from None
    elif kind == "json_object":
        text = json.dumps({"answer": reply_to(context).text})
    elif convo.results:
        text = _from_results(convo.results)
    else:
        text = reply_to(request.prompt).text
    limit = request.token_limit(chat=chat)
    finish = "stop"
    if limit is not None and count_tokens(text) > limit:
        text, finish = truncate_to_tokens(text, limit), "length"
    return Turn(text, (), finish, (prompt_tokens, count_tokens(text)), n)


def _choices(fields: dict[str, Any]) -> int:
    n = fields.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_CHOICES:
        raise RequestError(f"'n' must be an integer from 1 to {_MAX_CHOICES}; got {n!r}.", "n")
    return n


def _output_format(fields: dict[str, Any], *, chat: bool) -> tuple[str, dict[str, Any] | None]:
    """("text" | "json_object" | "json_schema", the schema or None), checked."""
    if chat:
        spec, where = fields.get("response_format"), "response_format"
        body = (spec or {}).get("json_schema") if isinstance(spec, dict) else None
    else:
        text = fields.get("text")
        spec, where = (text or {}).get("format") if isinstance(text, dict) else None, "text.format"
        body = spec
    if spec is None:
        return "text", None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in ("text", "json_object"):
        return str(kind), None
    if kind != "json_schema":
        raise RequestError(
            f"{where} of type {kind!r} is not supported; use 'text', 'json_object' or "
            "'json_schema'.",
            where,
        )
    if not isinstance(body, dict) or "schema" not in body:
        raise RequestError(f"Missing required parameter: '{where}.schema'.", where)
    schema = body["schema"]
    try:
        structured.check(
            schema, where=f"{where} {body.get('name')!r}", strict=bool(body.get("strict"))
        )
    except structured.SchemaError as error:
        raise RequestError(str(error), where) from None
    return "json_schema", schema


def _unbuildable(where: str, error: structured.SchemaError) -> str:
    """Why no instance of a checked schema could be built (bounds no value fits, say)."""
    return (
        f"The offline lab upstream cannot build an instance of the JSON Schema of {where}: {error}"
    )


def _from_results(results: tuple[tuple[str, str], ...]) -> str:
    """An answer that says what the tools returned: "According to get_weather: temp 22."."""
    parts = []
    for name, output in results:
        try:
            value = json.loads(output)
        except ValueError:
            value = output
        if isinstance(value, dict):
            output = ", ".join(f"{key} {item}" for key, item in value.items())
        parts.append(f"According to {name}: {str(output).strip().rstrip('.')}.")
    return " ".join(parts)
