"""Server-sent events in a real browser: Chromium's `EventSource` reads a relay's stream.

Notebook 08 and the capstone read their streams with httpx; a chat page reads them with the
browser's `EventSource`, which parses the `text/event-stream` itself, dispatches each event by
its name, and reconnects when a stream ends unless the page closes it. This test serves a relay
with uvicorn on 127.0.0.1 (in a thread; the upstream is the offline mock of this process) and a
page whose script collects the events: every piece arrives as a `message` whose data is a JSON
string, and a stream that fails mid-way ends with one `error` event whose data is the course's
error shape (the browser also fires `error`, without data, when the connection drops: the page
tells them apart by `data`). `EventSource` only GETs, so the relay here takes the message as a
query parameter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import uvicorn
from chromium import chromium
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from openai import APIError, AsyncOpenAI

import labsupport as lab
from labsupport import Fault, MockUpstream
from labsupport.network import free_port
from labsupport.upstream.replies import reply_to

MESSAGE = "Explain to a new engineer why the first token of a reply matters"
ERROR = {"error": {"type": "upstream_error", "message": "The model provider failed mid-answer."}}

# The page (`/?message=…`): collect the events of one stream, then close it (else EventSource
# reconnects).
PAGE = """<!doctype html><title>stream</title><script>
window.events = [];
const source = new EventSource("/chat/stream" + location.search);
source.onmessage = (event) => window.events.push(["message", JSON.parse(event.data)]);
source.addEventListener("error", (event) => {
  if (event.data !== undefined) window.events.push(["error", JSON.parse(event.data)]);
  source.close();
  window.ended = true;
});
source.addEventListener("done", () => { source.close(); window.ended = true; });
</script>"""


def relay_app() -> FastAPI:
    client = AsyncOpenAI(api_key=lab.PLACEHOLDER_KEY)
    app = FastAPI()

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/chat/stream", response_class=EventSourceResponse)
    async def chat_stream(message: str) -> AsyncIterator[ServerSentEvent]:
        try:
            async with await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": message}], stream=True
            ) as stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield ServerSentEvent(data=chunk.choices[0].delta.content)
            yield ServerSentEvent(event="done", data=None)
        except APIError:
            yield ServerSentEvent(event="error", data=ERROR)

    return app


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockUpstream]:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with lab.mock_openai(time_to_first_token=0.01, time_per_token=0.01) as mock:
        yield mock


@pytest.fixture
def served() -> Iterator[str]:
    """The relay, served by uvicorn in a thread on a free loopback port; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(relay_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="sse relay", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    assert server.started, "the relay did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def events_in_chromium(url: str) -> list[Any]:
    with chromium("the EventSource check") as browser:
        page = browser.new_page()
        try:
            page.goto(f"{url}/?{urlencode({'message': MESSAGE})}")
            page.wait_for_function("() => window.ended === true", timeout=60_000)
            events: list[Any] = page.evaluate("() => window.events")
        finally:
            page.close()
    return events


@pytest.mark.slow
@pytest.mark.needs("chromium")
def test_event_source_reads_each_piece(upstream: MockUpstream, served: str) -> None:
    events = events_in_chromium(served)
    assert {name for name, _ in events} == {"message"}
    assert "".join(data for _, data in events) == reply_to(MESSAGE).text
    assert len(events) == upstream.stats.tokens > 1  # one event per piece, as relayed


@pytest.mark.slow
@pytest.mark.needs("chromium")
def test_event_source_gets_one_error_event_when_the_upstream_fails(
    upstream: MockUpstream, served: str
) -> None:
    upstream.configure(faults=[Fault.on_call(1, status=500, after=3)])
    events = events_in_chromium(served)
    assert [name for name, _ in events] == ["message"] * 3 + ["error"]
    assert events[-1][1] == ERROR
