# %% [markdown]
# # 06 · Capstone: one service, every pattern, under load and faults
#
# **Objective.** Put the whole course into one small, production-shaped FastAPI service, serve it
# on a real socket, and prove with numbers that it stays correct: under a burst of requests,
# when the upstream fails, and when clients send garbage.
#
# **You will:** read the service · fire a burst at it over real HTTP and check every request
# was answered, audited and kept within the upstream bound · inject faults and see every client
# get a clean JSON error · lock its database mid-load and see no audit row lost · run it in two
# processes and see what that does to the upstream bound · send bad input and see it refused
# before it costs an upstream call.
#
# There is no exercise in this notebook: the service *is* the answer to notebooks 01–05.

# %%
import labsupport as lab

upstream = lab.setup(latency=0.05)
LATENCY = upstream.latency

# %% [markdown]
# ## The service
#
# The service is an ordinary Python package next to the notebooks, `capstone/`, laid out as
# FastAPI's "bigger applications" are: one module per concern, the routes in `routers/`, and
# `main.py` putting them together. Tests, benchmarks and this notebook import exactly the code
# you read here: each cell below prints a module's own source, the code that runs. Open the
# folder from JupyterLab's file browser to read it in an editor.

# %%
import inspect

from capstone import audit, errors, main, models, resources
from capstone.routers import chat, health, stream
from IPython.display import Markdown


def show(module):
    """The source of one of the service's modules, as Python imports it."""
    name = module.__name__.replace(".", "/")
    return Markdown(f"**`{name}.py`**\n```python\n{inspect.getsource(module).strip()}\n```")


# %% [markdown]
# **1. Requests are validated before anything else happens.** Limits are part of the type,
# and so part of the OpenAPI schema the service publishes: a message of 1 to 4,000 characters
# with at least one that is neither whitespace nor a control character (a `pattern`, so the
# schema says exactly what is accepted), a temperature from 0 to 2 that must be a JSON number
# (`false` or `"1.5"` is refused: `strict`), at most 50 messages in a batch, and no unknown
# fields (`"temprature"` is a typo, not a field to ignore).

# %%
show(models)

# %% [markdown]
# **2. The shared resources.** One `AsyncOpenAI` client (01, 05) and one semaphore (03) are
# created in the lifespan and shared by every request; every upstream call goes through
# `Resources.ask`, so the bound holds across requests. `ask` also keeps the promise of
# `upstream_timeout`: it is the *whole* time a request may spend on the upstream, waiting for a
# slot and retries included (`asyncio.timeout_at`, one deadline per request), and a failing
# call gives its slot back while it sleeps before a retry. No call waits longer than
# `slot_wait` (5 s by default) for a slot: past that the service is full, and saying so at
# once (503 with `Retry-After`) is kinder than a long queue. That is *load shedding*.

# %%
show(resources)

# %% [markdown]
# **3. The routes.** Each endpoint is a plain function on a router: it takes its validated
# body and the shared resources (`Shared`, a dependency), calls `ask`, and returns a model.
# `/analyze` makes its three calls with `asyncio.gather`, each failure isolated (02).

# %%
show(chat)

# %%
show(health)

# %% [markdown]
# `/chat/stream` relays the reply piece by piece as server-sent events (08). Its upstream
# stream is opened by a dependency, before the response starts, so a failure to open it is an
# HTTP error like `/chat`'s; a failure once pieces have gone out ends the stream with one
# `error` event in the same error shape. When the client leaves, Starlette cancels the relay
# and the dependency closes the upstream stream and gives its slot back; the audit row, written
# after the stream ends, has the reply so far and its `completion_tokens`.

# %%
show(stream)

# %% [markdown]
# **4. The audit log (04).** One row per request, *whatever happened to it*: a middleware
# records it after the response, a single background task writes the rows to SQLite in
# batches, and closing the log at shutdown writes what is still queued. A locked database or a
# full disk delays rows but loses none: a failed commit is rolled back and the same rows are
# tried again after a backoff. A row SQLite refuses for what it holds goes to a dead-letter
# file, and the writer moves on. Rows still unwritten when the service stops go to a spill
# file and are written first at the next start. The queue is bounded: each request reserves
# its row's place *before* it runs, and when no place is left the client gets 503 with
# `Retry-After` instead of an answer that could not be audited.

