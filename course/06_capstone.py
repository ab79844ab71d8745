# %% [markdown]
# # 06 · Capstone: one service, every pattern, under load and faults
#
# **Objective.** Put the whole course into one small, production-shaped FastAPI service, serve it
# on a real socket, and prove with numbers that it stays correct: under a burst of requests,
# when the upstream fails, and when clients send garbage.
#
# **You will:** read the service · fire a burst at it over real HTTP and check every request
# was answered, audited and kept within the upstream bound · inject faults and see every client
# get a clean JSON error · send bad input and see it refused before it costs an upstream call.
#
# There is no exercise in this notebook: the service *is* the answer to notebooks 01–05.

# %%
import labsupport as lab

upstream = lab.setup(latency=0.05)
LATENCY = upstream.latency

# %% [markdown]
# ## The service
#
# The service is an ordinary Python module next to the notebooks, `capstone_service.py`, so
# that tests import exactly the code you read here. Open it from JupyterLab's file browser to
# read it whole; the cells below show it part by part.

# %%
from pathlib import Path

import capstone_service
from capstone_service import create_app
from IPython.display import Markdown

SOURCE = Path(capstone_service.__file__).read_text()


def show(part):
    """The part of the service under the banner comment `# ---- part`."""
    banner = next(line for line in SOURCE.splitlines() if line.startswith("# -") and part in line)
    section = SOURCE.split(banner, 1)[1].split("\n# -", 1)[0]
    return Markdown(f"```python\n{section.strip()}\n```")


# %% [markdown]
# **1. Requests are validated before anything else happens.** Limits are part of the type:
# a message of 1 to 4,000 characters (whitespace alone does not count), a temperature from 0
# to 2, at most 50 messages in a batch, and no unknown fields (`"temprature"` is a typo, not a
# field to ignore).

# %%
show("request models")

# %% [markdown]
# **2. The shared resources.** One `AsyncOpenAI` client (01, 05) and one semaphore (03) are
# created in the lifespan and shared by every request; every upstream call goes through
# `Resources.ask`, so the bound holds across requests. Then the endpoints: `/chat`, `/analyze`
# (three calls with `asyncio.gather`, each failure isolated: 02) and `/batch`.

# %%
show("the service")

# %% [markdown]
# **3. The audit log (04).** One row per request, *whatever happened to it*: a middleware
# records it after the response, a single background task writes the rows to SQLite in
# batches, and closing the log at shutdown writes what is still queued.

# %%
show("audit log")

# %% [markdown]
# **4. Errors.** An SDK exception becomes a status the client can act on, with a JSON body;
# the upstream's own message is not passed on (it can name your account or key).

# %%
show("upstream errors")

# %% [markdown]
# The body-size limit is a small middleware as well (FastAPI's built-in `max_body_size`
# answers in plain text; this service answers every error in JSON):

# %%
show("body limit")

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

import aiosqlite

BOUND = 20
N = 100
audit_folder = tempfile.TemporaryDirectory()


async def audit_statuses(path):
    """How many audit rows the service wrote, by HTTP status."""
    async with aiosqlite.connect(path) as db:
        rows = await db.execute_fetchall("SELECT status FROM audit")
    return dict(sorted(Counter(status for (status,) in rows).items()))


def ticket(i):
    return {"message": f"Summarize in 5 words: ticket {i} says the export button is broken."}


load_audit = Path(audit_folder.name) / "load.sqlite3"
app = create_app(audit_path=load_audit, max_upstream_calls=BOUND)

upstream.reset()
async with lab.serve(app) as client:
    load = await lab.fire(client, "POST", "/chat", json=ticket, n=N)
# Leaving the block shut the service down: the client closed, the audit log drained.
stats = upstream.stats
rows = await audit_statuses(load_audit)

print(load.summary(latency=LATENCY))
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
# upstream never goes above the bound.

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

