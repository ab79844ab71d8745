"""The offline upstream in process: the real SDK talks to it, answers well, cannot leak."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpcore2
import httpx
import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from openai.types.responses import Response

import labsupport
from labsupport import Fault, NetworkBlockedError, RateLimit, mock_openai
from labsupport.upstream import Upstream

LATENCY = 0.1
TEXT = (
    "Machine learning is transforming how businesses operate. "
    "Companies are investing heavily in AI infrastructure."
)


@pytest.fixture
def upstream() -> Iterator[labsupport.MockUpstream]:
    with mock_openai(latency=LATENCY) as running:
        yield running


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


# -- the seed note's snippets run unchanged ---------------------------------------------------


async def parallel_analysis(aclient: AsyncOpenAI, text: str) -> dict[str, object]:
    """The seed note's Pattern 1, verbatim but for the client being passed in."""

    async def get_sentiment() -> str:
        r = await aclient.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Sentiment (one word): {text}"}],
            max_tokens=5,
            temperature=0.0,
        )
        return r.choices[0].message.content.strip()  # type: ignore[union-attr]

    async def get_topics() -> list[str]:
        r = await aclient.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"List 3 topics (comma-separated): {text}"}],
            max_tokens=30,
            temperature=0.0,
        )
        return [t.strip() for t in r.choices[0].message.content.split(",")]  # type: ignore[union-attr]

    async def get_summary() -> str:
        r = await aclient.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarize in one sentence: {text}"}],
            max_tokens=50,
            temperature=0.0,
        )
        return r.choices[0].message.content.strip()  # type: ignore[union-attr]

    sentiment, topics, summary = await asyncio.gather(get_sentiment(), get_topics(), get_summary())
    return {"sentiment": sentiment, "topics": topics, "summary": summary}


def test_parallel_analysis_takes_one_latency_not_three(upstream: labsupport.MockUpstream) -> None:
    """Gathered, the three calls are in flight together; awaited one by one, one at a time.
    The two times are compared with each other, measured in one run, not with a fixed bound."""

    async def main() -> tuple[dict[str, object], float, float]:
        aclient = AsyncOpenAI(api_key="test-key")
        start = time.perf_counter()
        result = await parallel_analysis(aclient, TEXT)
        gathered = time.perf_counter() - start
        start = time.perf_counter()
        for prompt in ("Sentiment (one word): good", "Summarize: a. b.", "hello"):
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=ask(prompt))
        return result, gathered, time.perf_counter() - start

    result, gathered, one_by_one = asyncio.run(main())
    assert result == {
        "sentiment": "Positive",
        "topics": ["machine learning", "businesses", "AI infrastructure"],
        "summary": "Machine learning is transforming how businesses operate.",
    }
    calls = upstream.stats.timeline
    assert len(calls) == 6
    gathered_calls, awaited_calls = calls[:3], calls[3:]
    assert max(c.start for c in gathered_calls) < min(c.end for c in gathered_calls)
    assert all(a.end <= b.start for a, b in itertools.pairwise(awaited_calls))
    assert gathered >= LATENCY and one_by_one >= 3 * LATENCY
    assert 2 * gathered < one_by_one


def test_rate_limited_parallel_respects_its_semaphore() -> None:
    """The seed's Pattern 3 against an upstream that allows 5 in flight: no 429 at all."""
    with mock_openai(latency=0.02, rate_limit=RateLimit(max_concurrent=5)) as upstream:
        aclient = AsyncOpenAI(api_key="test-key")

        async def rate_limited_parallel(texts: list[str], max_concurrent: int = 5) -> list[str]:
            semaphore = asyncio.Semaphore(max_concurrent)

            async def process_with_limit(text: str) -> str:
                async with semaphore:
                    r = await aclient.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": f"Summarize in 5 words: {text}"}],
                        max_tokens=20,
                    )
                    return r.choices[0].message.content  # type: ignore[return-value]

            return await asyncio.gather(*[process_with_limit(t) for t in texts])

        texts = [f"Report {i} says sales grew in region {i}. More follows." for i in range(100)]
        summaries = asyncio.run(rate_limited_parallel(texts))
    assert summaries[7] == "Report 7 says sales grew."
    assert upstream.stats.calls == 100
    assert upstream.stats.count(429) == 0
    assert upstream.stats.max_in_flight == 5


