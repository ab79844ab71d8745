"""`POST /chat/stream` (08): the reply relayed piece by piece as server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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


@dataclass
class Relay:
    """The upstream's stream and what the relay made of it: the pieces sent, the usage chunk's
    count, and whether the stream ended (it has not when the client left mid-answer)."""

    chunks: AsyncStream[ChatCompletionChunk]
    pieces: list[str] = field(default_factory=list)
    tokens: int | None = None
    ended: bool = False


async def relay(body: ChatRequest, request: Request, shared: Shared) -> AsyncIterator[Relay]:
    """The upstream stream, opened before the response starts (a failure to open it is an
    HTTP error, as on `/chat`), then closed and audited after the response ends: FastAPI exits
    a `yield` dependency then, also when the client left, even if its disconnect left the
    relay suspended at a `yield`, never to resume (FastAPI's SSE buffers can)."""
    note(request, user_id=body.user_id, prompt=body.message)
    async with shared.stream(body.message, temperature=body.temperature) as chunks:
        sent = Relay(chunks)
        try:
            yield sent
        finally:
            pieces = sent.pieces
            if not sent.ended:
                note(request, error=f"the client left after {len(pieces)} pieces")
            note(request, reply="".join(pieces), completion_tokens=sent.tokens or len(pieces))


@router.post("/chat/stream", response_class=EventSourceResponse)
async def chat_stream(
    request: Request, sent: Annotated[Relay, Depends(relay)]
) -> AsyncIterator[ServerSentEvent]:
    """Each piece of the reply as one event (`data`: the piece, a JSON string) as it comes. A
    failure once the stream has begun ends it with one `error` event, `data` in the error
    shape. The audit row has the reply so far and its usage: the usage chunk's count, or for a
    client who left, the pieces relayed."""
    try:
        async for chunk in sent.chunks:
            if chunk.usage is not None:
                sent.tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                sent.pieces.append(chunk.choices[0].delta.content)
                yield ServerSentEvent(data=sent.pieces[-1])
        sent.ended = True
    except UPSTREAM_FAILURES as error:
        sent.ended = True
        note(request, error=f"mid-stream {type(error).__name__}: {error}")
        problem = ErrorBody(error=client_error(error).info)
        yield ServerSentEvent(event="error", data=problem.model_dump())
