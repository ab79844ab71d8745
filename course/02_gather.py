# %% [markdown]
# # 02 · gather: many calls at once, and surviving the ones that fail
#
# **Objective.** Run independent OpenAI calls together with `asyncio.gather`, and decide what
# happens when one of them fails or hangs: lose everything, keep the rest, or cancel the rest.
#
# **You will:** measure the seed's `parallel_analysis` awaited one by one and gathered · make
# one call fail and compare a bare `gather`, per-task `try/except`, `return_exceptions=True` and
# `asyncio.TaskGroup` · bound a slow call with a timeout · fan out inside a FastAPI endpoint ·
# write a fan-out that survives a failure and get it checked.

# %%
import labsupport as lab

upstream = lab.setup(latency=0.1)
LATENCY = upstream.latency

# %% [markdown]
# ## Three questions about one text
#
# The seed's `parallel_analysis` asks the model three independent questions about a text:
# its sentiment, three topics and a one-sentence summary. Here are the three calls as functions.

# %%
import asyncio
import os
import time

import openai
from openai import AsyncOpenAI

aclient = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))

TEXT = (
    "Machine learning is transforming how businesses operate. "
    "Companies are investing heavily in AI infrastructure."
)


async def get_sentiment(text: str) -> str:
    r = await aclient.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Sentiment (one word): {text}"}],
        max_tokens=5,
        temperature=0.0,
    )
    return r.choices[0].message.content.strip()


async def get_topics(text: str) -> list[str]:
    r = await aclient.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"List 3 topics (comma-separated): {text}"}],
        max_tokens=30,
        temperature=0.0,
    )
    return [t.strip() for t in r.choices[0].message.content.split(",")]


async def get_summary(text: str) -> str:
    r = await aclient.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize in one sentence: {text}"}],
        max_tokens=50,
        temperature=0.0,
    )
    return r.choices[0].message.content.strip()


# %% [markdown]
# ## The trap: awaiting independent calls one by one
#
# Each `await` waits for its answer before the next line runs, so the three calls run one after
# another: three latencies, although no call needs another's answer.


# %% [markdown]
# **Predict first.** Each call takes `LATENCY` seconds (0.1 s offline). How long will the three
# calls take, awaited one by one? Type your guess in the box (or set `PREDICTION` and run the
# cell again), then run the measurement.

# %%
from labsupport.coaching import predict

PREDICTION = None  # your guess in seconds
one_by_one_guess = predict(
    "Three independent calls, awaited one by one: how many seconds in all?", value=PREDICTION
)
one_by_one_guess


# %%
async def analysis_one_by_one(text: str) -> dict:
    sentiment = await get_sentiment(text)  # ✗ the topics call waits for this one…
    topics = await get_topics(text)  # ✗ …and the summary call waits for both
    summary = await get_summary(text)
    return {"sentiment": sentiment, "topics": topics, "summary": summary}


upstream.reset()
start = time.perf_counter()
result = await analysis_one_by_one(TEXT)
one_by_one = time.perf_counter() - start
one_by_one_calls = upstream.stats.timeline

print(f"one by one: {one_by_one:.2f} s ≈ {one_by_one / LATENCY:.1f}× latency")
print(
    f"ideal for 3 calls in a row: 3 latencies; measured/ideal = {one_by_one / (3 * LATENCY):.2f}×"
)
print(upstream.stats)
print(
    one_by_one_guess.compare(
        one_by_one,
        because="each await waited for its answer before the next call was sent",
        investigate="“max … in flight” in the upstream's line: were two calls ever waiting "
        "at once?",
    )
)

# %% [markdown]
# ## The fix: `asyncio.gather`
#
# `asyncio.gather(a, b, c)` wraps each coroutine in a task, so all three calls start at once,
# then waits until all are done. It returns their results **in the order you passed them**, not
# in the order they finished. This is the seed's `parallel_analysis`.


# %% [markdown]
# **Predict again**: the same three calls, gathered?

# %%
PREDICTION = None  # your guess in seconds
gathered_guess = predict("The same three calls, gathered: how many seconds?", value=PREDICTION)
gathered_guess


# %%
async def parallel_analysis(text: str) -> dict:
    sentiment, topics, summary = await asyncio.gather(
        get_sentiment(text), get_topics(text), get_summary(text)
    )
    return {"sentiment": sentiment, "topics": topics, "summary": summary}


