# %% [markdown]
# # 04 · Background tasks: answer first, write the audit log after
#
# **Objective.** Take slow post-request work (an audit log entry) out of the response time with
# FastAPI's `BackgroundTasks`, know where that work runs, store it durably, and lose none of it
# when the server shuts down.
#
# **You will:** measure the response time with the audit done inline and in a background task ·
# see why the in-memory test client hides the difference · learn what runs on the event loop and
# what in the thread pool · write the audit to SQLite from 200 concurrent requests · shut down
# with audit work still pending · move a slow audit write out of an endpoint yourself.

# %%
import labsupport as lab

upstream = lab.setup(latency=0.05)
LATENCY = upstream.latency

# %% [markdown]
# ## The service
#
# The chat endpoint from the course's seed note, with its audit logger. A real audit sink is
# rarely instant (a database on another host, a log service), so `log_to_audit` takes
# `AUDIT_DELAY` seconds, like such a write. It also notes *when* the entry was written
# (`written_at`, a `time.perf_counter()` reading), so we can compare it with the response.
#
# The seed prints each entry; here the entries go to `AUDIT_LOG` only, because a background
# task's `print` lands in whichever notebook cell happens to be running at that moment.

# %%
import asyncio
import os
import time

from fastapi import BackgroundTasks, FastAPI
from openai import AsyncOpenAI
from pydantic import BaseModel

AUDIT_DELAY = 0.3  # seconds per audit write
AUDIT_LOG: list[dict] = []
aclient = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))


class ChatRequest(BaseModel):
    message: str
    user_id: str = "anonymous"


def log_to_audit(request_data: dict, response_data: dict, latency_ms: float) -> None:
    """The seed's audit logger, as slow as a real audit write."""
    time.sleep(AUDIT_DELAY)  # stands in for the write itself
    entry = {"timestamp": time.time(), "latency_ms": round(latency_ms, 1)}
    entry.update(request_data, **response_data, written_at=time.perf_counter())
    AUDIT_LOG.append(entry)


async def ask_openai(request: ChatRequest) -> tuple[str, dict, float]:
    """Call OpenAI; return the reply, the audit fields and the call's latency in ms."""
    start = time.perf_counter()
    response = await aclient.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
    )
    reply = response.choices[0].message.content
    latency_ms = (time.perf_counter() - start) * 1000
    audit = {"user_id": request.user_id, "tokens": response.usage.total_tokens, "reply": reply}
    return reply, audit, latency_ms


# %% [markdown]
# ## Inline: the client waits for the audit
#
# The obvious version writes the entry before returning. `asyncio.to_thread` keeps the blocking
# write off the event loop (notebook 01), but the *response* still waits for it.

# %%
inline_app = FastAPI()


@inline_app.post("/chat")
async def chat_inline(request: ChatRequest):
    reply, audit, latency_ms = await ask_openai(request)
    # ✗ The response is sent only after the audit write.
    await asyncio.to_thread(log_to_audit, {"message": request.message[:100]}, audit, latency_ms)
    return {"response": reply}


# %% [markdown]
# ## In the background: answer first
#
# The seed's version: `background_tasks.add_task(...)` only *schedules* the call. FastAPI sends
# the response, then runs the task.

# %%
background_app = FastAPI()


@background_app.post("/chat")
async def chat_background(request: ChatRequest, background_tasks: BackgroundTasks):
    reply, audit, latency_ms = await ask_openai(request)
    # ✓ Runs after the response has been sent.
    background_tasks.add_task(log_to_audit, {"message": request.message[:100]}, audit, latency_ms)
    return {"response": reply}


# %% [markdown]
# To see "after the response", the client must be a real one on the other end of a socket:
# `lab.serve` runs the app in a real uvicorn server on 127.0.0.1. We send one request, note the
# moment its response arrives, and compare it with the moment the audit entry was written.

# %% [markdown]
# **Predict first.** The upstream call takes `LATENCY` (0.05 s), the audit write `AUDIT_DELAY`
# (0.30 s). With the write in a background task, how long will the client wait for its
# response? Type your guess in the box (or set `PREDICTION` and run the cell again).

# %%
from labsupport.coaching import predict

PREDICTION = None  # your guess in seconds
background_guess = predict(
    "Audit in a background task, served by uvicorn: how many seconds until the response?",
    value=PREDICTION,
)
background_guess

# %%
body = {"message": "Summarize in 5 words: the printer jams on every page.", "user_id": "u1"}


