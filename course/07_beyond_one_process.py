# %% [markdown]
# # 07 · Beyond one process: workers, one shared limit, and work that survives a crash
#
# **Objective.** Run the service the way production does, as several worker processes, and keep
# two promises the earlier notebooks made inside one process: the upstream never sees more
# calls than it allows, and post-request work is never lost.
#
# **You will:** run 4 real uvicorn workers, each with its own `asyncio.Semaphore(5)`, and watch
# the upstream see 20 calls at once · move the limit into Redis, with leases that expire, and
# see 5 in flight and 0 × 429 · kill -9 a worker holding a slot and watch the slot come back ·
# share a per-second quota with a token bucket · lose `BackgroundTasks` audit writes to a
# kill -9, then keep them with a job queue (streaq) · write a shared limiter yourself and get it
# checked in 3 worker processes.
#
# This notebook needs **`redis-server`**, a system program (not a Python package). The first
# cell checks for it and, if it is missing, prints the one command that installs it.

# %%
import labsupport as lab
from labsupport import distributed

distributed.require_redis_server()  # without redis-server: one line with the install command
upstream = lab.setup(latency=0.2)

# %% [markdown]
# Every upstream in this notebook is `WorkerTaggedServer`: the course's `FakeServer` (the
# offline upstream over real TCP on 127.0.0.1) that also notes which worker process sent each
# call. Worker processes cannot see this kernel's in-process mock, and one server that every
# worker calls is exactly what a provider is: the place where the calls of all processes add
# up. (The offline mock that `lab.setup` printed about stays unused; with `LAB_MODE=live` this
# notebook still runs against its local fake upstream, since rate limits must be scripted.)
#
# ## The service, as each worker runs it
#
# The capstone's pattern, cut to what this lesson is about. In its lifespan, each worker
# process creates one `AsyncOpenAI` client and one **limiter**; every upstream call holds a
# slot of it. The client sends a header with the worker's process id, so the upstream can tell
# the workers apart, and it does not retry: every 429 reaches the client, to be counted.

# %%
import inspect

from IPython.display import Markdown

from labsupport.distributed import service


def show(*objects):
    """The source of functions of the service, as one code block."""
    code = "\n\n\n".join(inspect.getsource(obj).strip() for obj in objects)
    return Markdown(f"```python\n{code}\n```")


show(service.make_limiter, service.ask)

# %% [markdown]
# `"local"` is what notebook 03 taught: one `asyncio.Semaphore(5)`, created once, shared by
# every request **of this process**.
#
# ## The trap: 4 workers, 4 semaphores
#
# 4 workers, each with `LocalSlots(5)` (one `asyncio.Semaphore(5)` each), and a burst of 40
# requests spread round-robin: 10 per worker, the way a load balancer spreads them over
# replicas. Here each upstream call takes 1 s, as a long LLM answer does, so the workers'
# calls surely overlap (elsewhere in this notebook, 0.2 s). First without any limit at the
# upstream, to see how many calls the workers send at once; then with the provider's limit of
# **5 in flight** (`RateLimit(max_concurrent=5)`), to see what it answers.

# %% [markdown]
# **Predict first.** 4 workers, each with its own `asyncio.Semaphore(5)`, 40 requests at once,
# no limit at the upstream. How many calls will the upstream see in flight at once, at most?
# Type your guess in the box (or set `PREDICTION` and run the cell again), then run the burst.

# %%
from labsupport.coaching import predict

PREDICTION = None  # your guess: a number from 0 to 40
per_worker_guess = predict(
    "4 workers, an asyncio.Semaphore(5) each, 40 requests at once: how many calls in flight "
    "at the upstream, at most?",
    unit="calls in flight at once",
    maximum=40,
    value=PREDICTION,
)
per_worker_guess

# %%
from labsupport.distributed import ServiceConfig, ServiceWorkers, WorkerTaggedServer
from labsupport.load import in_flight_steps

LIMIT = 5
LATENCY = 0.2
WORKERS = 4
N = 40


def ticket(i):
    return {"message": f"Summarize in 5 words: ticket {i} says the export button is broken."}


