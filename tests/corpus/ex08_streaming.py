"""Answers to notebook 08's exercise: relay a streamed answer as server-sent events, stop reading
the upstream when the client leaves, and audit each request's usage once its stream has ended.

Each `answer_*(audit)` builds a fresh app (`POST /chat/stream`, `{"message": …}` →
`text/event-stream`) that appends its audit rows (`{"completion_tokens": …}`) to the list
`audit`, which the test hands to `check_streaming_endpoint` as `lambda: audit`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

MODEL = "gpt-4o-mini"
Audit = list[dict[str, Any]]


class ChatRequest(BaseModel):
    message: str


def messages(request: ChatRequest) -> Any:
    return [{"role": "user", "content": request.message}]


# -- right -------------------------------------------------------------------------------------


def answer_event_source_with_usage(audit: Audit) -> FastAPI:
    """PASSED, ok: `EventSourceResponse`, one module client, the stream entered with
    `async with` on a line of its own, usage from the last chunk, the row in `finally` (the
    pieces relayed so far when the client left)."""
    llm = AsyncOpenAI()
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        row: dict[str, Any] = {"pieces": 0}
        stream = await llm.chat.completions.create(
            model=MODEL,
            messages=messages(request),
            stream=True,
            stream_options={"include_usage": True},
        )
        try:
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            row["pieces"] += 1
                            yield choice.delta.content
                    if chunk.usage is not None:
                        row["usage"] = chunk.usage.completion_tokens
        finally:
            audit.append({"completion_tokens": row.get("usage", row["pieces"])})

    return app


def answer_streaming_response_of_sse_lines(audit: Audit) -> FastAPI:
    """PASSED, ok: a `StreamingResponse` of hand-written `data:` lines (JSON strings), the
    stream closed in `finally`."""
    client = AsyncOpenAI()
    app = FastAPI()

    async def events(request: ChatRequest) -> AsyncIterator[str]:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages(request),
            stream=True,
            stream_options={"include_usage": True},
        )
        row: dict[str, Any] = {"completion_tokens": 0}
        try:
            async for chunk in stream:
                if chunk.usage:
                    row["completion_tokens"] = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield f"data: {json.dumps(choice.delta.content)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await stream.close()
            audit.append(row)

    @app.post("/chat/stream")
    async def chat_stream(request: ChatRequest) -> StreamingResponse:
        return StreamingResponse(events(request), media_type="text/event-stream")

    return app


def answer_lifespan_client_and_server_sent_events(audit: Audit) -> FastAPI:
    """PASSED, ok: the client from the lifespan, `ServerSentEvent(data=…)`, the row written
    after the loop and, for a client who left, by the `except` of the cancellation."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncOpenAI() as client:
            yield {"openai": client}

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest, http: Request) -> AsyncIterator[ServerSentEvent]:
        pieces: list[str] = []
        stream = await http.state.openai.chat.completions.create(
            model=MODEL,
            messages=messages(request),
            stream=True,
            stream_options={"include_usage": True},
        )
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content is not None:
                    pieces.append(chunk.choices[0].delta.content)
                    yield ServerSentEvent(data=pieces[-1])
                elif chunk.usage:
                    audit.append({"completion_tokens": chunk.usage.completion_tokens})
        except BaseException:
            audit.append({"completion_tokens": len(pieces)})
            await stream.close()
            raise

    return app


# -- wrong -------------------------------------------------------------------------------------


def answer_buffered_then_sent(audit: Audit) -> FastAPI:
    """NOT YET, buffered: the whole answer collected, then sent as one event."""
    client = AsyncOpenAI()
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages(request),
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = []
        tokens = 0
        async for chunk in stream:
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
        audit.append({"completion_tokens": tokens})
        yield "".join(pieces)

    return app


def answer_sync_generator_over_the_sync_client(audit: Audit) -> FastAPI:
    """NOT YET, thread_per_stream: a `def` generator over `OpenAI()`: Starlette runs each step
    in the thread pool, a thread held while each piece is awaited."""
    client = OpenAI()
    app = FastAPI()

    def events(request: ChatRequest) -> Iterator[str]:
        relayed = 0
        tokens = None
        try:
            with client.chat.completions.create(
                model=MODEL,
                messages=messages(request),
                stream=True,
                stream_options={"include_usage": True},
            ) as stream:
                for chunk in stream:
                    if chunk.usage:
                        tokens = chunk.usage.completion_tokens
                    if chunk.choices and chunk.choices[0].delta.content:
                        relayed += 1
                        yield f"data: {json.dumps(chunk.choices[0].delta.content)}\n\n"
        finally:
            audit.append({"completion_tokens": tokens or relayed})

    @app.post("/chat/stream")
    def chat_stream(request: ChatRequest) -> StreamingResponse:
        return StreamingResponse(events(request), media_type="text/event-stream")

    return app


