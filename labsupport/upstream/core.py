"""The offline upstream's brain: what it answers, when, and what it counts.

`Upstream` knows nothing about transports, nor how the API spells its JSON (that is `wire`). The
in-process mock (`mock.py`) and the TCP fake server (`fake_server.py`, real sockets) both
ask it for an `Answer` when a request arrives, wait `answer.wait` seconds the way their client
expects (blocking a thread for the sync SDK client, sleeping on the event loop for the async one),
send the answer, and report back with `finish()`. So both forms reply, fail and count in exactly
the same way.

`answer()` routes each endpoint to what decides its content: plain chat to `replies` (the fast
path: nothing else is read), tool calls and structured outputs to `turns`, embeddings to
`embeddings`, moderations to `moderation`; stored Responses are kept here, the last
`STORED_RESPONSES` of them, for `responses.retrieve`.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Self, Unpack

from . import wire
from .embeddings import DIMENSIONS, embed
from .faults import Fault
from .moderation import flagged_categories
from .replies import count_tokens, reply_to
from .settings import SettingsChanges, UpstreamSettings, combine
from .stats import UpstreamCall, UpstreamStats
from .turns import RequestError, Turn, take_turn

__all__ = ["STORED_RESPONSES", "Answer", "Upstream"]

STORED_RESPONSES = 1_000  # `responses.retrieve` finds the last this many stored responses

# (method, endpoint) → what answers it; "responses/{id}" is matched separately.
_ROUTES = {
    ("POST", "chat/completions"): "chat",
    ("POST", "responses"): "responses",
    ("POST", "responses/input_tokens"): "input_tokens",
    ("POST", "embeddings"): "embeddings",
    ("POST", "moderations"): "moderations",
}


@dataclass(slots=True)
class Answer:
    """One planned answer: send `status`, `headers` and `body` (or the SSE `chunks`) after `wait`
    seconds; a stream spaces its chunks `chunk_gap` seconds apart (but `stall` seconds before
    chunk `stall_at`), and `tokens` says which of them carry a piece of the answer. A stream
    that fails mid-way ends with an error event and is counted under `failed_status`."""

    call: int
    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)
    wait: float = 0.0
    chunk_gap: float = 0.0
    tokens: tuple[bool, ...] = ()
    finished: bool = False
    in_flight: bool = True
    epoch: float = 0.0  # the upstream's last reset before this call: finish() ignores older ones
    stall_at: int | None = None
    stall: float = 0.0
    failed_status: int | None = None

    @property
    def streaming(self) -> bool:
        return bool(self.chunks)

    def gaps(self) -> list[float]:
        """Seconds to wait before each chunk (`wait` before the first)."""
        gaps = [self.wait] + [self.chunk_gap] * (len(self.chunks) - 1)
        if self.stall_at is not None and self.stall_at < len(gaps):
            gaps[self.stall_at] = self.stall
        return gaps


class Upstream:
    """A deterministic stand-in for the OpenAI API. Thread-safe: the sync SDK client calls it
    from worker threads while the async client calls it from the event loop.

    Its behaviour is one `UpstreamSettings` value (`settings`), given whole or as changes:
    `Upstream(latency=0.2)`, `Upstream(UpstreamSettings(...))`.
    """

    def __init__(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> None:
        self._lock = threading.Lock()
        self._settings = combine(UpstreamSettings(), settings, changes)
        self.reset()

    # -- configuration ---------------------------------------------------------------------
    @property
    def settings(self) -> UpstreamSettings:
        """How the upstream behaves now (a frozen value: change it with `configure()`)."""
        return self._settings

    @property
    def latency(self) -> float:
        """Seconds each call takes (before jitter and delay faults)."""
        return self._settings.latency

    def configure(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> UpstreamSettings:
        """Change how the upstream behaves, and start counting afresh (as `reset()` does).

        Give whole `settings`, or keyword changes (settings left out keep their value;
        `rate_limit=None` removes the rate limit), or both (changes apply on top). Returns the
        new settings. Invalid settings raise, and leave the upstream as it was.
        """
        new = combine(self._settings, settings, changes)
        with self._lock:
            self._settings = new
        self.reset()
        return new

    @contextmanager
    def configured(
        self, settings: UpstreamSettings | None = None, /, **changes: Unpack[SettingsChanges]
    ) -> Iterator[Self]:
        """`configure()` for the length of a `with` block, then put the previous settings back,
        even when the block raises or is interrupted. Counters reset on entry only, so what
        the block caused can still be read after it."""
        saved = self._settings
        self.configure(settings, **changes)
        try:
            yield self
        finally:
            with self._lock:
                self._settings = saved

    def reset(self) -> None:
        """Forget all calls: counters, timeline, call numbering, and the random sequence."""
        with self._lock:
            self._random = random.Random(self._settings.seed)
            self._calls = 0
            self._in_flight = 0
            self._max_in_flight = 0
            self._status_counts: dict[int | None, int] = {}
            self._cancelled = 0
            self._timeline: list[UpstreamCall] = []
            self._window: deque[float] = deque()
            self._epoch = time.perf_counter()
            self._request_numbers = itertools.count(1)
            self._stored: OrderedDict[str, bytes] = OrderedDict()

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
                cancelled=self._cancelled,
            )

    # -- one request -----------------------------------------------------------------------
    def answer(self, method: str, endpoint: str, body: bytes, client: str) -> Answer:
        """Plan the answer to one request. `endpoint` is the path after the API base, such as
        "chat/completions"; `client` is "sync" or "async". Call `finish()` once it is sent."""
        request_id = wire.request_id(next(self._request_numbers))
        if method == "GET" and endpoint == "models":
            headers = {"content-type": wire.JSON, "x-request-id": request_id}
            return Answer(0, 200, headers, wire.models_list(), finished=True)
        route = _ROUTES.get((method, endpoint))
        if route is None and method == "GET" and endpoint.startswith("responses/"):
            route = "retrieve"
        if route is None:
            message = f"The offline lab upstream has no {method} /{endpoint}."
            answer = _error_answer(404, "invalid_request_error", message, finished=True)
            answer.headers["x-request-id"] = request_id
            return answer
        request, problem, param, turn = self._read(route, body)
        prompt = request.prompt

        now = time.perf_counter()
        with self._lock:
            settings = self._settings
            self._calls += 1
            number = self._calls
            draw = self._random.random()
            wait = settings.latency
            if settings.jitter:
                wait = max(0.0, wait + self._random.uniform(-settings.jitter, settings.jitter))
            limited = None if problem else self._over_rate_limit(settings, now)
            fault = None
            limit = settings.rate_limit
            if not (problem or limited):
                fault = next((f for f in settings.faults if f.selects(number, prompt, draw)), None)
                self._in_flight += 1
                self._max_in_flight = max(self._max_in_flight, self._in_flight)
                if limit is not None and limit.max_per_window is not None:
                    self._window.append(now)
            headers = {"content-type": wire.JSON, "x-request-id": request_id}
            if limit is not None and limit.max_per_window is not None:
                reset = self._window[0] + limit.window - now if self._window else 0.0
                remaining = limit.max_per_window - len(self._window)
                headers.update(wire.rate_limit_headers(limit.max_per_window, remaining, reset))
            self._timeline.append(UpstreamCall(number, now, now, None, client, prompt))
            epoch = self._epoch

        answer = self._compose(
            route, endpoint, number, request, turn, headers, wait, problem, param, limited, fault
        )
        answer.epoch = epoch
        if not answer.in_flight:
            self.finish(answer)  # refused at the door: answered at once, never in flight
        return answer

    def _compose(
        self,
        route: str,
        endpoint: str,
        number: int,
        request: wire.Request,
        turn: Turn | None,
        headers: dict[str, str],
        wait: float,
        problem: str | None,
        param: str | None,
        limited: str | None,
        fault: Fault | None,
    ) -> Answer:
        """The answer to call `number`, once `answer()` has counted it."""
        settings = self._settings
        if problem or limited:
            # Refused at the door: answered at once, never in flight.
            if problem:
                answer = _error_answer(400, "invalid_request_error", problem, param=param)
            else:
                retry = None if settings.rate_limit is None else settings.rate_limit.retry_after
                answer = _error_answer(429, "rate_limit_exceeded", limited or "", retry_after=retry)
            answer.call, answer.in_flight = number, False
            answer.headers.update(headers)
            return answer
        mid_stream = fault is not None and fault.after is not None and request.streaming
        if fault is not None and fault.status is not None and not mid_stream:
            kind = _ERROR_TYPES.get(fault.status, "server_error")
            message = f"Scripted fault on call {number}: HTTP {fault.status}."
            answer = _error_answer(fault.status, kind, message, retry_after=fault.retry_after)
            answer.call, answer.wait = number, wait
            answer.headers.update(headers)
            return answer
        if fault is not None and fault.delay is not None and not mid_stream:
            wait = fault.delay

        if route == "chat" and turn is None:  # the fast path: plain chat
            model, prompt = request.model, request.prompt
            reply = reply_to(prompt, request.token_limit(chat=True))
            usage = (count_tokens(prompt) + 8, count_tokens(reply.text))
            if request.streaming:
                chunks = wire.chat_chunks(
                    number,
                    model,
                    reply.text,
                    reply.finish_reason,
                    usage,
                    include_usage=request.include_usage,
                )
                return _stream_answer(number, headers, chunks, wait, settings, fault)
            body_bytes = wire.chat_completion(number, model, reply.text, reply.finish_reason, usage)
            return Answer(number, 200, headers, body_bytes, wait=wait)
        if route == "chat":
            assert turn is not None
            return self._chat_turn(number, request, turn, headers, wait, fault)
        if route == "responses":
            return self._responses(number, request, turn, headers, wait, fault)
        return self._other(route, endpoint, number, request, headers, wait)

    def _read(
        self, route: str, body: bytes
    ) -> tuple[wire.Request, str | None, str | None, Turn | None]:
        """Read a request: (request, why it is refused or None, the field at fault, the turn for
        chat and Responses beyond plain text)."""
        if route in ("chat", "responses"):
            request = wire.parse_request(body, chat=route == "chat")
        elif route == "input_tokens":
            request = wire.parse_request(body, chat=False, need_model=False)
        elif route == "retrieve":
            request = wire.Request({}, "")
        else:  # embeddings need a model; moderations default to the latest one
            request = wire.parse_inputs(body, need_model=route == "embeddings")
        if request.problem:
            return request, request.problem, None, None
        try:
            if route in ("chat", "responses") and not request.plain:
                return request, None, None, take_turn(request, chat=route == "chat")
            if route == "embeddings":
                _embedding_size(request.fields)
        except RequestError as error:
            return request, str(error), error.param, None
        return request, None, None, None

    def _chat_turn(
        self,
        number: int,
        request: wire.Request,
        turn: Turn,
        headers: dict[str, str],
        wait: float,
        fault: Fault | None,
    ) -> Answer:
        if request.streaming:
            chunks = wire.chat_chunks(
                number,
                request.model,
                turn.text,
                turn.finish_reason,
                turn.usage,
                include_usage=request.include_usage,
                tool_calls=turn.tool_calls,
                n=turn.n,
            )
            return _stream_answer(number, headers, chunks, wait, self._settings, fault)
        body = wire.chat_completion_choices(
            number,
            request.model,
            turn.text,
            turn.tool_calls,
            turn.finish_reason,
            turn.usage,
            turn.n,
        )
        return Answer(number, 200, headers, body, wait=wait)

    def _responses(
        self,
        number: int,
        request: wire.Request,
        turn: Turn | None,
        headers: dict[str, str],
        wait: float,
        fault: Fault | None,
    ) -> Answer:
        if turn is None:
            reply = reply_to(request.prompt, request.token_limit(chat=False))
            usage = (count_tokens(request.prompt) + 8, count_tokens(reply.text))
            turn = Turn(reply.text, (), reply.finish_reason, usage)
        final = wire.response_object(
            number,
            request.model,
            turn.text,
            turn.tool_calls,
            turn.finish_reason,
            turn.usage,
            request.fields,
        )
        body = wire.json_bytes(final)
        if request.fields.get("store", True) is not False:
            with self._lock:
                self._stored[final["id"]] = body
                if len(self._stored) > STORED_RESPONSES:
                    self._stored.popitem(last=False)
        if request.streaming:
            events = wire.response_events(final)
            return _stream_answer(number, headers, events, wait, self._settings, fault)
        return Answer(number, 200, headers, body, wait=wait)

    def _other(
        self,
        route: str,
        endpoint: str,
        number: int,
        request: wire.Request,
        headers: dict[str, str],
        wait: float,
    ) -> Answer:
        """Embeddings, moderations, token counts and stored responses."""
        fields = request.fields
        if route == "embeddings":
            size = _embedding_size(fields)
            texts = wire.input_texts(fields["input"]) or []
            body = wire.embeddings(
                request.model,
                [embed(text, size) for text in texts],
                sum(count_tokens(text) for text in texts),
                base64_floats=fields.get("encoding_format") == "base64",
            )
        elif route == "moderations":
            texts = wire.input_texts(fields["input"]) or []
            model = str(fields.get("model") or "omni-moderation-latest")
            body = wire.moderation(number, model, [flagged_categories(t) for t in texts])
        elif route == "input_tokens":
            body = wire.input_tokens(count_tokens(request.prompt) + 8)
        else:  # retrieve
            response_id = endpoint.removeprefix("responses/")
            with self._lock:
                stored = self._stored.get(response_id)
            if stored is None:
                message = f"Response with id '{response_id}' not found."
                answer = _error_answer(404, "invalid_request_error", message)
                answer.call, answer.wait = number, wait
                answer.headers.update(headers)
                return answer
            body = stored
        return Answer(number, 200, headers, body, wait=wait)

    def finish(
        self,
        answer: Answer,
        *,
        delivered: bool = True,
        client: str | None = None,
        sent_at: Sequence[float] = (),
        abandoned: bool = False,
        cancelled: bool = False,
    ) -> None:
        """Record that `answer` was sent, or with `delivered=False` that the client gave up
        waiting before it was: a timeout, or with `cancelled=True` a client that stopped reading
        for another reason (its task was cancelled: ■ on the cell); `client` corrects which
        kind of client read it.

        For a stream, `sent_at` gives when each event was handed over (in order), and
        `abandoned=True` says the client stopped reading it after the first event: a
        disconnect, counted under its status and apart from timeouts. Safe to call twice; the
        first call counts."""
        end = time.perf_counter()
        with self._lock:
            if answer.finished:
                return
            answer.finished = True
            if answer.epoch != self._epoch:
                return  # sent before a reset: the counters it would change are gone
            abandoned = abandoned and not delivered and bool(sent_at)
            status = (answer.failed_status or answer.status) if delivered or abandoned else None
            # Only the events sent so far: an abandoned stream's sent_at is the shorter.
            sent = zip(sent_at, answer.tokens, strict=False)
            token_times = tuple(moment for moment, token in sent if token)
            entry = self._timeline[answer.call - 1]
            self._timeline[answer.call - 1] = entry.ended(
                end, status, client or entry.client, token_times, abandoned=abandoned
            )
            if status is None and cancelled:
                self._cancelled += 1
            else:
                self._status_counts[status] = self._status_counts.get(status, 0) + 1
            if answer.in_flight:
                self._in_flight -= 1

    # -- helpers ---------------------------------------------------------------------------
    def _over_rate_limit(self, settings: UpstreamSettings, now: float) -> str | None:
        """Why this call is over the rate limit, or None. Called with the lock held."""
        limit = settings.rate_limit
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


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found_error",
    409: "conflict",
    422: "invalid_request_error",
}


def _error_answer(
    status: int,
    kind: str,
    message: str,
    *,
    retry_after: float | None = None,
    param: str | None = None,
    finished: bool = False,
) -> Answer:
    headers, body = wire.error(status, kind, message, retry_after=retry_after, param=param)
    return Answer(0, status, headers, body, finished=finished)


def _stream_answer(
    number: int,
    headers: dict[str, str],
    chunks: list[bytes],
    wait: float,
    settings: UpstreamSettings,
    fault: Fault | None,
) -> Answer:
    """A streamed answer: the first event after `time_to_first_token` and the others
    `time_per_token` apart; a setting left at None takes its share of the call's latency (the
    first event after a quarter of it, the rest over the other three quarters). A delay fault
    delays the first event, or with `after`, the event after that many pieces; a status fault
    with `after` replaces the rest of the stream by an error event."""
    headers["content-type"] = wire.SSE
    mid_stream = fault is not None and fault.after is not None
    first = settings.time_to_first_token
    if first is None or (fault is not None and fault.delay is not None and not mid_stream):
        first = 0.25 * wait
    gap = settings.time_per_token
    if gap is None:
        gap = 0.75 * wait / max(1, len(chunks) - 1)
    if fault is None or fault.after is None:
        tokens = tuple(wire.is_token(chunk) for chunk in chunks)
        return Answer(number, 200, headers, b"", chunks, first, gap, tokens)
    # The chunk that would carry piece `after + 1`: where the stream fails.
    token_indexes = [i for i, chunk in enumerate(chunks) if wire.is_token(chunk)]
    cut = token_indexes[fault.after] if fault.after < len(token_indexes) else len(chunks) - 1
    if fault.status is not None:
        kind = _ERROR_TYPES.get(fault.status, "server_error")
        message = f"Scripted fault on call {number}: HTTP {fault.status} mid-stream."
        _, body = wire.error(fault.status, kind, message)
        chunks = [*chunks[:cut], b"data: " + body + b"\n\n"]
    tokens = tuple(wire.is_token(chunk) for chunk in chunks)
    answer = Answer(number, 200, headers, b"", chunks, first, gap, tokens)
    if fault.status is not None:
        answer.failed_status = fault.status
    else:
        answer.stall_at, answer.stall = cut, fault.delay or 0.0
    return answer


def _embedding_size(fields: dict[str, object]) -> int:
    """The vector size an embeddings request asks for; `RequestError` if it cannot have it."""
    model = str(fields.get("model"))
    native = DIMENSIONS.get(model, 1536)
    size = fields.get("dimensions")
    if size is None:
        return native
    if model == "text-embedding-ada-002":
        raise RequestError("This model does not support specifying dimensions.", "dimensions")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= native:
        raise RequestError(
            f"'dimensions' must be an integer from 1 to {native} for {model}; got {size!r}.",
            "dimensions",
        )
    return size
