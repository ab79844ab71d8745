# %% [markdown]
# # 00 · Start here
#
# This course teaches the async patterns that keep a FastAPI service that calls an LLM API
# **responsive under load**. Each notebook takes one pattern, shows the trap *measured*, then
# the fix *measured*, and ends with an exercise that a checker runs and explains.
#
# | Notebook | What you learn |
# | --- | --- |
# | 01 · async client | a sync client in `async def` stalls every request; `AsyncOpenAI` does not |
# | 02 · gather | independent calls in parallel, and one failure doesn't sink the rest |
# | 03 · semaphore | bound concurrency to an upstream's rate limit, and prove the bound holds |
# | 04 · background tasks | respond first, audit later, and lose nothing |
# | 05 · lifespan | one pooled client from startup to shutdown, with real connections counted |
# | 06 · capstone | one service with every pattern, under 1,000 requests and injected faults |
# | 07 · beyond one process | one limit shared by workers in Redis; jobs that survive kill -9 |
# | 08 · streaming | the first token fast, no thread per stream, nothing read after a disconnect |
#
# ## No API key, no network
#
# Every notebook starts with the same cell. By default it turns on the course's **offline
# upstream**: a simulated OpenAI API inside this kernel. The real `openai` SDK talks to it
# exactly as it would talk to OpenAI; each call takes a set `latency`, like a network call.

# %%
import labsupport as lab

upstream = lab.setup(latency=0.1)

# %% [markdown]
# Code in the notebooks is the code you would write in production. For example, the client is
# built from the environment, as usual (offline, the lab provides a placeholder key):

# %%
import os

from openai import AsyncOpenAI

upstream.reset()  # count from here: the next cell shows what this cell sent
aclient = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))
response = await aclient.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Sentiment (one word): I love how fast this is!"}],
)
print(response.choices[0].message.content)
print(response.usage)

# %% [markdown]
# The replies are deterministic and make sense for the prompts the course uses (sentiment,
# topics, summaries), so every run prints the same. The upstream also **counts** what it sees;
# these counters are the evidence in every lesson:

# %%
print(upstream.stats)

# %% [markdown]
# Nothing leaves this machine: while the lab is offline, any request to an address other than
# this computer (127.0.0.1) is refused before a single byte is sent.

# %%
import httpx

try:
    httpx.get("https://example.com/")
except Exception as error:
    print(type(error).__name__, "—", error)

# %% [markdown]
# ## Exercises and checks
#
# Each notebook ends with **Your turn**: a cell with code to fix, then a cell that checks it,
# for example `await lab.checks.check_async_endpoint(exercise_app)`. A check runs your code
# against the offline upstream, measures it, and prints ✅ or ❌ with what it saw and a hint.
# Run it as often as you like. Worked solutions are in `notebooks/solutions/`.
#
# ## Live mode (later, optional)
#
# The same notebooks run against the real API, or any OpenAI-compatible server (a local vLLM or
# Ollama, a gateway). Set these **in your shell before starting JupyterLab**, never in a
# notebook:
#
# ```sh
# export LAB_MODE=live
# export OPENAI_API_KEY=...                           # your key
# export OPENAI_BASE_URL=http://127.0.0.1:11434/v1    # optional: another server
# make lab
# ```
#
# The first cell then says `Live mode` and which server it talks to (never the key). Demos that
# need scripted faults say so and are skipped; checkers measure the real latency first and
# judge relative to it. Real calls cost real money: the course makes a few hundred.
#
# Next: **01 · async client**.
