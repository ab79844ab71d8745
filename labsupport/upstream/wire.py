"""The OpenAI API's wire format, as the offline upstream speaks it: JSON in, JSON or SSE out.

The brain (`core.Upstream`) decides *what* to answer: a reply text, a status, a delay. This module
knows only *how it is spelled*: the request fields the upstream reads, and the bodies the real API
sends (chat completions, their streamed chunks, Responses, model lists, errors), field for field,
so that the SDK parses them into its own types exactly as it parses the real API's.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "JSON",
    "SSE",
    "Request",
    "chat_chunks",
    "chat_completion",
    "error",
    "models_list",
    "parse_request",
    "prompt_of",
    "response",
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


def parse_request(body: bytes, *, chat: bool) -> Request:
    """Read a chat completions (`chat=True`) or Responses request body."""
    try:
        fields = json.loads(body or b"null")
    except ValueError:
        return Request({}, "", "We could not parse the JSON body of your request.")
    if not isinstance(fields, dict):
        return Request({}, "", "The request body must be a JSON object.")
    if not fields.get("model"):
        return Request(fields, "", "You must provide a model parameter.")
    if chat:
        messages = fields.get("messages")
        if not isinstance(messages, list) or not messages:
            return Request(fields, "", "'messages' must be a non-empty array of messages.")
        return Request(fields, prompt_of(messages))
    if "input" not in fields:
        return Request(fields, "", "You must provide an 'input' parameter.")
    if fields.get("stream"):
        return Request(
            fields,
            "",
            "The offline lab upstream does not stream the Responses API; stream Chat "
            "Completions instead, or call responses.create without stream=True.",
        )
    source = fields["input"]
    return Request(fields, source if isinstance(source, str) else prompt_of(source))


def prompt_of(messages: Sequence[Any]) -> str:
    """The text of the last user message ("" if there is none); content parts are joined."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            content = message.get("content", "")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts: [{"type": "text", "text": …}, …]
                return " ".join(
                    str(part.get("text", "")) for part in content if isinstance(part, dict)
                )
    return ""


def error(
    status: int, kind: str, message: str, *, retry_after: float | None = None
) -> tuple[dict[str, str], bytes]:
    """The headers and body of an OpenAI-shaped error; `retry_after` adds the retry headers."""
    headers = {"content-type": JSON}
    if retry_after is not None:
        # `retry-after-ms` is what the SDK reads first; `retry-after` is the standard header.
        headers["retry-after-ms"] = str(round(retry_after * 1000))
        headers["retry-after"] = str(max(1, round(retry_after)))
    code = "rate_limit_exceeded" if status == 429 else None
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
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


def chat_chunks(
    number: int,
    model: str,
    text: str,
    finish: str,
    usage: tuple[int, int],
    *,
    include_usage: bool,
) -> list[bytes]:
    """The server-sent events of call `number`'s streamed chat completion, word by word."""
    identity = {"id": f"chatcmpl-offline-{number}", "object": "chat.completion.chunk"}

    def event(payload: dict[str, Any]) -> bytes:
        chunk = {**identity, "created": 0, "model": model, **payload}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def delta(content: dict[str, Any], reason: str | None) -> bytes:
        choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": reason}
        return event({"choices": [choice]})

    words = text.split(" ")
    pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
    chunks = [delta({"role": "assistant", "content": ""}, None)]
    chunks += [delta({"content": piece}, None) for piece in pieces]
    chunks.append(delta({}, finish))
    if include_usage:
        chunks.append(event({"choices": [], "usage": _chat_usage(usage)}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def response(number: int, model: str, text: str, finish: str, usage: tuple[int, int]) -> bytes:
    """The body of call `number`'s Responses API answer."""
    prompt, completion = usage
    incomplete = finish == "length"
    return json.dumps(
        {
            "id": f"resp_offline_{number}",
            "object": "response",
            "created_at": 0,
            "model": model,
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": [
                {
                    "type": "message",
                    "id": f"msg_offline_{number}",
                    "status": "incomplete" if incomplete else "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            },
        }
    ).encode()
