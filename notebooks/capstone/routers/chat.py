"""`POST /chat`, `/analyze` and `/batch`: the upstream calls, each through `Resources.ask`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from ..audit import note
from ..errors import ERROR_RESPONSES, UPSTREAM_FAILURES, UpstreamFailure, client_error
from ..models import (
    AnalyzeReply,
    AnalyzeRequest,
    BatchItem,
    BatchReply,
    BatchRequest,
    ChatReply,
    ChatRequest,
)
from ..resources import Shared

router = APIRouter(responses=ERROR_RESPONSES)


@router.post("/chat")
async def chat(body: ChatRequest, request: Request, shared: Shared) -> ChatReply:
    """One message, one upstream call."""
    note(request, user_id=body.user_id, prompt=body.message)
    reply = await shared.ask(body.message, deadline=shared.deadline(), temperature=body.temperature)
    note(request, reply=reply)
    return ChatReply(response=reply)


@router.post("/analyze")
async def analyze(body: AnalyzeRequest, request: Request, shared: Shared) -> AnalyzeReply:
    """Sentiment, topics and summary of one text: three calls at once (02)."""
    note(request, user_id=body.user_id, prompt=body.text)
    prompts = {
        "sentiment": f"Sentiment (one word): {body.text}",
        "topics": f"List 3 topics (comma-separated): {body.text}",
        "summary": f"Summarize in one sentence: {body.text}",
    }
    deadline = shared.deadline()  # one deadline for the three calls together
    # return_exceptions=True: one failed call leaves the other two answers intact.
    outcomes = await asyncio.gather(
        *(shared.ask(prompt, deadline=deadline) for prompt in prompts.values()),
        return_exceptions=True,
    )
    texts: dict[str, str] = {}
    failures: dict[str, UpstreamFailure] = {}
    for part, outcome in zip(prompts, outcomes, strict=True):
        if isinstance(outcome, UPSTREAM_FAILURES):
            failures[part] = outcome
        elif isinstance(outcome, BaseException):
            raise outcome  # a bug, not an upstream failure: let it be a 500
        else:
            texts[part] = outcome
    if not texts:
        raise next(iter(failures.values()))  # nothing to show: answer with the error
    topics = texts.get("topics")
    note(request, reply=texts.get("summary") or texts.get("sentiment") or "")
    if failures:
        note(request, error="partial: " + ", ".join(failures))
    return AnalyzeReply(
        sentiment=texts.get("sentiment"),
        topics=None if topics is None else [t.strip() for t in topics.split(",")],
        summary=texts.get("summary"),
        errors={part: client_error(error).info for part, error in failures.items()},
    )


@router.post("/batch")
async def batch(body: BatchRequest, request: Request, shared: Shared) -> BatchReply:
    """Many messages, each answered or failed on its own, all under one deadline."""
    note(request, user_id=body.user_id, prompt=" | ".join(body.messages))
    deadline = shared.deadline()

    async def one(message: str) -> BatchItem:
        try:
            reply = await shared.ask(message, deadline=deadline, temperature=body.temperature)
        except UPSTREAM_FAILURES as error:
            return BatchItem(response=None, error=client_error(error).info)
        return BatchItem(response=reply, error=None)

    results = await asyncio.gather(*(one(message) for message in body.messages))
    failed = sum(item.error is not None for item in results)
    note(request, reply=f"{len(results) - failed} answered, {failed} failed")
    return BatchReply(results=list(results))