async def one_audited_request(app, connect):
    """Send one request; return its latency, the entries present when it arrived, and the
    seconds from the response to the audit entry (negative: written before)."""
    AUDIT_LOG.clear()
    async with connect(app) as client:
        sent = time.perf_counter()
        response = await client.post("/chat", json=body)
        arrived = time.perf_counter()
        entries_at_response = len(AUDIT_LOG)
    response.raise_for_status()
    return arrived - sent, entries_at_response, AUDIT_LOG[0]["written_at"] - arrived


def show(label, latency, entries, written):
    when = "before" if written < 0 else "after"
    print(
        f"{label:22} response in {latency:.2f} s · entries when it arrived: {entries} · "
        f"entry written {abs(written):.2f} s {when} it"
    )


show("inline:", *await one_audited_request(inline_app, lab.serve))
background = await one_audited_request(background_app, lab.serve)
show("background task:", *background)
print(
    background_guess.compare(
        background[0],
        because="the response was sent before the background task started: the client waited "
        "for the upstream call only",
        investigate="“entry written … after it”: when did the audit entry appear?",
    )
)

# %% [markdown]
# Inline, the response took the upstream call **plus** the audit write (≈ 0.35 s), and the entry
# existed before the client had its answer. With the background task the response came back in
# about one upstream call (≈ 0.05 s), and the entry was written about `AUDIT_DELAY` (0.30 s)
# later. Leaving the `lab.serve` block waited for it, as a real server's shutdown does (below).
#
# **A trap for your tests.** The in-memory client (`lab.asgi_client`, like FastAPI's
# `TestClient`) returns a response only when the whole ASGI call has finished, and background
# tasks are part of that call. Measured that way, the background task seems to change nothing:

# %%
show("background, in memory:", *await one_audited_request(background_app, lab.asgi_client))

# %% [markdown]
# Use the in-memory client to test *what* a background task does; measure *when* with a server.
#
# ## What runs where
#
# FastAPI runs a background task the same way it runs an endpoint:
#
# * a plain **`def`** function runs in the **thread pool**: blocking there is fine;
# * an **`async def`** function runs **on the event loop**: it must only `await`, because a
#   blocking call there (`time.sleep`, `sqlite3`, `requests`, a sync OpenAI client) stops every
#   other request until it returns.
#
# Three audit functions that each take 0.05 s, and where each one ran:

# %%
import threading

WORK = 0.05
ran_in: set[str] = set()


def where() -> str:
    # In a notebook, as in uvicorn, the event loop runs in the main thread.
    on_loop = threading.current_thread() is threading.main_thread()
    return "event loop thread" if on_loop else "worker thread"


def audit_def_sleeping(entry: dict) -> None:
    ran_in.add(where())
    time.sleep(WORK)  # ✓ blocks a worker thread only


async def audit_async_awaiting(entry: dict) -> None:
    ran_in.add(where())
    await asyncio.sleep(WORK)  # ✓ waits without blocking


async def audit_async_blocking(entry: dict) -> None:
    ran_in.add(where())
    time.sleep(WORK)  # ✗ blocks the event loop: nothing else runs meanwhile


def app_with_audit(audit) -> FastAPI:
    app = FastAPI()

    @app.post("/chat")
    async def chat(request: ChatRequest, background_tasks: BackgroundTasks):
        reply, audit_fields, _ = await ask_openai(request)
        background_tasks.add_task(audit, audit_fields)
        return {"response": reply}

    return app


for audit in (audit_def_sleeping, audit_async_awaiting, audit_async_blocking):
    ran_in.clear()
    async with lab.serve(app_with_audit(audit)) as client, lab.loop_lag() as lag:
        report = await lab.fire(client, "POST", "/chat", json=body, n=10)
    print(f"{audit.__name__}: ran in the {', '.join(sorted(ran_in))}")
    print(f"    10 requests: p95 {report.p95:.2f} s · {lag}")