def test_unbounded_gather_trips_the_rate_limit() -> None:
    # Each answer takes 0.5 s: the 20 calls all arrive while the first 5 are still in flight
    # (at 0.02 s, a loaded machine let one finish first, and 14 were refused).
    limit = RateLimit(max_concurrent=5, retry_after=0.01)
    with mock_openai(latency=0.5, rate_limit=limit) as upstream:
        aclient = AsyncOpenAI(api_key="test-key", max_retries=0)

        async def main() -> list[object]:
            calls = [
                aclient.chat.completions.create(model="gpt-4o-mini", messages=ask(f"hi {i}"))
                for i in range(20)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

        results = asyncio.run(main())
    errors = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(errors) == 15
    assert upstream.stats.count(429) == 15
    assert upstream.stats.max_in_flight == 5
    assert "at most 5 requests in flight" in str(errors[0])


def test_sync_client_blocks_its_thread_async_client_does_not(
    upstream: labsupport.MockUpstream,
) -> None:
    """Three sync calls made on the event loop run one after another; from threads, together."""
    client = OpenAI(api_key="test-key")

    async def on_the_loop() -> float:
        start = time.perf_counter()

        async def call() -> None:
            client.chat.completions.create(model="gpt-4o-mini", messages=ask("hello"))

        await asyncio.gather(call(), call(), call())
        return time.perf_counter() - start

    on_loop = asyncio.run(on_the_loop())
    assert on_loop >= 3 * LATENCY
    assert upstream.stats.max_in_flight == 1
    assert {call.client for call in upstream.stats.timeline} == {"sync"}

    upstream.reset()

    async def in_threads() -> None:
        def call() -> None:
            client.chat.completions.create(model="gpt-4o-mini", messages=ask("hello"))

        await asyncio.gather(*(asyncio.to_thread(call) for _ in range(3)))

    # Counted, not timed: a wall-clock ratio of the two runs failed with `yes` on the other
    # core (the threaded run took 0.50 s, the one on the loop 0.32 s), while the upstream still
    # saw the three calls in flight together.
    asyncio.run(in_threads())
    assert upstream.stats.max_in_flight == 3


# -- replies ---------------------------------------------------------------------------------


def test_replies_parse_strictly_as_the_sdk_types(upstream: labsupport.MockUpstream) -> None:
    raw = OpenAI(api_key="test-key").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=ask("Summarize in 5 words: " + TEXT), max_tokens=20
    )
    completion = ChatCompletion.model_validate(raw.http_response.json(), strict=True)
    assert completion.choices[0].message.content == "Machine learning is transforming."
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens == 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    raw_response = OpenAI(api_key="test-key").responses.with_raw_response.create(
        model="gpt-4o-mini", input="Sentiment (one word): the outage was terrible"
    )
    parsed = Response.model_validate(raw_response.http_response.json())
    assert parsed.output_text == "Negative"


def test_max_tokens_truncates_with_finish_reason_length(upstream: labsupport.MockUpstream) -> None:
    reply = OpenAI(api_key="test-key").chat.completions.create(
        model="gpt-4o-mini", messages=ask("Summarize in one sentence: " + TEXT), max_tokens=3
    )
    assert reply.choices[0].message.content == "Machine learning is"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_replies_and_usage_are_deterministic(upstream: labsupport.MockUpstream) -> None:
    client = OpenAI(api_key="test-key")
    first, second = (
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("Tell me about queues"))
        for _ in range(2)
    )
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage == second.usage
    assert "queues" in (first.choices[0].message.content or "")