upstream.reset()
start = time.perf_counter()
result = await parallel_analysis(TEXT)
gathered = time.perf_counter() - start
gathered_calls = upstream.stats.timeline

print(f"gathered: {gathered:.2f} s ≈ {gathered / LATENCY:.1f}× latency")
print(f"ideal for 3 calls together: 1 latency; measured/ideal = {gathered / LATENCY:.2f}×")
print(upstream.stats)
print(
    gathered_guess.compare(
        gathered,
        because="the three calls were sent together and waited together: one latency, plus "
        "a little Python",
        investigate="the timeline below: where does each call start?",
    )
)
print(result)

# %% [markdown]
# Same three answers, in about a third of the time: the upstream had all 3 calls in flight at
# once. On the timeline below, each bar is one upstream call: a staircase on the left, a block
# on the right. (`lab.LoadReport.from_calls` turns the upstream's record of calls into a run
# that `lab.plot_timeline` can draw.)

# %%
lab.plot_timeline(
    {
        "awaited one by one": lab.LoadReport.from_calls(one_by_one_calls),
        "asyncio.gather": lab.LoadReport.from_calls(gathered_calls),
    },
    latency=LATENCY,
)

# %% [markdown]
# ## When one call fails
#
# Now four reviews to summarize, and the upstream fails on one of them with HTTP 500 (a scripted
# fault: `lab.Fault.matching` fails every call whose prompt matches a pattern).
#
# **The SDK retries first.** By default the client retries 408, 409, 429 and 5xx answers twice,
# waiting about 0.5 s · 2ⁿ between attempts (or what a `retry-after` header says). Against a
# failure that repeats, that only delays it. Watch the upstream count three attempts for one
# call:

# %%
REVIEWS = [
    "The battery lasts two days and charging is fast.",
    "The screen cracked within a week. Support never answered.",
    "Photo attached, but the upload is unreadable. Please check.",
    "Setup took five minutes. It works as promised.",
]

# For this cell only: the settings come back when the block ends, even if it is interrupted.
with upstream.configured(faults=[lab.Fault.matching("unreadable", status=500, retry_after=0.05)]):
    try:
        await aclient.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarize: {REVIEWS[2]}"}],
        )
    except openai.InternalServerError as exc:
        print(f"after the SDK's retries: {type(exc).__name__} (HTTP {exc.status_code})")
print(upstream.stats)

# %% [markdown]
# To see each failure at once, the rest of this notebook uses a client that does not retry
# (`max_retries=0`). In production, keep the retries (they fix blips) and handle what still
# fails, as below. Each demo sets the upstream's faults for its own cell, with
# `upstream.configured(...)`, which also starts its counters afresh.

# %%
strict_client = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"), max_retries=0)


async def summarize(text: str) -> str:
    r = await strict_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize in 5 words: {text}"}],
        max_tokens=20,
    )
    return r.choices[0].message.content


ONE_FAILS = [lab.Fault.matching("unreadable", status=500)]  # every call about REVIEWS[2] fails

# %% [markdown]
# ### 1. A bare `gather`: the first exception wins, every result is lost
#
# `gather` raises the first exception to the caller. The other calls are **not** cancelled: they
# run to the end, the upstream answers them (you pay for them), but their results are gone.

# %%
summaries = None
with upstream.configured(faults=ONE_FAILS):
    try:
        summaries = await asyncio.gather(*(summarize(review) for review in REVIEWS))
    except openai.InternalServerError as exc:
        print(f"gather raised {type(exc).__name__} (HTTP {exc.status_code})")
    print("summaries the caller got:", summaries)

    await asyncio.sleep(LATENCY)  # the other calls were not cancelled: let them land
print(upstream.stats)

# %% [markdown]
# ### 2. Catch inside each task: the seed's `parallel_with_errors`
#
# Each task catches its own failure and returns an entry that says so. `gather` never sees an
# exception, and the caller gets one entry per text, in order.


