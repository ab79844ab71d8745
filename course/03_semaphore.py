# %% [markdown]
# # 03 · semaphore: as many calls as the upstream allows, and no more
#
# **Objective.** Send a large batch of OpenAI calls as fast as the upstream allows, without
# being refused: bound the calls in flight with one shared `asyncio.Semaphore`.
#
# **You will:** send 100 summaries at once into a rate limit and count the 429s · see what the
# SDK's retries cost · fix it with the seed's `rate_limited_parallel` and watch it run in waves ·
# add a progress bar · compare other bounds (connection pools, a semaphore per app, per call,
# per-window limits) · bound a batch yourself and get it checked.

# %%
import labsupport as lab

upstream = lab.setup(latency=0.05)
LATENCY = upstream.latency

# %% [markdown]
# ## A batch and a limit
#
# 100 product reviews to summarize in 5 words each. The upstream accepts at most **5 calls in
# flight**; a call over the limit is refused at once with HTTP 429 and a `retry-after` header
# (here 0.25 s). OpenAI's own limits count requests and tokens per minute; gateways, Azure
# deployments and self-hosted servers often limit concurrency like this. Both come back as 429.

# %%
import asyncio
import math
import os
import time

import openai
from openai import AsyncOpenAI

PRODUCTS = ["kettle", "headphones", "backpack", "lamp", "keyboard", "tent", "blender", "watch"]
VERDICTS = ["works well and arrived early", "broke after a week", "is fine but noisy"]
TEXTS = [
    f"Review {i}: The {PRODUCTS[i % len(PRODUCTS)]} {VERDICTS[i % len(VERDICTS)]}. Five stars."
    for i in range(1, 101)
]
LIMIT = 5
# The notebook's upstream from here on; a cell that needs another one says so in a `with` block.
upstream.configure(rate_limit=lab.RateLimit(max_concurrent=LIMIT, retry_after=0.25))

aclient = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))  # retries 429s twice (the default)
strict_client = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"), max_retries=0)


async def summarize(text: str, client: AsyncOpenAI = aclient) -> str:
    r = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize in 5 words: {text}"}],
        max_tokens=20,
    )
    return r.choices[0].message.content


# %% [markdown]
# ## The trap: 100 calls at once
#
# `gather` starts all 100 calls together. First with a client that does not retry, to see what
# the upstream answers to the first attempts. For this one look, each call takes two seconds,
# as a long LLM answer does: all 100 first attempts arrive while the first ones are still busy.
# (`upstream.configured(...)` changes the latency for the `with` block only: it comes back when
# the block ends, even if you interrupt the cell.)

# %% [markdown]
# **Predict first.** 100 calls start together; the upstream takes 5 at a time and refuses the
# rest with 429; this client does not retry. How many of the 100 get a 429? Type your guess in
# the box (or set `PREDICTION` and run the cell again), then run the burst.

# %%
from labsupport.coaching import explore, predict

PREDICTION = None  # your guess: a number from 0 to 100
refused_guess = predict(
    "100 calls at once, 5 allowed in flight, no retries: how many get HTTP 429?",
    unit="calls refused with 429",
    maximum=len(TEXTS),
    value=PREDICTION,
)
refused_guess

# %%
LONG_CALL = 2.0  # seconds per call, in the two cells of the trap
with upstream.configured(latency=LONG_CALL):
    results = await asyncio.gather(
        *(summarize(t, strict_client) for t in TEXTS), return_exceptions=True
    )
failed = [r for r in results if isinstance(r, Exception)]
print(upstream.stats)
print(
    f"{len(results) - len(failed)} summaries, {len(failed)} failed:",
    {type(e).__name__ for e in failed},
)
print(
    refused_guess.compare(
        upstream.stats.count(429),
        because="5 calls took the 5 places, and each held it for two seconds, so every other "
        "call arrived to a full upstream",
        investigate="what the SDK's retries change (next cell): fewer 429s, or more?",
    )
)

# %% [markdown]
# 5 calls got in; the other 95 were refused. Now the default client, which retries a 429 twice,
# after the `retry-after` the upstream asked for (0.25 s), with the same two-second calls.

# %% cpython_only="race"
with upstream.configured(latency=LONG_CALL):
    start = time.perf_counter()
    results = await asyncio.gather(*(summarize(t) for t in TEXTS), return_exceptions=True)
    retried = time.perf_counter() - start
retry_stats = upstream.stats
failed = [r for r in results if isinstance(r, Exception)]

print(f"{len(TEXTS)} texts with the SDK's retries: {retried:.2f} s")
print(f"HTTP calls: {retry_stats.calls} for {len(TEXTS)} texts ({retry_stats})")
print(f"texts still failing after 2 retries: {len(failed)} of {len(TEXTS)}")
for error in failed[:1]:
    print(f"  e.g. {type(error).__name__}: {error.message}")