# %% [markdown]
# The first two leave the loop free: 10 concurrent requests are answered in about one upstream
# call. The third ran on the event loop and slept there: the loop was blocked for almost
# 10 × 0.05 s, and the requests that had not been answered yet waited behind the audit writes of
# the others. `BackgroundTasks` does not make blocking code harmless; only a `def` function
# (thread pool) or real `await`s do.
#
# ## A durable audit log: SQLite
#
# `AUDIT_LOG` is a list in memory: a restart empties it. The seed's comment says it: *in
# production, write to a database*. We use SQLite in a temporary folder, through **aiosqlite**
# (an async driver: each call runs in aiosqlite's own thread and is awaited), with **one
# connection opened in the lifespan** and shared by every request.
#
# Why this design? These are the alternatives, each measured with 200 concurrent requests
# writing one row each, one commit per row (2 cores, while writing this lesson):
#
# * **aiosqlite, one connection opened in the lifespan: 200 / 200 rows**, 1.4–2.9 s for the
#   whole run. The design used below.
# * aiosqlite, a new connection per task: 159–200 / 200. The writers queue for SQLite's file
#   lock (5.9–8.5 s), and those that wait more than 5 s fail with `database is locked`.
# * `sqlite3` in a `def` task, a connection per call, 5 s busy timeout: 200 / 200, but the same
#   lock queue, in 40 threads: 2.9–6.1 s. With `timeout=0`: 8–12 / 200, the rest
#   `database is locked`.
# * **One `sqlite3` connection shared by the thread-pool tasks: rows lost, and every client got
#   200 OK.** How many depends on the Python and the SQLite it ships: 64–159 / 200 rows on Python
#   3.11 (SQLite 3.40), most of the lost rows without any error; 180–199 / 200 on 3.13 and 3.14
#   (SQLite 3.46 and 3.53), which catch more of the misuse (`InterfaceError: bad parameter or
#   other API misuse`). The failures reach only the server's log.
#
# The last one is the trap to remember: it looks like it works, and silently loses a large part
# of the audit. A `sqlite3` connection is not meant to be used by several threads at once
# (`check_same_thread=False` only turns the check off). With aiosqlite, one connection means one
# thread: the writes queue up in order, and SQLite never sees two writers. The first is run
# below, then the trap, in the one interleaving that loses a row without any error.

# %%
import sqlite3
import tempfile
from contextlib import asynccontextmanager

import aiosqlite
from fastapi import Request

if (last_run := globals().get("workdir")) is not None:  # this cell run again:
    last_run.cleanup()  # remove the folder of its last run first
workdir = tempfile.TemporaryDirectory()  # removed when the kernel stops
AUDIT_DB = os.path.join(workdir.name, "audit.sqlite3")
SCHEMA = """CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, user_id TEXT, message TEXT, reply TEXT,
    latency_ms REAL, total_tokens INTEGER)"""


def audit_file(path: str) -> str:
    """`path`, with its table created."""
    with sqlite3.connect(path) as db:
        db.execute(SCHEMA)
    db.close()  # `with` commits; it does not close
    return path


async def write_audit_row(db: aiosqlite.Connection, row: tuple) -> None:
    await db.execute(
        "INSERT INTO audit (user_id, message, reply, latency_ms, total_tokens) "
        "VALUES (?, ?, ?, ?, ?)",
        row,
    )
    await db.commit()


def audit_row(request: ChatRequest, audit: dict, latency_ms: float) -> tuple:
    return (
        request.user_id,
        request.message[:100],
        audit["reply"][:100],
        latency_ms,
        audit["tokens"],
    )


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with aiosqlite.connect(audit_file(AUDIT_DB)) as db:  # one connection for the app's life
        await db.execute(SCHEMA)
        await db.commit()
        yield {"audit_db": db}  # reaches every request as request.state.audit_db
    # leaving `async with` closed the connection, after the server finished its requests


durable_app = FastAPI(lifespan=lifespan)


@durable_app.post("/chat")
async def chat_durable(request: ChatRequest, http: Request, background_tasks: BackgroundTasks):
    reply, audit, latency_ms = await ask_openai(request)
    row = audit_row(request, audit, latency_ms)
    background_tasks.add_task(write_audit_row, http.state.audit_db, row)
    return {"response": reply}


def count_rows(where_clause: str = "1", path: str = AUDIT_DB) -> int:
    db = sqlite3.connect(audit_file(path))
    (count,) = db.execute(f"SELECT COUNT(*) FROM audit WHERE {where_clause}").fetchone()
    db.close()
    return count


# %% [markdown]
# 200 concurrent requests, then shutdown, then count the rows they added:

# %% tags=["drains-on-interrupt"]
N = 200
rows_before = count_rows()
complete_before = count_rows("latency_ms > 0 AND total_tokens > 0")
async with lab.serve(durable_app) as client:
    durable_run = await lab.fire(
        client,
        "POST",
        "/chat",
        n=N,
        json=lambda i: {"message": f"Summarize in 5 words: ticket {i}", "user_id": f"u{i}"},
    )

