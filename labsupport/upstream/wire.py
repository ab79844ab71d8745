"""The OpenAI API's wire format, as the offline upstream speaks it: JSON in, JSON or SSE out.

The brain (`core.Upstream`) decides *what* to answer: a reply text, a status, a delay. This module
knows only *how it is spelled*: the request fields the upstream reads, and the bodies the real API
sends (chat completions, their streamed chunks, Responses, model lists, errors), field for field,
so that the SDK parses them into its own types exactly as it parses the real API's: chat
completions with text or tool calls and their streamed chunks, Responses and their streamed events,
embeddings, moderations, token counts, model lists, errors, and the headers that come with them.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .tools import ToolCall

__all__ = [
    "JSON",
    "MODERATION_CATEGORIES",
    "SSE",
    "Conversation",
    "Request",
    "chat_chunks",
    "chat_completion",
    "chat_completion_choices",
    "conversation",
    "embeddings",
    "error",
    "input_texts",
    "input_tokens",
    "is_token",
    "json_bytes",
    "models_list",
    "moderation",
    "parse_inputs",
    "parse_request",
    "prompt_of",
    "rate_limit_headers",
    "request_id",
    "response",
    "response_events",
    "response_object",
]

JSON = "application/json"
SSE = "text/event-stream"

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-5-mini")


@dataclass(frozen=True, slots=True)
class Request:
    """What the upstream reads of a request: its JSON object, the text the model answers (the
    last user message), and why the request is invalid (None when it is fine)."""

    fields: dict[str, Any]
    prompt: str
    problem: str | None = None
    plain: bool = True  # text in, text out: no tools, no structured output, one choice

    @property
    def model(self) -> str:
        return str(self.fields.get("model"))

    @property
    def streaming(self) -> bool:
        return bool(self.fields.get("stream"))

    def token_limit(self, *, chat: bool) -> int | None:
        """The request's cap on output tokens (None when absent or not a positive int)."""
        if chat:
            limit = self.fields.get("max_completion_tokens", self.fields.get("max_tokens"))
        else:
            limit = self.fields.get("max_output_tokens")
        return (
            limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
        )

    @property
    def include_usage(self) -> bool:
        options = self.fields.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))


def parse_request(body: bytes, *, chat: bool, need_model: bool = True) -> Request:
    """Read a chat completions (`chat=True`) or Responses request body (`need_model=False`:
    a Responses token count, whose model is optional)."""
    fields, problem = _json_object(body)
    if problem:
        return Request(fields, "", problem)
    if need_model and not fields.get("model"):
        return Request(fields, "", "You must provide a model parameter.")
    if chat:
        messages = fields.get("messages")
        if not isinstance(messages, list) or not messages:
            return Request(fields, "", "'messages' must be a non-empty array of messages.")
        plain = not (
            "tools" in fields
            or "tool_choice" in fields
            or "response_format" in fields
            or "n" in fields
        )
        return Request(fields, prompt_of(messages), plain=plain)
    if "input" not in fields:
        return Request(fields, "", "You must provide an 'input' parameter.")
    if fields.get("background"):
        return Request(
            fields,
            "",
            "The offline lab upstream does not run background responses; call "
            "responses.create without background=True (stream=True streams the answer).",
        )
    source = fields["input"]
    plain = not ("tools" in fields or "tool_choice" in fields or "text" in fields)
    return Request(fields, source if isinstance(source, str) else prompt_of(source), plain=plain)


def parse_inputs(body: bytes, *, need_model: bool = True) -> Request:
    """Read an embeddings or moderations request: its `input` as the prompt (texts joined)."""
    fields, problem = _json_object(body)
    if problem:
        return Request(fields, "", problem)
    if need_model and not fields.get("model"):
        return Request(fields, "", "You must provide a model parameter.")
    if "input" not in fields:
        return Request(fields, "", "You must provide an 'input' parameter.")
    texts = input_texts(fields["input"])
    if texts is None:
        return Request(
            fields, "", "'input' must be a string, an array of strings, or an array of tokens."
        )
    return Request(fields, "\n".join(texts))


