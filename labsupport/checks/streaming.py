"""Checker for notebook 08: a streaming endpoint that relays tokens as they come, holds no pool
thread per stream, stops reading the upstream when its client leaves, and audits usage once.

The exercise's contract: `POST path` with `{"message": "…"}` answers `text/event-stream`; each
event's `data` is one piece of the reply, JSON-encoded (what `EventSourceResponse` sends for a
yielded `str`) or raw; a `[DONE]` event is ignored. After each stream ends (finished, or its
client left), the app adds one audit row, a mapping with `"completion_tokens"`: the reply's
tokens (from the usage chunk, `stream_options={"include_usage": True}`), or for a client that
left early, as many as were relayed. `audit_rows()` returns the rows so far.

The invariants, measured for any answer (the verdict is their conjunction; the cause is the
first that failed, in this order):

* "threading_primitive" / "blocked_loop" / "timed_out" — the watchdog stopped the app (a
  threading lock held across an `await`), or it never finished;
* "client_per_request" — more than one OpenAI client was built for the streams (counted, and
  judged first: building a client blocks the loop too);
* "app_error" — the app's lifespan raised, or the check could not talk to it;
* "not_a_stream" — an answer that is not a 200 `text/event-stream` with events;
* "wrong_text" — the relayed pieces, joined, differ from what the upstream answered for that
  prompt (a constant reply, dropped tokens);
* "buffered" — under `n` concurrent streams the pieces did not come as the upstream sent them:
  in half of the streams or more, the client's first piece came after the upstream had sent
  the stream's last token (its own timestamps, on the same clock). A relay passes the first
  piece on while the upstream still has a dozen tokens to pace out; a buffered answer cannot
  send before it has the whole, however fast or slow the machine;
* "blocked_loop" — the event loop was blocked longer than twice the reference relay's loop
  plus one token's gap per stream (a sync client read inside an `async def` generator, a
  `time.sleep`); both counted without the stalls the loop's thread spent waiting for a CPU
  (`LoopLagMonitor.starved`: a busy machine's, not the answer's). Judged after the pieces'
  order, which no load changes: a buffered answer on a busy machine is refused as buffered;
* "thread_per_stream" — worker threads served the streams (anyio's thread pool was borrowed,
  or the upstream was called by the sync client): a sync generator holds a pool thread for each
  piece it waits for, and 40 concurrent streams exhaust the pool;
* "audit_before_end" — a stream's audit row existed while it was still being relayed;
* "ignored_disconnect" — a client read a few events and closed its connection (over real TCP),
  and the relay still read the upstream's stream to its end: tokens paid for, never shown. The
  upstream counts this (a stream read to the end vs abandoned), so load cannot change it; the
  evidence also gives the tokens sent more than `DISCONNECT_GRACE` after the client left (0 for
  the reference relay, whose generator is cancelled by the disconnect);
* "audit_missing" / "too_many_rows" — not exactly one row per request (the client that left
  early included);
* "audit_without_usage" — rows without the reply's token count.

Every timing is compared with the reference relay run in the same check or counted in tokens
and rows; no absolute wall-clock bound decides a verdict.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import anyio.to_thread
import httpx
from fastapi import FastAPI
from fastapi.sse import EventSourceResponse
from openai import AsyncOpenAI
from pydantic import BaseModel

from .._text import shorten
from ..lab import current_upstream
from ..looplag import LoopLagMonitor
from ..serving import serve
from ..upstream.replies import count_tokens, reply_to
from ..upstream.stats import UpstreamStats
from ..validation import check_int
from ._clients import built_clients
from ._common import app_failed, caught_warnings, server_errors, stopped_by_watchdog
from .result import CheckResult, a_function, an_app, recorded
from .watchdog import Guarded, guarded

__all__ = ["CAUSES", "Cause", "check_streaming_endpoint"]

EXERCISE = "a streaming relay that stops when its client leaves"

Cause = Literal[
    "ok",
    "threading_primitive",
    "blocked_loop",
    "timed_out",
    "app_error",
    "not_a_stream",
    "wrong_text",
    "buffered",
    "thread_per_stream",
    "client_per_request",
    "audit_before_end",
    "ignored_disconnect",
    "audit_missing",
    "too_many_rows",
    "audit_without_usage",
]
CAUSES: Final[tuple[str, ...]] = get_args(Cause)

AuditRows = Callable[[], Sequence[Mapping[str, Any]] | Awaitable[Sequence[Mapping[str, Any]]]]
"""Returns the audit rows stored so far: a plain or an async function."""

TIME_TO_FIRST_TOKEN: Final = 0.15
"""The upstream's time to first token during the check (seconds)."""
TIME_PER_TOKEN: Final = 0.02
"""The upstream's gap between pieces during the check (seconds)."""
DISCONNECT_GRACE: Final = 0.1
"""How long after its client left a relay may still read the upstream (seconds)."""
EVENTS_BEFORE_LEAVING: Final = 3
"""Events the leaving client reads before it closes its connection."""
BLOCK_PER_STREAM: Final = TIME_PER_TOKEN
"""The loop's blocked time, per stream, beyond twice the reference relay's, that is blamed on
the answer: a blocking call of even one token's gap in every stream."""
SETTLE_LIMIT: Final = 3.0
"""Seconds to wait for the burst's audit rows before the disconnect probe starts."""