print(durable_run.summary(latency=LATENCY))
print(f"audit rows: {count_rows() - rows_before} for {N} requests")
complete = count_rows("latency_ms > 0 AND total_tokens > 0") - complete_before
print(f"rows with a latency and token counts: {complete}")

# %% [markdown]
# Every request left exactly one row, with its latency and token count. (The wall time is mostly
# 200 requests' worth of HTTP and JSON work on one event loop; SQLite works in aiosqlite's thread.)
#
# **The trap, live: one `sqlite3` connection shared by `def` tasks.** How many rows a race
# loses changes from run to run and from one Python to the next; *why* a row can vanish without
# an error does not. A connection has **one** transaction, not one per thread: every thread that
# uses the connection writes into it, and a commit or a rollback by any of them ends it for all.
#
# Two requests, each audited by a plain `def` background task (so each runs in a thread-pool
# thread) through one `sqlite3` connection opened once, with the thread check turned off. Each
# task writes the careful way, `with shared_db:` (commit when the block ends, roll back if it
# raises). The table keys rows by request id, so the row of a retried request is refused. Under
# load, one task is often between its `INSERT` and its commit while another writes; here the
# first task waits there for the second, so that this happens on every run:

# %% tags=["drains-on-interrupt"]
SHARED_DB = os.path.join(workdir.name, "shared.sqlite3")
with sqlite3.connect(SHARED_DB) as db:
    db.execute("DROP TABLE IF EXISTS audit")  # this cell run again starts from the same table
    db.execute("CREATE TABLE audit (request_id TEXT PRIMARY KEY, user_id TEXT, reply TEXT)")
    db.execute("INSERT INTO audit VALUES ('r0', 'u0', 'audited before this run')")
db.close()
shared_db = sqlite3.connect(SHARED_DB, check_same_thread=False)  # ✗ one connection, many threads
first_inserted, second_finished = threading.Event(), threading.Event()
task_errors: dict[str, str] = {}


class TracedChatRequest(ChatRequest):
    request_id: str  # the client sends the same id again when it retries


def write_with_shared_connection(request_id: str, user_id: str, reply: str) -> None:
    first = not first_inserted.is_set()
    try:
        with shared_db:  # ✗ the transaction it commits or rolls back is every thread's
            shared_db.execute("INSERT INTO audit VALUES (?, ?, ?)", (request_id, user_id, reply))
            if first:  # the first task, between its INSERT and its commit...
                first_inserted.set()
                second_finished.wait()  # ...while the second task writes
    except Exception as error:  # what would otherwise reach only the server's log
        task_errors[request_id] = type(error).__name__
    finally:
        if not first:
            second_finished.set()


shared_app = FastAPI()


@shared_app.post("/chat")
async def chat_shared_connection(request: TracedChatRequest, background_tasks: BackgroundTasks):
    reply, _, _ = await ask_openai(request)
    background_tasks.add_task(
        write_with_shared_connection, request.request_id, request.user_id, reply
    )
    return {"response": reply}


try:
    async with lab.serve(shared_app) as client:
        try:
            new = await client.post(
                "/chat", json={"message": "Hi", "user_id": "u1", "request_id": "r1"}
            )
            await asyncio.to_thread(first_inserted.wait)  # r1's task has inserted, not committed
            retry = await client.post(
                "/chat", json={"message": "Hi", "user_id": "u0", "request_id": "r0"}
            )
        except BaseException:  # interrupted: release every wait, so the server can stop
            first_inserted.set()
            second_finished.set()
            raise
finally:
    shared_db.close()
with sqlite3.connect(SHARED_DB) as db:
    stored = [request_id for (request_id,) in db.execute("SELECT request_id FROM audit")]
db.close()
print(f"responses: r1 {new.status_code}, r0 (retried) {retry.status_code}")
print(f"errors the tasks raised: {task_errors}")
print(f"request ids in the audit: {stored}")