def input_texts(value: Any) -> list[str] | None:
    """The texts of an embeddings or moderations `input` (token arrays as their numbers), or None
    when it is none of the shapes the API accepts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [" ".join(map(str, value))]
        if all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in value):
            return [" ".join(map(str, v)) for v in value]
        if all(isinstance(v, dict) for v in value):  # moderation's multimodal parts
            return [str(v.get("text", "")) for v in value if v.get("type") == "text"]
    return None


def _json_object(body: bytes) -> tuple[dict[str, Any], str | None]:
    try:
        fields = json.loads(body or b"null")
    except ValueError:
        return {}, "We could not parse the JSON body of your request."
    if not isinstance(fields, dict):
        return {}, "The request body must be a JSON object."
    return fields, None


def prompt_of(messages: Sequence[Any]) -> str:
    """The text of the last user message ("" if there is none); content parts are joined."""
    for message in reversed(messages):
        if _is_message(message) and message.get("role", "user") == "user":
            return _text_of(message.get("content", ""))
    return ""


def _is_message(item: Any) -> bool:
    """A chat message, or a Responses input item that is a message (not a tool call or result)."""
    return isinstance(item, dict) and item.get("type", "message") == "message"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": …}, …]
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


@dataclass(frozen=True, slots=True)
class Conversation:
    """What a turn is answered from, besides the last user message: the system text (system and
    developer messages, Responses `instructions`), every message's text (to look for the word
    "json"), and the tool results that came back after the last user message, as
    (tool name, output) pairs in order."""

    system: str
    text: str
    results: tuple[tuple[str, str], ...] = field(default=())


def conversation(fields: dict[str, Any], *, chat: bool) -> Conversation:
    """Read the conversation of a chat completions or Responses request."""
    items: Any = fields.get("messages") if chat else fields.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    items = [item for item in items or [] if isinstance(item, dict)]
    system = [str(fields.get("instructions") or "")]
    texts = list(system)
    last_user = -1
    for index, item in enumerate(items):
        if _is_message(item):
            text = _text_of(item.get("content", ""))
            texts.append(text)
            if item.get("role", "user") in ("system", "developer"):
                system.append(text)
            elif item.get("role", "user") == "user":
                last_user = index
    names: dict[str, str] = {}
    results = []
    for item in items[last_user + 1 :]:
        if chat:
            for call in item.get("tool_calls") or []:
                names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
            if item.get("role") == "tool":
                call_id = str(item.get("tool_call_id"))
                results.append((names.get(call_id, "the tool"), _text_of(item.get("content"))))
        elif item.get("type") == "function_call":
            names[str(item.get("call_id"))] = str(item.get("name"))
        elif item.get("type") == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            results.append((names.get(str(item.get("call_id")), "the tool"), text))
    return Conversation("\n".join(t for t in system if t), "\n".join(texts), tuple(results))


def request_id(number: int) -> str:
    """The `x-request-id` of the upstream's `number`-th request (the SDK's `_request_id`)."""
    return f"req_offline_{number}"


def rate_limit_headers(limit: int, remaining: int, reset: float) -> dict[str, str]:
    """The `x-ratelimit-*-requests` headers: the window's limit, what is left of it, and when
    it is whole again ("1s", "250ms", "1m30s", as the real API spells durations)."""
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(max(0, remaining)),
        "x-ratelimit-reset-requests": _duration(reset),
    }


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3g}s"
    return f"{int(minutes)}m{text}" if minutes else text


def error(
    status: int,
    kind: str,
    message: str,
    *,
    retry_after: float | None = None,
    param: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """The headers and body of an OpenAI-shaped error; `retry_after` adds the retry headers,
    `param` names the request field at fault."""
    headers = {"content-type": JSON}
    if retry_after is not None:
        # `retry-after-ms` is what the SDK reads first; `retry-after` is the standard header.
        headers["retry-after-ms"] = str(round(retry_after * 1000))
        headers["retry-after"] = str(max(1, round(retry_after)))
    code = "rate_limit_exceeded" if status == 429 else None
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return headers, json.dumps(body).encode()


def models_list() -> bytes:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "offline-lab"} for m in MODELS]
    return json.dumps({"object": "list", "data": data}).encode()


def chat_completion(
    number: int, model: str, text: str, finish: str, usage: tuple[int, int]
) -> bytes:
    """The body of call `number`'s chat completion."""
    before, after = _chat_completion_around_number(model, text, finish, usage)
    return before + str(number).encode() + after


