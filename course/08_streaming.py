# %% [markdown]
# # 08 · Streaming: the first token fast, no thread per stream, nothing paid after the client leaves
#
# **Objective.** Relay a model's answer token by token with FastAPI, measure what the user waits
# for (the first token) instead of the whole answer, keep streams off the thread pool, stop
# reading the upstream when the client leaves, and audit a streamed answer's usage once it ends.
#
# **You will:** measure a buffered endpoint's first token · relay with `async for` and
# server-sent events · see a sync generator share 40 threads among many streams · make a client
# leave and count the tokens read after it left · audit usage after the stream · build the
# streaming endpoint yourself.

# %%
import labsupport as lab

upstream = lab.setup(latency=0.5, time_to_first_token=0.1, time_per_token=0.02)

# %% [markdown]
# The offline upstream streams its answers: the first piece after 0.1 s, then one every 0.02 s.
# A service that streams over HTTP usually speaks **server-sent events** (SSE): a
# `text/event-stream` response made of `data: …` lines. FastAPI sends them itself: with
# `response_class=EventSourceResponse`, an endpoint that `yield`s strings sends each one as an
# event, JSON-encoded.
#
# To measure what a user sees, this helper reads one stream as a browser would and notes when
# the first and the last piece arrived.

# %%
import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Iterator

import anyio.to_thread
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from openai import APIError, AsyncOpenAI, OpenAI
from pydantic import BaseModel

MODEL = "gpt-4o-mini"
PROMPT = "Explain to a new engineer why the first token of a reply matters"


class ChatRequest(BaseModel):
    message: str


async def read_stream(client, message=PROMPT, *, leave_after=None):
    """POST one message to /chat/stream; return (first piece s, last piece s, text)."""
    start = time.perf_counter()
    first = last = None
    pieces = []
    async with client.stream("POST", "/chat/stream", json={"message": message}) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            last = time.perf_counter() - start
            first = first if first is not None else last
            pieces.append(json.loads(line.removeprefix("data: ")))
            if len(pieces) == leave_after:
                break  # closing the response closes the connection: the client left
    return first, last, "".join(pieces)


async def many_streams(app, n):
    """n concurrent streams to `app`, served by uvicorn: the medians, the latest first piece,
    each stream's read, and the most thread-pool threads the server held at once."""
    pool = anyio.to_thread.current_default_thread_limiter()
    held = 0

    async def watch_pool():
        nonlocal held
        while True:
            held = max(held, pool.borrowed_tokens)
            await asyncio.sleep(0.005)

    async with lab.serve(app) as client:
        watching = asyncio.create_task(watch_pool())
        reads = await asyncio.gather(*(read_stream(client, f"{PROMPT} ({i})") for i in range(n)))
        watching.cancel()
    firsts = [first for first, _, _ in reads]
    lasts = [last for _, last, _ in reads]
    return statistics.median(firsts), max(firsts), statistics.median(lasts), reads, held


openai_client = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))

# %% [markdown]
# ## The trap: an endpoint that buffers
#
# This endpoint asks for the whole answer and sends it as one event. It is correct, and for the
# user it is as slow as it can be: nothing shows until the last token is generated.

# %% [markdown]
# **Predict first.** A whole answer takes 0.5 s. With this endpoint, how many seconds until the
# first piece reaches the client? Type your guess in the box (or set `PREDICTION` and run the
# cell again), then run the measurement.

# %%
from labsupport.coaching import predict

PREDICTION = None  # your guess in seconds
first_piece_guess = predict(
    "A buffered endpoint, 0.5 s per answer: seconds until the first piece?", value=PREDICTION
)
first_piece_guess

# %%
buffered_app = FastAPI()


@buffered_app.post("/chat/stream", response_class=EventSourceResponse)
async def buffered_chat(request: ChatRequest) -> AsyncIterator[str]:
    response = await openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": request.message}]
    )
    yield response.choices[0].message.content


buffered = await many_streams(buffered_app, 5)
print(f"buffered: first piece after {buffered[0]:.2f} s, last after {buffered[2]:.2f} s")
print(
    first_piece_guess.compare(
        buffered[0],
        because="the endpoint sends nothing until the whole answer is in",
        investigate="the first and last pieces' times: are they apart at all?",
    )
)