# %%
show(audit)

# %% [markdown]
# **5. Errors.** An SDK exception becomes a status the client can act on, with a JSON body;
# the upstream's own message is not passed on (it can name your account or key).

# %%
show(errors)

# %% [markdown]
# **6. Putting it together.** `create_app` includes the routers, adds the middleware and the
# error handlers, and hands the lifespan its settings. `BodyLimits`, from `labsupport.serving`,
# is server hardening rather than a lesson: it reads the whole body first, with a size limit
# (413) and a deadline (408), so a client trickling its body cannot hold a connection for ever.
# When the service runs in its own process (below), uvicorn's own limits guard the sockets
# (`ServerLimits`: a connection cap, an idle timeout, a header size limit).

# %%
show(main)

# %% [markdown]
# ## Under load
#
# Serve it on a real socket (`lab.serve`: uvicorn on 127.0.0.1) and fire 100 requests at once
# at a service that allows **20** upstream calls at a time. Every request is one upstream call
# of 0.05 s. The audit log goes to a temporary folder.
#
# (The course's tests fire **1,000** requests at the same service with the same checks; 100
# keep this notebook quick.)

# %%
import tempfile
from collections import Counter
from pathlib import Path

import aiosqlite
from capstone import create_app

BOUND = 20
N = 100
if (last_run := globals().get("audit_folder")) is not None:  # this cell run again:
    last_run.cleanup()  # remove the folder of its last run first
audit_folder = tempfile.TemporaryDirectory()


def fresh_audit(name):
    """An empty audit database in the temporary folder: a cell run again starts from zero rows
    (and after the clean-up cell at the end, the folder comes back)."""
    folder = Path(audit_folder.name)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(name + "*"):  # the database, and its -wal and -shm files
        leftover.unlink()
    return folder / name


async def audit_statuses(path):
    """How many audit rows the service wrote, by HTTP status."""
    async with aiosqlite.connect(path) as db:
        rows = await db.execute_fetchall("SELECT status FROM audit")
    return dict(sorted(Counter(status for (status,) in rows).items()))


def ticket(i):
    return {"message": f"Summarize in 5 words: ticket {i} says the export button is broken."}


load_audit = fresh_audit("load.sqlite3")
# slot_wait=30: here one loop runs the clients and the service, so a wait for a slot is mostly
# a wait for the CPU; with the default (5 s) a slow machine could shed part of the burst.
app = create_app(audit_path=load_audit, max_upstream_calls=BOUND, slot_wait=30)

upstream.reset()
async with lab.serve(app) as client:
    load = await lab.fire(client, "POST", "/chat", json=ticket, n=N)
# Leaving the block shut the service down: the client closed, the audit log drained.
stats = upstream.stats
rows = await audit_statuses(load_audit)

first_call = min(call.start for call in stats.timeline)
print(load.summary(latency=LATENCY))
print(f"first upstream call {first_call - load.requests[0].start:.2f} s after the first request")
print(f"upstream: {stats.calls} calls, at most {BOUND} in flight: {stats.max_in_flight <= BOUND}")
print(f"audit rows: {sum(rows.values())} {rows}, one per request: {sum(rows.values()) == N}")
print(load.bodies[0])

# %% [markdown]
# How to read it:
#
# * **100 × 200**: every request answered, none failed.
# * **wall**: at best ⌈100 / 20⌉ = 5 waves of 0.05 s = 0.25 s. It is more here, because the
#   client, the server and the simulated upstream share this kernel's single event loop and
#   its CPU: each request costs a few milliseconds of Python on top of its wait.
# * **at most 20 in flight**: the semaphore held, across 100 concurrent requests.
# * **audit rows**: one per request, all written by the time the service had shut down.
#
# Requests in flight against upstream calls in flight: the requests pile up to 100; the
# upstream never goes above the bound. Note the start: for the first few tenths of a second
# 100 requests are in flight and **no** upstream call is. That is the shared loop again, and
# how asyncio schedules: its ready queue is first in, first out, so each step (open the
# connection, send the request, parse it, validate it) is taken for *all* 100 requests before
# the first of them reaches its next step. Only after 100 × a few milliseconds does any request
# get as far as the upstream. A service in its own process, driven from another, does not
# share that queue with its clients; the benchmark below measures it that way.

