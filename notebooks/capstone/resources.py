"""What every request shares (01, 03, 05): one `AsyncOpenAI` client, one semaphore bounding the
upstream calls in flight, one audit log; built by the lifespan, handed to routes by `Shared`."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Final

import openai
from fastapi import Depends, FastAPI, Request
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from .audit import AuditLog
from .errors import UpstreamBusy, UpstreamDeadline, retry_after
from .settings import Settings

MODEL: Final = "gpt-4o-mini"


@dataclass(frozen=True)
class Resources:
    """What the lifespan creates once and every request shares."""

    openai: AsyncOpenAI
    upstream_slots: asyncio.Semaphore
    audit: AuditLog
    settings: Settings

    def deadline(self) -> float:
        """The event-loop time by which a request started now must be done with the upstream."""
        return asyncio.get_running_loop().time() + self.settings.upstream_timeout

    async def ask(
        self, prompt: str, *, deadline: float, temperature: float = 0.0, max_tokens: int = 200
    ) -> str:
        """One upstream call, retried on 408/409/429/5xx/connection errors, all by `deadline`.

        A slot is held only while a call is in flight: between attempts it is released, so a
        failing call sleeping out its backoff does not keep a healthy request waiting. No call
        waits more than `slot_wait` for a slot (`UpstreamBusy`: the service is full, say so at
        once). A retry whose wait would end past the deadline is not made; the last error is
        the answer. Past the deadline, `UpstreamDeadline` says what the request waited for.
        """
        attempt = 1
        waiting_for = "a free upstream slot"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    waiting_for = "a free upstream slot"
                    await self._take_slot(deadline)
                    try:
                        waiting_for = f"the model provider (attempt {attempt})"
                        response = await self.openai.chat.completions.create(
                            model=MODEL,
                            messages=[{"role": "user", "content": prompt}],
                            temperature=temperature,
                            max_tokens=max_tokens,
                        )
                        return (response.choices[0].message.content or "").strip()
                    except openai.APIError as error:
                        failure = error
                    finally:
                        self.upstream_slots.release()
                    wait = _retry_wait(failure, attempt)
                    if wait is None or attempt > self.settings.max_retries:
                        raise failure
                    if loop.time() + wait >= deadline:
                        raise failure
                    waiting_for = f"the backoff before attempt {attempt + 1}"
                    await asyncio.sleep(wait)
                    attempt += 1
        except TimeoutError:
            raise UpstreamDeadline(
                f"The upstream part of this request did not finish within its "
                f"{self.settings.upstream_timeout:g} s deadline (waiting for {waiting_for})."
            ) from None

    @asynccontextmanager
    async def stream(
        self, prompt: str, *, temperature: float = 0.0, max_tokens: int = 200
    ) -> AsyncIterator[AsyncStream[ChatCompletionChunk]]:
        """One streamed call (08), usage in its last chunk, holding a slot until it is closed.
        Not retried (the client would get its first pieces twice); a failure to open raises
        here, one mid-stream in the `async for`."""
        await self._take_slot(self.deadline())
        try:
            chunks = await self.openai.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompt}],
                temperature=temperature,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            async with chunks:  # closed when the relay ends, also when its client left
                yield chunks
        finally:
            self.upstream_slots.release()

    async def _take_slot(self, deadline: float) -> None:
        """Acquire an upstream slot, waiting at most `slot_wait` (or until `deadline`)."""
        shed_at = asyncio.get_running_loop().time() + self.settings.slot_wait
        if shed_at >= deadline:  # the deadline comes first: its own timeout applies
            await self.upstream_slots.acquire()
            return
        try:
            async with asyncio.timeout_at(shed_at):
                await self.upstream_slots.acquire()
        except TimeoutError:
            raise UpstreamBusy(
                f"All {self.settings.max_upstream_calls} upstream slots stayed busy for "
                f"{self.settings.slot_wait:g} s; retry shortly."
            ) from None


def _retry_wait(error: openai.APIError, attempt: int) -> float | None:
    """Seconds to wait before retrying `error` (the server's Retry-After if it sent one), or
    None if retrying cannot help. Same rules and backoff as the SDK's own retries."""
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        if status not in (408, 409, 429) and status < 500:
            return None
        told = retry_after(error.response.headers)
        if told is not None and told <= 60:
            return told
    elif not isinstance(error, openai.APIConnectionError):
        return None
    return min(0.5 * 2.0 ** (attempt - 1), 8.0) * (1 - 0.25 * random.random())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Resources]]:
    """Build the shared resources at start-up and close them at shutdown (05)."""
    settings: Settings = app.state.settings
    # The exit stack closes whatever opened, in reverse order, if a later step fails too.
    async with AsyncExitStack() as opened:
        audit = AuditLog(settings)
        await audit.open()
        # Closed last: the server has finished every request by then, so the audit rows of
        # those last requests are queued and get drained.
        opened.push_async_callback(audit.close)
        client = AsyncOpenAI(
            api_key=os.getenv("OPENAI_API_KEY"),
            base_url=settings.base_url,
            timeout=settings.upstream_timeout,
            max_retries=0,  # Resources.ask retries, within the request's deadline
        )
        opened.push_async_callback(client.close)
        slots = asyncio.Semaphore(settings.max_upstream_calls)
        yield {"resources": Resources(client, slots, audit, settings)}


async def get_resources(request: Request) -> Resources:
    # `async def`, though it never awaits: FastAPI runs a plain `def` dependency in its thread
    # pool, a round trip to another thread on every request for one attribute lookup.
    resources: Resources = request.state.resources
    return resources


Shared = Annotated[Resources, Depends(get_resources)]