# %% [markdown]
# ## The fix: relay each piece as it comes
#
# `stream=True` makes `create()` return an async iterator of chunks; each chunk's
# `choices[0].delta.content` is the next piece (None on the first and last chunks). The endpoint
# is an async generator: each `yield` goes out as one event at once, and while it waits for the
# next chunk, `async for` gives the event loop back to the other requests.

# %%
relay_app = FastAPI()


@relay_app.post("/chat/stream", response_class=EventSourceResponse)
async def relay_chat(request: ChatRequest) -> AsyncIterator[str]:
    async with await openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": request.message}], stream=True
    ) as stream:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


relayed = await many_streams(relay_app, 5)
print(f"relayed:  first piece after {relayed[0]:.2f} s, last after {relayed[2]:.2f} s")
print(f"the first piece came {buffered[0] / relayed[0]:.1f}× sooner")

# %% [markdown]
# Per request: a line from the first piece to the last, a dot where the first arrived.

# %%
import matplotlib.pyplot as plt

from labsupport.plots import DescribedFigure

# A DescribedFigure carries a one-line summary: the caption, and the image's alt text.
fig, axes = plt.subplots(2, 1, figsize=(7, 3), sharex=True, FigureClass=DescribedFigure)
fig.summary = (
    f"Per request, from the first piece (dot) to the last: buffered, first after "
    f"{buffered[0]:.2f} s and last after {buffered[2]:.2f} s; relayed, first after "
    f"{relayed[0]:.2f} s and last after {relayed[2]:.2f} s."
)
for ax, (label, run) in zip(axes, (("buffered", buffered), ("relayed", relayed)), strict=True):
    for row, (first, last, _) in enumerate(run[3]):
        ax.plot([first, last], [row, row], color="tab:blue")
        ax.plot([first], [row], "o", color="tab:orange")
    ax.set_ylabel(label)
    ax.set_yticks([])
axes[-1].set_xlabel("seconds since the request (dot: first piece; line's end: last piece)")
plt.close(fig)
fig

# %% [markdown]
# The last piece comes at about the same time either way: the model takes as long. What changed
# is the wait before the user sees anything.
#
# ## A sync generator: one pool thread per waiting stream
#
# `StreamingResponse` also takes a plain generator. With the sync client, it looks harmless:
# Starlette runs each `next()` of a sync generator in its thread pool, so the loop is not
# blocked. But each `next()` holds a pool thread while it waits for the upstream's next piece,
# and the pool has 40 threads. **Predict** before you run: with 100 concurrent streams, how
# many threads does the sync generator hold at once, and which relay's median stream ends
# first?

# %%
sync_client = OpenAI(api_key=os.getenv("OPENAI_API_KEY"))
sync_app = FastAPI()


def sync_pieces(message: str) -> Iterator[str]:
    with sync_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": message}], stream=True
    ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield f"data: {json.dumps(chunk.choices[0].delta.content)}\n\n"


@sync_app.post("/chat/stream")
def sync_chat(request: ChatRequest) -> StreamingResponse:
    return StreamingResponse(sync_pieces(request.message), media_type="text/event-stream")


STREAMS = 100
print(f"the thread pool: {anyio.to_thread.current_default_thread_limiter().total_tokens:g} threads")
in_threads = await many_streams(sync_app, STREAMS)
on_the_loop = await many_streams(relay_app, STREAMS)
for label, (median_first, latest_first, median_last, _, held) in (
    ("sync generator", in_threads),
    ("async relay", on_the_loop),
):
    print(
        f"{label:>14}: first piece {median_first:.2f} s (median), {latest_first:.2f} s "
        f"(latest); last piece {median_last:.2f} s (median); pool threads held: {held}"
    )

# %% [markdown]
# The sync generator held all 40 threads at once: its 100 streams take turns on them, and a
# stream whose next piece is ready waits for a free thread to fetch it. The async relay held
# none: it waits for all 100 streams on the event loop's one thread. On a quiet machine that
# makes the sync generator's median stream end later. On a busy one the times can turn round:
# the async relay does all 100 streams' work on that one thread, which here also runs the 100
# clients (they share this kernel's loop), while the sync generator spreads its reads over
# threads. The count does not turn round: with more streams than threads, a stream whose
# piece is ready waits for a thread.
#
# ## The client who leaves
#
# A user closes the tab after a few words. Over TCP, the server sees the connection close;
# Starlette then cancels the response's generator, and the cancellation reaches the
# `async for` (`async with` closes the upstream stream). A relay that reads the upstream in a
# task of its own does not get that cancellation: it keeps reading, and paying for, the rest.