# %% [markdown]
# The retries multiplied the calls (every retry is one more request the upstream must refuse)
# and saved nothing: both waves of retries came back, 0.25 s apart, while the first 5 calls
# still held every slot, so the upstream refused all 95 again, twice. With shorter calls some
# retries get in, but each wave of retries arrives together, so again at most 5 of them; how
# many then depends on which retry lands when. With real limits the `retry-after` is seconds,
# not a quarter of one.
#
# ## The fix: one `asyncio.Semaphore(5)`
#
# A semaphore holds `5` permits. `async with semaphore:` takes one, or waits until another task
# gives one back. All 100 tasks start, but only 5 can be inside the `async with` at a time. This
# is the seed's `rate_limited_parallel`:


# %%
async def rate_limited_parallel(texts: list[str], max_concurrent: int = 5) -> list[str]:
    """Process texts in parallel but limit to max_concurrent at a time."""
    semaphore = asyncio.Semaphore(max_concurrent)

    async def process_with_limit(text: str) -> str:
        async with semaphore:
            return await summarize(text)

    return await asyncio.gather(*[process_with_limit(t) for t in texts])


upstream.reset()
start = time.perf_counter()
summaries = await rate_limited_parallel(TEXTS, max_concurrent=LIMIT)
bounded = time.perf_counter() - start
bounded_stats = upstream.stats

waves = math.ceil(len(TEXTS) / LIMIT)
print(upstream.stats)
print(f"{len(TEXTS)} summaries: {bounded:.2f} s ≈ {bounded / LATENCY:.1f}× latency")
ideal = waves * LATENCY
print(f"ideal: ⌈100 / 5⌉ = {waves} waves of 1 latency; measured/ideal = {bounded / ideal:.2f}×")
print(summaries[:3])

# %% [markdown]
# Zero 429s, exactly 5 in flight, every summary, in the texts' order (`gather` keeps it). It took
# about 20 latencies, the fastest this limit allows. Each call's bar below starts as another
# ends: 20 waves of 5.

# %%
lab.plot_timeline(
    lab.LoadReport.from_calls(bounded_stats.timeline), latency=LATENCY, title="Semaphore(5)"
)

# %% [markdown]
# The number of calls in flight over time tells the same story: a flat line at the limit, from
# the first call to the last.

# %%
lab.plot_in_flight(bounded_stats, limit=LIMIT, title="Semaphore(5): calls in flight")

# %% [markdown]
# ## Explore: the bound against the limit
#
# The upstream still allows 5 calls in flight. Predict, then move the semaphore's bound: what
# does the timeline look like at 6? At 3? At 0 (no semaphore)? And what does the sync client do
# to it? Each change runs 20 requests again, offline, in about a second.

# %% cpython_only="explorer"
explore(requests=20, latency=0.05, bound=LIMIT, upstream_limit=LIMIT)

# %% [markdown]
# At 6, one permit above the limit, you may expect one refused call. Most of the 20 are refused
# (about 15): the 6th call gets a 429 at once (this explorer's client does not retry), and a
# refused call gives its permit back at once, so the next waiting request takes it, is refused
# too, and so on down the queue, all while the first 5 calls are still running. A bound above
# the limit does not cost one call: it turns every wait into a refusal. With the sync client
# the semaphore changes nothing at all: each request blocks the loop until its call is done, so
# no request ever finds the semaphore taken. The explorer says both under its figure.

# %% [markdown]
# ## A progress bar
#
# A long batch deserves a progress bar. tqdm draws one; tick it as each task finishes (a done
# callback, which runs for a cancelled task too: skip those, or ■ makes the bar jump to done),
# and run the tasks in an `asyncio.TaskGroup`, which waits for all of them and returns them in
# the order of the inputs. (`file=sys.stdout` prints the bar as plain text in the cell's
# output.)
#
# tqdm also has a drop-in for `gather`, `tqdm.asyncio.tqdm.gather`, but it runs the calls
# through `asyncio.as_completed`, which does not cancel them when the caller is cancelled: stop
# the cell with ■ and its calls go on in the background, landing in the next cells' counts. A
# `TaskGroup` cancels every task it started when the cell is interrupted.

# %%
import sys

from tqdm import tqdm


async def rate_limited_with_progress(texts: list[str], max_concurrent: int = 5) -> list[str]:
    semaphore = asyncio.Semaphore(max_concurrent)

    async def process_with_limit(text: str) -> str:
        async with semaphore:
            return await summarize(text)

    with tqdm(total=len(texts), desc="summaries", file=sys.stdout) as bar:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(process_with_limit(t)) for t in texts]
            for task in tasks:
                task.add_done_callback(lambda done: done.cancelled() or bar.update())
    return [task.result() for task in tasks]


