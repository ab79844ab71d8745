"""Checker for notebook 07: a limiter that several worker processes share through Redis.

The learner writes a class, constructed as `Limiter(redis, name=…, limit=…, lease=…)`, with
`async def acquire(self) -> str` (wait for a slot, return a token) and
`async def release(self, token) -> None`. The check runs it three ways, each one catching a
different mistake:

1. **In this process**, against a private Redis: `limit` acquires succeed, one more waits, and a
   release lets the waiter in (a slot handed back is a slot someone else can take).
2. **In 3 uvicorn worker processes** serving the lesson's service, which get the source of the
   cell (or file) that defines the class: 30 requests against an upstream that allows `limit`
   calls in flight. Too many in flight with Redis unused is a per-process limit; with Redis
   used, a check-then-set that is not atomic.
3. **A worker killed with SIGKILL** in the middle of a call: its slot must come back within the
   lease, or a crash shrinks the limit for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import linecache
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Final, Literal

import httpx

from ..distributed import (
    RedisServer,
    ServiceConfig,
    ServiceWorkers,
    WorkerTaggedServer,
    connect,
    redis_server_path,
)
from ..distributed.redis_server import install_command
from ..load import LoadReport, fire
from ..upstream import Fault, RateLimit
from .result import CheckResult, WatchdogLimits, recorded

__all__ = ["Cause", "check_shared_limit"]

EXERCISE = "one limit shared by every worker"

Cause = Literal[
    "ok",
    "no_redis",  # redis-server is not installed: nothing could be checked
    "not_a_limiter",  # not a class with async acquire() and release(token)
    "error",  # constructing it, acquire or release raised (or a worker could not load it)
    "too_few_slots",  # fewer than `limit` holders at once: safe, but wastes the limit
    "over_limit",  # one more than `limit` got a slot in one process
    "not_released",  # release() did not hand the slot to a waiter
    "per_process",  # each worker limits itself: Redis unused, workers × limit in flight
    "non_atomic",  # Redis used, yet more than `limit` in flight: check-then-set in two steps
    "no_expiry",  # a killed worker's slot never came back
]

WORKERS: Final = 3
REQUESTS_PER_WORKER: Final = 10
LATENCY: Final = 0.3
LEASE: Final = 2.0
"""The lease the workers' limiter gets; the checker's upstream calls take far less."""
PROBE_LEASE: Final = 5.0
"""The lease in the in-process probe: longer than the probe, so expiry cannot hide a bug."""
NO_RETRY_AFTER: Final = 600.0
CANCEL_ATTEMPTS: Final = 5
CANCEL_GRACE: Final = 1.0
"""How often, and how long each time, the check cancels a learner's acquire() it gave up on."""
_still_running: set[asyncio.Future[Any]] = set()


