"""Checker for notebook 07: a limiter that several worker processes share through Redis.

The learner writes a class, constructed as `Limiter(redis, name=…, limit=…, lease=…)`, with
`async def acquire(self) -> str` (wait for a slot, return a token) and
`async def release(self, token) -> None`.

What the lesson teaches, as invariants measured for any answer; the verdict is their
conjunction, the cause the first one that failed (in this order), the hint its fix:

1. **It is a limiter**: a class with `async def acquire` and `async def release` ("not_a_limiter").
2. **It never blocks the event loop**, in any step: the whole in-process part runs under the
   watchdog ("threading_primitive", "blocked_loop", "timed_out": a `threading` semaphore, a
   `time.sleep` loop that never awaits), and while `acquire()` waits for a slot it never calls
   `time.sleep` on the event loop's thread ("blocking_wait": `time.sleep` between polls that
   await Redis; counted by a profile function, so a loaded machine cannot change the verdict).
3. **`limit` holders at once, in one process**: `limit` acquires return ("too_few_slots"), and
   they return `limit` different tokens ("same_token": a constant token cannot tell holders
   apart). A limiter that sends Redis no command while acquiring keeps its limit per process:
   the workers' part (9) comes next, and says so; 6-8 are about Redis and are skipped.
4. **Never more than `limit`**: one more acquire waits while `limit` leases are live
   ("over_limit"; "lease_units" when the lease went to Redis in the wrong unit: `px` and
   `PEXPIRE` take milliseconds, `ex` and `EXPIRE` seconds).
5. **A release hands the slot over**: a waiter gets in after one release ("not_released").
6. **Taking a slot is one atomic step with its expiry** ("set_then_expire": `SETNX`, or `SET`
   without an expiry, then `EXPIRE` / `PEXPIRE`: a crash between the two keeps the slot
   forever; seen in the commands acquire() sent).
7. **A lease expires while its holder still works**: with a short lease, `limit` holders take
   every slot and then outlive their leases; `limit` new holders must get in ("no_expiry"),
   and when the old holders release afterwards, the new holders' slots must stay taken
   ("released_others": a release by plain `DEL`, or by a token several holders share, frees a
   slot someone else holds now).
8. **A release is one atomic step**: compare the token and delete in one command or script
   ("non_atomic_release": a `GET` then a `DEL` sent separately; between the two the lease may
   expire and another holder take the slot; seen in the commands release() sent).
9. **One limit across processes**: 3 uvicorn worker processes serving the lesson's service run
   the cell (or file) that defines the class; 30 requests against an upstream that allows
   `limit` calls in flight. Too many in flight with Redis unused is a per-process limit
   ("per_process"); with Redis used, a check-then-set in two steps ("non_atomic"); fewer than
   `limit` wastes it ("too_few_slots"). Failed requests there are "error".

Steps 1–8 run in this process against a private Redis (short leases, so waiting out an expiry
takes about a second); the commands each acquire() and release() send are recorded by a thin
stand-in for the Redis client the class receives (a script's commands run inside Redis in one
step and count as one). "ok" only when all hold; "no_redis" when `redis-server` is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import linecache
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, Literal, get_args

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
from ..upstream import RateLimit
from ..validation import check_int
from ._common import stopped_by_watchdog
from .result import CheckResult, recorded
from .watchdog import guarded

__all__ = ["CAUSES", "Cause", "check_shared_limit"]

EXERCISE = "one limit shared by every worker"

Cause = Literal[
    "ok",
    "no_redis",  # redis-server is not installed: nothing could be checked
    "not_a_limiter",  # not a class with async acquire() and release(token)
    "threading_primitive",  # the watchdog stopped a threading lock/semaphore on the loop
    "blocked_loop",  # the watchdog stopped code that held the loop (time.sleep, busy loop)
    "timed_out",  # the check ran past its time limit
    "error",  # constructing it, acquire or release raised (or a worker could not load it)
    "too_few_slots",  # fewer than `limit` holders at once: safe, but wastes the limit
    "same_token",  # holders at once got equal tokens
    "over_limit",  # one more than `limit` got a slot in one process
    "lease_units",  # the lease reached Redis in the wrong unit (px takes milliseconds)
    "blocking_wait",  # acquire() waited with the event loop blocked (time.sleep polling)
    "not_released",  # release() did not hand the slot to a waiter
    "set_then_expire",  # the slot taken, then its expiry set, in two commands
    "no_expiry",  # an expired lease never gave its slot back
    "released_others",  # an old holder's release freed a slot a new holder holds
    "non_atomic_release",  # release() read the token, then deleted, in two commands
    "per_process",  # each worker limits itself: Redis unused, workers × limit in flight
    "non_atomic",  # Redis used, yet more than `limit` in flight: check-then-set in two steps
]
CAUSES: Final[tuple[str, ...]] = get_args(Cause)

WORKERS: Final = 3
REQUESTS_PER_WORKER: Final = 10
LATENCY: Final = 0.3
LEASE: Final = 6.0
"""The lease the workers' limiter gets. A slot is held from the acquire until the upstream has
answered, and on a loaded machine a worker can be a second or more late to send its call: a
lease that ran out under a live holder let one more call in, and a right answer was judged
"non_atomic". So the workers give up on the upstream at half the lease (`UPSTREAM_TIMEOUT`),
and the other half is for that delay; the checker's calls take `LATENCY`."""
UPSTREAM_TIMEOUT: Final = LEASE / 2
PROBE_LEASE: Final = 30.0
"""The lease in the in-process probe: longer than the probe, so expiry cannot hide a bug, and
in whole seconds a number no other argument is (`limit` is at most 10): a lease given to Redis
in the wrong unit is recognised."""
SHORT_LEASE: Final = 0.4
"""The lease in the expiry probe, which its holders outlive on purpose."""
FRESH_LEASE: Final = 5.0
"""The lease of the holders that come after them: far longer than the rest of the probe, so
their slots stay theirs unless someone else frees them (a lease a hundred times too short
still ends within `WAIT`)."""
WAIT: Final = 0.3
"""Seconds an acquire() must keep waiting while every slot is held."""
NO_RETRY_AFTER: Final = 600.0
CANCEL_ATTEMPTS: Final = 5
CANCEL_GRACE: Final = 1.0
"""How often, and how long each time, the check cancels a learner's acquire() it gave up on."""
BLOCK_LIMIT: Final = 2.0
TIME_LIMIT: Final = 90.0
"""The watchdog's limits for the whole check (worker start-up included)."""
_still_running: set[asyncio.Future[Any]] = set()