upstream.reset()
with_progress = await rate_limited_with_progress(TEXTS, max_concurrent=LIMIT)
print("same summaries, same order:", with_progress == summaries)
print(upstream.stats)

# %% [markdown]
# ## Where the semaphore lives matters
#
# **A semaphore created per call bounds nothing.** Each call makes its own, brand-new
# `Semaphore(5)` and is its only user: one of its 5 permits is always free, so nothing ever waits:


# %%
async def process_with_new_semaphore(text: str) -> str:
    async with asyncio.Semaphore(LIMIT):  # ✗ a new semaphore per call: nobody shares it
        return await summarize(text, strict_client)


upstream.reset()
results = await asyncio.gather(
    *(process_with_new_semaphore(t) for t in TEXTS), return_exceptions=True
)
print(upstream.stats)
print(f"refused by the upstream (HTTP 429): {upstream.stats.count(429)} of {len(TEXTS)}")

# %% [markdown]
# All 100 calls were sent at once: no semaphore made any of them wait. "Max 5 in flight" is
# the **upstream's** doing, not the semaphores': it let 5 calls in and refused the other 95
# with a 429.

# %% [markdown]
# **A semaphore per request is not per upstream.** The seed's `rate_limited_parallel` creates
# its semaphore inside the function: right for one batch in a script. Inside a FastAPI
# endpoint, every request runs the function, so every request gets its own 5 permits; 3
# concurrent requests can have 15 calls in flight. The limit belongs to the upstream, so the
# semaphore must be shared by every request: one per process, created once (at module level,
# or in the lifespan onto `app.state`).
#
# To see how many calls each version *sends* at once, the upstream's limit is off for this
# comparison.

# %%
from fastapi import FastAPI
from pydantic import BaseModel


class Batch(BaseModel):
    texts: list[str]


per_request_app = FastAPI()


@per_request_app.post("/summaries")
async def summaries_per_request(batch: Batch):
    # ✗ rate_limited_parallel makes a new Semaphore(5) on every request
    return await rate_limited_parallel(batch.texts, max_concurrent=LIMIT)


OPENAI_SLOTS = asyncio.Semaphore(LIMIT)  # ✓ one per process, shared by every request
shared_app = FastAPI()


async def summarize_shared(text: str) -> str:
    async with OPENAI_SLOTS:
        return await summarize(text)


@shared_app.post("/summaries")
async def summaries_shared(batch: Batch):
    return await asyncio.gather(*(summarize_shared(t) for t in batch.texts))


def batch(i: int) -> dict:
    return {"texts": TEXTS[10 * i : 10 * i + 10]}


for name, app in [("semaphore per request", per_request_app), ("shared semaphore", shared_app)]:
    with upstream.configured(rate_limit=None):  # no limit: count what each version sends
        async with lab.asgi_client(app) as client:
            report = await lab.fire(client, "POST", "/summaries", json=batch, n=3)
    print(f"{name:22} {report.summary()}")
    print(f"{'':22} {upstream.stats}")

# %% [markdown]
# With the shared semaphore, the three requests together never exceed 5 calls in flight, and
# each of them waits a little longer: that is the price of the limit, paid fairly.
#
# ## The connection pool: a bound you may already have
#
# The SDK's HTTP client (httpx) keeps a pool of connections. By default it allows 1,000, so it
# bounds nothing here. Give the client a smaller pool and calls beyond it wait for a free
# connection, exactly like a semaphore, for **every** use of that client:
#
# ```python
# limits = httpx2.Limits(max_connections=5)
# client = AsyncOpenAI(http_client=openai.DefaultAsyncHttpxClient(limits=limits))
# ```
#
# (This SDK version runs on `httpx2`, the package that `DefaultAsyncHttpxClient` builds on.)
# The offline upstream inside this kernel answers before any connection is made, so to watch the
# pool work we use `lab.FakeServer`: the same upstream over real TCP on 127.0.0.1.

# %% cpython_only="connections"
import httpx2

with lab.FakeServer(latency=LATENCY) as server:
    for name, http_client in [
        ("default pool", openai.DefaultAsyncHttpxClient()),
        (
            "max_connections=5",
            openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=5)),
        ),
    ]:
        async with AsyncOpenAI(base_url=server.base_url, http_client=http_client) as pooled:
            server.reset()
            await asyncio.gather(*(summarize(t, pooled) for t in TEXTS[:20]))
            stats = server.stats
            print(
                f"{name:18} {stats.calls} calls over {server.connections} connections, "
                f"more than 5 in flight: {stats.max_in_flight > LIMIT}"
            )

