# %% [markdown]
# # 05 · Lifespan: one client for the whole app
#
# **Objective.** Create shared resources (the `AsyncOpenAI` client, the audit database) once at
# startup and close them at shutdown, hand them to endpoints in a way tests can replace, and see
# in TCP connections what a shared client saves and what an unclosed one leaks.
#
# **You will:** watch the lifespan's order of events · compare four places to keep the client,
# and override one in a test · count connections for a client per request versus one shared
# client · set the pool's limits · find a leak · refactor an app that builds a client per request.

# %%
import labsupport as lab

upstream = lab.setup(latency=0.05)
LATENCY = upstream.latency

# %% [markdown]
# ## The lifespan: startup, serving, shutdown
#
# A lifespan is an async context manager that FastAPI enters before the first request and leaves
# after the last one. Code before `yield` is startup, code after it is shutdown. Whatever it
# yields as a dict becomes the **lifespan state**: every request sees it as `request.state`.
#
# The seed note's lifespan stores the client in a global; this one yields it, and prints each
# step.

# %%
import os
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from openai import AsyncOpenAI
from pydantic import BaseModel


class ChatRequest(BaseModel):
    message: str


@asynccontextmanager
async def lifespan(app: FastAPI):
    openai_client = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))
    print("startup:  OpenAI client created")
    try:
        yield {"openai": openai_client}
    finally:  # runs at shutdown, and also if the app fails while it serves
        await openai_client.close()
        print(f"shutdown: OpenAI client closed (is_closed() = {openai_client.is_closed()})")


# %% [markdown]
# Endpoints get the client through a **dependency**: a function FastAPI calls for each request,
# whose result it passes in. `OpenAIClient` is that function's type, to reuse in every endpoint.
# It is an `async def`, so FastAPI calls it on the event loop; a plain `def` dependency is sent to
# the thread pool on every request (40 threads, shared with every `def` endpoint and background
# task), and waits there for a free thread when the pool is busy, only to read one attribute.


# %%
async def get_openai(request: Request) -> AsyncOpenAI:
    return request.state.openai


OpenAIClient = Annotated[AsyncOpenAI, Depends(get_openai)]
app = FastAPI(lifespan=lifespan)


@app.post("/chat")
async def chat(request: ChatRequest, openai_client: OpenAIClient):
    response = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
    )
    reply = response.choices[0].message.content
    print(f"request:  {request.message!r} → {reply!r}")
    return {"response": reply}


# %%
async with lab.asgi_client(app) as client:
    print("-- serving --")
    for text in ("The build is green again.", "The deploy failed twice."):
        await client.post("/chat", json={"message": f"Sentiment (one word): {text}"})
    print("-- stopping --")

# %% [markdown]
# A second resource, the audit database of notebook 04: a lifespan can enter another one, so
# this one opens the client (the lifespan above), then the database, and closes them in the
# reverse order. The endpoint calls `chat` above as a plain function, then writes the row.

# %% cpython_only="aiosqlite"
import tempfile

import aiosqlite

if (last_run := globals().get("workdir")) is not None:  # this cell run again:
    last_run.cleanup()  # remove the folder of its last run first
workdir = tempfile.TemporaryDirectory()  # removed when the kernel stops
AUDIT_DB = os.path.join(workdir.name, "audit.sqlite3")


@asynccontextmanager
async def audited_lifespan(app: FastAPI):
    async with lifespan(app) as state:  # the OpenAI client, opened first and closed last
        audit_db = await aiosqlite.connect(AUDIT_DB)
        await audit_db.execute("CREATE TABLE IF NOT EXISTS audit (message TEXT, reply TEXT)")
        print("startup:  audit database open")
        try:
            yield {**state, "audit_db": audit_db}
        finally:
            await audit_db.close()
            print("shutdown: audit database closed")


audited_app = FastAPI(lifespan=audited_lifespan)


@audited_app.post("/chat")
async def audited_chat(request: ChatRequest, openai_client: OpenAIClient, http: Request):
    answer = await chat(request, openai_client)
    row = (request.message, answer["response"])
    await http.state.audit_db.execute("INSERT INTO audit VALUES (?, ?)", row)
    await http.state.audit_db.commit()
    return answer


