"""An aiohttp response body sent as the upstream paces it, and only as the client reads it.

aioresponses builds every response it answers with a reader that already holds the whole body,
so a stream's events would all arrive at its end, its first token as late as its last. A streamed
answer's response gets a `PacedBody` instead: aiohttp's public `StreamReader`, fed
from the same paced parts the httpx path reads (`mock._AnswerStream`), so both stacks see the
same time to first token, pace, and counters:

* **On demand.** A `StreamReader` enters its timer each time a read finds no data and waits
  (the timer is how aiohttp bounds `sock_read`); here entering it asks the upstream for the next
  part, which comes after the answer's pace. As on the httpx path, a part is sent when the
  client reads: a client that stops reading is sent nothing more.
* **A client that leaves.** Closing or releasing the response before the end (the SDK does when
  a stream is left early) ends the stream there: the upstream counts it abandoned (after its
  first event) or cancelled (before), at once, as the httpx path does.
* **A timeout.** A part that does not come within the client's read timeout ends the read with
  the error the parts raise (`aiohttp.SocketTimeoutError`, which the SDK reports as a timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol

from aiohttp import ClientResponse, StreamReader

__all__ = ["AnswerParts", "PacedBody", "paced_response_class"]


class AnswerParts(Protocol):
    """The upstream's parts of one answer, each sent after its wait when asked for."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None:
        """Stop sending (the parts not asked for are never sent) and record the answer."""

    def client_left(self) -> None:
        """Record the answer now: the client closed it (after its last part it was delivered,
        after its first abandoned, before that cancelled)."""


class _Demand:
    """The `StreamReader`'s protocol and timer at once. A `StreamReader` asks its protocol
    whether it is `connected` and tells it to pause or resume reading; it enters its timer
    (`with timer:`) around each wait for data and calls `assert_timeout()` as it reads. Here the
    wait is the client asking for more, and nothing is ever paused: parts come one at a time."""

    def __init__(self) -> None:
        self.wanted = asyncio.Event()
        self.connected = True  # False once the client closed the body: reads then fail

    def pause_reading(self) -> None:
        """Nothing to pause: the next part is not sent before the client asks for it."""

    def resume_reading(self, resume_parser: bool = True) -> None:
        """Nothing was paused."""

    def __enter__(self) -> _Demand:
        self.wanted.set()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def assert_timeout(self) -> None:
        """The read timeout is the parts' to enforce (they know the answer's waits)."""


class PacedBody(StreamReader):
    """A response body that asks `parts` for its next part each time the client's read waits.

    Build it inside the event loop that reads it: it starts the task that sends the parts."""

    def __init__(self, parts: AnswerParts) -> None:
        demand = _Demand()
        loop = asyncio.get_running_loop()
        # Small parts, one at a time: the limit (aiohttp's default) is never reached.
        super().__init__(demand, 2**16, timer=demand, loop=loop)  # type: ignore[arg-type]
        self._demand = demand
        self._parts = parts
        self._ended = False
        self._sending = loop.create_task(self._send())

    async def _send(self) -> None:
        parts = self._parts.__aiter__()
        try:
            while True:
                await self._demand.wanted.wait()
                self._demand.wanted.clear()
                try:
                    part = await anext(parts)
                except StopAsyncIteration:
                    break
                self.feed_data(part)
        except Exception as error:  # the parts' timeout: the waiting read raises it
            self.set_exception(error)
        finally:
            await self._parts.aclose()
        self._ended = True
        self.feed_eof()

    def feed_eof(self) -> None:
        # aioresponses marks the body of every response it builds as ended; this one ends
        # when the upstream's last part is sent.
        if self._ended:
            super().feed_eof()

    def stop(self) -> None:
        """The client closed the response: record the answer and send nothing more."""
        if self._sending.done():
            return
        self._demand.connected = False
        self._parts.client_left()
        if not self._sending.get_loop().is_closed():
            self._sending.cancel()


class _PacedResponse(ClientResponse):
    """A response whose body is a `PacedBody` (the class attribute `paced`)."""

    paced: PacedBody

    @property
    def content(self) -> StreamReader:
        return self.paced

    @content.setter
    def content(self, reader: StreamReader) -> None:
        """aioresponses gives each response a reader holding the whole body; this response
        keeps its paced one."""

    def close(self) -> None:
        self.paced.stop()
        super().close()

    def release(self) -> Any:
        self.paced.stop()
        return super().release()


def paced_response_class(parts: AnswerParts) -> type[ClientResponse]:
    """A response class (aioresponses' `CallbackResult(response_class=…)`) whose body is sent as
    `parts` are asked for."""
    body = PacedBody(parts)

    class PacedResponse(_PacedResponse):
        paced = body

    return PacedResponse