# %% [markdown]
# | Bound | Bounds | Fits when |
# |---|---|---|
# | one `asyncio.Semaphore(n)` per process | the code that takes it | a limit per upstream |
# | a semaphore made inside a batch function | one batch | scripts, one batch at a time |
# | `httpx2.Limits(max_connections=n)` | every call of that client | a hard cap, no code change |
# | a semaphore made per call | nothing | never |
#
# A pool limit is invisible: calls wait inside httpx, with no queue you can inspect or log, and
# a call that waits for a connection longer than the SDK's `timeout` fails with
# `APITimeoutError`. A semaphore is explicit, and can be shared by several clients.
#
# Each process has its own semaphore: with 4 uvicorn workers, `Semaphore(5)` allows 20 in
# flight. Divide the limit by the workers, or use a shared store (e.g. Redis) for a global one.
#
# ## A limit per time window is not a limit in flight
#
# OpenAI's limits are per minute: at most so many **requests started** in a window. A semaphore
# bounds calls *in flight*, not calls *started*; fast calls free their permits quickly, so 5 in
# flight can still be many per second. Here the upstream allows 10 calls per 0.5 s:

# %%
PER_WINDOW = lab.RateLimit(max_per_window=10, window=0.5, retry_after=0.25)  # in each cell below
WINDOW_TEXTS = TEXTS[:16]


async def with_semaphore(texts: list[str]) -> list:
    semaphore = asyncio.Semaphore(LIMIT)

    async def one(text: str):
        async with semaphore:
            return await summarize(text, strict_client)

    return await asyncio.gather(*(one(t) for t in texts), return_exceptions=True)


with upstream.configured(rate_limit=PER_WINDOW):
    await with_semaphore(WINDOW_TEXTS)
print(upstream.stats)

# %% [markdown]
# The semaphore held (≤ 5 in flight), yet 6 of 16 calls were refused: the first 10 started
# within the first 0.1 s. For a per-window limit, pace the **starts**: let at most `limit`
# calls start in any `window` seconds, and keep some headroom (here 8 of the 10), because the
# upstream's clock starts when a request arrives, not when you sent it.

# %%
import collections


class StartsPerWindow:
    """Let at most `limit` calls start in any `window` seconds; the others wait their turn."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.starts: collections.deque[float] = collections.deque()
        self.lock = asyncio.Lock()

    async def __aenter__(self) -> None:
        async with self.lock:  # one waiter at a time keeps the starts in order
            if len(self.starts) == self.limit:
                await asyncio.sleep(self.starts.popleft() + self.window - time.perf_counter())
            self.starts.append(time.perf_counter())

    async def __aexit__(self, *exc_info) -> None:
        pass


pace = StartsPerWindow(limit=8, window=0.5)


async def paced(text: str) -> str:
    async with pace:
        return await summarize(text, strict_client)


with upstream.configured(rate_limit=PER_WINDOW):
    start = time.perf_counter()
    results = await asyncio.gather(*(paced(t) for t in WINDOW_TEXTS), return_exceptions=True)
print(f"{len(WINDOW_TEXTS)} calls paced 8 per 0.5 s: {time.perf_counter() - start:.2f} s")
print(upstream.stats)

# %% [markdown]
# Zero 429s. Real code often needs both: a semaphore for the calls in flight, and pacing (or
# token budgeting) for the per-minute limits.
#
# ## Your turn
#
# `summarize_all` sends every text at once. The upstream accepts at most 5 calls in flight.
# Bound it with a semaphore so that it never has more than 5 calls in flight, and uses all 5.
# Return the summaries in the texts' order. The check runs it on 20 texts, first without a
# limit (to count the calls it has in flight), then, if needed, with the limit on.


# %% tags=["exercise"]
async def summarize_all(texts: list[str]) -> list[str]:
    # TODO: at most 5 calls in flight, shared by all the texts.
    return await asyncio.gather(*(summarize(text) for text in texts))


# %% tags=["solution"]
SUMMARY_SLOTS = asyncio.Semaphore(5)  # one semaphore for the upstream, shared by every call


async def summarize_bounded(text: str) -> str:
    async with SUMMARY_SLOTS:
        return await summarize(text)


async def summarize_all(texts: list[str]) -> list[str]:
    return await asyncio.gather(*(summarize_bounded(text) for text in texts))


# %%
await lab.checks.check_bounded_batch(summarize_all, limit=5)

# %% [markdown]
# ## Recap
#
# * Unbounded `gather` against a concurrency limit: 429s, and retries that multiply the calls
#   and still fail.
# * One `asyncio.Semaphore(n)`, **shared** by every call to the upstream, keeps exactly `n` in
#   flight: 0 × 429, about ⌈N / n⌉ latencies, results in order.
# * A semaphore created per call bounds nothing; one created per request bounds each request,
#   not the upstream.
# * `httpx2.Limits(max_connections=n)` on the client is another bound, for all its calls.
# * Per-window limits need paced starts, not just fewer calls in flight.
# * A tqdm bar ticked by done callbacks, over an `asyncio.TaskGroup`, shows progress, keeps
#   the order, and cancels every call when the cell is interrupted.