async def burst(workers, n=N, path="/chat", json=ticket):
    """`n` requests at once, request i to worker i mod the number of workers."""
    async with workers.client() as client:
        return await lab.fire(client, "POST", path, json=json, n=n)


def peak(calls):
    """The most calls in flight at once."""
    return max((count for _, count in in_flight_steps(calls)), default=0)


def per_worker(provider, workers):
    """The upstream's timeline, split by the worker that sent each call."""
    return {workers.label(pid): calls for pid, calls in provider.calls_by_worker().items()}


with WorkerTaggedServer(latency=1.0) as provider:  # long calls: the workers' waves overlap
    config = ServiceConfig(upstream_url=provider.base_url, limiter="local", limit=LIMIT)
    with ServiceWorkers(WORKERS, config) as workers:
        unlimited = await burst(workers)
        provider.wait_idle()
        trap_stats, trap_calls = provider.stats, per_worker(provider, workers)

        provider.configure(rate_limit=lab.RateLimit(max_concurrent=LIMIT, retry_after=60))
        limited = await burst(workers)
        provider.wait_idle()
        limited_stats = provider.stats

print(f"no limit at the upstream: {unlimited.status_counts}, {trap_stats}")
for label, calls in sorted(trap_calls.items()):
    print(f"  {label}: {len(calls)} calls, at most {peak(calls)} in flight")
print(f"= {WORKERS} workers × {LIMIT}: {trap_stats.max_in_flight == WORKERS * LIMIT}")
print()
refused = limited.status_counts.get(429, 0)
print(f"the provider allows {LIMIT} in flight: {limited_stats.max_in_flight} in flight at most,")
print(f"  requests refused with 429: {'some' if refused else 'none'} of {N}")
print(
    per_worker_guess.compare(
        trap_stats.max_in_flight,
        because="each semaphore counted only its own worker's calls: 4 workers × 5 slots, and "
        "no worker knew what the others had in flight",
        investigate="the lines per worker: did any single worker ever pass its limit of 5?",
    )
)

# %% [markdown]
# Each worker kept its promise: at most 5 of *its* calls at a time. Together they sent **20**,
# and with the provider's limit on, every call beyond the first 5 in flight was refused
# (how many depends on timing). Notebook 03 warned about this
# in one sentence; here it is in numbers. Each worker's calls, and all of them together:

# %%
lab.plot_in_flight(
    {"all workers (what the provider sees)": trap_stats, **dict(sorted(trap_calls.items()))},
    limit=LIMIT,
    title="4 workers, an asyncio.Semaphore(5) each",
)

# %% [markdown]
# Dividing the limit (`Semaphore(1)` in each of 4 workers, for a limit of 5) fails too: it
# wastes 1 slot, and it breaks when someone scales to 6 workers or an autoscaler adds a
# replica. The limit belongs to the upstream, so it has to live where every worker sees the
# same count: a shared store. Redis is the usual one.
#
# ## The fix: one semaphore in Redis, with leases
#
# `lab.distributed.RedisServer` starts the system's `redis-server` on a free port of 127.0.0.1,
# in memory only (`--save "" --appendonly no`), and stops it when the `with` block ends.
# Loopback is shared by everyone on the machine (on a workshop hub, by the whole room), so the
# server asks for a random password; `redis_server.url` carries it to every client, which is
# why the cell below prints the port, not the URL.
#
# A shared semaphore needs two things a local one does not:
#
# 1. **Taking a slot must be one atomic step.** "Count the holders, and if there is room, add
#    me" done as two commands lets two workers both see 4 holders and both take the fifth
#    slot. Here is that interleaving, done by hand, with two connections standing in for two
#    workers:

# %%
import asyncio

from labsupport.distributed import RedisServer, SharedSemaphore, connect

