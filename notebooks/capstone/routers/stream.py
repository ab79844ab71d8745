"""`POST /chat/stream` (08): the reply relayed piece by piece as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from openai import AsyncStream
from openai.types.chat import ChatCompletionChunk

from ..audit import note
from ..errors import JSON_ERROR_RESPONSES, UPSTREAM_FAILURES, client_error
from ..models import ChatRequest, ErrorBody
from ..resources import Shared

router = APIRouter(responses=JSON_ERROR_RESPONSES)
Chunks = AsyncStream[ChatCompletionChunk]


async def opened(body: ChatRequest, request: Request, shared: Shared) -> AsyncIterator[Chunks]:
    """The upstream stream, opened before the response starts (a failure to open it is an
    HTTP error, as on `/chat`) and closed after the response ends (FastAPI exits a `yield`
    dependency then): at once when the client leaves, which cancels the relay."""
    note(request, user_id=body.user_id, prompt=body.message)
    async with shared.stream(body.message, temperature=body.temperature) as chunks:
        yield chunks


Opened = Annotated[Chunks, Depends(opened)]


@router.post("/chat/stream", response_class=EventSourceResponse)
async def chat_stream(request: Request, chunks: Opened) -> AsyncIterator[ServerSentEvent]:
    """Each piece of the reply as one event (`data`: the piece, a JSON string) as it comes. A
    failure once the stream has begun ends it with one `error` event, `data` in the error
    shape. The audit row, written after the stream ends, has the reply so far and its usage:
    the usage chunk's count, or for a client who left, the pieces relayed."""
    pieces: list[str] = []
    tokens: int | None = None
    ended = False  # stays False when the client leaves: the relay is cancelled mid-loop
    try:
        async for chunk in chunks:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                yield ServerSentEvent(data=pieces[-1])
        ended = True
    except UPSTREAM_FAILURES as error:
        ended = True
        note(request, error=f"mid-stream {type(error).__name__}: {error}")
        problem = ErrorBody(error=client_error(error).info)
        yield ServerSentEvent(event="error", data=problem.model_dump())
    finally:
        if not ended:
            note(request, error=f"the client left after {len(pieces)} pieces")
        note(request, reply="".join(pieces), completion_tokens=tokens or len(pieces))