@recorded(notebook="07_beyond_one_process", watchdog=WatchdogLimits(2.0, 300.0))
async def check_shared_limit(limiter_class: Any, *, limit: int = 5) -> CheckResult:
    """Judge `limiter_class` as a limit of `limit` calls in flight shared by worker processes.

    Starts its own `redis-server`, fake upstream and 3 workers (all on 127.0.0.1), and stops
    them all before it returns. It takes a few seconds more than the workers need to start.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 2 <= limit <= 10:
        raise ValueError(f"limit must be an int from 2 to 10 (calls in flight); got {limit!r}")
    problem = _interface_problem(limiter_class)
    if problem is not None:
        return _result(
            "not_a_limiter",
            problem,
            hint="define `class …:` with `__init__(self, redis, name, limit, lease)`, "
            "`async def acquire(self) -> str` and `async def release(self, token)`.",
        )
    if redis_server_path() is None:
        return _result(
            "no_redis",
            "this check needs redis-server, which is not installed.",
            hint=f"install it with: {install_command()}",
        )
    name = limiter_class.__name__
    source = _defining_source(limiter_class)
    with RedisServer() as redis_server:
        redis = connect(redis_server.url)
        try:
            verdict = await _probe_one_process(limiter_class, redis, limit)
            if verdict is not None:
                return verdict
            if source is None:
                return _result(
                    "error",
                    f"the source of {name} cannot be found, so worker processes cannot run it.",
                    hint="define the class in a notebook cell (or a .py file) of its own.",
                )
            return await _check_in_workers(limiter_class, source, redis, redis_server.url, limit)
        finally:
            await redis.aclose()


# -------------------------------------------------------------------- 1. in one process


async def _probe_one_process(cls: type, redis: Any, limit: int) -> CheckResult | None:
    """acquire × limit, one more waits, a release lets it in; a CheckResult if not."""
    name = cls.__name__
    try:
        limiter = cls(redis, name="probe", limit=limit, lease=PROBE_LEASE)
    except Exception as error:
        return _error(f"{name}(redis, name=…, limit={limit}, lease={PROBE_LEASE:g}) raised", error)
    tokens: list[Any] = []
    try:
        for _ in range(limit):
            in_time, attempt = await _within(limiter.acquire(), 2.0)
            tokens += _token(attempt)  # released at the end, even if it came too late
            _raise_its_error(attempt)
            if not in_time:
                held = len(tokens)
                return _result(
                    "too_few_slots",
                    f"only {held} holder{'s' if held != 1 else ''} at once: the limit is {limit}.",
                    (
                        f"In one process, acquire() returned {held} time{'s' if held != 1 else ''}"
                        f", then waited although {limit - held} slots were free.",
                    ),
                    hint=f"allow exactly `limit` ({limit}) holders at once, not one lock.",
                )
        extra = asyncio.create_task(limiter.acquire())
        done, _ = await asyncio.wait([extra], timeout=0.3)
        if done:
            with contextlib.suppress(Exception):
                tokens.append(extra.result())
            if extra.exception() is not None:
                return _error(f"{name}.acquire() raised", extra.exception())
            return _result(
                "over_limit",
                f"a holder number {limit + 1} got a slot while {limit} held theirs.",
                (f"In one process, {limit + 1} acquire() calls returned without any release.",),
                hint="when every slot is taken, acquire() must wait (poll) until one is "
                "released or expires, not return.",
            )
        await limiter.release(tokens.pop())
        done, _ = await asyncio.wait([extra], timeout=1.5)
        if not done:
            await _stop(extra)
            tokens += _token(extra)
            return _result(
                "not_released",
                "release() did not give the slot back: a waiter could not take it.",
                (
                    f"In one process, {limit} holders, one waiting; one holder released its "
                    "token, and the waiter was still waiting 1.5 s later.",
                ),
                hint="release(token) must remove exactly that holder's lease from Redis "
                "(ZREM, or a DEL of its key if it still holds your token).",
            )
        if extra.exception() is not None:
            return _error(f"{name}.acquire() raised", extra.exception())
        tokens.append(extra.result())
    except Exception as error:
        return _error(f"{name} raised in one process", error)
    finally:
        for token in tokens:
            with contextlib.suppress(Exception):
                await limiter.release(token)
    return None


# --------------------------------------------------------------- 2. in worker processes


async def _check_in_workers(
    cls: type, source: str, redis: Any, redis_url: str, limit: int
) -> CheckResult:
    name = cls.__name__
    with tempfile.TemporaryDirectory(prefix="lab-check-") as folder:
        source_path = Path(folder) / "learner_limiter.py"
        source_path.write_text(source, encoding="utf-8")
        limited = RateLimit(max_concurrent=limit, retry_after=NO_RETRY_AFTER)
        with WorkerTaggedServer(latency=LATENCY, rate_limit=limited) as upstream:
            config = ServiceConfig(
                upstream_url=upstream.base_url,
                limiter="learner",
                limit=limit,
                lease=LEASE,
                redis_url=redis_url,
                learner_source=str(source_path),
                learner_class=name,
                upstream_timeout=LEASE - 0.5,
            )
            commands_before = await _commands(redis)
            try:
                workers = ServiceWorkers(WORKERS, config).start()
            except (RuntimeError, TimeoutError) as error:
                return _error(f"a worker process could not run the cell that defines {name}", error)
            try:
                report = await _load(workers)
                upstream.wait_idle()
                stats = upstream.stats
                commands = await _commands(redis) - commands_before
                refused = stats.count(429)
                if refused or stats.max_in_flight > limit:
                    upstream.configure(rate_limit=None)
                    await _load(workers)
                    upstream.wait_idle()
                    sent = upstream.stats.max_in_flight
                    return _too_many(limit, sent, refused, commands)
                failed = [r for r in report.requests if r.status != 200]
                if failed:
                    return _error(
                        f"{len(failed)} of {len(report.requests)} requests failed in the workers",
                        RuntimeError(_first_error(report, workers)),
                    )
                evidence = [
                    f"{WORKERS} workers × {REQUESTS_PER_WORKER} requests at once: at most "
                    f"{stats.max_in_flight} calls in flight at the upstream, 0 × 429."
                ]
                if stats.max_in_flight < limit:
                    return _result(
                        "too_few_slots",
                        f"at most {stats.max_in_flight} calls in flight: the limit is {limit}.",
                        tuple(evidence),
                        hint=f"let exactly {limit} holders in at once.",
                    )
                recovered = await _kill_a_holder(cls, workers, upstream, redis, limit)
                if recovered is None:
                    return _result(
                        "no_expiry",
                        "a worker killed in the middle of a call never gave its slot back.",
                        (
                            *evidence,
                            f"After kill -9 of a worker holding a slot, {LEASE:g} s of lease "
                            f"and 1 s more went by, and still only {limit - 1} of {limit} slots "
                            "could be taken.",
                        ),
                        hint="give each holder a lease that expires (PX on SET NX, or an "
                        "expiry score in a sorted set that acquire() prunes), so a crashed "
                        "worker's slot comes back.",
                    )
                evidence.append(
                    f"kill -9 of a worker in the middle of a call: its slot came back after "
                    f"{recovered:.2f} s (the lease is {LEASE:.2f} s)."
                )
                return _result(
                    "ok",
                    f"{limit} calls in flight across {WORKERS} workers, 0 × 429, and a crashed "
                    "worker's slot came back.",
                    tuple(evidence),
                )
            finally:
                workers.stop()


async def _load(workers: ServiceWorkers) -> LoadReport:
    async with workers.client(timeout=LEASE * 10) as client:
        return await fire(
            client,
            "POST",
            "/chat",
            json=lambda i: {"message": f"Summarize in 5 words: request {i} of the check"},
            n=WORKERS * REQUESTS_PER_WORKER,
        )


def _too_many(limit: int, sent: int, refused: int, commands: int) -> CheckResult:
    refusals = "refused some calls with 429" if refused else "refused none"
    if commands == 0:
        return _result(
            "per_process",
            f"each worker process keeps its own limit: together the {WORKERS} workers had "
            f"{sent} calls in flight, not {limit}.",
            (
                f"{WORKERS} workers × {REQUESTS_PER_WORKER} requests at once: with the "
                f"upstream's limit on, it {refusals}; without it, the workers had {sent} calls "
                "in flight at once.",
                "The workers sent no command to Redis: each one limited only itself.",
            ),
            hint="keep the slots in Redis (the `redis` client your class receives), so every "
            "worker counts the same holders.",
        )
    evidence = [
        f"{WORKERS} workers × {REQUESTS_PER_WORKER} requests at once: with the upstream's limit "
        f"on, it {refusals}; without it, the workers had more than {limit} calls in flight.",
    ]
    evidence.append(
        "The workers did use Redis, yet together they let more calls in than the limit."
    )
    return _result(
        "non_atomic",
        "checking for a free slot and taking it are two steps, so two workers take the same one.",
        tuple(evidence),
        hint="make the check and the take one atomic step: `SET key token NX PX ms` per slot, "
        "or a Lua script (redis.register_script) that counts and adds in one go.",
    )


async def _kill_a_holder(
    cls: type, workers: ServiceWorkers, upstream: WorkerTaggedServer, redis: Any, limit: int
) -> float | None:
    """kill -9 worker 1 during a slow call; seconds until all `limit` slots can be taken, or
    None if they cannot within the lease + 1 s."""
    slow = LEASE - 1.0  # the call outlives the kill, and ends within the service's timeout
    upstream.configure(faults=[Fault.matching(r"slow", delay=slow)], rate_limit=None)
    port = workers.ports[0]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        call = asyncio.create_task(client.post("/chat", json={"message": "a slow one"}, timeout=5))
        deadline = time.monotonic() + 10
        while upstream.stats.in_flight < 1 and not call.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        killed_at = time.monotonic()
        workers.kill(0)
        await asyncio.wait([call])
        with contextlib.suppress(Exception):
            call.result()  # the connection was cut: that is the point
    limiter = cls(redis, name="openai", limit=limit, lease=LEASE)
    deadline = killed_at + LEASE + 1.0
    while time.monotonic() < deadline:
        async with _all_slots(limiter, limit, timeout=0.2) as taken:
            if taken == limit:
                return time.monotonic() - killed_at
        await asyncio.sleep(0.1)
    return None


@contextlib.asynccontextmanager
async def _all_slots(limiter: Any, limit: int, *, timeout: float) -> AsyncIterator[int]:
    """Take as many of `limit` slots as come within `timeout` s each; yield how many; release."""
    tokens: list[Any] = []
    taken = 0
    try:
        for _ in range(limit):
            in_time, attempt = await _within(limiter.acquire(), timeout)
            tokens += _token(attempt)
            if not in_time:
                break
            _raise_its_error(attempt)
            taken += 1
        yield taken
    finally:
        for token in tokens:
            with contextlib.suppress(Exception):
                await limiter.release(token)


async def _within(acquiring: Awaitable[Any], seconds: float) -> tuple[bool, asyncio.Future[Any]]:
    """Run `acquiring` for at most `seconds`, then stop it; (whether it ended in time, its task).

    Not `asyncio.timeout()`: that cancels once, and a cancel can be lost. Inside a learner's
    acquire() a library's own timeout (redis-py reads under one) may turn it into an error of
    its own and let the polling loop go on, and then the check would wait for good. Here the
    check goes on whatever the learner's code does (see `_stop`).
    """
    attempt = asyncio.ensure_future(acquiring)
    await asyncio.wait([attempt], timeout=seconds)
    if attempt.done():
        return True, attempt
    await _stop(attempt)
    return False, attempt


async def _stop(task: asyncio.Future[Any]) -> None:
    """Cancel `task` until it ends, `CANCEL_ATTEMPTS` times `CANCEL_GRACE` s at most. One that
    still runs is kept (referenced) until it ends: its Redis is stopped when the check is done,
    and a polling loop then fails."""
    for _ in range(CANCEL_ATTEMPTS):
        task.cancel()
        await asyncio.wait([task], timeout=CANCEL_GRACE)
        if task.done():
            return
    _still_running.add(task)
    task.add_done_callback(_still_running.discard)


def _raise_its_error(attempt: asyncio.Future[Any]) -> None:
    """What the learner's acquire() raised, raised here (a stop of ours is not an error)."""
    if attempt.done() and not attempt.cancelled():
        error = attempt.exception()
        if error is not None:
            raise error