with RedisServer() as redis_server:
    print(f"redis-server on 127.0.0.1:{redis_server.port}, password required")
    worker_a, worker_b = connect(redis_server.url), connect(redis_server.url)

    await worker_a.set("holders", 4)  # 4 of the 5 slots are taken
    a_sees = int(await worker_a.get("holders"))  # worker A: 4 < 5, there is room
    b_sees = int(await worker_b.get("holders"))  # worker B, between A's two steps: 4 < 5
    await worker_a.incr("holders")
    await worker_b.incr("holders")
    print(f"check, then set: A saw {a_sees}, B saw {b_sees}; now", await worker_a.get("holders"))

    slots_a = SharedSemaphore(worker_a, "demo", limit=LIMIT, lease=10.0)
    slots_b = SharedSemaphore(worker_b, "demo", limit=LIMIT, lease=10.0)
    for _ in range(4):
        await slots_a.try_acquire()  # 4 of the 5 slots are taken
    a_token, b_token = await asyncio.gather(slots_a.try_acquire(), slots_b.try_acquire())
    print(f"one Lua script: A got a slot: {a_token is not None}, B got one: {b_token is not None}")
    print("holders now:", await slots_a.held())
    await worker_a.aclose()
    await worker_b.aclose()

# %% [markdown]
# `SharedSemaphore` does the count and the add inside one Lua script, and Redis runs a script
# from start to end with no other command in between. (For a single key, `SET key value NX PX
# ms` is atomic the same way: "set it only if it does not exist, with an expiry".)
#
# 2. **A slot must come back even if its holder never returns it.** A worker can die holding
#    a slot: kill -9, the OOM killer, a lost container. So a holder does not own a slot, it
#    *leases* it: each holder is an entry in a sorted set whose score is the moment its lease
#    expires, and every acquire first drops the expired entries. The script reads the time from
#    Redis itself, so the workers' clocks never have to agree.

# %%
Markdown(f"```lua\n{distributed.shared_limit.ACQUIRE_LEASE.strip()}\n```")

# %% [markdown]
# The lease must be longer than the slowest call, or a slow call's slot expires under it and
# lets one more in. It runs from the acquire, and a worker on a busy machine can be a second or
# more late to send its call: here the workers give up on the upstream after 2.5 s and lease
# for 5 s. (A service with long calls renews its leases while it works, or uses a long lease
# and accepts that a crash costs that long.)
#
# The same 4 workers and 40 requests, now with `SharedSemaphore(limit=5)` and the provider's
# limit on from the start. Then, with the same workers, a crash: worker 1 gets a slow question
# (the upstream takes 2 s for any prompt with "slow" in it), so it holds one of the 5 slots
# while its call is in flight, and it is killed with `kill -9`. No `finally` runs, no release
# is ever sent. How long until the slot is back? And last, Redis itself is killed.

# %% [markdown]
# **Predict first.** The same 4 workers and 40 requests, one `SharedSemaphore(5)` in Redis for
# all of them. How many calls in flight at the upstream, at most?

# %%
PREDICTION = None  # your guess: a number from 0 to 40
shared_guess = predict(
    "4 workers, one SharedSemaphore(5) in Redis, 40 requests at once: how many calls in flight "
    "at the upstream, at most?",
    unit="calls in flight at once",
    maximum=40,
    value=PREDICTION,
)
shared_guess

# %%
import time

LEASE = 5.0
UPSTREAM_TIMEOUT = 2.5  # half the lease: the other half is for a late start
provider_limit = lab.RateLimit(max_concurrent=LIMIT, retry_after=60)

