"""Limits shared by every worker process, kept in Redis.

An `asyncio.Semaphore(5)` lives in one process: four uvicorn workers have four of them, and
together they let 20 calls in flight. A limit that belongs to the upstream has to live where
every worker sees it. Two kinds, both in Redis:

* `SharedSemaphore` — at most `limit` calls **in flight**, across processes. Each holder has a
  *lease*: an entry in a sorted set whose score is the moment it expires. A worker that crashes
  (kill -9) never releases its slot, so the lease expires and the slot comes back by itself.
* `TokenBucket` — at most `rate` calls **started** per second on average, with bursts of up to
  `capacity`: the shape of a requests-per-minute quota.

Why a Lua script: "count the holders, and if there is room, add me" is two steps. Done as two
commands, two workers can both count 4 and both add themselves: 6 holders for 5 slots. Redis runs
a script from start to end with no other command in between, so the count and the add are one
step. (`SET key value NX PX ms` is atomic the same way, for one key.) The scripts read the time
from Redis itself (`TIME`), so the workers' own clocks never disagree about when a lease expires.

Failures are explicit: when Redis cannot be reached every call raises `LimiterUnavailable` (a
`RuntimeError`) instead of hanging: at once when the connection is refused, after `ATTEMPTS`
socket timeouts in a row when Redis stops answering; a service turns it into 503.
`connect(url)` builds a client with short timeouts and those attempts.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..validation import check_int, check_number, check_seconds, check_text

__all__ = [
    "LimiterUnavailable",
    "LocalSlots",
    "SharedSemaphore",
    "TokenBucket",
    "connect",
]

T = TypeVar("T")

SOCKET_TIMEOUT: Final = 1.0
"""Seconds a Redis command may take before it is sent again (or, the last time, before the
limiter gives up with `LimiterUnavailable`)."""
ATTEMPTS: Final = 3
"""How many times a command is sent before Redis counts as gone. One timeout alone proves
little: the clock runs while this process's event loop is busy with other requests, and on a
loaded machine a burst of them kept it from reading an answer that had arrived long before the
timeout (measured: a 0.9-1.0 s stall of every worker with 0.11 s of CPU work at a load average
of 10 on 2 cores; 3-5 runs of 8 then answered 503). Sent again at once, the command finds the
loop free; a Redis that is really gone fails every attempt."""

ACQUIRE_LEASE: Final = """
-- KEYS[1]: the semaphore, a sorted set {token: the moment its lease expires, in ms}
-- ARGV[1]: limit, ARGV[2]: lease in ms, ARGV[3]: the new holder's token
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)      -- expired leases come back
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
    return 0                                                -- full: try again later
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])                      -- nobody left: the key goes too
return 1
"""

COUNT_LEASES: Final = """
-- KEYS[1]: the semaphore; returns how many leases have not expired
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
return redis.call('ZCARD', KEYS[1])
"""

TAKE_TOKEN: Final = """
-- KEYS[1]: the bucket, a hash {tokens, at}; ARGV[1]: rate per second, ARGV[2]: capacity
-- Returns 0 when a token was taken, else the seconds until one will be there (as a string:
-- Redis would truncate a Lua number to an integer).
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = redis.call('TIME')
local now_s = tonumber(now[1]) + tonumber(now[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now_s
tokens = math.min(capacity, tokens + math.max(0, now_s - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now_s))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(wait)
"""


class LimiterUnavailable(RuntimeError):
    """The shared limit cannot be checked: Redis did not answer. Answer 503, do not hang."""


def connect(url: str, *, timeout: float = SOCKET_TIMEOUT) -> aioredis.Redis:
    """An asyncio Redis client whose commands fail within `timeout` seconds when Redis stops
    answering, at once when it refuses the connection (redis-py's default is to wait for the
    operating system, which can take minutes). The limiters try `ATTEMPTS` times."""
    check_seconds("timeout", timeout, allow_zero=False)
    check_text("url", url, what="a redis:// URL")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(
            f"url must be a redis:// URL such as redis://127.0.0.1:6379/0; got {url!r}"
        )
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One attempt here: the limiters send each command again themselves (`ATTEMPTS`), which
        # also covers a new connection's handshake, something redis-py's own retry does not.
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    return client


class SharedSemaphore:
    """At most `limit` holders at once among every process using the same Redis and `name`.

        slots = SharedSemaphore(redis, "openai", limit=5, lease=30.0)
        async with slots.slot():
            await client.chat.completions.create(...)

    `lease` is how long a holder may keep its slot: make it longer than the slowest call (the
    upstream timeout), because a lease that expires while its call runs lets one more in. A
    holder that never releases (a crashed worker) frees its slot after `lease` seconds. Waiters
    poll every `poll` seconds (with jitter, so workers do not ask in lockstep) and give up with
    `TimeoutError` after `wait` seconds.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        name: str,
        *,
        limit: int,
        lease: float,
        poll: float = 0.05,
        wait: float = 60.0,
    ) -> None:
        check_text("name", name, what="the Redis key")
        check_int("limit", limit, minimum=1)
        check_number("lease", lease, unit="seconds (Redis counts milliseconds)", ge=0.001)
        check_seconds("poll", poll, allow_zero=False)
        check_seconds("wait", wait, allow_zero=False)
        self.redis, self.name, self.limit, self.lease = redis, name, limit, lease
        self.poll, self.wait = poll, wait
        self.key = f"lab:semaphore:{name}"
        self._acquire_script = redis.register_script(ACQUIRE_LEASE)
        self._count_script = redis.register_script(COUNT_LEASES)

    async def try_acquire(self) -> str | None:
        """Take a slot if one is free now: its token, or None."""
        token = uuid.uuid4().hex
        lease_ms = max(1, round(self.lease * 1000))
        taken = await self._call(
            lambda: self._acquire_script(keys=[self.key], args=[self.limit, lease_ms, token])
        )
        return token if taken == 1 else None

    async def acquire(self) -> str:
        """Wait for a slot and return its token (give it to `release`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while (token := await self.try_acquire()) is None:
            if loop.time() >= deadline:
                raise TimeoutError(f"no slot of {self.name!r} came free within {self.wait:g} s")
            await asyncio.sleep(self.poll * random.uniform(0.5, 1.5))
        return token

    async def release(self, token: str) -> None:
        """Give the slot back. Releasing a lease that already expired is harmless."""
        await self._call(lambda: self.redis.zrem(self.key, token))

    async def held(self) -> int:
        """How many leases are held now (expired ones do not count)."""
        count = await self._call(lambda: self._count_script(keys=[self.key]))
        return int(count)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block."""
        token = await self.acquire()
        try:
            yield
        finally:
            await self.release(token)

    async def _call(self, send: Callable[[], Awaitable[T]]) -> T:
        return await _unless_unreachable(send, f"the shared semaphore {self.name!r}")


class TokenBucket:
    """On average at most `rate` starts per second among every process, with bursts of up to
    `capacity`: the shape of a requests-per-minute quota (`rate=500 / 60`).

    The bucket holds up to `capacity` tokens and refills at `rate` per second; each call takes
    one, or waits until one is there. Keep `rate` a little below the provider's quota: its
    window starts when a request arrives, not when you sent it.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        name: str,
        *,
        rate: float,
        capacity: int,
        wait: float = 60.0,
    ) -> None:
        check_text("name", name, what="the Redis key")
        check_number("rate", rate, unit="calls per second", gt=0)
        check_int("capacity", capacity, minimum=1)
        check_seconds("wait", wait, allow_zero=False)
        self.redis, self.name, self.rate, self.capacity, self.wait = (
            redis, name, float(rate), capacity, wait,
        )  # fmt: skip
        self.key = f"lab:bucket:{name}"
        self._take_script = redis.register_script(TAKE_TOKEN)

    async def take(self) -> None:
        """Take one token, waiting as long as the bucket says (at most `wait` seconds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            reply = await _unless_unreachable(
                lambda: self._take_script(keys=[self.key], args=[self.rate, self.capacity]),
                f"the token bucket {self.name!r}",
            )
            pause = float(reply)
            if pause <= 0:
                return
            if loop.time() + pause > deadline:
                raise TimeoutError(f"no token of {self.name!r} within {self.wait:g} s")
            await asyncio.sleep(pause)


class LocalSlots:
    """The per-process limit, with the same acquire/release as `SharedSemaphore`: one
    `asyncio.Semaphore(limit)` in this process. N worker processes have N of them."""

    def __init__(self, limit: int) -> None:
        check_int("limit", limit, minimum=1)
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)

    async def acquire(self) -> str:
        await self._semaphore.acquire()
        return "local"

    async def release(self, token: str) -> None:
        self._semaphore.release()


async def _unless_unreachable(send: Callable[[], Awaitable[T]], what: str) -> T:
    """`send()`'s reply; sent again when Redis did not answer, `ATTEMPTS` times in all, then
    `LimiterUnavailable`. Every command the limiters send is safe to send twice: a slot taken
    again with the same token is one slot, a token taken twice is one start fewer, a release is a
    ZREM."""
    attempts_left = ATTEMPTS
    while True:
        try:
            return await send()
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            attempts_left -= 1
            if not attempts_left:
                raise LimiterUnavailable(
                    f"{what} is unavailable: Redis did not answer {ATTEMPTS} times "
                    f"({type(error).__name__}: {error})"
                ) from error