@dataclass(frozen=True)
class _Stream:
    """One stream as its client saw it: seconds from the request to the first and last piece."""

    prompt: str
    started: float
    """`time.perf_counter()` when the request was sent: the upstream's clock too."""
    status: int | None
    content_type: str
    first: float | None
    last: float | None
    text: str
    error: str | None

    @property
    def spread(self) -> float:
        return (self.last or 0.0) - (self.first or 0.0)


@dataclass(frozen=True)
class _Run:
    streams: list[_Stream]
    stats: UpstreamStats | None
    blocked: float
    """Seconds the event loop was blocked, without the stalls a busy machine explains."""
    borrowed_threads: int

    def relayed_early(self) -> int:
        """Streams whose first piece reached the client before the upstream had sent the last
        token of its answer (matched by prompt; the answer complete at the call's end when it
        was not streamed)."""
        if self.stats is None:
            return len(self.streams)
        complete: dict[str, float] = {}
        for call in self.stats.timeline:
            done = call.token_times[-1] if call.token_times else call.end
            complete[call.prompt] = max(done, complete.get(call.prompt, done))
        return sum(
            s.first is not None and s.started + s.first < complete.get(s.prompt, float("inf"))
            for s in self.streams
        )


@dataclass(frozen=True)
class _Measured:
    reference: _Run
    learner: _Run
    prompts: list[str]
    clients_built: int
    rows_during_probe: int
    tokens_after_leaving: int
    read_to_the_end: bool
    probe_events: int
    rows: list[Mapping[str, Any]]


class _Chat(BaseModel):
    message: str