# %%
lab.plot_in_flight({"requests": load, "upstream calls": stats}, limit=BOUND)

# %% [markdown]
# Latencies, as a cumulative share of requests. Each request waited far longer than its place
# in the semaphore's queue (at most 5 waves of 0.05 s): 100 requests arrived at once, and every
# one also queued behind the Python work of all the others, on this kernel's one event loop
# where the load generator, the server and the simulated upstream all run. On separate machines
# that share disappears. What matters here is the shape: a narrow band, no request starved.

# %%
lab.plot_latencies(load, latency=LATENCY)

# %% [markdown]
# ## When the upstream fails
#
# Same burst, now with an unreliable upstream: about **10 %** of calls fail with HTTP 500, and
# a quota of **90 calls per minute**, after which it answers 429. The service is built with
# `max_retries=0` so that every fault reaches a client. (In production keep the SDK's retries,
# the default, and let them absorb most of the 500s.)

# %%
from labsupport import Fault, RateLimit

fault_audit = fresh_audit("faults.sqlite3")
flaky_app = create_app(
    audit_path=fault_audit, max_upstream_calls=BOUND, max_retries=0, slot_wait=30
)
unreliable = upstream.configured(  # put back as it was when the block ends, even interrupted
    faults=[Fault.fraction(0.1, status=500)],
    rate_limit=RateLimit(max_per_window=90, window=60.0, retry_after=2.0),
)

with unreliable:
    async with lab.serve(flaky_app) as client:
        flaky = await lab.fire(client, "POST", "/chat", json=ticket, n=N)
        upstream_sent = dict(sorted(upstream.stats.status_counts.items()))
        # The quota is used up by now, so one more request shows the whole 429 response.
        limited = await client.post("/chat", json=ticket(N))
fault_rows = await audit_statuses(fault_audit)

failed = [r for r in flaky.requests if r.status != 200]
print("client saw:", flaky.status_counts)
print("upstream sent:", upstream_sent)
print(
    "every failure has a JSON error with a message:",
    all(r.body["error"]["message"] for r in failed),
)
print(
    "no traceback, no hang:",
    not any("Traceback" in str(r.body) or r.status is None for r in flaky.requests),
)
print("audit rows by status:", fault_rows)
print()
print(limited.status_code, "Retry-After:", limited.headers["retry-after"])
print(limited.json())
print(next(r.body for r in failed if r.status == 502))

# %% [markdown]
# Every upstream 500 became a **502** (the upstream failed, not us), every 429 a **429** with
# `Retry-After: 2` taken from the upstream's own header, and each answer says what happened in
# one sentence. The failures are in the audit log too, with the exception that caused them
# (101 rows: the burst and the one request after it).

# %%
lab.plot_timeline(
    flaky, latency=LATENCY, title="100 requests, 10 % upstream errors, a quota of 90 calls/min"
)

# %% [markdown]
# Three more failures, one request each: a slow upstream (the service gives up after its
# `upstream_timeout`, and the 504 says what it was waiting for), a fan-out where one of the
# three calls fails, and an upstream that cannot be reached at all (nothing listens on the
# port).

# %%
import socket

impatient_app = create_app(
    audit_path=fresh_audit("more.sqlite3"), upstream_timeout=0.2, max_retries=0
)
with upstream.configured(
    faults=[Fault.matching(r"^List 3 topics", status=500), Fault.matching(r"(?i)slow", delay=2.0)]
):
    async with lab.serve(impatient_app) as client:
        slow = await client.post("/chat", json={"message": "A slow question"})
        partial = await client.post("/analyze", json={"text": "The update made everything faster."})
print(slow.status_code, slow.json())
print(partial.status_code, partial.json())

# A bound socket that does not listen: connecting to it is refused at once.
with socket.socket() as closed_port:
    closed_port.bind(("127.0.0.1", 0))
    nowhere = f"http://127.0.0.1:{closed_port.getsockname()[1]}/v1"
    unreachable_app = create_app(
        audit_path=fresh_audit("unreachable.sqlite3"), base_url=nowhere, max_retries=0
    )
    async with lab.serve(unreachable_app) as client:
        unreachable = await client.post("/chat", json={"message": "Hello?"})