# %%
async def parallel_with_errors(texts: list[str]) -> list[dict]:
    """Process multiple texts in parallel; return errors for failed ones."""

    async def process_one(text: str) -> dict:
        try:
            return {"text": text[:30], "summary": await summarize(text), "error": None}
        except openai.APIError as e:
            return {"text": text[:30], "summary": None, "error": str(e)}

    return await asyncio.gather(*[process_one(t) for t in texts])


with upstream.configured(faults=ONE_FAILS):
    rows = await parallel_with_errors(REVIEWS)
for row in rows:
    print(f"{row['text']!r:34} summary={row['summary']!r:34} error={(row['error'] or '')[:40]!r}")
print(upstream.stats)

# %% [markdown]
# The seed catches `Exception`; catching `openai.APIError` (what an API call raises: HTTP
# errors, timeouts, connection errors) keeps real bugs in your own code, such as a `KeyError`,
# loud instead of turning them into error entries. (`APIError` is not every error of the SDK:
# their base is `openai.OpenAIError`, which also covers errors raised before any call, such as
# the `Missing credentials` of a client built without an API key: a bug to see, not an entry.)
#
# ### 3. `return_exceptions=True`: exceptions come back as values
#
# The same isolation without touching the tasks: `gather` puts the exception object in the
# result list, in the failed call's place. You must then check each item's type.

# %%
with upstream.configured(faults=ONE_FAILS):
    results = await asyncio.gather(*(summarize(r) for r in REVIEWS), return_exceptions=True)
for review, result in zip(REVIEWS, results, strict=True):
    if isinstance(result, Exception):
        print(f"✗ {review[:30]!r:34} {type(result).__name__}")
    else:
        print(f"✓ {review[:30]!r:34} {result}")

# %% [markdown]
# ### 4. `asyncio.TaskGroup`: the first failure cancels the others
#
# A `TaskGroup` (Python 3.11+) takes the opposite view: if one task fails, the whole group has
# failed. It **cancels** the tasks still running, waits for them to stop, and raises an
# `ExceptionGroup` with the failures (catch it with `except*`).
#
# To see the cancellation, let the failure come early: the failing call answers 500 after half
# a latency, the good reviews take 3 latencies. First `gather(..., return_exceptions=True)` for
# comparison, which waits for everything.

# %%
FAILS_EARLY = {
    "latency": LATENCY / 2,  # what the failing call takes, before its 500
    "faults": [
        lab.Fault.matching("unreadable", status=500),  # first match wins: this one fails early…
        lab.Fault.matching("Summarize", delay=3 * LATENCY),  # …and every other call is slow
    ],
}

with upstream.configured(**FAILS_EARLY):
    start = time.perf_counter()
    results = await asyncio.gather(*(summarize(r) for r in REVIEWS), return_exceptions=True)
    elapsed = time.perf_counter() - start
gather_stats = upstream.stats
kept = sum(not isinstance(r, Exception) for r in results)
print(f"gather(return_exceptions=True): {kept} summaries + 1 error after {elapsed:.2f} s")
print(gather_stats)

# %%
with upstream.configured(**FAILS_EARLY):
    start = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(summarize(r)) for r in REVIEWS]
    except* openai.InternalServerError as failures:
        elapsed = time.perf_counter() - start
        print(f"TaskGroup raised {type(failures).__name__} after {elapsed:.2f} s:")
        print("  failures:", [type(e).__name__ for e in failures.exceptions])
print("tasks:", ["cancelled" if t.cancelled() else type(t.exception()).__name__ for t in tasks])
group_stats = upstream.stats
print(
    f"upstream: {group_stats.count(500)} × 500, {group_stats.count(200)} × 200, "
    f"{group_stats.cancelled} abandoned mid-call (cancelled)"
)

# %% [markdown]
# The group gave up as soon as the call failed, long before 3 latencies, and cancelled the three
# slow calls (the upstream saw them abandoned), where `gather` waited 3 latencies to keep
# them. The timelines show it: in the lower panel the three slow calls stop where the failure
# ends; gray bars are calls that ended without an answer.

# %%
lab.plot_timeline(
    {
        "gather(return_exceptions=True)": lab.LoadReport.from_calls(gather_stats.timeline),
        "asyncio.TaskGroup": lab.LoadReport.from_calls(group_stats.timeline),
    },
    latency=LATENCY,
    title="One early failure",
)