with (
    RedisServer() as redis_server,
    WorkerTaggedServer(latency=LATENCY, rate_limit=provider_limit) as provider,
):
    config = ServiceConfig(
        upstream_url=provider.base_url,
        limiter="shared",
        limit=LIMIT,
        lease=LEASE,
        upstream_timeout=UPSTREAM_TIMEOUT,
        redis_url=redis_server.url,
    )
    with ServiceWorkers(WORKERS, config) as workers:
        shared = await burst(workers)
        provider.wait_idle()
        fix_stats, fix_calls = provider.stats, per_worker(provider, workers)
        print(f"{WORKERS} workers, one SharedSemaphore({LIMIT}) in Redis: {shared.status_counts}")
        print(fix_stats)
        print(
            f"at most {LIMIT} in flight: {fix_stats.max_in_flight <= LIMIT}, 429s: "
            f"{fix_stats.count(429)}; every worker took part: {len(fix_calls) == WORKERS}"
        )
        print(
            shared_guess.compare(
                fix_stats.max_in_flight,
                because="every worker took its slot from the same count in Redis, so the sum "
                "of all workers' calls never passed 5",
                investigate="the plot after this cell: how does each worker's share move?",
            )
        )
        print()

        provider.configure(faults=[lab.Fault.matching(r"(?i)slow", delay=2.0)])
        redis = connect(redis_server.url)
        slots = SharedSemaphore(redis, "openai", limit=LIMIT, lease=LEASE)  # the workers' key
        async with workers.client() as client:
            call = asyncio.create_task(client.post("/chat", json={"message": "A slow question"}))
            while provider.stats.in_flight < 1:  # worker 1 holds a slot, its call is running
                await asyncio.sleep(0.01)
            print("slots held while the slow call runs:", await slots.held())

            workers.kill(0)  # kill -9 worker 1
            killed = time.perf_counter()
            (outcome,) = await asyncio.gather(call, return_exceptions=True)
            print("the slow request failed with the worker:", isinstance(outcome, Exception))
            print("slots held right after the kill:", await slots.held())
            while await slots.held():
                await asyncio.sleep(0.01)
            back = time.perf_counter() - killed
            # The lease began before the kill, so it ends within one lease of it (this loop
            # looks every 10 ms, and each look is a round trip: allow a quarter second).
            print(f"the slot came back by itself {back:.2f} s after the kill (lease {LEASE:.2f} s)")
            print(f"  within one lease of the kill: {back < LEASE + 0.25}")

            redis_server.kill()  # now Redis dies: kill -9
            start = time.perf_counter()
            response = await client.post("/chat", json=ticket(1))
            print()
            print(
                f"Redis killed: worker 2 answered {response.status_code} in "
                f"{time.perf_counter() - start:.2f} s:",
                response.json()["error"]["type"],
            )
        await redis.aclose()
        provider.wait_idle(timeout=10)  # the killed worker's call ends at the upstream too

# %% [markdown]
# **5 in flight, 0 × 429**, and all 40 answered (⌈40 / 5⌉ = 8 waves of 0.2 s at best; a
# waiting worker asks Redis again every 50 ms or so, which costs a little of that). Each
# worker's share goes up and down, and the sum never passes 5:

# %%
lab.plot_in_flight(
    {"all workers (what the provider sees)": fix_stats, **dict(sorted(fix_calls.items()))},
    limit=LIMIT,
    title="4 workers, one SharedSemaphore(5) in Redis",
)

# %% [markdown]
# The slot came back by itself, without anyone noticing the crash: the lease ran out. Without
# an expiry (say, a counter that release decrements), that slot would be gone until someone
# deletes the key by hand, and every crash would shrink the limit by one more.
#
# When Redis is gone, the limiter cannot know whether a call is allowed. It fails fast
# (`LimiterUnavailable`: a refused connection at once; a Redis that stops answering after 3
# socket timeouts of 1 s in a row, since one alone can be the worker's own doing, its event loop
# too busy to read an answer that is already there) and the service answers **503** with a JSON
# error, instead of hanging or calling the upstream without a limit. (Failing *open* is a
# choice some services make for availability; make it deliberately, never by accident.)
#
# ## A per-second quota: a token bucket in Redis
#
# OpenAI's limits are per minute: so many requests *started* in a window (notebook 03). The
# shared form is a token bucket: Redis holds up to `burst` tokens and refills them at `rate`
# per second; each call takes one, or waits as long as the script says. One Lua script again,
# so two workers never take the same token. In any window of `w` seconds, at most
# `burst + rate · w` calls start. The provider's quota here is 10 per second; its window starts
# when a call *arrives*, a little after the token was taken and never exactly as late for every
# call (a busy worker can be late by a fraction of a second), so keep headroom: `rate=4,
# burst=2`, at most 6 starts in any second.

# %%
window_limit = lab.RateLimit(max_per_window=10, window=1.0, retry_after=60)
with (
    RedisServer() as redis_server,
    WorkerTaggedServer(latency=LATENCY, rate_limit=window_limit) as provider,
):
    config = ServiceConfig(
        upstream_url=provider.base_url,
        limiter="shared",
        limit=LIMIT,
        lease=LEASE,
        upstream_timeout=UPSTREAM_TIMEOUT,
        redis_url=redis_server.url,
        rate=4.0,
        burst=2,
    )
    with ServiceWorkers(2, config) as workers:
        paced = await burst(workers, n=16)
        provider.wait_idle()