def test_streaming_with_both_clients(upstream: labsupport.MockUpstream) -> None:
    prompt = ask("Summarize: Streaming sends tokens as they come. The rest waits.")
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in OpenAI(api_key="test-key").chat.completions.create(
            model="gpt-4o-mini", messages=prompt, stream=True
        )
        if chunk.choices
    ]
    assert "".join(pieces) == "Streaming sends tokens as they come."
    assert len(pieces) > 3

    async def main() -> tuple[str, int]:
        stream = await AsyncOpenAI(api_key="test-key").chat.completions.create(
            model="gpt-4o-mini",
            messages=prompt,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, tokens = "", 0
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            elif chunk.usage:
                tokens = chunk.usage.completion_tokens
        return text, tokens

    assert asyncio.run(main()) == ("Streaming sends tokens as they come.", 7)
    assert [c.client for c in upstream.stats.timeline] == ["sync", "async"]
    assert upstream.stats.count(200) == 2


# -- faults ----------------------------------------------------------------------------------


def test_a_scripted_429_surfaces_as_rate_limit_error(upstream: labsupport.MockUpstream) -> None:
    upstream.configure(faults=[Fault.on_call(1, status=429)])
    with pytest.raises(openai.RateLimitError) as caught:
        OpenAI(api_key="test-key", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=ask("hello")
        )
    assert caught.value.status_code == 429


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_scripted_statuses_raise_the_sdks_own_errors(
    upstream: labsupport.MockUpstream, status: int, error: type[Exception]
) -> None:
    upstream.configure(faults=[Fault.matching("explode", status=status)])
    with pytest.raises(error):
        OpenAI(api_key="test-key", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=ask("please explode")
        )
    reply = OpenAI(api_key="test-key", max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=ask("please behave")
    )
    assert reply.choices[0].message.content


def test_default_retries_hide_a_single_failure(upstream: labsupport.MockUpstream) -> None:
    """The SDK retries a 500 by itself: call 1 fails, its retry (call 2) succeeds."""
    upstream.configure(latency=0.0, faults=[Fault.on_call(1, status=500, retry_after=0.01)])
    reply = OpenAI(api_key="test-key").chat.completions.create(
        model="gpt-4o-mini", messages=ask("hello")
    )
    assert reply.choices[0].message.content
    assert upstream.stats.status_counts == {500: 1, 200: 1}


def test_a_slow_answer_past_the_timeout_is_an_api_timeout_error(
    upstream: labsupport.MockUpstream,
) -> None:
    upstream.configure(faults=[Fault.matching("slow", delay=5.0)])

    async def main() -> float:
        client = AsyncOpenAI(api_key="test-key", max_retries=0, timeout=0.2)
        start = time.perf_counter()
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=ask("slow one"))
        return time.perf_counter() - start

    assert asyncio.run(main()) >= 0.2
    # Abandoned, not answered: the client gave up at its timeout, before the 5 s answer came.
    assert upstream.stats.status_counts == {None: 1}
    assert upstream.stats.in_flight == 0

    with pytest.raises(openai.APITimeoutError):
        OpenAI(api_key="test-key", max_retries=0, timeout=0.2).chat.completions.create(
            model="gpt-4o-mini", messages=ask("slow again")
        )


def test_a_per_window_rate_limit(upstream: labsupport.MockUpstream) -> None:
    upstream.configure(latency=0.0, rate_limit=RateLimit(max_per_window=3, window=10.0))
    client = OpenAI(api_key="test-key", max_retries=0)
    outcomes = []
    for _ in range(5):
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
            outcomes.append(200)
        except openai.RateLimitError as error:
            outcomes.append(error.status_code)
            assert error.response.headers["retry-after"] == "1"
    assert outcomes == [200, 200, 200, 429, 429]