@recorded(
    notebook="08_streaming",
    needs="TCP sockets (it serves your app with uvicorn and closes a connection mid-stream)",
    app=an_app,
    audit_rows=a_function,
)
async def check_streaming_endpoint(
    app: Any, audit_rows: AuditRows, *, path: str = "/chat/stream", n: int = 8
) -> CheckResult:
    """Serve `app` with uvicorn on loopback, open `n` concurrent streams to it (and, first, to a
    reference relay, for comparison), then one stream whose client leaves after a few events;
    judge the invariants in the module docstring.

    `audit_rows()` is read before and after, so rows already stored do not matter. The upstream
    runs with a time to first token of 0.15 s and 0.02 s between pieces during the check (its
    settings come back afterwards). Learner code runs under the watchdog.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path must be a URL path starting with '/'; got {path!r}")
    check_int("n", n, minimum=2, maximum=100, why="concurrent streams need company")
    upstream = current_upstream()
    if upstream is None:
        raise ValueError(
            "run `labsupport.setup()` first: the check streams from the lab's upstream"
        )

    prompts = [
        f"Explain to a new engineer why support ticket {i} about slow streaming replies matters"
        for i in range(n + 1)
    ]
    rows_before = len(await _rows(audit_rows))
    stream_seconds = TIME_TO_FIRST_TOKEN + TIME_PER_TOKEN * (
        count_tokens(reply_to(prompts[0]).text) + 2
    )

    async def measure() -> _Measured:
        reference = await _burst(_reference_app(), path, prompts[:n])
        # uvicorn's error records (with their tracebacks) are kept off stderr and dropped, so
        # no logging handler holds an interrupted answer's frames after the check.
        with built_clients() as built, caught_warnings(), server_errors():
            async with serve(app) as client:
                learner = await _burst_on(client, path, prompts[:n])
                settled = await _settled(audit_rows, rows_before + n)
                upstream.reset()
                left_at, events, rows_during = await _leave_early(
                    client, path, prompts[n], audit_rows, settled
                )
                await asyncio.sleep(stream_seconds + DISCONNECT_GRACE)
                probe = upstream.stats
                after = probe.tokens_sent_after(left_at + DISCONNECT_GRACE)
                to_the_end = _kept_reading(probe, after)
                await _collect_suspended_relays()
            rows = list(await _rows(audit_rows))[rows_before:]
        return _Measured(
            reference,
            learner,
            prompts,
            built.count,
            rows_during,
            after,
            to_the_end,
            events,
            rows,
        )

    with upstream.configured(
        time_to_first_token=TIME_TO_FIRST_TOKEN, time_per_token=TIME_PER_TOKEN
    ):
        outcome = await guarded(
            measure(), block_limit=2.0, time_limit=30.0 + 6 * n * stream_seconds
        )
    with caught_warnings():
        result = _judged(outcome, n, path, stream_seconds)
        # A coroutine an interrupted answer never awaited warns when collected: here, once the
        # outcome (its error's traceback holds the frames) is gone, not in the learner's next cell.
        del outcome
        gc.collect()
    return result


def _judged(outcome: Guarded[_Measured], n: int, path: str, stream_seconds: float) -> CheckResult:
    if outcome.stopped:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, f"the {n + 1} streams")
    if outcome.error is not None or outcome.value is None:
        return app_failed(
            EXERCISE,
            outcome.error,
            "its lifespan (startup or shutdown) must run without errors, and audit_rows() "
            "must return the list of rows.",
        )
    return _verdict(outcome.value, n, path, stream_seconds)


def _verdict(measured: _Measured, n: int, path: str, stream_seconds: float) -> CheckResult:
    reference, learner = measured.reference, measured.learner
    ref_first = _median(s.first for s in reference.streams)
    ref_spread = _median(s.spread for s in reference.streams)
    first = _median(s.first for s in learner.streams)
    spread = _median(s.spread for s in learner.streams)
    early = learner.relayed_early()
    evidence = [
        f"{n} concurrent streams: first piece after {first:.2f} s, last {first + spread:.2f} s "
        f"(medians; the reference relay: {ref_first:.2f} s and {ref_first + ref_spread:.2f} s).",
        f"Streams whose first piece reached the client before the upstream had sent its last "
        f"token: {early} of {n}.",
        f"Worker threads borrowed during the streams: {learner.borrowed_threads}; the event loop "
        f"was blocked for {learner.blocked:.2f} s (waits for a CPU not counted).",
    ]
    evidence.append(
        f"A client that left after {measured.probe_events} events: the upstream's stream was "
        f"{'read to the end' if measured.read_to_the_end else 'abandoned'}, "
        f"{measured.tokens_after_leaving} tokens sent more than "
        f"{DISCONNECT_GRACE * 1000:.0f} ms after it left."
    )
    evidence.append(f"Audit rows written: {len(measured.rows)} for {n + 1} requests.")

    def fail(cause: Cause, summary: str, hint: str, *extra: str) -> CheckResult:
        return CheckResult(
            exercise=EXERCISE,
            passed=False,
            cause=cause,
            summary=summary,
            evidence=(*evidence, *extra),
            hint=hint,
        )

    if measured.clients_built > 1:
        return fail(
            "client_per_request",
            f"{measured.clients_built} OpenAI clients were built for the streams.",
            "build one `AsyncOpenAI()` for the app (module level or the lifespan) and share it: "
            "building one (its connection pool, its TLS context) blocks the loop every "
            "time.",
        )
    bad = [s for s in learner.streams if not _is_stream(s)]
    if bad:
        return fail(
            "not_a_stream",
            f"{len(bad)} of {n} answers were not an event stream.",
            f"answer POST {path} with `text/event-stream`: `response_class=EventSourceResponse` "
            "and `yield` each piece (or a `StreamingResponse` of SSE lines).",
            _describe(bad[0]),
        )
    expected = [reply_to(prompt).text for prompt in measured.prompts[:n]]
    wrong = [(s, e) for s, e in zip(learner.streams, expected, strict=True) if s.text != e]
    if wrong:
        stream, text = wrong[0]
        return fail(
            "wrong_text",
            f"{len(wrong)} of {n} streams did not relay what the upstream answered.",
            "yield every piece's `chunk.choices[0].delta.content` (skip None and chunks "
            "without choices), unchanged and in order.",
            shorten(f"Relayed {stream.text!r}; the upstream sent {text!r}.", 240),
        )
    if 2 * early <= n:
        return fail(
            "buffered",
            "the first piece came late: the answer was collected before it was sent, so the "
            "first token waited as long as the last.",
            "pass `stream=True` and `yield` each piece inside the `async for` loop, as it "
            "arrives; do not join the pieces first.",
        )
    if learner.blocked > 2 * reference.blocked + n * BLOCK_PER_STREAM:
        return fail(
            "blocked_loop",
            "the event loop was blocked while the streams ran, so each stream waited for the "
            "others.",
            "inside `async def`, read the upstream with `AsyncOpenAI` and `async for`; a sync "
            "client's reads block the loop.",
        )
    sync_calls = learner.stats is not None and any(
        call.client == "sync" for call in learner.stats.timeline
    )
    if learner.borrowed_threads or sync_calls:
        return fail(
            "thread_per_stream",
            "worker threads served the streams: each one holds a pool thread while it waits "
            "for the next piece, so 40 concurrent streams take all of the pool's threads.",
            "an `async def` generator over `AsyncOpenAI(...)` with `async for`: waiting for a "
            "piece then costs no thread.",
        )
    if measured.rows_during_probe:
        return fail(
            "audit_before_end",
            "a stream's audit row was written while the stream was still running, before its "
            "usage was known.",
            "write the row after the `async for` loop, in a `finally:` so a client who leaves "
            "is audited too.",
        )
    if measured.read_to_the_end:
        return fail(
            "ignored_disconnect",
            f"after the client left, the upstream sent {measured.tokens_after_leaving} more "
            "tokens: the relay kept reading (and paying for) an answer nobody will see.",
            "read the upstream inside the response's own generator (no separate task, no "
            "draining in `finally`), so the cancellation on disconnect stops the reading; "
            "`async with` the stream closes it.",
        )
    rows = measured.rows
    if len(rows) < n + 1:
        return fail(
            "audit_missing",
            f"{n + 1 - len(rows)} of {n + 1} requests left no audit row.",
            "add the row in a `finally:` around the relay loop, so a client who leaves early "
            "is audited too, and make the write one that cannot be cancelled halfway.",
        )
    if len(rows) > n + 1:
        return fail(
            "too_many_rows",
            f"{len(rows) - n - 1} rows too many for {n + 1} requests.",
            "write exactly one audit row per request, once its stream has ended.",
        )
    stored: Counter[Any] = Counter(
        row.get("completion_tokens") if isinstance(row, Mapping) else None for row in rows
    )
    missing = Counter(count_tokens(text) for text in expected) - stored
    if missing:
        return fail(
            "audit_without_usage",
            f"{missing.total()} of {n} finished streams' rows lack the reply's token count.",
            'ask for `stream_options={"include_usage": True}` and store the last chunk\'s '
            '`usage.completion_tokens` in the row as "completion_tokens".',
            shorten(f"First row: {rows[0]!r}", 200) if rows else "No rows.",
        )
    return CheckResult(
        exercise=EXERCISE,
        passed=True,
        cause="ok",
        summary=f"for this check's {n + 1} streams, pieces were relayed as they came, with no "
        "worker thread; the upstream's stream was abandoned when the client left, and each "
        "request left one audit row with its usage.",
        evidence=tuple(evidence),
    )


def _kept_reading(probe: UpstreamStats, tokens_after: int) -> bool:
    """Whether the relay kept reading the leaving client's stream. Counted, not timed: a relay
    that stopped reading abandoned the upstream's stream; one that kept reading finished it, or
    is still reading (tokens came after the client left), however loaded the machine. A stream
    neither finished nor abandoned, with no token after, was left by a relay that stopped: one
    FastAPI's SSE left suspended at its `yield` when the client left (see
    `_collect_suspended_relays`)."""
    return any(
        call.tokens and not call.abandoned and (call.status is not None or tokens_after)
        for call in probe.timeline
    )


async def _collect_suspended_relays() -> None:
    """Close the relays FastAPI's SSE left suspended, so their `finally:` writes their rows.

    `EventSourceResponse` runs the generator in a task that passes events on through two
    one-event buffers; when a client leaves while the relay is two events ahead of the socket
    (several pieces in one network read), that task is cancelled at a full buffer and the
    generator stays suspended at its `yield`, never resumed, until the garbage collector frees
    it (then asyncio closes it, a task on this loop). That is FastAPI's doing, not the
    answer's: seen in live mode, in a few percent of the clients that leave."""
    gc.collect()
    await asyncio.sleep(0.05)


