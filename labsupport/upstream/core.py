"""The offline upstream's brain: what it answers, when, and what it counts.

`Upstream` knows nothing about transports. The respx mock (`mock.py`, in process) and the TCP fake
server (`fake_server.py`, real sockets) both ask it for an `Answer` when a request arrives, wait
`answer.wait` seconds the way their client expects (blocking a thread for the sync SDK client,
sleeping on the event loop for the async one), send the answer, and report back with `finish()`.
So both forms reply, fail and count in exactly the same way.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .faults import Fault, RateLimit, _check_seconds
from .replies import count_tokens, reply_to
from .stats import UpstreamCall, UpstreamStats

__all__ = ["Answer", "Upstream"]

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-5-mini")
_JSON = "application/json"
_SSE = "text/event-stream"


@dataclass(slots=True)
class Answer:
    """One planned answer: send `status`, `headers` and `body` (or the SSE `chunks`) after `wait`
    seconds; a stream spaces its chunks `chunk_gap` seconds apart."""

    call: int
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    wait: float = 0.0
    chunk_gap: float = 0.0
    finished: bool = False
    in_flight: bool = True

    @property
    def streaming(self) -> bool:
        return bool(self.chunks)


class Upstream:
    """A deterministic stand-in for the OpenAI API. Thread-safe: the sync SDK client calls it
    from worker threads while the async client calls it from the event loop."""

    latency: float
    jitter: float
    seed: int
    faults: tuple[Fault, ...]
    rate_limit: RateLimit | None

    def __init__(
        self,
        *,
        latency: float = 0.1,
        jitter: float = 0.0,
        seed: int = 0,
        faults: Iterable[Fault] = (),
        rate_limit: RateLimit | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.configure(
            latency=latency, jitter=jitter, seed=seed, faults=faults, rate_limit=rate_limit
        )

    # -- configuration ---------------------------------------------------------------------
    def configure(
        self,
        *,
        latency: float | None = None,
        jitter: float | None = None,
        seed: int | None = None,
        faults: Iterable[Fault] | None = None,
        rate_limit: RateLimit | bool | None = False,
    ) -> None:
        """Change how the upstream behaves, and start counting afresh (as `reset()` does).

        Arguments left out keep their value; `rate_limit=None` removes the rate limit.
        """
        fault_list = validate_configuration(
            latency=latency, jitter=jitter, seed=seed, faults=faults, rate_limit=rate_limit
        )
        with self._lock:
            if latency is not None:
                self.latency = float(latency)
            if jitter is not None:
                self.jitter = float(jitter)
            if seed is not None:
                self.seed = seed
            if fault_list is not None:
                self.faults = fault_list
            if not isinstance(rate_limit, bool):
                self.rate_limit = rate_limit
        self.reset()

    def reset(self) -> None:
        """Forget all calls: counters, timeline, call numbering, and the random sequence."""
        with self._lock:
            self._random = random.Random(self.seed)
            self._calls = 0
            self._in_flight = 0
            self._max_in_flight = 0
            self._status_counts: dict[int | None, int] = {}
            self._timeline: list[UpstreamCall] = []
            self._window: deque[float] = deque()
            self._epoch = time.perf_counter()

    @property
    def stats(self) -> UpstreamStats:
        """A snapshot of what the upstream has seen since the last reset."""
        with self._lock:
            return UpstreamStats(
                calls=self._calls,
                in_flight=self._in_flight,
                max_in_flight=self._max_in_flight,
                status_counts=dict(self._status_counts),
                timeline=tuple(self._timeline),
            )

    # -- one request -----------------------------------------------------------------------
    def answer(self, method: str, endpoint: str, body: bytes, client: str) -> Answer:
        """Plan the answer to one request. `endpoint` is the path after the API base, such as
        "chat/completions"; `client` is "sync" or "async". Call `finish()` once it is sent."""
        if method == "GET" and endpoint == "models":
            return Answer(0, 200, {"content-type": _JSON}, _models_body(), finished=True)
        if method != "POST" or endpoint not in ("chat/completions", "responses"):
            message = f"The offline lab upstream has no {method} /{endpoint}."
            return _error_answer(404, "invalid_request_error", message, finished=True)
        chat = endpoint == "chat/completions"
        request, prompt, problem = _parse(body, chat=chat)

        now = time.perf_counter()
        with self._lock:
            self._calls += 1
            number = self._calls
            draw = self._random.random()
            wait = self.latency
            if self.jitter:
                wait = max(0.0, wait + self._random.uniform(-self.jitter, self.jitter))
            limited = None if problem else self._over_rate_limit(now)
            fault = None
            if not (problem or limited):
                fault = next((f for f in self.faults if f.selects(number, prompt, draw)), None)
                self._in_flight += 1
                self._max_in_flight = max(self._max_in_flight, self._in_flight)
                if self.rate_limit is not None and self.rate_limit.max_per_window is not None:
                    self._window.append(now)
            self._timeline.append(UpstreamCall(number, now, now, None, client, prompt))

        if problem or limited:
            # Refused at the door: answered at once, never in flight.
            if problem:
                answer = _error_answer(400, "invalid_request_error", problem)
            else:
                answer = _error_answer(
                    429, "rate_limit_exceeded", limited or "", retry_after=self._retry()
                )
            answer.call, answer.in_flight = number, False
            self.finish(answer)
            return answer
        if fault is not None and fault.status is not None:
            kind = _ERROR_TYPES.get(fault.status, "server_error")
            message = f"Scripted fault on call {number}: HTTP {fault.status}."
            answer = _error_answer(fault.status, kind, message, retry_after=fault.retry_after)
            answer.call, answer.wait = number, wait
            return answer
        if fault is not None and fault.delay is not None:
            wait = fault.delay

        model = str(request.get("model"))
        limit = request.get("max_completion_tokens", request.get("max_tokens"))
        if not chat:
            limit = request.get("max_output_tokens")
        reply = reply_to(prompt, limit if isinstance(limit, int) and limit > 0 else None)
        usage = (count_tokens(prompt) + 8, count_tokens(reply.text))
        if chat and request.get("stream"):
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            chunks = _chat_chunks(
                number, model, reply.text, reply.finish_reason, usage, include_usage
            )
            gap = 0.75 * wait / max(1, len(chunks) - 1)
            return Answer(number, 200, {"content-type": _SSE}, b"", chunks, 0.25 * wait, gap)
        build = _chat_body if chat else _responses_body
        body_bytes = build(number, model, reply.text, reply.finish_reason, usage)
        return Answer(number, 200, {"content-type": _JSON}, body_bytes, wait=wait)

    def finish(self, answer: Answer, *, delivered: bool = True, client: str | None = None) -> None:
        """Record that `answer` was sent, or with `delivered=False` that the client gave up
        waiting (a timeout) before it was; `client` corrects which kind of client read it.
        Safe to call twice; the first call counts."""
        end = time.perf_counter()
        with self._lock:
            if answer.finished:
                return
            answer.finished = True
            status = answer.status if delivered else None
            entry = self._timeline[answer.call - 1]
            self._timeline[answer.call - 1] = entry.ended(end, status, client or entry.client)
            self._status_counts[status] = self._status_counts.get(status, 0) + 1
            if answer.in_flight:
                self._in_flight -= 1

    # -- helpers ---------------------------------------------------------------------------
    def _over_rate_limit(self, now: float) -> str | None:
        """Why this call is over the rate limit, or None. Called with the lock held."""
        limit = self.rate_limit
        if limit is None:
            return None
        if limit.max_concurrent is not None and self._in_flight >= limit.max_concurrent:
            return (
                f"Rate limit reached: at most {limit.max_concurrent} requests in flight. "
                "Please retry after a short wait."
            )
        if limit.max_per_window is not None:
            while self._window and self._window[0] <= now - limit.window:
                self._window.popleft()
            if len(self._window) >= limit.max_per_window:
                return (
                    f"Rate limit reached: at most {limit.max_per_window} requests per "
                    f"{limit.window:g} s. Please retry after a short wait."
                )
        return None

    def _retry(self) -> float | None:
        return None if self.rate_limit is None else self.rate_limit.retry_after


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found_error",
    409: "conflict",
    422: "invalid_request_error",
}


def validate_configuration(
    *,
    latency: float | None,
    jitter: float | None,
    seed: int | None,
    faults: Iterable[Fault] | None,
    rate_limit: RateLimit | bool | None,
) -> tuple[Fault, ...] | None:
    """Check `configure()`'s arguments (None, or False for `rate_limit`: left as they are),
    raising a clear error for a bad one; return the faults as a tuple (None if left out)."""
    if latency is not None:
        _check_seconds("latency", latency)
    if jitter is not None:
        _check_seconds("jitter", jitter)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int; got {seed!r}")
    fault_list = None if faults is None else _check_faults(faults)
    if not (rate_limit is None or rate_limit is False or isinstance(rate_limit, RateLimit)):
        raise TypeError(f"rate_limit must be a labsupport.RateLimit or None; got {rate_limit!r}")
    return fault_list


def _check_faults(faults: Iterable[Fault]) -> tuple[Fault, ...]:
    if isinstance(faults, Fault):
        return (faults,)
    fault_list = tuple(faults)
    for fault in fault_list:
        if not isinstance(fault, Fault):
            raise TypeError(
                "faults must be labsupport.Fault objects (Fault.on_call, Fault.matching, "
                f"Fault.fraction); got {fault!r}"
            )
    return fault_list


def _parse(body: bytes, *, chat: bool) -> tuple[dict[str, Any], str, str | None]:
    """The request, the text the model answers (the last user message), and the reason the
    request is invalid (None when it is fine)."""
    try:
        request = json.loads(body or b"null")
    except ValueError:
        return {}, "", "We could not parse the JSON body of your request."
    if not isinstance(request, dict):
        return {}, "", "The request body must be a JSON object."
    if not request.get("model"):
        return request, "", "You must provide a model parameter."
    if chat:
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            return request, "", "'messages' must be a non-empty array of messages."
        return request, _text_of(messages), None
    if "input" not in request:
        return request, "", "You must provide an 'input' parameter."
    if request.get("stream"):
        return (
            request,
            "",
            (
                "The offline lab upstream does not stream the Responses API; stream Chat "
                "Completions instead, or call responses.create without stream=True."
            ),
        )
    source = request["input"]
    return request, (source if isinstance(source, str) else _text_of(source)), None


def _text_of(messages: Sequence[Any]) -> str:
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


def _error_answer(
    status: int,
    kind: str,
    message: str,
    *,
    retry_after: float | None = None,
    finished: bool = False,
) -> Answer:
    headers = {"content-type": _JSON}
    if retry_after is not None:
        # `retry-after-ms` is what the SDK reads first; `retry-after` is the standard header.
        headers["retry-after-ms"] = str(round(retry_after * 1000))
        headers["retry-after"] = str(max(1, round(retry_after)))
    code = "rate_limit_exceeded" if status == 429 else None
    error = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Answer(0, status, headers, json.dumps(error).encode(), finished=finished)


def _models_body() -> bytes:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "offline-lab"} for m in MODELS]
    return json.dumps({"object": "list", "data": data}).encode()


def _chat_body(number: int, model: str, text: str, finish: str, usage: tuple[int, int]) -> bytes:
    before, after = _chat_body_around_number(model, text, finish, usage)
    return before + str(number).encode() + after


@functools.lru_cache(maxsize=1024)
def _chat_body_around_number(
    model: str, text: str, finish: str, usage: tuple[int, int]
) -> tuple[bytes, bytes]:
    """The JSON of a completion, split where its id's call number goes: a load test asks the
    same questions many times, and only the id differs between their answers."""
    before, _, after = _chat_json(0, model, text, finish, usage).partition(b"chatcmpl-offline-0")
    return before + b"chatcmpl-offline-", after


def _chat_json(number: int, model: str, text: str, finish: str, usage: tuple[int, int]) -> bytes:
    return json.dumps(
        {
            "id": f"chatcmpl-offline-{number}",
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


def _chat_usage(usage: tuple[int, int]) -> dict[str, int]:
    prompt, completion = usage
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chat_chunks(
    number: int,
    model: str,
    text: str,
    finish: str,
    usage: tuple[int, int],
    include_usage: bool,
) -> list[bytes]:
    def event(
        delta: dict[str, Any], reason: str | None, extra: dict[str, Any] | None = None
    ) -> bytes:
        chunk = {
            "id": f"chatcmpl-offline-{number}",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
            **(extra or {}),
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    words = text.split(" ")
    pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
    chunks = [event({"role": "assistant", "content": ""}, None)]
    chunks += [event({"content": piece}, None) for piece in pieces]
    chunks.append(event({}, finish))
    if include_usage:
        usage_chunk = {
            "id": f"chatcmpl-offline-{number}",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [],
            "usage": _chat_usage(usage),
        }
        chunks.append(f"data: {json.dumps(usage_chunk)}\n\n".encode())
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def _responses_body(
    number: int, model: str, text: str, finish: str, usage: tuple[int, int]
) -> bytes:
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