print(
    f"2 workers, one bucket of 4 calls/s: {paced.status_counts}, 429s at the upstream: "
    f"{provider.stats.count(429)}"
)
print(f"took {paced.wall:.2f} s: 2 calls at once, then 14 at 4 per second take 3.50 s")

# %% [markdown]
# A well-kept library does the window part for you: [`limits`](https://limits.readthedocs.io)
# implements fixed, moving and sliding windows on Redis (and other stores), with an asyncio
# API. It answers *may this call start now?*; waiting is up to you. Use it where a yes/no is
# what you need, such as refusing a client of your own API that sends too much:

# %%
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

with RedisServer() as redis_server:
    redis = connect(redis_server.url)
    storage = RedisStorage(
        f"async+{redis_server.url}", implementation="redispy", connection_pool=redis.connection_pool
    )
    window = MovingWindowRateLimiter(storage)
    ten_per_second = RateLimitItemPerSecond(10)
    allowed = []
    for _ in range(12):
        allowed.append(await window.hit(ten_per_second, "openai"))
    await redis.aclose()
print(f"12 calls in a row, 10 per second allowed: {allowed.count(True)} yes, then {allowed[10:]}")

# %% [markdown]
# | Shared limit | Limits | In Redis |
# |---|---|---|
# | `SharedSemaphore(limit, lease)` | calls **in flight** | sorted set of leases, one Lua script |
# | `TokenBucket(rate, burst)` | calls **started** per second | hash of tokens, one Lua script |
# | `limits` moving window | calls started per window, yes/no | the library's own scripts |
#
# ## Work after the response: lost with the process
#
# Notebook 04 moved the audit write out of the request with `BackgroundTasks`: the client gets
# its answer, the write runs after. That task lives in the memory of the worker that answered.
# One worker, 10 requests to `/audited`, whose audit write takes 2 s; then the worker is
# killed with kill -9 (a deploy that does not wait, the OOM killer, a node that goes away):

# %%
show(service.audited)

# %% tags=["drains-on-interrupt"]
import tempfile
from pathlib import Path

from labsupport.distributed.jobs import audit_counts

if (last_run := globals().get("audit_folder")) is not None:  # this cell run again:
    last_run.cleanup()  # remove the folder of its last run first
audit_folder = tempfile.TemporaryDirectory()
background_audit = Path(audit_folder.name) / "background.sqlite3"


def audited(i):
    return {**ticket(i), "request_id": f"request-{i}"}


with WorkerTaggedServer(latency=LATENCY) as provider:
    config = ServiceConfig(
        upstream_url=provider.base_url, audit_path=str(background_audit), audit_delay=2.0
    )
    with ServiceWorkers(1, config) as workers:
        answered = await burst(workers, n=10, path="/audited", json=audited)
        workers.kill(0)
background = await audit_counts(str(background_audit))
print(f"clients were told: {answered.status_counts}")
print(
    f"audit rows after kill -9: {background['audit rows']} of 10, lost: "
    f"{10 - background['audit rows']}"
)