@functools.lru_cache(maxsize=1024)
def _chat_completion_around_number(
    model: str, text: str, finish: str, usage: tuple[int, int]
) -> tuple[bytes, bytes]:
    """The JSON of a completion, split where its id's call number goes: a load test asks the
    same questions many times, and only the id differs between their answers."""
    body = json.dumps(
        {
            "id": "chatcmpl-offline-0",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _chat_usage(usage),
            "system_fingerprint": "offline-lab",
        }
    ).encode()
    before, _, after = body.partition(b"chatcmpl-offline-0")
    return before + b"chatcmpl-offline-", after


def _chat_usage(usage: tuple[int, int]) -> dict[str, int]:
    prompt, completion = usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat_completion_choices(
    number: int,
    model: str,
    text: str | None,
    tool_calls: Sequence[ToolCall],
    finish: str,
    usage: tuple[int, int],
    n: int,
) -> bytes:
    """The body of a chat completion with `n` identical choices, of text or of tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = _tool_calls(number, tool_calls)
    choice = {"message": message, "logprobs": None, "finish_reason": finish}
    prompt, completion = usage
    return json.dumps(
        {
            "id": f"chatcmpl-offline-{number}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": index, **choice} for index in range(n)],
            "usage": _chat_usage((prompt, completion * n)),
            "system_fingerprint": "offline-lab",
        }
    ).encode()


def _tool_calls(number: int, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_offline_{number}_{index}",
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for index, call in enumerate(calls)
    ]


def _pieces(text: str) -> list[str]:
    """`text` in word-sized pieces that join back to it exactly."""
    words = text.split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def chat_chunks(
    number: int,
    model: str,
    text: str | None,
    finish: str,
    usage: tuple[int, int],
    *,
    include_usage: bool,
    tool_calls: Sequence[ToolCall] = (),
    n: int = 1,
) -> list[bytes]:
    """The server-sent events of call `number`'s streamed chat completion: text word by word,
    or each tool call's name and then its arguments piece by piece; `n` choices one after
    another."""
    identity = {"id": f"chatcmpl-offline-{number}", "object": "chat.completion.chunk"}

    def event(payload: dict[str, Any]) -> bytes:
        chunk = {**identity, "created": 0, "model": model, **payload}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def delta(index: int, content: dict[str, Any], reason: str | None) -> bytes:
        choice = {"index": index, "delta": content, "logprobs": None, "finish_reason": reason}
        return event({"choices": [choice]})

    chunks = []
    for index in range(n):
        if tool_calls:
            chunks.append(delta(index, {"role": "assistant", "content": None}, None))
            for position, call in enumerate(_tool_calls(number, tool_calls)):
                opening = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
                chunks.append(delta(index, {"tool_calls": [{"index": position, **opening}]}, None))
                for piece in _pieces(call["function"]["arguments"]):
                    arguments = {"index": position, "function": {"arguments": piece}}
                    chunks.append(delta(index, {"tool_calls": [arguments]}, None))
        else:
            chunks.append(delta(index, {"role": "assistant", "content": ""}, None))
            chunks += [delta(index, {"content": piece}, None) for piece in _pieces(text or "")]
        chunks.append(delta(index, {}, finish))
    if include_usage:
        prompt, completion = usage
        chunks.append(event({"choices": [], "usage": _chat_usage((prompt, completion * n))}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


# Where a streamed event carries a piece of the answer: chat text, chat tool arguments, and the
# Responses API's text and argument deltas.
_TOKEN_MARKS = (
    b'"delta": {"content": "',
    b'"function": {"arguments": "',
    b"event: response.output_text.delta\n",
    b"event: response.function_call_arguments.delta\n",
)


def is_token(event: bytes) -> bool:
    """Whether a streamed event (as `chat_chunks` and `response_events` spell them) carries a
    piece of the answer, what the lab counts as one token of a stream."""
    for mark in _TOKEN_MARKS:
        at = event.find(mark)
        if at >= 0:
            # An empty piece ("content": "") carries nothing.
            return not (mark.endswith(b'"') and event[at + len(mark) : at + len(mark) + 1] == b'"')
    return False


def response(number: int, model: str, text: str, finish: str, usage: tuple[int, int]) -> bytes:
    """The body of call `number`'s Responses API answer in text."""
    return json.dumps(response_object(number, model, text, (), finish, usage, {})).encode()