def answer_sync_client_in_an_async_generator(audit: Audit) -> FastAPI:
    """NOT YET, blocked_loop: the sync client read inside an `async def` generator: every read
    blocks the event loop, so the streams take turns."""
    client = OpenAI()
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        tokens = 0
        try:
            stream = client.chat.completions.create(
                model=MODEL,
                messages=messages(request),
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            audit.append({"completion_tokens": tokens})

    return app


def answer_producer_task_keeps_reading(audit: Audit) -> FastAPI:
    """NOT YET, ignored_disconnect: a task reads the upstream into a queue "so the audit always
    gets the usage": when the client leaves, the task reads (and pays for) the rest."""
    client = AsyncOpenAI()
    app = FastAPI()
    tasks: set[asyncio.Task[None]] = set()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def produce() -> None:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=messages(request),
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.usage:
                    audit.append({"completion_tokens": chunk.usage.completion_tokens})
                if chunk.choices and chunk.choices[0].delta.content:
                    await queue.put(chunk.choices[0].delta.content)
            await queue.put(None)

        task = asyncio.create_task(produce())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        while (piece := await queue.get()) is not None:
            yield piece

    return app


def answer_audit_before_the_stream(audit: Audit) -> FastAPI:
    """NOT YET, audit_before_end: the row written when the stream starts, before any usage."""
    client = AsyncOpenAI()
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        row: dict[str, Any] = {"message": request.message, "completion_tokens": None}
        audit.append(row)
        async with await client.chat.completions.create(
            model=MODEL,
            messages=messages(request),
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            async for chunk in stream:
                if chunk.usage:
                    row["completion_tokens"] = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

    return app


def answer_a_client_per_request(audit: Audit) -> FastAPI:
    """NOT YET, client_per_request: `async with AsyncOpenAI()` inside the endpoint."""
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        relayed = 0
        tokens = None
        try:
            async with AsyncOpenAI() as client:
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=messages(request),
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if chunk.usage:
                        tokens = chunk.usage.completion_tokens
                    if chunk.choices and chunk.choices[0].delta.content:
                        relayed += 1
                        yield chunk.choices[0].delta.content
        finally:
            audit.append({"completion_tokens": tokens or relayed})

    return app


def answer_constant_text(audit: Audit) -> FastAPI:
    """NOT YET, wrong_text: a placeholder streamed instead of the model's answer."""
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        for word in ("Thinking", " about", " it", "..."):
            await asyncio.sleep(0.01)
            yield word
        audit.append({"completion_tokens": 4})

    return app


def answer_strips_the_pieces(audit: Audit) -> FastAPI:
    """NOT YET, wrong_text: each piece `.strip()`ed "to tidy it": the spaces between words go."""
    client = AsyncOpenAI()
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        tokens = 0
        try:
            async with await client.chat.completions.create(
                model=MODEL,
                messages=messages(request),
                stream=True,
                stream_options={"include_usage": True},
            ) as stream:
                async for chunk in stream:
                    if chunk.usage:
                        tokens = chunk.usage.completion_tokens
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content.strip()
        finally:
            audit.append({"completion_tokens": tokens})

    return app


def answer_audit_only_when_finished(audit: Audit) -> FastAPI:
    """NOT YET, audit_missing: the row written after the loop, not in `finally`: a client who
    leaves early is never audited."""
    client = AsyncOpenAI()
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        tokens = 0
        async with await client.chat.completions.create(
            model=MODEL,
            messages=messages(request),
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            async for chunk in stream:
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        audit.append({"completion_tokens": tokens})

    return app


def answer_audit_without_usage(audit: Audit) -> FastAPI:
    """NOT YET, audit_without_usage: no `include_usage`, and the row stores the message only."""
    client = AsyncOpenAI()
    app = FastAPI()

    @app.post("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(request: ChatRequest) -> AsyncIterator[str]:
        try:
            async with await client.chat.completions.create(
                model=MODEL, messages=messages(request), stream=True
            ) as stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
        finally:
            audit.append({"message": request.message})

    return app


def answer_json_instead_of_a_stream(audit: Audit) -> FastAPI:
    """NOT YET, not_a_stream: the whole reply returned as JSON, as in notebook 01."""
    client = AsyncOpenAI()
    app = FastAPI()

    @app.post("/chat/stream")
    async def chat_stream(request: ChatRequest) -> JSONResponse:
        response = await client.chat.completions.create(model=MODEL, messages=messages(request))
        audit.append(
            {"completion_tokens": response.usage.completion_tokens if response.usage else 0}
        )
        return JSONResponse({"response": response.choices[0].message.content})

    return app