_EXPIRY_OPTIONS: Final = ("px", "ex", "pxat", "exat", "keepttl")
_EXPIRE_COMMANDS: Final = ("expire", "pexpire", "expireat", "pexpireat")
_READS: Final = ("get", "mget", "exists", "zscore", "zrank", "hget", "ttl", "pttl", "lindex")
_DELETES: Final = ("delete", "unlink", "zrem", "hdel", "srem", "getdel", "lrem")


# The check runs its own watchdog (`guarded` below): the decorator adds none.
@recorded(notebook="07_beyond_one_process")
async def check_shared_limit(limiter_class: Any, *, limit: int = 5) -> CheckResult:
    """Judge `limiter_class` as a limit of `limit` calls in flight shared by worker processes,
    by the invariants in the module docstring.

    Starts its own `redis-server`, fake upstream and 3 workers (all on 127.0.0.1), and stops
    them all before it returns, also when the watchdog stops learner code that blocks the
    event loop. It takes a few seconds more than the workers need to start.
    """
    check_int("limit", limit, minimum=2, maximum=10, why="calls in flight")
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
    outcome = await guarded(
        _whole_check(limiter_class, limit), block_limit=BLOCK_LIMIT, time_limit=TIME_LIMIT
    )
    if outcome.stopped:
        return stopped_by_watchdog(EXERCISE, outcome.blocked, f"{limiter_class.__name__}'s check")
    if outcome.value is None:
        return _error(f"{limiter_class.__name__} raised", outcome.error)
    return outcome.value


async def _whole_check(cls: type, limit: int) -> CheckResult:
    name = cls.__name__
    source = _defining_source(cls)
    with RedisServer() as redis_server:
        redis = connect(redis_server.url)
        try:
            verdict = await _probe_one_process(cls, redis, limit)
            if verdict is not None:
                return verdict
            if source is None:
                return _result(
                    "error",
                    f"the source of {name} cannot be found, so worker processes cannot run it.",
                    hint="define the class in a notebook cell (or a .py file) of its own.",
                )
            return await _check_in_workers(cls, source, redis, redis_server.url, limit)
        finally:
            await redis.aclose()


# -------------------------------------------------------------------- 1. in one process


Sent = list[tuple[str, tuple[Any, ...], dict[str, Any]]]
"""The commands one call of acquire() or release() sent: (method name, args, options)."""


@dataclass
class _Commands:
    """What a limiter sent to Redis, one list of (command, args, options) per call of it."""

    calls: list[tuple[str, Sent]] = field(default_factory=list)

    def of(self, method: str) -> list[Sent]:
        return [sent for called, sent in self.calls if called == method]