# %%
task_app = FastAPI()
readers = set()


@task_app.post("/chat/stream", response_class=EventSourceResponse)
async def task_chat(request: ChatRequest) -> AsyncIterator[str]:
    queue = asyncio.Queue()

    async def read_all():
        stream = await openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": request.message}], stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                await queue.put(chunk.choices[0].delta.content)
        await queue.put(None)

    reader = asyncio.create_task(read_all())
    readers.add(reader)
    reader.add_done_callback(readers.discard)
    while (piece := await queue.get()) is not None:
        yield piece


async def until_upstream_idle(at_most=10.0):
    """Wait until the upstream has ended every call (read to the end, or abandoned), or
    `at_most` seconds have passed."""
    deadline = time.perf_counter() + at_most
    while upstream.stats.in_flight and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)


async def leave_early(app):
    """Read 3 events, close the connection, wait until the upstream's call has ended; report."""
    async with lab.serve(app) as client:
        upstream.reset()
        await read_stream(client, leave_after=3)
        left = time.perf_counter()
        await until_upstream_idle()
    stats = upstream.stats
    # A piece already on its way when the client left may still be read: 0.1 s of grace.
    after = stats.tokens_sent_after(left + 0.1)
    said = "none" if not after else "more than 10" if after > 10 else "a few"
    print(f"{stats}; tokens sent more than 0.1 s after the client left: {said}")


await leave_early(task_app)
await leave_early(relay_app)

# %% [markdown]
# The task relay's stream was read to the end (no "abandoned"); the relay whose generator reads
# the stream itself abandoned it when the client left, and no token came after.
#
# One case the generator cannot handle itself. `EventSourceResponse` runs the generator in a task of
# its own, which passes each event on through two buffers of one event each. If the client leaves
# while the relay is two events ahead of the socket (a real API often delivers several pieces in one
# network read), that task is cancelled as it waits at a full buffer: the generator stays suspended
# at its `yield`. It reads no more tokens, but its `async with` does not exit and its `finally:`
# does not run until the garbage collector frees it, so the upstream's stream stays open that long.
# The same moment can make uvicorn log "Exception in ASGI application" (an
# `anyio.BrokenResourceError` from those buffers). Measured with FastAPI 0.165 in live mode against
# a loopback server: 2 of 40 clients that left; offline, where each piece comes on its own, none of
# 60. The capstone opens the upstream's stream in a dependency with `yield` instead, which FastAPI
# closes once the response is over, whatever the generator's state.
#
# ## Audit a streamed answer after it ends
#
# Notebook 04 audited each request. A stream's usage comes in its last chunk when you ask for it
# (`stream_options={"include_usage": True}`), so the row can only be written once the stream has
# ended, and in a `finally:` so that a client who leaves is audited too (with the pieces relayed
# to it). A plain `list.append` in `finally` cannot be cancelled halfway.
#
# ## A stream that fails mid-way
#
# Once the first event has gone out, the status line (200) has too: a failure after that cannot
# become an HTTP error. Left alone, the SDK's exception escapes the generator, uvicorn logs a
# traceback and cuts the connection, and the client gets a stream that just stops. Catch it
# where it happens and end the stream with one `error` event carrying the course's error shape,
# `{"error": {"type": …, "message": …}}` (never the provider's own message), and audit it. A
# stall past the client's `timeout=` raises `APITimeoutError`, an `APIError` too: it ends the
# same way. The row's `error` starts as "client left" and is replaced when the relay ends, so a
# relay that the disconnect cancels keeps it. Here the upstream fails its next call with a 500
# after 3 pieces (`lab.Fault.on_call(1, status=500, after=3)`).

# %%
safe_app = FastAPI()
safe_rows = []
MID_STREAM_ERROR = {
    "error": {"type": "upstream_error", "message": "The model provider failed mid-answer."}
}


