# %% [markdown]
# # 01 · The async client: don't block the event loop
#
# **Objective.** See, in numbers, why a synchronous OpenAI client inside an `async def` FastAPI
# endpoint makes every request wait in line, and fix it with one shared `AsyncOpenAI` client.
#
# **You will:** measure the trap under 20 concurrent requests · measure the fix · compare them on
# a timeline · meet two more sync traps (a missing `await`, calls awaited one by one) and the
# other valid fix (`def` endpoints) · fix an endpoint yourself and get it checked.
#
# The first cell sets up the lab. Offline (the default), a simulated OpenAI API answers in this
# kernel, and each call takes `latency` seconds, as a real network call would.

# %%
import labsupport as lab

upstream = lab.setup(latency=0.1)
LATENCY = upstream.latency

# %% [markdown]
# ## The service
#
# A chat endpoint, as in the course's seed note. The request model is shared by every version
# below.

# %%
import os

from fastapi import FastAPI
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel


class ChatRequest(BaseModel):
    message: str
    temperature: float = 0.0


# %% [markdown]
# ## The trap: a sync client inside `async def`
#
# `OpenAI` (the sync client) waits for the answer by blocking its thread. Inside an `async def`
# endpoint, that thread is the event loop's thread: while one request waits for OpenAI, **no
# other request can run at all**.

# %%
sync_client = OpenAI(api_key=os.getenv("OPENAI_API_KEY"))
blocking_app = FastAPI()


@blocking_app.post("/chat")
async def blocking_chat(request: ChatRequest):
    # ✗ A blocking call inside `async def`: the event loop stops until OpenAI answers.
    response = sync_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": request.message}],
        temperature=request.temperature,
    )
    return {"response": response.choices[0].message.content}


# %% [markdown]
# Fire 20 requests at once, in process (`lab.asgi_client` talks to the app in memory), while a
# loop-lag monitor (`lab.loop_lag`) measures how long the event loop could not run anything else.

# %% [markdown]
# **Predict first.** Each upstream call takes `LATENCY` seconds (0.1 s offline). How long will
# all 20 requests take? Type your guess in the box (or set `PREDICTION` and run the cell again),
# then run the measurement.

# %%
from labsupport.coaching import explore, predict

PREDICTION = None  # your guess in seconds, e.g. 0.5
blocking_guess = predict(
    "20 requests at once, sync client inside async def: how many seconds for all of them?",
    value=PREDICTION,
)
blocking_guess

# %%
N = 20
body = {"message": "Summarize in 5 words: The event loop runs one task at a time."}

# %% cpython_only="sync_wait"
upstream.reset()  # count this cell's calls only, however often it runs
async with lab.asgi_client(blocking_app) as client, lab.loop_lag() as lag:
    blocked_run = await lab.fire(client, "POST", "/chat", json=body, n=N)
blocked_calls = upstream.stats.timeline

print(blocked_run.summary(latency=LATENCY))
print(lag)
print(upstream.stats)
print(
    blocking_guess.compare(
        blocked_run.wall,
        because="each request waited for the one before it, on one blocked event loop",
        investigate="the “event loop blocked” line: for how much of the wall time could the "
        "loop run nothing else?",
    )
)

# %% [markdown]
# How to read it:
#
# * **wall** — the time for all 20 requests: about **20 ×** the latency of one call, as if they
#   had been sent one after another. Which they were.
# * **event loop blocked** — almost the whole wall time: the loop sat inside `create()`.
# * **max 1 in flight** — the upstream never saw two calls at once.

# %% [markdown]
# ## The fix: one shared `AsyncOpenAI`, awaited
#
# The async client *awaits* the answer: while a request waits for OpenAI, the event loop serves
# the others. Create it **once** (it pools connections) and share it across requests.

# %%
aclient = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))
app = FastAPI()


@app.post("/chat")
async def chat(request: ChatRequest):
    # ✓ Awaited: the event loop runs other requests while this one waits.
    response = await aclient.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": request.message}],
        temperature=request.temperature,
    )
    return {"response": response.choices[0].message.content}


# %% [markdown]
# **Predict again**, before you run it: the same 20 requests, now awaiting `AsyncOpenAI`.

# %%
PREDICTION = None  # your guess in seconds
async_guess = predict(
    "The same 20 requests, AsyncOpenAI awaited: how many seconds for all of them?",
    value=PREDICTION,
)
async_guess

# %%
upstream.reset()
async with lab.asgi_client(app) as client, lab.loop_lag() as lag:
    async_run = await lab.fire(client, "POST", "/chat", json=body, n=N)
async_calls = upstream.stats.timeline

print(async_run.summary(latency=LATENCY))
print(lag)
print(upstream.stats)
print(async_run.bodies[0])
print(
    async_guess.compare(
        async_run.wall,
        because="all 20 calls waited for OpenAI together: while one request awaits, the loop "
        "serves the others",
        investigate="“max … in flight” in the upstream's line: how many calls were waiting at "
        "once?",
    )
)