def response_object(
    number: int,
    model: str,
    text: str | None,
    tool_calls: Sequence[ToolCall],
    finish: str,
    usage: tuple[int, int],
    fields: dict[str, Any],
) -> dict[str, Any]:
    """Call `number`'s Responses API answer, of text or of function calls; `fields` (the
    request) gives the tools, tool choice, text format and instructions it echoes."""
    prompt, completion = usage
    incomplete = finish == "length"
    status = "incomplete" if incomplete else "completed"
    output: list[dict[str, Any]] = [
        {
            "type": "function_call",
            "id": f"fc_offline_{number}_{index}",
            "call_id": f"call_offline_{number}_{index}",
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
        for index, call in enumerate(tool_calls)
    ]
    if not tool_calls:
        content = [{"type": "output_text", "text": text or "", "annotations": [], "logprobs": []}]
        output.append(
            {
                "type": "message",
                "id": f"msg_offline_{number}",
                "status": status,
                "role": "assistant",
                "content": content,
            }
        )
    return {
        "id": f"resp_offline_{number}",
        "object": "response",
        "created_at": 0,
        "model": model,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": fields.get("instructions"),
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": fields.get("previous_response_id"),
        "store": fields.get("store", True),
        "text": fields.get("text") or {"format": {"type": "text"}},
        "tool_choice": fields.get("tool_choice", "auto"),
        "tools": fields.get("tools") or [],
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        },
    }


def response_events(final: dict[str, Any]) -> list[bytes]:
    """The server-sent events of a streamed Responses answer that ends as `final`: created,
    in progress, each output item added, its text or arguments in pieces, done, and completed
    (or incomplete), numbered by `sequence_number` as the real API numbers them."""
    numbers = itertools.count()
    events: list[bytes] = []

    def emit(kind: str, **payload: Any) -> None:
        data = json.dumps({"type": kind, **payload, "sequence_number": next(numbers)})
        events.append(f"event: {kind}\ndata: {data}\n\n".encode())

    started = {**final, "status": "in_progress", "output": [], "usage": None}
    started["incomplete_details"] = None
    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    for index, item in enumerate(final["output"]):
        at = {"item_id": item["id"], "output_index": index}
        if item["type"] == "function_call":
            emit("response.output_item.added", output_index=index, item={**item, "arguments": ""})
            for piece in _pieces(item["arguments"]):
                emit("response.function_call_arguments.delta", **at, delta=piece)
            emit("response.function_call_arguments.done", **at, arguments=item["arguments"])
        else:
            part = item["content"][0]
            empty = {**item, "status": "in_progress", "content": []}
            emit("response.output_item.added", output_index=index, item=empty)
            emit("response.content_part.added", **at, content_index=0, part={**part, "text": ""})
            for piece in _pieces(part["text"]):
                emit("response.output_text.delta", **at, content_index=0, delta=piece, logprobs=[])
            emit("response.output_text.done", **at, content_index=0, text=part["text"], logprobs=[])
            emit("response.content_part.done", **at, content_index=0, part=part)
        emit("response.output_item.done", output_index=index, item=item)
    ending = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    emit(ending, response=final)
    return events


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def input_tokens(count: int) -> bytes:
    """The body of `responses/input_tokens`: how many tokens the input would take."""
    return json.dumps({"object": "response.input_tokens", "input_tokens": count}).encode()


def embeddings(
    model: str, vectors: Sequence[Sequence[float]], tokens: int, *, base64_floats: bool
) -> bytes:
    """The body of an embeddings answer; `base64_floats` spells each vector as the base64 of its
    little-endian float32s (what the SDK asks for unless told otherwise, and decodes itself)."""
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _base64_floats(vector) if base64_floats else list(vector),
        }
        for index, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


def _base64_floats(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def moderation(number: int, model: str, flags: Sequence[frozenset[str]]) -> bytes:
    """The body of a moderations answer: one result per input, `flags` naming its categories."""
    results = [
        {
            "flagged": bool(flagged),
            "categories": {c: c in flagged for c in MODERATION_CATEGORIES},
            "category_scores": {c: 0.97 if c in flagged else 0.0001 for c in MODERATION_CATEGORIES},
            "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
        }
        for flagged in flags
    ]
    return json.dumps({"id": f"modr-offline-{number}", "model": model, "results": results}).encode()