print(
    unreachable.status_code, "Retry-After:", unreachable.headers["retry-after"], unreachable.json()
)

# %% [markdown]
# And one more: a service that is full. Twenty slow questions (3 s each) take every upstream
# slot; a normal question arrives behind them. It waits for a slot at most `slot_wait`
# (0.2 s here), then gets **503** with `Retry-After` at once, instead of queueing until a
# slow call ends: the service sheds load it cannot serve soon.

# %% tags=["drains-on-interrupt"]
import asyncio

full_app = create_app(audit_path=fresh_audit("full.sqlite3"), slot_wait=0.2)
with upstream.configured(faults=[Fault.matching(r"^Slow", delay=3.0)]):
    async with lab.serve(full_app) as client:
        slow_calls = [
            asyncio.create_task(client.post("/chat", json={"message": f"Slow question {i}"}))
            for i in range(BOUND)
        ]
        for _ in range(500):  # until the slow calls hold every slot
            if upstream.stats.in_flight == BOUND:
                break
            await asyncio.sleep(0.01)
        shed = await client.post("/chat", json={"message": "A normal question"})
        still_running = sum(not call.done() for call in slow_calls)
        slow_answers = Counter(call.status_code for call in await asyncio.gather(*slow_calls))
print(shed.status_code, "Retry-After:", shed.headers["retry-after"], shed.json())
print(f"slow calls still running when the 503 came: {still_running}; then {dict(slow_answers)}")

# %% [markdown]
# ## When the audit store fails
#
# The upstream is not the only thing that fails. Here an administrator's transaction holds the
# audit database's write lock while requests keep coming: longer than the service's busy
# timeout (0.2 s here, 5 s by default), so every commit the writer tries fails. The service has
# room for **50** unwritten rows (10,000 by default). Three waves of 40 requests arrive while
# the lock is held; then the lock is released and 40 more arrive.

# %%
import asyncio
import sqlite3
from contextlib import closing

locked_audit = fresh_audit("locked.sqlite3")
locked_app = create_app(audit_path=locked_audit, audit_capacity=50, audit_busy_timeout=0.2)


async def health_until(client, done):
    """GET /health until `done(response)`, at most 100 times."""
    for _ in range(100):
        health = await client.get("/health")
        if done(health):
            return health
        await asyncio.sleep(0.05)
    raise RuntimeError(f"/health never got there: {health.json()}")


during = Counter()
async with lab.serve(locked_app) as client:
    with closing(sqlite3.connect(locked_audit, isolation_level=None)) as admin:
        admin.execute("BEGIN IMMEDIATE")  # the lock, held by another connection
        for wave in range(3):
            burst = await lab.fire(
                client, "POST", "/chat", json=lambda i, w=wave: ticket(100 * w + i), n=40
            )
            during.update(burst.status_counts)
        degraded = await health_until(client, lambda r: r.status_code == 503)
        admin.execute("ROLLBACK")  # the administrator is done
    await health_until(client, lambda r: r.status_code == 200)
    after = await lab.fire(client, "POST", "/chat", json=lambda i: ticket(1000 + i), n=40)

async with aiosqlite.connect(locked_audit) as db:
    prompts = [prompt for (prompt,) in await db.execute_fetchall("SELECT prompt FROM audit")]
answered = during[200] + after.status_counts.get(200, 0)
print("while locked, clients saw:", dict(sorted(during.items())))
print("/health while locked:", degraded.status_code, degraded.json()["error"]["message"])
print("after the lock, clients saw:", after.status_counts)
print(
    f"audit rows: {len(prompts)} for {answered} answered with 200, duplicated: "
    f"{len(prompts) - len(set(prompts))}"
)