def _reference_app() -> FastAPI:
    """The relay the learner's is compared with: one shared client, `async for`, SSE."""
    client = AsyncOpenAI()
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(chat: _Chat) -> AsyncIterator[str]:
        async with await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": chat.message}],
            stream=True,
        ) as stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    return app


async def _burst(app: FastAPI, path: str, prompts: list[str]) -> _Run:
    async with serve(app) as client:
        return await _burst_on(client, path, prompts)


async def _burst_on(client: httpx.AsyncClient, path: str, prompts: list[str]) -> _Run:
    """`len(prompts)` concurrent streams, with the loop's blocked time and the thread pool's
    borrowed threads measured while they run."""
    upstream = current_upstream()
    if upstream is not None:
        upstream.reset()
    limiter = anyio.to_thread.current_default_thread_limiter()
    peak = 0
    done = asyncio.Event()

    async def watch_threads() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, int(limiter.borrowed_tokens))
            await asyncio.sleep(0.002)

    lag = LoopLagMonitor()
    lag.start()
    watcher = asyncio.create_task(watch_threads())
    try:
        streams = await asyncio.gather(*(_read(client, path, p) for p in prompts))
    finally:
        done.set()
        await watcher
        lag.stop()
    stats = upstream.stats if upstream is not None else None
    return _Run(list(streams), stats, lag.blocked - lag.starved, peak)