def test_a_fraction_of_failures_is_seeded(upstream: labsupport.MockUpstream) -> None:
    def failures(seed: int) -> list[int]:
        upstream.configure(latency=0.0, seed=seed, faults=[Fault.fraction(0.3, status=503)])
        client = OpenAI(api_key="test-key", max_retries=0)
        failed = []
        for i in range(40):
            try:
                client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
            except openai.InternalServerError:
                failed.append(i)
        return failed

    first = failures(seed=1)
    assert first == failures(seed=1)
    assert first != failures(seed=2)
    assert 4 <= len(first) <= 20


def test_latency_jitter_is_seeded_and_bounded() -> None:
    """The waits the upstream plans are read from its plan, with no clock involved; the calls
    made through the SDK then take at least their planned wait."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": ask("hi")}).encode()

    def planned(seed: int) -> list[float]:
        upstream = Upstream(latency=0.05, jitter=0.03, seed=seed)
        return [upstream.answer("POST", "chat/completions", body, "sync").wait for _ in range(5)]

    spread = planned(seed=3)
    assert spread == planned(seed=3) and spread != planned(seed=4)
    assert all(0.02 <= wait <= 0.08 for wait in spread)
    assert max(spread) - min(spread) > 0.005

    with mock_openai(latency=0.05, jitter=0.03, seed=3) as upstream:
        client = OpenAI(api_key="test-key")
        for _ in range(5):
            client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
    durations = [call.duration for call in upstream.stats.timeline]
    assert all(took >= wait - 0.001 for took, wait in zip(durations, spread, strict=True))


# -- interception and the closed network -----------------------------------------------------


def test_a_stray_openai_base_url_is_answered_by_the_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://gateway.example.invalid/openai/v1")
    with mock_openai(latency=0.0) as upstream:
        reply = OpenAI(api_key="test-key").chat.completions.create(
            model="gpt-4o-mini", messages=ask("hello")
        )
    assert reply.choices[0].message.content
    assert upstream.stats.calls == 1


@pytest.mark.parametrize("library", ["httpx", "httpx2", "openai"])
def test_non_loopback_requests_are_refused_before_any_socket(
    upstream: labsupport.MockUpstream, monkeypatch: pytest.MonkeyPatch, library: str
) -> None:
    """Nothing is sent: every socket connect is recorded, and there must be none."""
    attempts: list[object] = []

    def record(self: object, address: object) -> None:
        attempts.append(address)
        raise AssertionError("a socket connect was attempted")

    monkeypatch.setattr("socket.socket.connect", record)

    def lookup(*args: object, **kwargs: object) -> list[object]:
        attempts.append(args)
        return []

    monkeypatch.setattr("socket.getaddrinfo", lookup)
    with pytest.raises(Exception) as caught:
        if library == "httpx":
            httpx.get("https://example.invalid/")
        elif library == "httpx2":
            httpx2.get("https://example.invalid/")
        else:
            # The SDK's default retries: a refusal must not be retried.
            client = OpenAI(api_key="test-key", base_url="https://example.invalid/v1")
            monkeypatch.setattr(client, "_sleep_for_retry", lambda **_: attempts.append("retry"))
            client.models.list()
    blocked = caught.value
    # To the SDK it is its own connection error, raised as it is (never retried, never a
    # timeout); to httpx and httpx2, their connect error.
    assert isinstance(
        blocked, openai.APIConnectionError if library == "openai" else httpx.ConnectError
    )
    assert not isinstance(blocked, openai.APITimeoutError)
    assert isinstance(blocked, NetworkBlockedError)
    assert "blocked a request to https://example.invalid" in str(blocked)
    assert attempts == []


def test_other_endpoints_of_the_api_get_a_clear_404(upstream: labsupport.MockUpstream) -> None:
    with pytest.raises(
        openai.NotFoundError, match="offline lab upstream has no POST /images/generations"
    ):
        OpenAI(api_key="test-key").images.generate(model="gpt-image-1", prompt="a cat")
    assert next(m.id for m in OpenAI(api_key="test-key").models.list()) == "gpt-4o-mini"


def test_the_mock_still_sees_the_locked_sdks_transport(upstream: labsupport.MockUpstream) -> None:
    """If an SDK release moves off httpx2/httpcore2, this fails instead of the mock leaking."""
    client = AsyncOpenAI(api_key="test-key")
    assert isinstance(client._client, httpx2.AsyncClient)
    # The async pool's method is the lab's wrapper.
    patched = httpcore2.AsyncConnectionPool.handle_async_request
    assert getattr(patched, "__module__", "") == "labsupport.upstream.pools"

    async def main() -> None:
        await client.chat.completions.create(model="gpt-4o-mini", messages=ask("hello"))
        await client.close()

    asyncio.run(main())
    assert upstream.stats.calls == 1
    assert upstream.stats.timeline[0].client == "async"


def test_stop_removes_every_patch() -> None:
    original = httpcore2.AsyncConnectionPool.handle_async_request
    upstream = mock_openai().start()
    assert httpcore2.AsyncConnectionPool.handle_async_request is not original
    upstream.stop()
    upstream.stop()
    assert httpcore2.AsyncConnectionPool.handle_async_request is original
    assert not upstream.active


def test_the_mock_is_thread_safe_under_concurrent_sync_calls(
    upstream: labsupport.MockUpstream,
) -> None:
    upstream.configure(latency=0.01)
    client = OpenAI(api_key="test-key")
    threads = [
        threading.Thread(
            target=client.chat.completions.create,
            kwargs={"model": "gpt-4o-mini", "messages": ask("hi")},
        )
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = upstream.stats
    assert stats.calls == 16 and stats.count(200) == 16 and stats.in_flight == 0
    assert sorted(call.index for call in stats.timeline) == list(range(1, 17))


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: mock_openai(latency=-1), "latency must be a finite number of seconds ≥ 0"),
        (lambda: mock_openai(latency=math.nan), "latency must be a finite number"),
        (lambda: mock_openai(latency="fast"), "latency must be a number of seconds"),  # type: ignore[arg-type]
        (lambda: mock_openai(faults=["boom"]), "faults must be labsupport.Fault"),  # type: ignore[list-item]
        (lambda: mock_openai(rate_limit=5), "rate_limit must be a labsupport.RateLimit"),  # type: ignore[arg-type]
        (lambda: Fault.on_call(0, status=500), "call number must be an int ≥ 1"),
        (lambda: Fault.on_call(2), "exactly one of status="),
        (lambda: Fault.on_call(2, status=418), "status must be one of 400"),
        (lambda: Fault.matching("(", status=500), "not a valid regular expression"),
        (
            lambda: Fault.fraction(1.5, status=500),
            "rate must be a finite number > 0 and ≤ 1",
        ),
        (lambda: RateLimit(), "needs max_concurrent"),
        (lambda: RateLimit(max_concurrent=0), "max_concurrent must be an int ≥ 1"),
        (lambda: mock_openai(faults=None), "faults must be a list of labsupport.Fault"),  # type: ignore[arg-type]
        (lambda: mock_openai(speed=2), "unknown upstream setting 'speed'"),  # type: ignore[call-arg]
        (lambda: mock_openai(0.1), "settings must be a labsupport.UpstreamSettings"),  # type: ignore[arg-type]
        (lambda: mock_openai(base_urls="https://x/v1"), "base_urls must be a list"),
        (lambda: mock_openai(base_urls=["ftp://x"]).start(), "base URLs must be http"),
    ],
)
def test_bad_arguments_are_named_in_the_error(make: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make()  # type: ignore[operator]


def test_streaming_the_responses_api_sends_the_sdks_events(
    upstream: labsupport.MockUpstream,
) -> None:
    client = OpenAI(api_key="test-key")
    events = list(client.responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text
    with pytest.raises(openai.BadRequestError, match="does not run background responses"):
        client.responses.create(model="gpt-4o-mini", input="hi", background=True)
    assert upstream.stats.status_counts == {200: 1, 400: 1}


@pytest.mark.parametrize("latency", [0.0, 0.01])  # answered at once, or through a paced stream
def test_the_sync_and_async_pools_give_the_same_answer(latency: float) -> None:
    """The sync and the async pools' requests for the API are answered by one mock: the same
    HTTP answer, counted as each client's."""
    body = {"model": "gpt-4o-mini", "messages": ask("Summarize in 5 words: one task.")}
    url = "https://api.openai.com/v1/chat/completions?probe=1"

    async def through_the_async_pool() -> httpx2.Response:
        async with httpx2.AsyncClient() as client:
            return await client.post(url, json=body, headers={"x-stainless-async": "async:x"})

    with mock_openai(latency=latency) as upstream:
        fast = asyncio.run(through_the_async_pool())
        with httpx2.Client() as client:
            slow = client.post(url, json=body)
        stats = upstream.stats

    def drop_varying(headers: httpx2.Headers) -> dict[str, str]:
        return {k: v for k, v in headers.items() if k != "x-request-id"}

    assert (fast.status_code, slow.status_code) == (200, 200)
    assert drop_varying(fast.headers) == drop_varying(slow.headers)
    assert fast.headers["content-type"] == "application/json"
    assert {k: v for k, v in fast.json().items() if k not in ("id", "created")} == {
        k: v for k, v in slow.json().items() if k not in ("id", "created")
    }
    assert [call.client for call in stats.timeline] == ["async", "sync"]
    assert stats.count(200) == 2
    assert stats.max_in_flight == 1