# %% [markdown]
# Every client got its 200, and **all 10 audit rows are lost**, without an error anywhere:
# the only record that the work was due was in the dead process's memory.
#
# ## Durable work: a job queue on Redis
#
# A job queue writes the work down *before* the response: the service enqueues a job in Redis
# and answers; a separate **queue worker** process takes jobs from Redis and runs them.
# [streaq](https://streaq.readthedocs.io) is an asyncio job queue on Redis streams. What it
# guarantees:
#
# * `await job` returns once the job is stored in Redis: the service may die the next moment;
# * a queue worker takes a job as a **claim**: a pending entry of the stream's consumer group,
#   which it acknowledges only when the job has ended. While the job runs, its worker renews the
#   claim (every 0.9 × `idle_timeout`), so a running job is not started again beside itself. A
#   claim left unrenewed for `idle_timeout` (its worker was killed) is taken by the next worker
#   that reads the stream, which runs the job again, up to `max_tries` runs in all.
#
# What the lab adds: an `idle_timeout` of 2 s instead of streaq's 60 s, so a killed worker's
# jobs run again within seconds; the request id as the job id (streaq stores a job only if its
# id is new, so the same request enqueued twice while its job waits or runs is one job); a
# failed write (the audit file locked past its timeout) raises streaq's `StreaqRetry`, so the
# job runs again instead of being recorded as failed, which would lose its row; and the job's
# own idempotence. A job can run **twice**: killed after its write but before it was
# acknowledged, it writes again. Here the audit row's primary key is the request id, and a
# second insert does nothing. The job also writes to a `naive_audit` table without a key, to
# show what a plain `INSERT` would have done.

# %%
from labsupport.distributed import jobs

show(service.queued, jobs.AuditQueue.enqueue, jobs.build_queue, jobs.write_audit)

# %% [markdown]
# 5 requests to `/queued`; the service worker is killed right after answering (the jobs are
# in Redis already), and the queue worker is killed with kill -9 while all 5 jobs are running,
# after their writes. Then a new queue worker starts, as a supervisor (systemd, Kubernetes)
# would start one:

# %%
from labsupport.distributed import QueueWorker

if (last_run := globals().get("queue_folder")) is not None:  # this cell run again:
    last_run.cleanup()
queue_folder = tempfile.TemporaryDirectory()
queued_audit = Path(queue_folder.name) / "queued.sqlite3"


def queued(i):
    return {**ticket(i), "request_id": f"request-{i}"}


with RedisServer() as redis_server, WorkerTaggedServer(latency=LATENCY) as provider:
    config = ServiceConfig(
        upstream_url=provider.base_url, redis_url=redis_server.url, audit_path=str(queued_audit)
    )
    with ServiceWorkers(1, config) as workers, QueueWorker(redis_server.url, queued_audit) as queue:
        answered = await burst(workers, n=5, path="/queued", json=queued)
        workers.kill(0)  # the service worker dies: its jobs are in Redis already
        stored = answered.status_counts.get(200, 0)  # a 503 (Redis too slow) stored no job

        async with asyncio.timeout(60):  # waits with an end: a cell never hangs
            while (await audit_counts(str(queued_audit)))["job runs"] < stored:
                await asyncio.sleep(0.02)
            queue.kill()  # kill -9 the queue worker, mid-job
            killed = time.perf_counter()
            queue.start()  # a new queue worker
            async with jobs.build_queue(redis_server.url).worker as audit_queue:  # a client
                while await audit_queue.queue_size():  # streaq removes a job once it has ended
                    await asyncio.sleep(0.1)
            done_after = time.perf_counter() - killed

queued_counts = await audit_counts(str(queued_audit))
print(f"clients were told: {answered.status_counts}")
print(
    f"jobs run: {queued_counts['job runs']} for {stored} requests answered 200 "
    f"({queued_counts['jobs run twice or more']} ran twice), all done {done_after:.2f} s "
    "after the kill"
)
rows = queued_counts["audit rows"]
print(
    f"audit rows: {rows} of {stored}: lost {stored - rows}, "
    "duplicated 0 (the request id is the key)"
)
print(
    f"plain INSERT: {queued_counts['naive rows']} rows, "
    f"{queued_counts['naive duplicates']} duplicated"
)
audit_folder.cleanup()  # the two audit files of this part are read: remove them
queue_folder.cleanup()