# %% [markdown]
# Both clients got 200 OK. The retry's task raised `IntegrityError` (r0 was audited already)
# and rolled back, as it should; but the transaction it rolled back held r1's row too. r1's task
# then committed, with nothing left to commit and no error: **r1's row is gone and nothing says
# so.** With 40 threads and 200 requests, this and worse (two threads inside SQLite at once)
# happen at random: that is the loss measured above. A shared connection is a shared transaction,
# whoever uses it. The lifespan's aiosqlite connection is safe because its one thread lets one
# statement at a time into SQLite, and its writes never roll back: a failed `INSERT` undoes only
# itself, and the next commit keeps the other rows.
#
# ## Shutdown with audit work still pending
#
# A background task runs after its response. So when a server is told to stop, some audit writes
# may still be waiting to happen. What becomes of them depends on **who knows about them**.
#
# To make the pending work easy to see, the audit sink is slow today: every write first waits
# `PENDING_DELAY` seconds, longer than a server takes to shut down. We send 20 requests and stop
# the server as soon as the last response is in.


# %%
PENDING_DELAY = 0.6  # seconds per audit write in this section


async def slow_write_audit_row(db: aiosqlite.Connection, row: tuple) -> None:
    await asyncio.sleep(PENDING_DELAY)  # a slow disk, a busy database
    await write_audit_row(db, row)


def tickets(i: int) -> dict:
    return {"message": f"Summarize in 5 words: ticket {i}", "user_id": f"u{i}"}


async def shutdown_with_pending_work(app) -> None:
    before = count_rows()
    async with lab.serve(app) as client:
        await lab.fire(client, "POST", "/chat", n=20, json=tickets)
        at_last_response = count_rows() - before
        stop = time.perf_counter()
    stopped = time.perf_counter() - stop
    print(f"rows when the last response arrived: {at_last_response} of 20")
    print(f"rows after shutdown ({stopped:.2f} s):        {count_rows() - before} of 20")


slow_app = FastAPI(lifespan=lifespan)


@slow_app.post("/chat")
async def chat_slow_audit(request: ChatRequest, http: Request, background_tasks: BackgroundTasks):
    reply, audit, latency_ms = await ask_openai(request)
    row = audit_row(request, audit, latency_ms)
    background_tasks.add_task(slow_write_audit_row, http.state.audit_db, row)
    return {"response": reply}


await shutdown_with_pending_work(slow_app)

# %% [markdown]
# Nothing lost. A background task is part of its request's ASGI call, so uvicorn's graceful
# shutdown waits for it (`Waiting for background tasks to complete`), and only then runs the
# lifespan's shutdown, which closes the database. Two limits:
#
# * uvicorn waits for at most `--timeout-graceful-shutdown` seconds (no limit by default;
#   `lab.serve` allows 5 s), then cancels what is left. Your orchestrator has its own limit
#   (Kubernetes kills a pod 30 s after asking it to stop, by default).
# * It only waits for what it knows about.
#
# **Work the server does not know about.** A common "optimization" starts the write with
# `asyncio.create_task(...)` and forgets it. The request's ASGI call ends at once, so shutdown
# does not wait, and the lifespan closes the database under the pending writes:

# %%
failed_writes: list[str] = []


async def write_or_record_failure(db: aiosqlite.Connection, row: tuple) -> None:
    try:
        await slow_write_audit_row(db, row)
    except Exception as error:  # so that the failures are counted here, not printed at random
        failed_writes.append(type(error).__name__)


forgetful_app = FastAPI(lifespan=lifespan)


@forgetful_app.post("/chat")
async def chat_forgetful(request: ChatRequest, http: Request):
    reply, audit, latency_ms = await ask_openai(request)
    row = audit_row(request, audit, latency_ms)
    asyncio.create_task(write_or_record_failure(http.state.audit_db, row))  # noqa: RUF006 ✗ forgotten
    return {"response": reply}


await shutdown_with_pending_work(forgetful_app)
await asyncio.sleep(PENDING_DELAY + 0.2)  # the forgotten writes wake up, to a closed database
print("writes that failed afterwards:", len(failed_writes), sorted(set(failed_writes)))

# %% [markdown]
# All 20 entries are gone. In this notebook the forgotten tasks lived on and failed against the
# closed connection; in a real server the process exits right after the lifespan, and they
# vanish without a trace.
#
# **The fix: the lifespan keeps track and drains.** Whoever starts work the server does not know
# about must remember it and wait for it before closing what it uses:


# %%
@asynccontextmanager
async def draining_lifespan(app: FastAPI):
    pending: set[asyncio.Task] = set()
    async with aiosqlite.connect(audit_file(AUDIT_DB)) as db:
        yield {"audit_db": db, "pending": pending}
        # Shutdown: the server has stopped taking requests. Finish the audit, then close.
        await asyncio.gather(*pending)