async with lab.asgi_client(audited_app) as client:
    print("-- serving --")
    await client.post("/chat", json={"message": "Sentiment (one word): The deploy failed twice."})
    print("-- stopping --")

# %% [markdown]
# The order is guaranteed: startup completes before the first request, and shutdown starts after
# the last one. Resources are closed in the reverse order of opening, and each `finally` makes
# sure its resource is closed even if something fails. (`async with AsyncOpenAI(...) as
# client:` around the `yield` does the same for one resource; `contextlib.AsyncExitStack` for
# many.)
#
# ## Where to keep the client
#
# Four common places, and what each means for tests:
#
# * **A module-level global** (`aclient = AsyncOpenAI()` at import): simple, but it is created
#   at import time, before the app or a test has any say, and nothing closes it. A test can only
#   monkeypatch the module.
# * **`app.state.openai`**, set in the lifespan: one per app, closed in the lifespan. Endpoints
#   reach it as `request.app.state.openai`; a test can assign a stand-in before requests run.
# * **Lifespan state** (`yield {"openai": client}` → `request.state.openai`): one per app run,
#   created and closed in one place, never visible outside a running app.
# * **A dependency** (`Depends(get_openai)`), on top of either of the last two: endpoints declare
#   what they need, and a test replaces it with `app.dependency_overrides`, no patching at all.
#
# The override, demonstrated: a stand-in with the same call shape, a canned reply, and a counter.

# %%
from types import SimpleNamespace