fault_audit = Path(audit_folder.name) / "faults.sqlite3"
flaky_app = create_app(audit_path=fault_audit, max_upstream_calls=BOUND, max_retries=0)
upstream.configure(
    faults=[Fault.fraction(0.1, status=500)],
    rate_limit=RateLimit(max_per_window=90, window=60.0, retry_after=2.0),
)

async with lab.serve(flaky_app) as client:
    flaky = await lab.fire(client, "POST", "/chat", json=ticket, n=N)
    # The quota is used up by now, so one more request shows the whole 429 response.
    limited = await client.post("/chat", json=ticket(N))
fault_rows = await audit_statuses(fault_audit)

failed = [r for r in flaky.requests if r.status != 200]
print("client saw:", flaky.status_counts)
print("upstream sent:", dict(sorted(upstream.stats.status_counts.items())))
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
# one sentence. The failures are in the audit log too, with the exception that caused them.

# %%
lab.plot_timeline(
    flaky, latency=LATENCY, title="100 requests, 10 % upstream errors, a quota of 90 calls/min"
)

# %% [markdown]
# Three more failures, one request each: a slow upstream (the service gives up after its
# `upstream_timeout`), a fan-out where one of the three calls fails, and an upstream that cannot
# be reached at all (nothing listens on the port).

# %%
import socket

upstream.configure(
    faults=[
        Fault.matching(r"^List 3 topics", status=500),
        Fault.matching(r"(?i)slow", delay=2.0),
    ],
    rate_limit=None,
)
impatient_app = create_app(
    audit_path=Path(audit_folder.name) / "more.sqlite3", upstream_timeout=0.2, max_retries=0
)
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
        audit_path=Path(audit_folder.name) / "unreachable.sqlite3", base_url=nowhere, max_retries=0
    )
    async with lab.serve(unreachable_app) as client:
        unreachable = await client.post("/chat", json={"message": "Hello?"})
print(
    unreachable.status_code, "Retry-After:", unreachable.headers["retry-after"], unreachable.json()
)

# %% [markdown]
# ## Bad input never reaches the upstream
#
# Malformed JSON, a missing field, a wrong type, an empty message, a message that is too long,
# an absurd temperature, a typo in a field name, a body of 100 KB: each is refused with a clear
# message, and the upstream's call counter stays at **0**.

# %%
import json

bad_requests = {
    "malformed JSON": {"content": b'{"message": "hi",}'},
    "no body": {},
    "missing message": {"json": {"temperature": 0.5}},
    "wrong type": {"json": {"message": 42}},
    "empty message": {"json": {"message": "   "}},
    "message too long": {"json": {"message": "x" * 4_001}},
    "absurd temperature": {"json": {"message": "hi", "temperature": 7}},
    "typo in a field": {"json": {"message": "hi", "temprature": 0.5}},
    "empty batch": {"json": {"messages": []}, "path": "/batch"},
    "body over 64 KB": {"content": json.dumps({"message": "x" * 100_000}).encode()},
}

upstream.configure(faults=[], rate_limit=None)
guarded_audit = Path(audit_folder.name) / "bad.sqlite3"
async with lab.serve(create_app(audit_path=guarded_audit)) as client:
    for label, request in bad_requests.items():
        path = request.pop("path", "/chat")
        headers = {"content-type": "application/json"}
        response = await client.post(path, headers=headers, **request)
        print(f"{label:<19} {response.status_code}  {response.json()['error']['message']}")

print()
print("upstream calls:", upstream.stats.calls)
print("audit rows by status:", await audit_statuses(guarded_audit))
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
#   failures and refusals alike (04).
# * **Validation and clean errors**: bad input costs nothing upstream; upstream failures become
#   429/502/503/504 with a message, and `Retry-After` where waiting helps.
#
# Where to go from here: run the same notebook against the real API (`LAB_MODE=live`, see the
# README), or add an endpoint of your own to `capstone_service.py`: the tests in
# `tests/test_capstone.py` show how to check it under load.