# %% [markdown]
# **0 lost, 0 duplicated**: every job ran to the end, each write counted once. The price is
# the wait (a killed worker's claims must go idle for `idle_timeout` before another worker may
# take them: a shorter one redelivers sooner, but a worker too busy to renew in time would have
# its running jobs started again) and the discipline: a job that can run twice must do no harm
# the second time. Sending an e-mail is not idempotent by itself;
# recording "sent for request 42" first, and checking it, makes it so.
#
# | Post-request work | Survives the process | Runs |
# |---|---|---|
# | `BackgroundTasks` | no | at most once |
# | a job queue (streaq, Dramatiq…) | yes, the job is in Redis | at least once: make it idempotent |
#
# ## Your turn
#
# Write `SlotLeases`, a limit of `limit` calls in flight shared by every worker process, with
# one Redis key per slot: `slots:{name}:0` … `slots:{name}:{limit-1}`. A holder takes a slot
# with `SET key token NX PX lease_ms` (atomic: only if the key does not exist, with an expiry)
# and releases it by deleting the key, **only if it still holds its token** (otherwise its
# lease has expired and the slot may belong to someone else; a small Lua script does the
# compare and the delete in one step).
#
# The service constructs it as `SlotLeases(redis, name=…, limit=…, lease=…)` in each worker,
# with `redis` a `redis.asyncio.Redis` that returns `str` values, and calls
# `token = await limiter.acquire()` (wait for a slot) and `await limiter.release(token)`.
# The check runs your class in this kernel, then **sends this cell's code to 3 uvicorn worker
# processes**: keep the cell self-contained (its own imports, plain Python). In this kernel it
# takes every slot, checks that one more holder waits (with the event loop free) and gets in
# after a release, lets short leases expire under holders that are still working (their slots
# must come back, and their late releases must not free a slot someone else holds now), and
# reads the commands your class sent: taking a slot and releasing it must each be one step. The
# workers then get 30 requests at an upstream that allows 5 in flight.
#
# The version below is what most services start with. It passes in one process.

# %% tags=["exercise"]
import asyncio


class SlotLeases:
    """TODO: at most `limit` holders among ALL worker processes, one Redis key per slot."""

    def __init__(self, redis, name: str, limit: int, lease: float) -> None:
        self.redis = redis
        self.semaphore = asyncio.Semaphore(limit)  # TODO: this one lives in one process only

    async def acquire(self) -> str:
        await self.semaphore.acquire()
        return "local"

    async def release(self, token: str) -> None:
        self.semaphore.release()


# %% tags=["solution"]
import asyncio
import uuid

# Compare and delete in one step: between a GET and a DEL, our lease could expire and another
# holder take the slot, and we would delete *its* lease.
RELEASE_IF_MINE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class SlotLeases:
    """At most `limit` holders among all worker processes: one Redis key per slot."""

    def __init__(self, redis, name: str, limit: int, lease: float) -> None:
        self.redis = redis
        self.keys = [f"slots:{name}:{i}" for i in range(limit)]
        self.lease_ms = max(1, round(lease * 1000))
        self.release_if_mine = redis.register_script(RELEASE_IF_MINE)

    async def acquire(self) -> str:
        token = uuid.uuid4().hex
        while True:
            for key in self.keys:
                # NX: only if the slot is free; PX: the lease expires by itself. One command.
                if await self.redis.set(key, token, nx=True, px=self.lease_ms):
                    return f"{key} {token}"
            await asyncio.sleep(0.02)  # every slot is taken: ask again shortly

    async def release(self, held: str) -> None:
        key, token = held.split(" ")
        await self.release_if_mine(keys=[key], args=[token])


# %%
await lab.checks.check_shared_limit(SlotLeases)

# %% [markdown]
# ## Recap
#
# * **A limit in one process is a limit per process.** 4 workers with `asyncio.Semaphore(5)`
#   each sent 20 calls at once; against a provider that allows 5, the rest were 429s.
# * **One semaphore in Redis** held 4 workers to 5 in flight with 0 × 429. Taking a slot is
#   one atomic step (a Lua script, or `SET NX PX`): check-then-set in two commands lets two
#   workers take the same slot.
# * **Leases, not ownership:** a worker killed with kill -9 gave its slot back by itself
#   within the lease. Make the lease longer than the slowest call.
# * **Per-window quotas** are shared with a token bucket in Redis; `limits` offers the window
#   strategies as a library.
# * **When Redis is down**, fail fast with 503, not a hang, and not an unlimited upstream.
# * **`BackgroundTasks` die with their process**: 10 audit writes lost to one kill -9. A job
#   queue on Redis (streaq) kept every one: the job ran again after the crash, and an idempotent
#   write keyed by the request id kept it to one row.