def test_a_respx_mock_started_inside_the_labs_answers_first_then_the_lab_again() -> None:
    """respx patches the same pool methods over the lab's: while it runs, its routes answer
    first (a test's own stub); once it stops, the lab's mock answers again, and when the lab
    stops too the pools are as they were."""
    import respx

    url = "https://api.openai.com/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": ask("hi")}
    original = httpcore.ConnectionPool.handle_request
    with mock_openai(latency=0) as upstream:
        with respx.mock(using="httpcore") as router:
            router.post(url).respond(418)
            stubbed = httpx.post(url, json=body).status_code
        answered = httpx.post(url, json=body).status_code
    assert (stubbed, answered, upstream.stats.calls) == (418, 200, 1)
    assert httpcore.ConnectionPool.handle_request is original


# -- aiohttp, answered in process --------------------------------------------------------------


def aiohttp_client(**options: object) -> AsyncOpenAI:
    """The SDK on its aiohttp backend, as openai's README recommends for async concurrency."""
    return AsyncOpenAI(api_key="test-key", http_client=openai.DefaultAioHttpClient(), **options)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_the_sdks_aiohttp_backend_is_answered_by_the_mock(
    upstream: labsupport.MockUpstream,
) -> None:
    async with aiohttp_client(max_retries=0) as client:
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=ask("Sentiment (one word): I love this course")
        )
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=ask("Sentiment (one word): I love this course"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        faults = [Fault.on_call(1, status=500)]
        with upstream.configured(faults=faults), pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
        with upstream.configured(latency=1.0), pytest.raises(openai.APITimeoutError):
            await client.with_options(timeout=0.05).chat.completions.create(
                model="gpt-4o-mini", messages=ask("hi")
            )
        stats = upstream.stats
    assert reply.choices[0].message.content == "Positive"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Positive"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 1
    # The timed-out call is counted as one, as the httpx stacks' are.
    assert (stats.calls, stats.count(None), stats.in_flight) == (1, 1, 0)


@pytest.mark.anyio
async def test_aiohttp_refusals_are_immediate_and_name_the_lab(
    upstream: labsupport.MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused at once: never retried by the SDK, never a timeout, no socket opened."""
    import aiohttp

    attempts: list[object] = []

    def resolve(*args: object, **kwargs: object) -> list[object]:
        attempts.append(args)
        return []

    monkeypatch.setattr("socket.getaddrinfo", resolve)
    async with aiohttp_client(base_url="https://example.invalid/v1") as client:
        monkeypatch.setattr(client, "_sleep_for_retry", _record_retry(attempts))
        with pytest.raises(openai.APIConnectionError) as caught:
            await client.models.list()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(NetworkBlockedError, match=r"blocked a request to https://example\.org"):
            await session.get("https://example.org/")
    assert isinstance(caught.value, NetworkBlockedError)
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert "blocked a request to https://example.invalid" in str(caught.value)
    assert attempts == []


def _record_retry(attempts: list[object]) -> object:
    async def retry(**_: object) -> None:
        attempts.append("retry")

    return retry


@pytest.mark.anyio
async def test_aiohttp_still_reaches_loopback() -> None:
    import aiohttp

    with labsupport.FakeServer(latency=0.0) as server, mock_openai() as upstream:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{server.base_url}/models") as answer,
        ):
            listed = await answer.json()
        server.wait_idle()
    assert answer.status == 200 and listed["object"] == "list"
    assert upstream.stats.calls == 0  # the fake server answered, not the mock


@pytest.mark.anyio
async def test_a_late_error_is_counted_under_its_status_when_aiohttp_checks_it_first() -> None:
    """`ClientSession(raise_for_status=True)` checks the status before the body is read: the
    late 500 still counts as a 500, as the SDK's call on httpx2 does (a whole answer comes
    whole), and aiohttp's error names it."""
    import aiohttp

    url = "https://api.openai.com/v1/chat/completions"
    request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": ask("hi")}
    faults = [Fault.matching("hi", status=500)]
    with mock_openai(latency=0.05, faults=faults) as upstream:
        async with aiohttp.ClientSession(raise_for_status=True) as session:
            with pytest.raises(aiohttp.ClientResponseError) as caught:
                await session.post(url, json=request)
        on_aiohttp = upstream.stats
        upstream.reset()
        async with AsyncOpenAI(api_key="test-key", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(**request)
        on_httpx2 = upstream.stats
    assert caught.value.status == 500
    assert (on_aiohttp.status_counts, on_aiohttp.cancelled) == ({500: 1}, 0)
    assert (on_httpx2.status_counts, on_httpx2.cancelled) == ({500: 1}, 0)


STACKS = ["httpx2", "httpx", "aiohttp"]


def client_on(stack: str) -> AsyncOpenAI:
    if stack == "aiohttp":
        return aiohttp_client()
    if stack == "httpx":
        return AsyncOpenAI(api_key="test-key", http_client=httpx.AsyncClient())  # type: ignore[arg-type]
    return AsyncOpenAI(api_key="test-key")


@pytest.mark.anyio
@pytest.mark.parametrize("stack", STACKS)
async def test_the_counters_are_the_same_whichever_stack_sent_the_requests(stack: str) -> None:
    """One script — three calls at once against a limit of two in flight, the second a scripted
    500, then a call past its timeout — counts the same on every HTTP stack the SDK runs on."""
    limit = RateLimit(max_concurrent=2)
    faults = [Fault.on_call(2, status=500)]
    with mock_openai(latency=0.3, faults=faults, rate_limit=limit) as upstream:
        async with client_on(stack) as client:
            calls = [
                client.with_options(max_retries=0).chat.completions.create(
                    model="gpt-4o-mini", messages=ask(f"question {number}")
                )
                for number in range(3)
            ]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            at_once = upstream.stats
            with upstream.configured(latency=1.0), pytest.raises(openai.APITimeoutError):
                await client.with_options(timeout=0.05, max_retries=0).chat.completions.create(
                    model="gpt-4o-mini", messages=ask("slow")
                )
            timed_out = upstream.stats
    kinds = [type(outcome).__name__ for outcome in outcomes]
    assert kinds == ["ChatCompletion", "InternalServerError", "RateLimitError"]
    assert (at_once.calls, at_once.status_counts, at_once.max_in_flight) == (
        3,
        {200: 1, 500: 1, 429: 1},
        2,
    )
    assert (timed_out.calls, timed_out.status_counts, timed_out.in_flight) == (1, {None: 1}, 0)