_sending_for: ContextVar[Sent | None] = ContextVar("_sending_for", default=None)
"""The list the current task's commands go to: a task started inside a call (an acquire()
still polling in the background) keeps noting into its own call's list."""


class _RecordingRedis:
    """The Redis client a probed limiter receives: every command method call is noted in the
    list of the acquire() or release() call it belongs to (`during`), then passed to the real
    client unchanged. A registered script's commands run inside Redis as one step, and its
    run is noted as one command, "script"."""

    def __init__(self, redis: Any, commands: _Commands) -> None:
        self._redis, self.commands = redis, commands

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._redis, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def noted(*args: Any, **kwargs: Any) -> Any:
            sent = _sending_for.get()
            if sent is not None:
                sent.append((name.lower(), args, kwargs))
            result = attribute(*args, **kwargs)
            return _noted_script(result) if name == "register_script" else result

        return noted

    @contextlib.contextmanager
    def during(self, method: str) -> Iterator[None]:
        sent: Sent = []
        self.commands.calls.append((method, sent))
        token = _sending_for.set(sent)
        try:
            yield
        finally:
            _sending_for.reset(token)


def _noted_script(script: Any) -> Any:
    """A registered script that notes each run as one command, "script"."""

    def run(*args: Any, **kwargs: Any) -> Any:
        sent = _sending_for.get()
        if sent is not None:
            sent.append(("script", args, kwargs))
        return script(*args, **kwargs)

    return run


async def _probe_one_process(cls: type, real_redis: Any, limit: int) -> CheckResult | None:
    """Invariants 2–8 of the module docstring, in this process; a CheckResult if one fails."""
    name = cls.__name__
    commands = _Commands()
    redis = _RecordingRedis(real_redis, commands)
    try:
        limiter = cls(redis, name="probe", limit=limit, lease=PROBE_LEASE)
    except Exception as error:
        return _error(f"{name}(redis, name=…, limit={limit}, lease={PROBE_LEASE:g}) raised", error)

    async def acquire(within: float) -> tuple[bool, asyncio.Future[Any]]:
        with redis.during("acquire"):
            return await _within(limiter.acquire(), within)

    async def release(token: Any) -> None:
        with redis.during("release"):
            await limiter.release(token)

    tokens: list[Any] = []
    try:
        for _ in range(limit):
            in_time, attempt = await acquire(2.0)
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
        # A limiter that keeps no state in Redis is a limit per process, whatever else it
        # does: the workers' part shows that first (invariants 3's tokens, 6-8 need Redis).
        uses_redis = any(commands.of("acquire"))
        if uses_redis and len({repr(token) for token in tokens}) < len(tokens):
            return _result(
                "same_token",
                f"{limit} holders at once got only {len({repr(t) for t in tokens})} different "
                "token(s): a release cannot tell whose slot it frees.",
                (f"The tokens: {', '.join(repr(t) for t in tokens)[:200]}.",),
                hint="give every acquire() a token of its own (`uuid.uuid4().hex`), store it "
                "as the slot's value, and return it (with the slot's key, if you need it).",
            )
        with _sleeps_on_this_thread() as sleeps, redis.during("acquire"):
            extra = asyncio.ensure_future(limiter.acquire())
            done, _ = await asyncio.wait([extra], timeout=WAIT)
        if done:
            with contextlib.suppress(Exception):
                tokens.append(extra.result())
            if extra.exception() is not None:
                return _error(f"{name}.acquire() raised", extra.exception())
            evidence = (
                f"In one process, {limit + 1} acquire() calls returned without any release.",
            )
            units = _lease_unit_problem(commands, PROBE_LEASE)
            if units is not None:
                return _result(
                    "lease_units",
                    f"the slots expired at once: {units}",
                    evidence,
                    hint=f"`px` and `PEXPIRE` take milliseconds: a lease of {PROBE_LEASE:g} s "
                    f"is `px=int(lease * 1000)` ({PROBE_LEASE * 1000:.0f}), not "
                    f"`px=int(lease)`; `ex` takes whole seconds.",
                )
            return _result(
                "over_limit",
                f"a holder number {limit + 1} got a slot while {limit} held theirs.",
                evidence,
                hint="when every slot is taken, acquire() must wait (poll with `await "
                "asyncio.sleep(...)`) until one is released or expires, not return.",
            )
        if sleeps.count:
            await _stop(extra)
            return _result(
                "blocking_wait",
                "while acquire() waited for a slot, it blocked the event loop with time.sleep: "
                "nothing else in this worker could run meanwhile.",
                (
                    f"With every slot held, one more acquire() waited {WAIT:.2f} s and called "
                    f"time.sleep {sleeps.count} time(s) on the event loop's thread.",
                ),
                hint="wait between polls with `await asyncio.sleep(0.02)`, never "
                "`time.sleep(...)`: inside `async def`, every wait must be an `await`.",
            )
        await release(tokens.pop())
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
                "(a compare-and-delete script for its key, or ZREM of its token).",
            )
        if extra.exception() is not None:
            return _error(f"{name}.acquire() raised", extra.exception())
        tokens.append(extra.result())
        for token in tokens:
            await release(token)
        tokens.clear()
        if not uses_redis:
            return None
        two_steps = _set_then_expire(commands)
        if two_steps is not None:
            return _result(
                "set_then_expire",
                "acquire() takes the slot and sets its expiry in two commands: a worker that "
                "dies between the two keeps the slot for good.",
                (f"acquire() sent {two_steps}.",),
                hint="take the slot and its lease in one command: "
                "`await redis.set(key, token, nx=True, px=lease_ms)`.",
            )
        verdict = await _probe_expiry(cls, redis, real_redis, limit)
        if verdict is not None:
            return verdict
        read_then_delete = _read_then_delete(commands)
        if read_then_delete is not None:
            return _result(
                "non_atomic_release",
                "release() reads the slot's token and deletes the key in two commands: between "
                "them the lease can expire and another holder take the slot, whose lease the "
                "delete then removes.",
                (f"release() sent {read_then_delete}.",),
                hint="compare and delete in one step, inside Redis: a Lua script "
                "(`redis.register_script`) that DELs the key only if GET returns your token.",
            )
    except Exception as error:
        return _error(f"{name} raised in one process", error)
    finally:
        for token in tokens:
            with contextlib.suppress(Exception):
                await limiter.release(token)
    return None