# %% [markdown]
# What happened, in order:
#
# * The first 50 requests were answered **200**: their rows waited in memory while the writer
#   retried, with a backoff, the same batch it could not commit. The outage was logged once,
#   with its cause (the `audit log cannot write` line above), and `/health` turned **503**.
# * The next 70 were refused with **503** and `Retry-After: 1` *before they ran*: no upstream
#   call, no answer the audit could not keep. That is backpressure: memory stays bounded and
#   the client knows to come back.
# * Once the lock was gone the writer committed the 50 waiting rows (and logged that it writes
#   again), and the service served normally.
# * **0 rows lost, 0 written twice**: every 200 has exactly one row. A failed commit is rolled
#   back whole, and rows leave the queue only once committed.
#
# A full disk behaves the same way (`tests/test_capstone_process.py` fills a small tmpfs under
# load and frees it again). And if the store still fails when the service stops, the rows
# still queued are not dropped: after `audit_drain_timeout` they go to a spill file (JSON
# lines; put it on another filesystem with `audit_spill_path`, the log is the last resort),
# and the next start writes them first. The same tests stop the service on a full disk and
# under a held lock, start it again and count: every answered request has its row.

# %% [markdown]
# ## More than one process
#
# `uvicorn --workers 2` runs two copies of the service, each with its own event loop, its own
# `AsyncOpenAI` client and **its own semaphore**. The bound of 20 is per process, so the
# upstream can see 2 × 20 calls at once. To see it, start two such processes ourselves, as
# `capstone.process.run_in_subprocess` does, and give each 100 requests. Their upstream
# is the course's fake server, on real TCP in this kernel, which counts what it sees.

# %%
from contextlib import ExitStack

import httpx
from capstone.process import run_in_subprocess

PROCESSES = 2