@safe_app.post("/chat/stream", response_class=EventSourceResponse)
async def safe_chat(request: ChatRequest) -> AsyncIterator[ServerSentEvent]:
    relayed = 0
    failure = "client left"  # unless the relay ends: a disconnect cancels it mid-loop
    try:
        async with await openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": request.message}], stream=True
        ) as stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    relayed += 1
                    yield ServerSentEvent(data=chunk.choices[0].delta.content)
        failure = None
    except APIError as error:
        failure = type(error).__name__
        yield ServerSentEvent(event="error", data=MID_STREAM_ERROR)
    finally:
        safe_rows.append({"pieces": relayed, "error": failure})


async def stream_events(client):
    """POST one message to /chat/stream; return its events as (event name, data)."""
    events, name = [], "message"
    async with client.stream("POST", "/chat/stream", json={"message": PROMPT}) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                name = "message"
    return events


with upstream.configured(faults=[lab.Fault.on_call(1, status=500, after=3)]):
    async with lab.serve(safe_app) as client:
        for name, data in await stream_events(client):
            print(f"{name:>7}: {data!r}")
print("audit row:", safe_rows[-1])

# %% [markdown]
# Three pieces, then one `error` event, and the stream ends: the client knows the answer is
# incomplete and why, the connection is not left hanging, and the row says what happened.
#
# ## A slow reader: what buffers where
#
# A reader that pauses (a slow phone, a busy browser tab) does not slow the relay down at once:
# between the generator and the reader's code, the events wait in buffers. FastAPI passes each
# event through two in-memory streams of one event each; uvicorn hands the bytes to asyncio's
# transport, which accepts writes until 64 KiB wait unsent; then come the kernel's socket
# buffers on both sides. Only when all of them are full does the generator's `yield` wait, and
# with it the reading of the upstream. This reader takes one event, then reads nothing until
# the upstream has finished the whole answer.


# %%
async def pause_after_first(app):
    """Read one event, wait until the upstream is done, then read the rest; report."""
    async with lab.serve(app) as client:
        upstream.reset()
        async with client.stream("POST", "/chat/stream", json={"message": PROMPT}) as response:
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data: "):
                    break
            await until_upstream_idle()  # the reader has read one event so far
            waiting = [line async for line in lines if line.startswith("data: ")]
    size = sum(len(line) + 2 for line in waiting)  # each event: its line and a blank line
    print("while the reader paused after one event, the upstream finished the whole answer")
    print(f"{len(waiting)} events ({size} bytes) waited in buffers for the reader")


await pause_after_first(relay_app)

# %% [markdown]
# A chat answer is a few hundred bytes of events: far below 64 KiB, so a slow reader never
# slows the upstream; its events wait in the server's memory. That is the cost to watch: each
# slow connection can hold up to the transport's 64 KiB (plus the kernel's buffers), so
# thousands of stalled readers of long answers add up. The disconnect, not backpressure, is
# what stops a relay from reading on for nobody.
#
# It also means the server cannot know what a client read. `safe_chat` notes "client left" when
# the disconnect cancels its relay mid-answer; a reader that pauses after one event and leaves
# once the relay has sent everything into those buffers is not seen leaving: the relay ended
# its loop and wrote a finished row first. (The capstone's `/chat/stream` does the same.) Both,
# measured: a client that leaves after 3 events, at 0.1 s a token so that the disconnect comes
# mid-answer however busy the machine; then one that pauses after 1 event until the upstream
# is done, and leaves without reading the rest.


# %%
async def pause_then_leave(app):
    """Read one event, wait until the upstream is done, then close the connection unread."""
    async with (
        lab.serve(app) as client,
        client.stream("POST", "/chat/stream", json={"message": PROMPT}) as response,
    ):
        lines = response.aiter_lines()  # kept: a dropped iterator closes the connection
        async for line in lines:
            if line.startswith("data: "):
                break
        await until_upstream_idle()
    # Leaving `lab.serve` waits for the request to end, so its audit row is written by now.


with upstream.configured(time_per_token=0.1):
    async with lab.serve(safe_app) as client:
        await read_stream(client, leave_after=3)
left_early = safe_rows[-1]
few = "a few" if left_early["pieces"] < 10 else left_early["pieces"]
print(f"left after 3 events: error {left_early['error']!r}, {few} pieces relayed")
await pause_then_leave(safe_app)
print(f"read 1 event, paused, left: {safe_rows[-1]}")