# %% [markdown]
# Same 20 requests, now in little more than **1 ×** the latency: all 20 calls were in flight
# together. What is left above 1 × is CPU, not waiting: FastAPI and the SDK spend a
# millisecond or two of Python on each request, one request after another on the one event
# loop; the loop-lag monitor sees that as a few hundredths of a second, against the whole wall
# time before. (In a browser tab, where Python runs as WebAssembly, each request takes a few
# times as long, so more is left above 1 ×.) Each reply is a real answer to the prompt.
#
# ## Side by side
#
# Each bar is one request, from sent to answered; the thin bars under them are the upstream
# calls. On the left, a staircase: each request starts only when the previous one is done. On
# the right, one block: everything at once.

# %% cpython_only="sync_wait"
lab.plot_timeline(
    {"sync client in async def": blocked_run, "AsyncOpenAI, awaited": async_run},
    upstream={"sync client in async def": blocked_calls, "AsyncOpenAI, awaited": async_calls},
    latency=LATENCY,
)

# %% [markdown]
# ## Explore: change one thing, predict, run
#
# Below, the same scenario with controls: how many requests, how slow each upstream call is, the
# client (sync `OpenAI` in `async def`, or `AsyncOpenAI` awaited), and a shared
# `asyncio.Semaphore` (0: none; with the sync client it changes nothing, since no second request
# runs while one holds the loop, and the explorer says so). Before each change, say what the
# timeline will look like: a staircase or a block, and how wide. Each change runs the scenario
# again, offline (a small FastAPI app, the real SDK, the simulated upstream; about a second),
# and redraws it. Try more requests with the sync client; then the async client with a
# semaphore of 5.

# %% cpython_only="explorer"
explore(requests=10, latency=0.05, client="sync")

# %% [markdown]
# ## Two more sync traps
#
# **1. Forgetting `await`.** Calling an async method without `await` gives you a *coroutine*: a
# description of work that has not run. Nothing is sent.

# %%
upstream.reset()
reply = aclient.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
)
print(type(reply).__name__, "— calls the upstream received:", upstream.stats.calls)
del reply  # thrown away without being awaited

# %% [markdown]
# When that coroutine is thrown away (`del reply`), Python warns (on stderr) that it was never
# awaited. Inside an endpoint, the next line (`reply.choices[0]…`) fails with
# `AttributeError: 'coroutine' object has no attribute 'choices'`, and the client gets a 500.

# %% [markdown]
# **2. Awaiting independent calls one by one.** Each `await` waits for its answer before the
# next call starts, so two independent calls take two latencies. `asyncio.gather` starts both,
# then waits once (notebook 02 goes further).

# %%
import asyncio
import time

text = "The new release fixed the crash and made startup twice as fast."


def ask(prompt):
    return aclient.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    )


start = time.perf_counter()
sentiment = await ask(f"Sentiment (one word): {text}")
summary = await ask(f"Summarize in 5 words: {text}")
one_by_one = time.perf_counter() - start

start = time.perf_counter()
sentiment, summary = await asyncio.gather(
    ask(f"Sentiment (one word): {text}"), ask(f"Summarize in 5 words: {text}")
)
together = time.perf_counter() - start

print(f"one by one: {one_by_one:.2f} s ≈ {one_by_one / LATENCY:.1f}× latency")
print(f"gathered:   {together:.2f} s ≈ {together / LATENCY:.1f}× latency")
print(sentiment.choices[0].message.content, "|", summary.choices[0].message.content)

# %% [markdown]
# ## The other valid fix: a `def` endpoint
#
# If you must use a sync library, declare the endpoint with plain `def`. FastAPI then runs it in
# a **thread pool**, so a blocking call blocks one worker thread, not the event loop.

# %% cpython_only="threads"
threaded_app = FastAPI()


@threaded_app.post("/chat")
def threaded_chat(request: ChatRequest):
    # ✓ Plain `def`: FastAPI runs this in a worker thread; blocking here is allowed.
    response = sync_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
    )
    return {"response": response.choices[0].message.content}


upstream.reset()
async with lab.asgi_client(threaded_app) as client, lab.loop_lag() as lag:
    threaded_run = await lab.fire(client, "POST", "/chat", json=body, n=N)