# %% [markdown]
# ### Which one when
#
# | You want… | Use |
# |---|---|
# | all results; any failure is fatal | bare `gather` (the other calls keep running, unseen) |
# | every result you can get | tasks that catch their own errors (`parallel_with_errors`) |
# | the same, tasks unchanged | `gather(..., return_exceptions=True)`, check each item |
# | all or nothing, stop paying | `asyncio.TaskGroup` (cancels the rest, `ExceptionGroup`) |
#
# In an endpoint answering one user, all or nothing is often right (a partial analysis is
# useless, so stop spending tokens). In a batch job over 1,000 documents, keep the 999.

# %% [markdown]
# ## When one call hangs: timeouts
#
# A slow answer is worse than a failure: without a bound, `gather` waits for it. Here the
# upstream takes 5 s for one review (a scripted delay).

# %%
LONG_REVIEW = "A very long review of everything about the product. It goes on and on."
ONE_HANGS = [lab.Fault.matching("very long", delay=5.0)]  # set in each cell below
BOUND = 10 * LATENCY  # far above a normal call even on a busy machine, far below the hang

# %% [markdown]
# **`asyncio.timeout(seconds)`** bounds a block: when time is up, the task running it is
# cancelled and the block raises `TimeoutError`. The call is abandoned, not finished.

# %%
with upstream.configured(faults=ONE_HANGS):
    start = time.perf_counter()
    try:
        async with asyncio.timeout(BOUND):
            await summarize(LONG_REVIEW)
    except TimeoutError:
        print(f"TimeoutError after {time.perf_counter() - start:.2f} s")
print(upstream.stats)

# %% [markdown]
# **`asyncio.wait_for(coroutine, seconds)`** does the same for one awaitable, which fits a
# `gather`: bound each call, and the slow one becomes a `TimeoutError` in its place.

# %%
with upstream.configured(faults=ONE_HANGS):
    start = time.perf_counter()
    results = await asyncio.gather(
        *(asyncio.wait_for(summarize(r), BOUND) for r in [REVIEWS[0], LONG_REVIEW, REVIEWS[3]]),
        return_exceptions=True,
    )
print(f"after {time.perf_counter() - start:.2f} s:")
for result in results:
    print("  ", type(result).__name__ if isinstance(result, Exception) else result)

# %% [markdown]
# **The SDK's own `timeout=`** (on the client, or per call with `client.with_options(...)`)
# raises `openai.APITimeoutError`. It is not a deadline for the call: the HTTP client's
# `Timeout` bounds each *operation* of a request on its own (connecting, waiting for a free
# connection in the pool, sending the request, and each read of the answer). An answer that is
# slow to start times out, as here; mind the retries too: the SDK retries timeouts, so with the
# default `max_retries=2` the caller may wait about three timeouts plus the backoff.
# `asyncio.timeout` bounds the total, retries included.

# %%
with upstream.configured(faults=ONE_HANGS):
    start = time.perf_counter()
    try:
        await strict_client.with_options(timeout=BOUND).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarize: {LONG_REVIEW}"}],
        )
    except openai.APITimeoutError as exc:
        print(f"{type(exc).__name__}: {exc.message} after {time.perf_counter() - start:.2f} s")
        print("an openai.APIError (an API call failed):", isinstance(exc, openai.APIError))
print(upstream.stats)

# %% [markdown]
# An answer that keeps sending never times out, however long it takes in all: each read waits
# less than the timeout. Here a streamed answer takes about 3 × `BOUND`, with `timeout=BOUND` and
# no retries:

# %%
with upstream.configured(latency=3 * BOUND):
    start = time.perf_counter()
    chunks = 0
    stream = await strict_client.with_options(timeout=BOUND).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize: {LONG_REVIEW}"}],
        stream=True,
    )
    async with stream:
        async for _ in stream:
            chunks += 1
    streamed = time.perf_counter() - start
print(f"{chunks} chunks in {streamed:.2f} s ≈ {streamed / BOUND:.1f}× the timeout, no timeout")