tracked_app = FastAPI(lifespan=draining_lifespan)


@tracked_app.post("/chat")
async def chat_tracked(request: ChatRequest, http: Request):
    reply, audit, latency_ms = await ask_openai(request)
    row = audit_row(request, audit, latency_ms)
    task = asyncio.create_task(slow_write_audit_row(http.state.audit_db, row))
    http.state.pending.add(task)  # a strong reference, and a list to drain
    task.add_done_callback(http.state.pending.discard)
    return {"response": reply}


await shutdown_with_pending_work(tracked_app)

# %% [markdown]
# The set also keeps each task alive: the event loop holds only weak references to tasks, so a
# task nobody references can be garbage-collected before it finishes. Prefer `BackgroundTasks`
# when the work belongs to a request; track and drain when you start tasks yourself.
#
# **When a real queue is the right tool.** All of the above lives in one process: a crash, an
# out-of-memory kill or a deploy that outlasts the grace period loses whatever was pending. When
# every entry must survive that (an audit trail usually must), when the work is slow or needs
# retries, or when it should scale apart from the web servers, write the job to a durable queue
# (a broker such as Redis, RabbitMQ, SQS or Kafka; or an "outbox" table in the database you
# already write to) and let a separate worker process it. Background tasks are for work that is
# short, and that you can afford to lose in a crash.

# %% [markdown]
# ## Your turn
#
# This ticket service audits every answer in SQLite, but awaits the (slow) audit write before
# answering, so every client waits `AUDIT_DELAY` (0.3 s) extra: `write_audit_row_slowly` takes
# that long. Move the write out of the request path **without losing any entry**, and without
# blocking the event loop. Keep the route (`POST /chat`), the request model and the reply shape
# (`{"response": …}`).

# %%
EXERCISE_DB = audit_file(os.path.join(workdir.name, "exercise.sqlite3"))  # the table exists now


async def write_audit_row_slowly(db: aiosqlite.Connection, row: tuple) -> None:
    await asyncio.sleep(AUDIT_DELAY)  # the audit sink of this exercise takes AUDIT_DELAY
    await write_audit_row(db, row)


@asynccontextmanager
async def exercise_lifespan(app: FastAPI):
    async with aiosqlite.connect(audit_file(EXERCISE_DB)) as db:
        yield {"audit_db": db}


def count_exercise_rows() -> int:
    return count_rows(path=EXERCISE_DB)


# %% tags=["exercise"]
exercise_app = FastAPI(lifespan=exercise_lifespan)


@exercise_app.post("/chat")
async def audited_chat(request: ChatRequest, http: Request):
    reply, audit, latency_ms = await ask_openai(request)
    # TODO: the client waits for this write. Take it out of the request path, losing nothing.
    await write_audit_row_slowly(http.state.audit_db, audit_row(request, audit, latency_ms))
    return {"response": reply}


# %% tags=["solution"]
exercise_app = FastAPI(lifespan=exercise_lifespan)


@exercise_app.post("/chat")
async def audited_chat(request: ChatRequest, http: Request, background_tasks: BackgroundTasks):
    reply, audit, latency_ms = await ask_openai(request)
    row = audit_row(request, audit, latency_ms)
    background_tasks.add_task(write_audit_row_slowly, http.state.audit_db, row)
    return {"response": reply}


# %% [markdown]
# The check serves your app on a real socket, sends 10 concurrent requests, shuts it down, and
# counts the rows.

# %%
await lab.checks.check_background_audit(
    exercise_app, count_exercise_rows, audit_seconds=AUDIT_DELAY
)

# %% [markdown]
# ## Recap
#
# * `background_tasks.add_task(...)` runs work **after** the response: the client stops waiting
#   for it. Measure that with a real server (`lab.serve`); in-memory test clients wait for
#   background tasks too.
# * A `def` task runs in the thread pool; an `async def` task runs on the event loop and must not
#   block it.
# * Store the audit durably: one aiosqlite connection opened in the lifespan. Never share one
#   `sqlite3` connection across threads: it loses rows without a single failed response.
# * At shutdown, uvicorn waits (up to its timeout) for background tasks, then runs the lifespan's
#   shutdown. Tasks you `create_task` yourself are yours to track and drain.
# * Work that must survive a crash belongs in a durable queue.

# %% [markdown]
# Next: **05 · Lifespan** — one client for the whole app, connection pooling, and leaks.
