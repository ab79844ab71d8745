"""The offline upstream where httpx2 has no pool: Pyodide, the course's JupyterLite site.

There httpx2's `HTTPTransport` and `AsyncHTTPTransport` are httpx2-jsfetch's, which send through
the browser's `fetch`; `labsupport.upstream.pools` wraps their request methods
(`WRAP_TRANSPORTS`). These tests run that path on CPython: httpx2's two transport names point at
stand-ins for the fetch transports that fail any request reaching them, as a request leaving the
page would. tests/test_lite.py runs the same path in Chromium.
"""

from __future__ import annotations

import asyncio

import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from labsupport import Fault, NetworkBlockedError, mock_openai
from labsupport.upstream import pools

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


class _Fetch(httpx2.BaseTransport):
    """Stands in for httpx2-jsfetch's sync transport: reaching it means the mock did not answer."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        raise AssertionError(f"the request reached the browser's fetch: {request.url}")


class _AsyncFetch(httpx2.AsyncBaseTransport):
    """Stands in for httpx2-jsfetch's async transport."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise AssertionError(f"the request reached the browser's fetch: {request.url}")


@pytest.fixture
def fetch_transports(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx2's transports as in Pyodide: the stand-ins, wrapped while a mock runs."""
    monkeypatch.setattr(pools, "WRAP_TRANSPORTS", True)
    monkeypatch.setattr(httpx2, "HTTPTransport", _Fetch)
    monkeypatch.setattr(httpx2, "AsyncHTTPTransport", _AsyncFetch)


def test_the_async_sdk_is_answered_with_faults_and_counters(fetch_transports: None) -> None:
    async def three_calls() -> list[str]:
        async with httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport()) as http:
            client = AsyncOpenAI(http_client=http, max_retries=1)
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                    for _ in range(3)
                )
            )
        return [reply.choices[0].message.content or "" for reply in replies]

    with mock_openai(
        latency=0.05, faults=[Fault.on_call(1, status=500, retry_after=0.01)]
    ) as upstream:
        texts = asyncio.run(three_calls())
        stats = upstream.stats
    assert len(texts) == 3 and all(texts)
    # The first call failed with the scripted 500 and the SDK retried it: four calls seen.
    assert stats.calls == 4
    assert stats.count(500) == 1 and stats.count(200) == 3
    assert stats.max_in_flight == 3


def test_the_sync_sdk_is_answered(fetch_transports: None) -> None:
    with mock_openai(latency=0.01) as upstream:
        with httpx2.Client(transport=httpx2.HTTPTransport()) as http:
            reply = OpenAI(http_client=http).chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
            )
        assert upstream.stats.calls == 1
    assert reply.choices[0].message.content


def test_a_request_for_anywhere_else_is_refused_before_fetch(fetch_transports: None) -> None:
    async def elsewhere() -> None:
        async with httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport()) as http:
            await http.get("https://example.org/data")

    with mock_openai(), pytest.raises(NetworkBlockedError, match=r"https://example\.org/data"):
        asyncio.run(elsewhere())


def test_the_transports_are_put_back_when_the_mock_stops(fetch_transports: None) -> None:
    original = _AsyncFetch.handle_async_request
    with mock_openai():
        assert _AsyncFetch.handle_async_request is not original
    assert _AsyncFetch.handle_async_request is original


def test_a_slow_answer_is_the_sdks_timeout_error(fetch_transports: None) -> None:
    """A read that times out is httpx2's ReadTimeout, which the SDK turns into its own error
    (lesson 02's `timeout=` cell), sync and async."""

    async def timed_out() -> None:
        async with httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport()) as http:
            client = AsyncOpenAI(http_client=http, max_retries=0, timeout=0.05)
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    with mock_openai(latency=1.0) as upstream:
        with pytest.raises(openai.APITimeoutError):
            asyncio.run(timed_out())
        with httpx2.Client(transport=httpx2.HTTPTransport()) as http:
            client = OpenAI(http_client=http, max_retries=0, timeout=0.05)
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert upstream.stats.calls == 2