# %% [markdown]
# | Bound | Raises | Covers |
# |---|---|---|
# | `async with asyncio.timeout(s)` | `TimeoutError` | the whole block, retries included |
# | `asyncio.wait_for(aw, s)` | `TimeoutError` | one awaitable |
# | `AsyncOpenAI(timeout=s)`, `.with_options(timeout=s)` | `openai.APITimeoutError` | every step |
#
# (A step: connecting, waiting for a pooled connection, sending, or one read, in each attempt.)
#
# ## Inside an endpoint
#
# A FastAPI endpoint is just another coroutine: `gather` inside it works the same, and the event
# loop serves other requests while their calls are in flight.

# %%
from fastapi import FastAPI
from pydantic import BaseModel


class AnalyzeRequest(BaseModel):
    text: str


app = FastAPI()


@app.post("/analyze")
async def analyze(request: AnalyzeRequest):
    return await parallel_analysis(request.text)


one_by_one_app = FastAPI()


@one_by_one_app.post("/analyze")
async def analyze_one_by_one(request: AnalyzeRequest):
    return await analysis_one_by_one(request.text)


# %% [markdown]
# Fire 10 requests at each, at once: 30 upstream calls per run.

# %%
N = 10


def body(i: int) -> dict:
    return {"text": f"Review {i}: the update made everything faster and more reliable."}


upstream.reset()
async with lab.asgi_client(one_by_one_app) as client:
    slow_run = await lab.fire(client, "POST", "/analyze", json=body, n=N)
slow_calls = upstream.stats

upstream.reset()
async with lab.asgi_client(app) as client:
    fast_run = await lab.fire(client, "POST", "/analyze", json=body, n=N)
fast_calls = upstream.stats

print("one by one:", slow_run.summary(latency=LATENCY))
print("gather:    ", fast_run.summary(latency=LATENCY))
print(f"upstream calls: {slow_calls.calls} and {fast_calls.calls}")
print(fast_run.bodies[0])

# %% [markdown]
# Both apps served the 10 requests concurrently (the event loop was free), but each request of
# the first one took about 3 latencies, of the second about 1. Per-request latency is what your
# users feel.

# %%
lab.plot_timeline(
    {"awaited one by one": slow_run, "asyncio.gather": fast_run},
    upstream={"awaited one by one": slow_calls, "asyncio.gather": fast_calls},
    latency=LATENCY,
)

# %% [markdown]
# ## Your turn
#
# `analyze_all` summarizes a list of support tickets, one after another, and one failing call
# makes it lose everything. Rewrite it so that:
#
# * the calls run together (the check expects about 1× latency for 5 texts, not 5×);
# * it returns one entry per text, in order: `{"text": …, "summary": …, "error": None}`, or for a
#   failed call `{"text": …, "summary": None, "error": "<what went wrong>"}`.
#
# Use `summarize(text)` from above. The check runs your function twice: once as is, once with
# every call for one ticket failing with HTTP 500.


# %% tags=["exercise"]
async def analyze_all(texts: list[str]) -> list[dict]:
    results = []
    for text in texts:
        # TODO: run the calls together, and keep going when one fails.
        summary = await summarize(text)
        results.append({"text": text, "summary": summary, "error": None})
    return results


# %% tags=["solution"]
async def analyze_one(text: str) -> dict:
    try:
        return {"text": text, "summary": await summarize(text), "error": None}
    except openai.APIError as exc:
        return {"text": text, "summary": None, "error": f"{type(exc).__name__}: {exc.message}"}


async def analyze_all(texts: list[str]) -> list[dict]:
    return await asyncio.gather(*(analyze_one(text) for text in texts))


# %%
await lab.checks.check_parallel_fanout(analyze_all)

# %% [markdown]
# ## Recap
#
# * Independent calls awaited one by one add up their latencies; `asyncio.gather` overlaps them
#   and returns the results in the order you passed them.
# * A bare `gather` raises the first failure and loses every other result (the other calls
#   still run). Catch inside each task, or use `return_exceptions=True`, to keep them.
# * `asyncio.TaskGroup` is all or nothing: the first failure cancels the rest.
# * Bound slow calls: `asyncio.timeout` / `wait_for` (→ `TimeoutError`, retries included) or the
#   SDK's `timeout=` (→ `openai.APITimeoutError`, per operation of each attempt: a stream that
#   keeps sending never times out).
# * The SDK retries 429/5xx/timeouts twice by default: good for blips, slow for real failures.
#
# Next: **03 · semaphore** — 100 calls at once meet a rate limit.