class CannedOpenAI:
    """A test double for AsyncOpenAI: `chat.completions.create(...)` with a fixed reply."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.calls = 0
        self.chat = SimpleNamespace(completions=self)

    async def create(self, **request) -> SimpleNamespace:
        self.calls += 1
        message = SimpleNamespace(content=self.reply)
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])


canned = CannedOpenAI("Positive")


async def get_canned() -> CannedOpenAI:  # `async def`, as get_openai: no thread-pool hop
    return canned


app.dependency_overrides[get_openai] = get_canned
upstream.reset()
try:
    async with lab.asgi_client(app) as client:
        response = await client.post("/chat", json={"message": "Sentiment (one word): tests"})
finally:
    app.dependency_overrides.clear()

print(response.json(), "· stand-in calls:", canned.calls, "· upstream calls:", upstream.stats.calls)

# %% [markdown]
# The endpoint ran unchanged with the stand-in, and the upstream got no call. The lifespan still
# ran (its lines are printed), because the override replaces what the endpoint *receives*, not
# the app's startup.
#
# ## Connection pooling, in TCP connections
#
# Why one client? Each `AsyncOpenAI` owns a **connection pool**: after a call, the TCP (and, in
# production, TLS) connection stays open, idle, ready for the next call. A new client starts with
# an empty pool, so its first call pays for a new connection, and building the client itself
# costs time too (the SDK sets up an HTTP client with its TLS settings).
#
# To count real connections we point the SDK at `lab.FakeServer`: the same simulated API, but
# over TCP on 127.0.0.1, in its own thread. It counts the distinct connections its clients
# opened. We also ask the operating system (through `psutil`) how many sockets this process
# still has open to it.

# %% [markdown]
# **Predict first.** 10 calls, one after another. How many TCP connections will they open with a
# new client per request? And with one shared client? Type both guesses (or set the
# `PREDICTION`s and run the cell again), then run the measurement.

# %%
from labsupport.coaching import predict

PREDICTION = None  # your guess: connections for 10 calls, a new client per request
per_request_guess = predict(
    "10 calls one by one, a new AsyncOpenAI per request: how many TCP connections?",
    unit="connections",
    value=PREDICTION,
)
per_request_guess

# %%
PREDICTION = None  # your guess: connections for 10 calls, one shared client
shared_guess = predict(
    "10 calls one by one, one shared AsyncOpenAI: how many TCP connections?",
    unit="connections",
    value=PREDICTION,
)
shared_guess

# %% cpython_only="sockets"
import asyncio
import time

import psutil

N = 10


def open_sockets(server: lab.FakeServer) -> int:
    """Sockets of this process connected to `server`, as the operating system reports them."""
    connections = psutil.Process().net_connections(kind="tcp")
    return sum(1 for c in connections if c.raddr and c.raddr.port == server.port)


async def ask(openai_client: AsyncOpenAI, i: int) -> str:
    response = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summarize in 5 words: #{i}"}]
    )
    return response.choices[0].message.content


async def measure(server, label: str, call, modes=("sequential", "concurrent")) -> dict:
    """Run `call(i)` for N requests one by one, then all at once; print new connections and
    return them by mode."""
    opened = {}
    for mode in modes:
        opened_before = server.connections
        start = time.perf_counter()
        if mode == "sequential":
            for i in range(N):
                await call(i)
        else:
            await asyncio.gather(*(call(i) for i in range(N)))
        wall = time.perf_counter() - start
        await asyncio.sleep(0.05)  # let closed sockets finish closing before we count
        print(
            f"{label:19} {N} {mode:10}  new connections: {server.connections - opened_before:2}"
            f" · open after: {open_sockets(server):2} · wall {wall:.2f} s"
        )
        opened[mode] = server.connections - opened_before
    return opened


with lab.FakeServer(latency=LATENCY) as server:

    async def client_per_request(i: int) -> str:
        async with AsyncOpenAI(base_url=server.base_url) as openai_client:
            return await ask(openai_client, i)

    per_request = await measure(server, "client per request", client_per_request)
    async with AsyncOpenAI(base_url=server.base_url) as shared:
        shared_opened = await measure(server, "one shared client", lambda i: ask(shared, i))
        await measure(server, "  … and again", lambda i: ask(shared, i), modes=["concurrent"])
    print("sockets open after the shared client was closed:", open_sockets(server))
print(
    per_request_guess.compare(
        per_request["sequential"],
        because="each new client starts with an empty pool, so each call opened its own connection",
        investigate="“open after”: did closing each client close its socket?",
    )
)
print(
    shared_guess.compare(
        shared_opened["sequential"],
        because="the shared client kept its connection open, idle, and reused it for the next call",
        investigate="the concurrent run: how many connections do 10 calls at once need?",
    )
)

# %% [markdown]
# How to read it:
#
# * **Sequential**, a client per request opens 10 connections and closes each right away; the
#   shared client opens **1** and reuses it for all 10 calls. The per-request version is also
#   slower: every request pays for building a client and connecting.
# * **Concurrent**, even the shared client opens more connections: a pool reuses only **idle**
#   connections, and one HTTP/1.1 connection carries one request at a time. It kept them open
#   afterwards (`open after: 10`), so the next burst (`… and again`) opened **none**.
# * Closing the client closed every pooled connection.
#
# ## The pool's limits
#
# The SDK's own defaults (`openai/_constants.py` in the installed SDK): at most **1000**
# connections, at most **100** kept idle, each idle one for **5 s** (`keepalive_expiry`). To
# change them, give the SDK an HTTP client. Use `openai.DefaultAsyncHttpxClient`: it starts
# from the SDK's defaults and changes only what you pass. A plain `httpx2.AsyncClient` keeps
# the SDK's timeout (the SDK sends its own, `Timeout(connect=5.0, read=600)`, with every
# request; `AsyncOpenAI(http_client=httpx2.AsyncClient()).timeout` shows it), but brings
# httpx2's pool limits instead of the SDK's (at most 100 connections and 20 idle, not 1000 and
# 100), and does not follow redirects. With at most 3 connections, 10 concurrent calls run 3 at
# a time:

# %% cpython_only="connections"
import httpx2
from openai import DefaultAsyncHttpxClient

limits = httpx2.Limits(max_connections=3, max_keepalive_connections=3, keepalive_expiry=30)
with lab.FakeServer(latency=LATENCY) as server:
    http_client = DefaultAsyncHttpxClient(limits=limits)
    async with AsyncOpenAI(base_url=server.base_url, http_client=http_client) as limited:
        start = time.perf_counter()
        await asyncio.gather(*(ask(limited, i) for i in range(N)))
        wall = time.perf_counter() - start
    # Connections and calls in flight: what the limits decide (a call cut and retried on a busy
    # machine would change the per-status counts, not these).
    print(f"connections: {server.connections} · max {server.stats.max_in_flight} calls in flight")
    print(f"wall {wall:.2f} s for {N} calls of {LATENCY:.2f} s, 3 at a time (4 rounds)")

# %% [markdown]
# `max_connections` is a concurrency limit too: the other calls wait for a free connection (up to
# the pool timeout). Closing the `AsyncOpenAI` closes the HTTP client you gave it.
#
# ## What a leak looks like
#
# A lifespan that creates the client and never closes it. The app stops; its connection does
# not. Then the fix, `close()`, on the same client:


# %% cpython_only="sockets"
@asynccontextmanager
async def leaky_lifespan(app: FastAPI):
    app.state.openai = AsyncOpenAI(base_url=server.base_url)
    yield {"openai": app.state.openai}
    # ✗ no close()


leaky_app = FastAPI(lifespan=leaky_lifespan)


@leaky_app.post("/chat")
async def leaky_chat(request: ChatRequest, openai_client: OpenAIClient):
    return {"response": await ask(openai_client, 0)}


with lab.FakeServer(latency=LATENCY) as server:  # stopped when the block ends, however it ends
    async with lab.asgi_client(leaky_app) as client:
        for _ in range(3):
            await client.post("/chat", json={"message": "Summarize in 5 words: a leak"})
    await asyncio.sleep(0.05)
    print("app stopped; sockets still open to the upstream:", open_sockets(server))

    await leaky_app.state.openai.close()  # the fix: what the lifespan should have done
    await asyncio.sleep(0.05)
    print("after close(): sockets open to the upstream:", open_sockets(server))

# %% [markdown]
# One socket, the client's pooled connection, stayed open after the app had stopped. Without
# the `close()`, it stays open until the garbage collector happens to find the client (it then
# closes the socket with a `ResourceWarning: unclosed transport`, hidden by default, shown under
# `python -X dev`, and an error in this course's pytest settings). A worker that leaks a client
# per restart, or per request, runs out of file descriptors:
# `OSError: [Errno 24] Too many open files`.
#
# **The fix** is `close()`, which is what the first lifespan of this notebook does at shutdown
# (in a `finally`; or use `async with AsyncOpenAI(...) as client:` around the `yield`).


# %% [markdown]
# ## Your turn
#
# This endpoint builds a new client for every request (and closes it, at least). Refactor it:
# one `AsyncOpenAI`, created in a lifespan, handed to the endpoint, closed at shutdown. Keep the
# route (`POST /chat`), the request model and the reply shape (`{"response": …}`). Create the
# client as usual, `AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))`: the check points it at
# its own server through `OPENAI_BASE_URL`, which the SDK reads when the client is created.

# %% tags=["exercise"]
exercise_app = FastAPI()


@exercise_app.post("/chat")
async def summarize(request: ChatRequest):
    # TODO: a new client, and a new connection, for every request. Use one from a lifespan.
    async with AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY")) as openai_client:
        response = await openai_client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Summarize in 5 words: {request.message}"}],
        )
    return {"response": response.choices[0].message.content}


# %% tags=["solution"]
@asynccontextmanager
async def exercise_lifespan(app: FastAPI):
    async with AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY")) as openai_client:
        yield {"openai": openai_client}


exercise_app = FastAPI(lifespan=exercise_lifespan)


@exercise_app.post("/chat")
async def summarize(request: ChatRequest, openai_client: OpenAIClient):
    response = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Summarize in 5 words: {request.message}"}],
    )
    return {"response": response.choices[0].message.content}


# %% [markdown]
# The check runs your app with its lifespan, sends 5 requests one after another to its own
# server (one shared client reuses one connection), then 5 at once while it watches the event
# loop, stops the app, and looks at the clients and connections: how many, of which kind, and
# whether shutdown closed them.

# %%
await lab.checks.check_lifespan_client(exercise_app)

# %% [markdown]
# ## Recap
#
# * A lifespan opens shared resources before the first request and closes them after the last:
#   one `AsyncOpenAI`, one database connection, in a `try`/`finally` or `async with`.
# * Hand the client to endpoints through lifespan state or `app.state`, via a dependency: tests
#   replace it with `app.dependency_overrides`.
# * One client reuses its idle connections: 1 connection for 10 sequential calls instead of 10.
#   Concurrent calls still need one connection each; `httpx2.Limits` caps them.
# * A client that is never closed keeps its sockets open until the garbage collector finds it.

# %% [markdown]
# Next: **06 · Capstone** — one service, every pattern, under load and faults.