# %% [markdown]
# The first row says the client left, after the 3 or so pieces the relay got out before the
# disconnect cancelled it. The second is a finished stream's: every piece relayed, no error,
# though its client read one. To know what a reader saw, the reader has to say so (a browser's
# `EventSource` that lost its connection reconnects with a `Last-Event-ID` header naming the
# last event it got, when the events carry an `id`).

# %% [markdown]
# ## Explore: the relay, the pace, the streams
#
# Predict, then move the controls. With the buffered relay, what does a slower pace do to the
# first piece? How many pool threads do 10 streams of the sync generator hold, and 50? Which
# relays read on after their client leaves? Each change serves that relay with uvicorn again,
# opens the streams at once, then makes one more client leave after 3 events and counts the
# tokens the upstream sent after it left: a few seconds, offline.

# %%
from labsupport.coaching import explore_streams

explore_streams(streams=10, time_to_first_token=0.1, time_per_token=0.02, relay="async")

# %% [markdown]
# The sync generator has a surprise the lesson's cells did not show: when its client leaves,
# it is neither read on nor closed. Starlette stops asking it for pieces, but nothing closes
# it, so its `with` block never exits and the upstream's stream stays open until the garbage
# collector frees the generator. The explorer says so under its figure ("left the upstream's
# stream open, unread").

# %% [markdown]
# ## Your turn
#
# This endpoint buffers the answer and writes its audit row before the stream starts. Make it
# relay each piece as it comes with `AsyncOpenAI` and `async for` (no thread per stream), stop
# reading the upstream when the client leaves, and append one row per request to `audit_rows`
# once the stream has ended: `{"completion_tokens": …}` from the usage chunk, or for a client
# who left early, the number of pieces relayed. (The solution also ends a stream that fails
# mid-way as `safe_chat` does; the check does not test that part.)

# %% tags=["exercise"]
audit_rows = []
exercise_app = FastAPI()


@exercise_app.post("/chat/stream", response_class=EventSourceResponse)
async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
    # TODO: the row is written before anything is known, and the answer is buffered.
    audit_rows.append({"completion_tokens": None})
    response = await openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": request.message}]
    )
    yield response.choices[0].message.content


# %% tags=["solution"]
audit_rows = []
exercise_app = FastAPI()


@exercise_app.post("/chat/stream", response_class=EventSourceResponse)
async def chat_stream(request: ChatRequest) -> AsyncIterator[str | ServerSentEvent]:
    relayed = 0
    completion_tokens = None
    failure = None
    try:
        async with await openai_client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": request.message}],
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    completion_tokens = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content:
                    relayed += 1
                    yield chunk.choices[0].delta.content
    except APIError as error:  # as in safe_chat: one error event ends a failed stream
        failure = type(error).__name__
        yield ServerSentEvent(event="error", data=MID_STREAM_ERROR)
    finally:
        audit_rows.append({"completion_tokens": completion_tokens or relayed, "error": failure})


# %% [markdown]
# The check serves your app with uvicorn, opens 8 concurrent streams (and the same to a
# reference relay, to compare with), then one stream whose client leaves after 3 events.

# %%
await lab.checks.check_streaming_endpoint(exercise_app, lambda: audit_rows)

# %% [markdown]
# ## Recap
#
# * What a user waits for is the first token: a buffered endpoint makes it as late as the last.
# * `stream=True` and `async for` relay each piece as it comes; `EventSourceResponse` sends each
#   `yield` as a server-sent event.
# * A sync generator in `StreamingResponse` holds a pool thread while it waits: 100 streams
#   take turns on 40 threads; when its client leaves, nothing closes it.
# * Read the upstream inside the response's generator: when the client leaves, Starlette
#   cancels it, and `async with` closes the upstream stream. A task reading on its own keeps
#   paying for tokens nobody sees.
# * Audit after the stream ends, in `finally:`, with the usage chunk's counts.
# * A failure after the first event cannot be an HTTP status any more: end the stream with one
#   `error` event in the error shape, and audit it.
# * A slow reader fills buffers (FastAPI's, the transport's 64 KiB, the kernel's) before it
#   slows the upstream: for chat-sized answers it never does; it costs memory instead.
# * The server knows what it sent, not what was read: a client that leaves after the relay has
#   ended leaves a finished row.

# %% [markdown]
# Back to **00 · Start here** for the course map.