async def burst_at(url, first):
    """N requests at once at the service on `url`, each with its own ticket."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await lab.fire(client, "POST", "/chat", json=lambda i: ticket(first + i), n=N)


with lab.FakeServer(latency=LATENCY) as fake_upstream, ExitStack() as processes:
    urls = [
        processes.enter_context(
            run_in_subprocess(
                audit_path=fresh_audit(f"process{number}.sqlite3"),
                base_url=fake_upstream.base_url,
                max_upstream_calls=BOUND,
            )
        )
        for number in range(PROCESSES)
    ]
    bursts = await asyncio.gather(*(burst_at(url, 10_000 * k) for k, url in enumerate(urls)))
    fake_upstream.wait_idle()
    most = fake_upstream.stats.max_in_flight

seen = Counter()
for burst in bursts:
    seen.update(burst.status_counts)
print(f"{PROCESSES} processes, bound {BOUND} each; clients saw:", dict(seen))
print(f"upstream calls in flight at most: {most / BOUND:.1f}× the bound")
print(
    f"more than one bound: {most > BOUND}; at most {PROCESSES} × {BOUND}: "
    f"{most <= PROCESSES * BOUND}"
)

# %% [markdown]
# So with N worker processes the upstream's real bound is **N × `max_upstream_calls`**. Set
# `max_upstream_calls` to the provider's limit divided by the number of workers, or share one
# limit between the processes: a later lesson (07) does that. The audit log stays exact with
# several processes: each has its own writer, and on one shared SQLite file they take turns
# for the write lock (a commit that waits past the busy timeout is simply tried again).
#
# ## Capacity, measured from outside
#
# Every load above runs its clients in this kernel. To measure what the service can do, run it
# as a deployment would: the service under its own uvicorn, the fake upstream in a second
# process, and a load tool in a third. `benchmarks/capstone_locust.py` does exactly that with
# [locust](https://locust.io), headless, 1,000 users that each send their next request as soon
# as they have their answer:
#
# ```
# python benchmarks/capstone_locust.py --users 1000 --run-time 30
# ```
#
# Each request is one upstream call of 0.1 s and at most 20 run at once, so the ideal is
# 20 / 0.1 = **200 requests per second**, however many users wait. It prints the throughput
# once all users run against that ideal (the target is 0.95 of it), p50/p95/p99 latency
# (about 1,000 / 200 = 5 s: each request queues behind the others for a slot), the errors,
# and whether every 2xx has exactly one audit row. On two shared cores the fake upstream,
# locust and the service compete for the CPU, so run it on a quiet machine; it also prints
# the CPU time each process used per request, and so how many cores the service alone needs
# to keep up with the ideal (its milliseconds per request × 200 per second).

# %% [markdown]
# ## Bad input never reaches the upstream
#
# Malformed JSON (or not UTF-8), a missing field, a wrong type, an empty or blank message, one
# of control characters only, a message that is too long, an absurd temperature, a temperature
# that is not a number, a typo in a field name, a body of 100 KB, the wrong method: each is
# refused with a clear message in the same JSON shape, and the upstream's call counter stays
# at **0**.

# %%
import json

bad_requests = {
    "malformed JSON": {"content": b'{"message": "hi",}'},
    "no body": {},
    "missing message": {"json": {"temperature": 0.5}},
    "wrong type": {"json": {"message": 42}},
    "not UTF-8": {"content": '{"message": "café"}'.encode("latin-1")},
    "empty message": {"json": {"message": ""}},
    "blank message": {"json": {"message": " \u00a0\n"}},
    "control characters": {"json": {"message": "\x00\x1b"}},
    "message too long": {"json": {"message": "x" * 4_001}},
    "absurd temperature": {"json": {"message": "hi", "temperature": 7}},
    "temperature false": {"json": {"message": "hi", "temperature": False}},
    'temperature "1.5"': {"json": {"message": "hi", "temperature": "1.5"}},
    "typo in a field": {"json": {"message": "hi", "temprature": 0.5}},
    "empty batch": {"json": {"messages": []}, "path": "/batch"},
    "body over 64 KB": {"content": json.dumps({"message": "x" * 100_000}).encode()},
}

upstream.reset()
guarded_audit = fresh_audit("bad.sqlite3")
async with lab.serve(create_app(audit_path=guarded_audit)) as client:
    for label, request in bad_requests.items():
        path = request.pop("path", "/chat")
        headers = {"content-type": "application/json"}
        response = await client.post(path, headers=headers, **request)
        print(f"{label:<19} {response.status_code}  {response.json()['error']['message']}")
    wrong_method = await client.get("/chat")
    print(f"{'GET /chat':<19} {wrong_method.status_code}  Allow: {wrong_method.headers['allow']}")

print()
print("upstream calls:", upstream.stats.calls)
print("audit rows by status:", await audit_statuses(guarded_audit))

# %% [markdown]
# Clean up: remove the temporary audit folder. (Safe to run twice; a cell above run after it
# makes the folder again.)

# %%
audit_folder.cleanup()

# %% [markdown]
# ## Recap
#
# The service uses every pattern of the course, and each one shows up in the numbers:
#
# * **One shared `AsyncOpenAI`**, created in the lifespan and closed at shutdown: requests
#   overlap instead of queueing (01, 05).
# * **`asyncio.gather` with isolated failures**: `/analyze` answered with two of three parts
#   when one failed (02).
# * **A semaphore shared by every request**: the upstream never saw more than 20 calls at
#   once, whatever the load (03).
# * **A background audit writer, drained at shutdown**: one row per request, successes,
#   failures and refusals alike (04); a locked database lost no row, and once its bounded
#   queue was full the service said 503 instead of answering what it could not audit. Rows
#   it cannot write by the time it stops are spilled and written at the next start.
# * **Deadlines**: `upstream_timeout` is the whole wait, retries included, and the 504 says
#   what the request was waiting for; slow clients get 408. No request waits longer than
#   `slot_wait` for an upstream slot: a full service says 503 at once (load shedding).
# * **Validation and clean errors**: bad input costs nothing upstream; every error, ours or the
#   upstream's, has one JSON shape that the OpenAPI schema documents.
#
# And one caveat: the bound is per process, so N workers can send N × 20 calls at once.
# Notebook 07 takes it from there: it runs this pattern as several worker processes, moves the
# limit into Redis so that all of them share it, and moves audit writes to a job queue that
# survives `kill -9`.
#
# Where to go from here: add an endpoint of your own to `capstone/routers/`. The tests show
# how to check it: `tests/test_capstone.py` under load and faults in this process,
# `tests/test_capstone_process.py` in its own process (a locked database or a full disk,
# while it runs and when it stops, a read-only start-up, slow clients), and
# `tests/test_capstone_contract.py` runs schemathesis against its OpenAPI schema.