print(threaded_run.summary(latency=LATENCY))
print(lag)
print("most calls in flight at once:", upstream.stats.max_in_flight > N // 2)

# %% [markdown]
# The upstream's count is the one to read: the calls were in flight together, as with the async
# client. The wall time is a few latencies, though, not 1 ×, and the loop-lag monitor reports
# some blocked time, more or less on every run: nothing of ours blocks the loop, but 20 worker
# threads run the SDK's Python code (building each request, parsing each reply), and only one
# thread runs Python at a time (CPython's GIL). The event loop's thread waits for its turn among
# them, and so does each worker; starting up to 20 new threads adds more. How much depends on
# the machine and its load, so these two numbers change from run to run; the calls in flight
# do not.
#
# Threads are also a limited resource: FastAPI's pool has **40** worker threads by default.
# Send 100 requests, and they run in waves of 40.

# %% cpython_only="threads"
import anyio.to_thread

pool_size = anyio.to_thread.current_default_thread_limiter().total_tokens
upstream.reset()
async with lab.asgi_client(threaded_app) as client:
    crowd = await lab.fire(client, "POST", "/chat", json=body, n=100)
print("thread pool size:", pool_size)
print(crowd.summary(latency=LATENCY))
print("calls in flight never exceeded the pool size:", upstream.stats.max_in_flight <= pool_size)

# %% [markdown]
# The upstream never had more than **40** calls in flight: 100 requests went through in waves, so
# the wall time is at least ⌈100 / 40⌉ = 3 × the latency, plus the cost of switching between 40
# threads. The async client has no such ceiling: a waiting request costs a few kilobytes, not a
# thread. That is why `AsyncOpenAI` is the first choice in `async def` code.
#
# ## One blocking call inside `async def`: `asyncio.to_thread`
#
# Sometimes one call in an `async def` endpoint has no async version (a sync SDK, a file or
# database driver). `await asyncio.to_thread(function, *args, **kwargs)` runs it in a worker
# thread and awaits the result, so the event loop keeps serving the other requests meanwhile.
#
# Its threads come from the event loop's **default executor**, a `ThreadPoolExecutor` that
# Python 3.11 sizes `min(32, os.cpu_count() + 4)`: a number that depends on the machine, and
# is often smaller than FastAPI's 40. Send 64 requests and count the calls in flight:

# %% cpython_only="threads"
to_thread_app = FastAPI()


@to_thread_app.post("/chat")
async def to_thread_chat(request: ChatRequest):
    # ✓ The blocking call runs in a worker thread; this coroutine awaits it.
    response = await asyncio.to_thread(
        sync_client.chat.completions.create,
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": request.message}],
    )
    return {"response": response.choices[0].message.content}


executor_size = min(32, (os.cpu_count() or 1) + 4)  # Python 3.11's default, on this machine
upstream.reset()
async with lab.asgi_client(to_thread_app) as client:
    to_thread_run = await lab.fire(client, "POST", "/chat", json=body, n=64)
print(to_thread_run.summary(latency=LATENCY))
print(
    "calls in flight: at most min(32, CPUs + 4), and exactly that many:",
    upstream.stats.max_in_flight == executor_size,
)

# %% [markdown]
# All 64 answered, never more than `min(32, CPUs + 4)` at once (on 2 CPUs that is 6, so 64
# requests take ⌈64 / 6⌉ = 11 latencies; on 28 CPUs or more, 32). Use `to_thread` for the odd
# blocking call; for the OpenAI calls themselves, use `AsyncOpenAI`.

# %% [markdown]
# ## Your turn
#
# Below is a ticket summarizer with the trap in it. Rewrite it so that it does not block the
# event loop: keep the route (`POST /chat`), the request model and the reply shape
# (`{"response": …}`). Then run the check.

# %% tags=["exercise"]
ticket_client = OpenAI(api_key=os.getenv("OPENAI_API_KEY"))
exercise_app = FastAPI()


@exercise_app.post("/chat")
async def summarize_ticket(request: ChatRequest):
    # TODO: this blocks the event loop. Fix it.
    response = ticket_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize in one sentence: {request.message}"}],
    )
    return {"response": response.choices[0].message.content}


# %% tags=["solution"]
ticket_client = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))
exercise_app = FastAPI()


@exercise_app.post("/chat")
async def summarize_ticket(request: ChatRequest):
    response = await ticket_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize in one sentence: {request.message}"}],
    )
    return {"response": response.choices[0].message.content}


# %% [markdown]
# The check sends 20 concurrent requests to your app and tells you what it measured.

# %% cpython_only="sync_wait_check"
await lab.checks.check_async_endpoint(exercise_app)

# %% [markdown]
# ## Recap
#
# * A sync call inside `async def` blocks the **event loop**: N concurrent requests take about
#   N × the upstream latency, and nothing else runs meanwhile.
# * Use **one shared `AsyncOpenAI`** and `await` its calls: N requests take about 1 × latency.
# * A call without `await` does nothing but return a coroutine (and a warning).
# * Independent calls awaited one by one add up their latencies; `asyncio.gather` overlaps them.
# * A plain `def` endpoint is the other valid fix for sync code, up to the thread pool's size.
# * `await asyncio.to_thread(f, …)` moves one blocking call off the loop, onto the loop's
#   default executor (`min(32, CPUs + 4)` threads in Python 3.11).
#
# Next: **02 · gather** — many calls in parallel, and surviving the ones that fail.