async def _probe_expiry(
    cls: type, redis: _RecordingRedis, real_redis: Any, limit: int
) -> CheckResult | None:
    """Invariant 7: leases that expire under live holders free their slots, and the old
    holders' late releases do not free the new holders' slots."""
    limiter = cls(redis, name="expiry", limit=limit, lease=SHORT_LEASE)
    fresh = cls(redis, name="expiry", limit=limit, lease=FRESH_LEASE)
    old: list[Any] = []
    new: list[Any] = []
    try:
        for _ in range(limit):
            with redis.during("acquire"):
                in_time, attempt = await _within(limiter.acquire(), 2.0)
            old += _token(attempt)
            _raise_its_error(attempt)
        await asyncio.sleep(SHORT_LEASE + 0.3)  # the old holders are still "working"
        for _ in range(limit):
            with redis.during("acquire"):
                in_time, attempt = await _within(fresh.acquire(), 1.0)
            new += _token(attempt)
            _raise_its_error(attempt)
            if not in_time:
                expiry = _expiry_unit_problem(redis.commands, SHORT_LEASE)
                return _result(
                    "lease_units" if expiry else "no_expiry",
                    f"holders whose lease of {SHORT_LEASE:g} s had run out still kept "
                    "their slots: a crashed worker would shrink the limit for good.",
                    (
                        f"{limit} holders took every slot with a lease of {SHORT_LEASE:g} s; "
                        f"{SHORT_LEASE + 0.3:.1f} s later only {len(new)} of {limit} new "
                        "holders got in." + (f" {expiry}" if expiry else ""),
                    ),
                    hint="`ex` / `EXPIRE` take seconds: `px=int(lease * 1000)` is the lease "
                    "in milliseconds."
                    if expiry
                    else "give each holder a lease that expires (PX on SET NX, or an expiry "
                    "score in a sorted set that acquire() prunes), so a crashed worker's slot "
                    "comes back.",
                )
        with redis.during("acquire"):
            in_time, attempt = await _within(fresh.acquire(), WAIT)
        new += _token(attempt)
        _raise_its_error(attempt)
        if in_time:
            units = _lease_unit_problem(redis.commands, SHORT_LEASE)
            return _result(
                "lease_units" if units else "over_limit",
                f"with {limit} fresh holders, one more got a slot at once: their leases of "
                f"{FRESH_LEASE:g} s ended long before their time.",
                (units or "The slots were free again a moment after they were taken.",),
                hint="give Redis the whole lease: `px=int(lease * 1000)` (milliseconds); a "
                "lease shorter than the call frees the slot while its holder still works.",
            )
        for token in old:
            with redis.during("release"):
                await limiter.release(token)
        old.clear()
        with redis.during("acquire"):
            in_time, attempt = await _within(fresh.acquire(), WAIT)
        new += _token(attempt)
        _raise_its_error(attempt)
        if in_time:
            return _result(
                "released_others",
                "a holder whose lease had expired released a slot that another holder had "
                "taken since: one more than the limit got in.",
                (
                    f"{limit} holders outlived their {SHORT_LEASE:g} s leases, {limit} new "
                    "holders took the slots, then the old ones released their tokens: one more "
                    "acquire() got a slot at once.",
                ),
                hint="release only your own lease: a unique token per acquire() "
                "(`uuid.uuid4().hex`) as the key's value, and a Lua script that deletes the "
                "key only if it still holds that token (or ZREM of your token).",
            )
    finally:
        for token in old:
            with contextlib.suppress(Exception):
                await limiter.release(token)
        for token in new:
            with contextlib.suppress(Exception):
                await fresh.release(token)
    return None