def _token(attempt: asyncio.Future[Any]) -> list[Any]:
    """The token `attempt` returned, as a list of 0 or 1 (cancelled or failed: none)."""
    if not attempt.done() or attempt.cancelled() or attempt.exception() is not None:
        return []
    return [attempt.result()]


# What connecting and this count send: not a sign that a limiter used Redis.
_BOOKKEEPING: Final = (
    "cmdstat_info",
    "cmdstat_ping",
    "cmdstat_hello",
    "cmdstat_client",
    "cmdstat_select",
)


async def _commands(redis: Any) -> int:
    """Commands Redis has run so far (INFO commandstats), connection bookkeeping aside."""
    stats = await redis.info("commandstats")
    return sum(
        int(entry["calls"])
        for name, entry in stats.items()
        if isinstance(entry, dict) and not name.startswith(_BOOKKEEPING)
    )


def _first_error(report: LoadReport, workers: ServiceWorkers) -> str:
    failed = next(r for r in report.requests if r.status != 200)
    shown = failed.body if failed.status is not None else failed.error
    tail = " ".join(workers.log(0).split())[-300:]
    return f"HTTP {failed.status}: {shown!s:.200} — worker log: {tail}"


# -------------------------------------------------------------------------------- helpers


def _interface_problem(cls: Any) -> str | None:
    if not isinstance(cls, type):
        return (
            f"expected the limiter class itself (not an instance or a function); got {cls!r:.80}."
        )
    for method in ("acquire", "release"):
        if not inspect.iscoroutinefunction(getattr(cls, method, None)):
            return f"{cls.__name__}.{method} must be an `async def` method."
    return None


def _defining_source(cls: type) -> str | None:
    """The whole cell (in Jupyter) or file that defines `cls`, found through its methods' code:
    what a worker process runs to get the same class."""
    code = getattr(getattr(cls, "acquire", None), "__code__", None)
    if code is None:
        return None
    lines = linecache.getlines(code.co_filename)
    return "".join(lines) or None


def _error(what: str, error: BaseException | None) -> CheckResult:
    text = " ".join(f"{type(error).__name__}: {error}".split())[:300] if error else "unknown"
    return _result(
        "error",
        f"{what}.",
        (text,),
        hint="run the cell on its own first; it must be plain Python with its own imports, "
        "since each worker process runs it from scratch.",
    )


def _result(
    cause: Cause, summary: str, evidence: tuple[str, ...] = (), *, hint: str | None = None
) -> CheckResult:
    return CheckResult(
        exercise=EXERCISE,
        passed=cause == "ok",
        cause=cause,
        summary=summary,
        evidence=evidence,
        hint=hint,
    )