async def _read(client: httpx.AsyncClient, path: str, prompt: str) -> _Stream:
    start = time.perf_counter()

    def seen(error: str | None) -> _Stream:
        text = "".join(pieces)
        return _Stream(prompt, start, status, content_type, first, last, text, error)

    first: float | None = None
    last: float | None = None
    pieces: list[str] = []
    status: int | None = None
    content_type = ""
    try:
        async with client.stream("POST", path, json={"message": prompt}) as response:
            status, content_type = response.status_code, response.headers.get("content-type", "")
            async for piece in _pieces(response):
                last = time.perf_counter() - start
                first = last if first is None else first
                pieces.append(piece)
    except (httpx.HTTPError, OSError) as error:
        return seen(f"{type(error).__name__}: {error}")
    return seen(None)


async def _pieces(response: httpx.Response) -> AsyncIterator[str]:
    """Each SSE event's data: JSON-decoded when it is a JSON string, else as sent."""
    if response.status_code != 200 or "text/event-stream" not in response.headers.get(
        "content-type", ""
    ):
        await response.aread()
        return
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").removeprefix(" ")
        if data == "[DONE]":
            continue
        try:
            decoded = json.loads(data)
        except ValueError:
            decoded = data
        yield decoded if isinstance(decoded, str) else data


async def _leave_early(
    client: httpx.AsyncClient, path: str, prompt: str, audit_rows: AuditRows, rows_before: int
) -> tuple[float, int, int]:
    """Read a few events, note how many rows the stream already has, then close the connection.
    Returns when the client left, the events it read, and the rows added while it read."""
    events = 0
    rows_during = 0
    # A connection of its own: closing it mid-stream is the disconnect the server must notice.
    async with (
        httpx.AsyncClient(base_url=client.base_url, trust_env=False) as alone,
        alone.stream("POST", path, json={"message": prompt}) as response,
    ):
        async for _ in _pieces(response):
            events += 1
            if events == EVENTS_BEFORE_LEAVING:
                rows_during = len(await _rows(audit_rows)) - rows_before
                break
    return time.perf_counter(), events, rows_during


async def _settled(audit_rows: AuditRows, expected: int) -> int:
    """The row count once the burst's rows are in (rows written after the responses, in
    background tasks, take a moment), or after `SETTLE_LIMIT` seconds."""
    deadline = time.perf_counter() + SETTLE_LIMIT
    count = len(await _rows(audit_rows))
    while count < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
        count = len(await _rows(audit_rows))
    return count


async def _rows(audit_rows: AuditRows) -> Sequence[Mapping[str, Any]]:
    result = audit_rows()
    if inspect.isawaitable(result):
        result = await result
    if isinstance(result, str | bytes) or not isinstance(result, Sequence):
        raise TypeError(f"audit_rows() must return a list of rows; got {result!r}")
    return result


def _is_stream(stream: _Stream) -> bool:
    return (
        stream.status == 200
        and "text/event-stream" in stream.content_type
        and stream.first is not None
        and stream.error is None
    )


def _describe(stream: _Stream) -> str:
    if stream.error:
        return shorten(f"First error: {stream.error}", 200)
    return shorten(
        f"First bad answer: HTTP {stream.status}, content-type {stream.content_type or 'none'!r}, "
        f"{'no events' if stream.first is None else 'events'}.",
        200,
    )


def _median(values: Any) -> float:
    numbers = [value for value in values if value is not None]
    return statistics.median(numbers) if numbers else float("inf")