@dataclass
class _Sleeps:
    count: int = 0


@contextlib.contextmanager
def _sleeps_on_this_thread() -> Iterator[_Sleeps]:
    """Count the `time.sleep` calls the calling thread (the event loop's) makes inside: a
    profile function sees the call however it was imported (`from time import sleep` too)."""
    sleeps = _Sleeps()

    def note(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and arg is time.sleep:
            sleeps.count += 1

    previous = sys.getprofile()
    sys.setprofile(note)
    try:
        yield sleeps
    finally:
        sys.setprofile(previous)


def _lease_unit_problem(commands: _Commands, lease: float) -> str | None:
    """A sentence if acquire() gave Redis the lease in seconds where milliseconds belong: as
    `px`, to PEXPIRE, or among a script's arguments (the probe's lease, in whole seconds, is no
    other number the check passes)."""
    for sent in commands.of("acquire"):
        for command, args, options in sent:
            px = options.get("px")
            if command == "pexpire" and len(args) >= 2:
                px = args[1]
            if command == "script":
                given = [str(value) for value in options.get("args", ())]
                px = int(lease) if str(int(lease)) in given else None
            if isinstance(px, int | float) and 0 < px < lease * 10:
                return (
                    f"acquire() sent {command.upper()} with a lease of {px} ms for a lease of "
                    f"{lease:g} s."
                )
    return None


def _expiry_unit_problem(commands: _Commands, lease: float) -> str | None:
    """A sentence if acquire() gave Redis the lease in milliseconds where seconds belong."""
    for sent in commands.of("acquire"):
        for command, args, options in sent:
            ex = options.get("ex")
            if command == "expire" and len(args) >= 2:
                ex = args[1]
            if isinstance(ex, int | float) and ex >= lease * 100:
                return (
                    f"acquire() sent {command.upper()} with {ex} seconds for a lease of "
                    f"{lease:g} s."
                )
    return None


def _set_then_expire(commands: _Commands) -> str | None:
    """The commands of an acquire() that took a slot without an expiry and set it after."""
    for sent in commands.of("acquire"):
        taken = False
        for command, _args, options in sent:
            if command == "setnx" or (
                command == "set"
                and options.get("nx")
                and not any(options.get(o) for o in _EXPIRY_OPTIONS)
            ):
                taken = True
            elif taken and command in _EXPIRE_COMMANDS:
                return " then ".join(c.upper() for c, _, _ in sent[:8])
    return None


def _read_then_delete(commands: _Commands) -> str | None:
    """The commands of a release() that read, then deleted, in separate commands."""
    for sent in commands.of("release"):
        names = [command for command, _, _ in sent]
        if "watch" in names:  # an optimistic transaction: the delete fails if the key changed
            continue
        read = next((i for i, c in enumerate(names) if c in _READS), None)
        if read is not None and any(c in _DELETES for c in names[read + 1 :]):
            return " then ".join(c.upper() for c in names[:8])
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
                upstream_timeout=UPSTREAM_TIMEOUT,
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
                evidence.append(
                    f"In one process: {limit} holders at once with {limit} different tokens, "
                    "one more waited (the event loop free) until a release; leases of "
                    f"{SHORT_LEASE:g} s expired under live holders and freed their slots, and "
                    "the old holders' releases freed none of the new holders' slots."
                )
                return _result(
                    "ok",
                    f"{limit} calls in flight across {WORKERS} workers, 0 × 429; an expired "
                    "lease gave its slot back, and a late release took no one else's.",
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
