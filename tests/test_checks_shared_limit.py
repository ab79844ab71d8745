"""The notebook 07 checker: a limiter shared by worker processes through Redis. Each answer
below is the source of a notebook cell; the checker runs it in this process and in 3 uvicorn
workers, and must reach the expected verdict and cause."""

from __future__ import annotations

import asyncio
import importlib.util
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from mutation.engine import Mutant, judge
from mutation.ex07_shared_limit import OPERATORS, source_mutants

from labsupport.checks import check_shared_limit, shared_limit

pytestmark = [
    pytest.mark.needs("redis-server"),
    pytest.mark.slow,  # each answer also runs in 3 uvicorn worker processes
    pytest.mark.timeout(240),
]

# ------------------------------------------------------------------------- right answers

SET_NX_PX = """
import asyncio
import uuid

RELEASE_IF_MINE = '''
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
'''


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis = redis
        self.keys = [f"slots:{name}:{i}" for i in range(limit)]
        self.lease_ms = int(lease * 1000)
        self.release_if_mine = redis.register_script(RELEASE_IF_MINE)

    async def acquire(self):
        token = uuid.uuid4().hex
        while True:
            for key in self.keys:
                if await self.redis.set(key, token, nx=True, px=self.lease_ms):
                    return f"{key} {token}"
            await asyncio.sleep(0.02)

    async def release(self, held):
        key, token = held.split(" ")
        await self.release_if_mine(keys=[key], args=[token])
"""

SORTED_SET_LUA = """
import asyncio
import uuid

ACQUIRE = '''
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[3])
    return 1
end
return 0
'''


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis, self.key, self.limit = redis, f"leases:{name}", limit
        self.lease_ms = int(lease * 1000)
        self.take = redis.register_script(ACQUIRE)

    async def acquire(self):
        token = uuid.uuid4().hex
        while not await self.take(keys=[self.key], args=[self.limit, self.lease_ms, token]):
            await asyncio.sleep(0.02)
        return token

    async def release(self, token):
        await self.redis.zrem(self.key, token)
"""

LABSUPPORT_SEMAPHORE = """
from labsupport.distributed import SharedSemaphore


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.slots = SharedSemaphore(redis, name, limit=limit, lease=lease)

    async def acquire(self):
        return await self.slots.acquire()

    async def release(self, token):
        await self.slots.release(token)
"""

# ------------------------------------------------------------------------- wrong answers

PER_PROCESS = """
import asyncio


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.semaphore = asyncio.Semaphore(limit)

    async def acquire(self):
        await self.semaphore.acquire()
        return "local"

    async def release(self, token):
        self.semaphore.release()
"""

PER_PROCESS_TWO_EACH = PER_PROCESS.replace("asyncio.Semaphore(limit)", "asyncio.Semaphore(2)")

CHECK_THEN_SET = """
import asyncio


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis, self.key, self.limit = redis, f"count:{name}", limit

    async def acquire(self):
        while True:
            if int(await self.redis.get(self.key) or 0) < self.limit:  # check...
                await self.redis.incr(self.key)  # ...then set: two steps
                return "slot"
            await asyncio.sleep(0.02)

    async def release(self, token):
        await self.redis.decr(self.key)
"""

COUNTER_WITHOUT_EXPIRY = """
import asyncio


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis, self.key, self.limit = redis, f"count:{name}", limit

    async def acquire(self):
        while True:
            if await self.redis.incr(self.key) <= self.limit:  # atomic, but never expires
                return "slot"
            await self.redis.decr(self.key)
            await asyncio.sleep(0.02)

    async def release(self, token):
        await self.redis.decr(self.key)
"""

SORTED_SET_NEVER_PRUNED = SORTED_SET_LUA.replace(
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)\n", ""
)

RELEASE_FORGOTTEN = SET_NX_PX.replace(
    '        key, token = held.split(" ")\n        await self.release_if_mine(keys=[key], '
    "args=[token])",
    "        pass  # the lease will expire anyway",
)

ONE_LOCK = """
import asyncio
import uuid


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis, self.key, self.lease_ms = redis, f"lock:{name}", int(lease * 1000)

    async def acquire(self):
        token = uuid.uuid4().hex
        while not await self.redis.set(self.key, token, nx=True, px=self.lease_ms):
            await asyncio.sleep(0.02)
        return token

    async def release(self, token):
        await self.redis.delete(self.key)
"""

NEVER_WAITS = SET_NX_PX.replace(
    "            await asyncio.sleep(0.02)", "            return 'none free: go ahead anyway'"
)

RAISES = SET_NX_PX.replace("nx=True, px=self.lease_ms", "nx=True, px=lease_ms")

SYNC_METHODS = """
class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis = redis

    def acquire(self):  # not async: the service would `await` a str
        return "slot"

    async def release(self, token):
        pass
"""

# Written as new learners write them, none of them the notebook's solution.

LUA_ACQUIRE_AND_RELEASE = """
import asyncio
import secrets

TAKE = '''
for i = 1, tonumber(ARGV[1]) do
    local key = KEYS[1] .. ':' .. i
    if redis.call('SET', key, ARGV[2], 'NX', 'PX', ARGV[3]) then return key end
end
return false
'''
GIVE_BACK = '''
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
'''


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis, self.prefix, self.limit = redis, f"slots:{name}", limit
        self.lease_ms = max(1, int(lease * 1000))
        self.take = redis.register_script(TAKE)
        self.give_back = redis.register_script(GIVE_BACK)

    async def acquire(self):
        token = secrets.token_hex(8)
        delay = 0.005
        while True:
            key = await self.take(keys=[self.prefix], args=[self.limit, token, self.lease_ms])
            if key:
                return (key, token)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)  # back off, but keep asking

    async def release(self, held):
        key, token = held
        await self.give_back(keys=[key], args=[token])
"""

WATCH_MULTI_RELEASE = """
import asyncio
import random
import uuid

import redis.exceptions


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis = redis
        self.keys = [f"slots:{name}:{i}" for i in range(limit)]
        self.lease_ms = round(lease * 1000)

    async def acquire(self):
        me = str(uuid.uuid4())
        while True:
            for key in random.sample(self.keys, len(self.keys)):
                if await self.redis.set(key, me, px=self.lease_ms, nx=True):
                    return key + "|" + me
            await asyncio.sleep(0.01)

    async def release(self, token):
        key, me = token.split("|")
        async with self.redis.pipeline() as pipe:
            try:
                await pipe.watch(key)  # the delete fails if the key changes meanwhile
                if await pipe.get(key) == me:
                    pipe.multi()
                    pipe.delete(key)
                    await pipe.execute()
            except redis.exceptions.WatchError:
                pass
"""

PLAIN_DEL = SET_NX_PX.replace(
    "        await self.release_if_mine(keys=[key], args=[token])",
    "        await self.redis.delete(key)  # it is my slot, surely",
)

GET_THEN_DEL = SET_NX_PX.replace(
    "        await self.release_if_mine(keys=[key], args=[token])",
    "        if await self.redis.get(key) == token:\n            await self.redis.delete(key)",
)

SAME_VALUE_IN_EVERY_SLOT = SET_NX_PX.replace(
    "if await self.redis.set(key, token, nx=True, px=self.lease_ms):",
    'if await self.redis.set(key, "taken", nx=True, px=self.lease_ms):',
).replace("args=[token])", 'args=["taken"])')

CONSTANT_MEMBER = SORTED_SET_LUA.replace("token = uuid.uuid4().hex", 'token = "worker"')

SETNX_THEN_PEXPIRE = SET_NX_PX.replace(
    "                if await self.redis.set(key, token, nx=True, px=self.lease_ms):\n",
    "                if await self.redis.setnx(key, token):\n"
    "                    await self.redis.pexpire(key, self.lease_ms)\n",
)

TIME_SLEEP_POLLING = SET_NX_PX.replace("import asyncio\n", "import asyncio\nimport time\n").replace(
    "            await asyncio.sleep(0.02)", "            time.sleep(0.02)"
)

THREADING_SEMAPHORE = """
import threading


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.slots = threading.BoundedSemaphore(limit)

    async def acquire(self):
        self.slots.acquire()
        return "slot"

    async def release(self, token):
        self.slots.release()
"""

PX_IN_SECONDS = SET_NX_PX.replace("self.lease_ms = int(lease * 1000)", "self.lease_ms = int(lease)")

EX_IN_MILLISECONDS = SET_NX_PX.replace(
    "nx=True, px=self.lease_ms", "nx=True, ex=max(1, self.lease_ms)"
)

COUNTER_WITH_EXPIRY = """
import asyncio
import uuid


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis, self.key, self.limit = redis, f"in_flight:{name}", limit
        self.lease_ms = int(lease * 1000)

    async def acquire(self):
        while True:
            count = await self.redis.incr(self.key)
            await self.redis.pexpire(self.key, self.lease_ms)  # a crash cannot keep it
            if count <= self.limit:
                return uuid.uuid4().hex
            await self.redis.decr(self.key)
            await asyncio.sleep(0.02)

    async def release(self, token):
        await self.redis.decr(self.key)
"""

ZCARD_THEN_ZADD = """
import asyncio
import time
import uuid


class SlotLeases:
    def __init__(self, redis, name, limit, lease):
        self.redis, self.key, self.limit, self.lease = redis, f"leases:{name}", limit, lease

    async def acquire(self):
        token = uuid.uuid4().hex
        while True:
            now = time.time()
            await self.redis.zremrangebyscore(self.key, "-inf", now)
            if await self.redis.zcard(self.key) < self.limit:  # count...
                await asyncio.sleep(0.01)  # (logging, metrics...)
                await self.redis.zadd(self.key, {token: now + self.lease})  # ...then add
                return token
            await asyncio.sleep(0.02)

    async def release(self, token):
        await self.redis.zrem(self.key, token)
"""

CORPUS: dict[str, tuple[str, bool, str]] = {
    # name: (source, passes, cause)
    "SET NX PX per slot, compare-and-delete release": (SET_NX_PX, True, "ok"),
    "a sorted set of leases in one Lua script": (SORTED_SET_LUA, True, "ok"),
    "labsupport's SharedSemaphore, wrapped": (LABSUPPORT_SEMAPHORE, True, "ok"),
    "one Lua script to take, one to give back, backoff": (LUA_ACQUIRE_AND_RELEASE, True, "ok"),
    "random slot order, WATCH/MULTI release": (WATCH_MULTI_RELEASE, True, "ok"),
    "asyncio.Semaphore(limit) per process": (PER_PROCESS, False, "per_process"),
    "asyncio.Semaphore(2) per process": (PER_PROCESS_TWO_EACH, False, "too_few_slots"),
    "GET then INCR": (CHECK_THEN_SET, False, "same_token"),
    "ZCARD then ZADD": (ZCARD_THEN_ZADD, False, "non_atomic"),
    "INCR/DECR counter, no expiry": (COUNTER_WITHOUT_EXPIRY, False, "same_token"),
    "INCR counter with PEXPIRE on the whole counter": (
        COUNTER_WITH_EXPIRY,
        False,
        "released_others",
    ),
    "leases never pruned": (SORTED_SET_NEVER_PRUNED, False, "no_expiry"),
    "release forgotten": (RELEASE_FORGOTTEN, False, "not_released"),
    "one lock for all": (ONE_LOCK, False, "too_few_slots"),
    "acquire that never waits": (NEVER_WAITS, False, "over_limit"),
    "acquire that raises": (RAISES, False, "error"),
    "acquire is not async": (SYNC_METHODS, False, "not_a_limiter"),
    "release by plain DEL": (PLAIN_DEL, False, "released_others"),
    "GET then DEL": (GET_THEN_DEL, False, "non_atomic_release"),
    "the same value in every slot": (SAME_VALUE_IN_EVERY_SLOT, False, "released_others"),
    "a constant member in the sorted set": (CONSTANT_MEMBER, False, "same_token"),
    "SETNX then PEXPIRE": (SETNX_THEN_PEXPIRE, False, "set_then_expire"),
    "time.sleep between polls": (TIME_SLEEP_POLLING, False, "blocking_wait"),
    "threading.BoundedSemaphore": (THREADING_SEMAPHORE, False, "threading_primitive"),
    "px=int(lease)": (PX_IN_SECONDS, False, "lease_units"),
    "ex in milliseconds": (EX_IN_MILLISECONDS, False, "lease_units"),
}
# What the verdict must say, where its numbers are exact.
EXPLAINED = {
    "asyncio.Semaphore(limit) per process": (
        "together the 3 workers had 15 calls in flight, not 5",
        "The workers sent no command to Redis",
    ),
    # Too few for one process already: the in-process probe says so before any worker starts.
    "asyncio.Semaphore(2) per process": ("only 2 holders at once",),
    "SET NX PX per slot, compare-and-delete release": ("at most 5 calls in flight", "0 × 429"),
    "one lock for all": ("only 1 holder at once",),
    "px=int(lease)": ("milliseconds", "int(lease * 1000)"),
    "ex in milliseconds": ("seconds",),
    "GET then DEL": ("GET then DELETE", "Lua script"),
    "SETNX then PEXPIRE": ("SETNX then PEXPIRE", "nx=True, px=lease_ms"),
    "release by plain DEL": ("only if it still holds that token",),
    "time.sleep between polls": ("await asyncio.sleep",),
    "threading.BoundedSemaphore": ("threading", "asyncio.Semaphore"),
}
WRONG = sum(not passes for _, passes, _ in CORPUS.values())
assert WRONG >= 18 and len(CORPUS) - WRONG >= 5


def load(source: str, folder: Path) -> type:
    """The SlotLeases class of `source`, loaded from a file as a notebook cell would be."""
    path = folder / "cell.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(f"cell_{abs(hash(source))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found: type = module.SlotLeases
    return found


def lab_children() -> list[str]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "redis-server" in command or "uvicorn" in command:
            found.append(f"{child.pid} {command[:80]}")
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    assert lab_children() == []


@pytest.mark.parametrize("name", list(CORPUS))
def test_corpus(name: str, tmp_path: Path) -> None:
    source, passes, cause = CORPUS[name]
    result = asyncio.run(check_shared_limit(load(source, tmp_path)))
    assert (result.passed, result.cause) == (passes, cause), str(result)
    assert str(result).startswith("✅ PASSED" if passes else "❌ NOT YET")
    if not passes:
        assert result.hint
    for expected in EXPLAINED.get(name, ()):
        assert expected in str(result)


@pytest.mark.parametrize("bad", [0, 1, 11, True, 2.5])
def test_bad_limit_is_refused(bad: Any, tmp_path: Path) -> None:
    result = asyncio.run(check_shared_limit(load(SET_NX_PX, tmp_path), limit=bad))
    assert result.cause == "bad_input" and "limit must be an int" in result.summary


def test_not_a_class_is_a_verdict_not_a_crash() -> None:
    result = asyncio.run(check_shared_limit(lambda: None))
    assert (result.passed, result.cause) == (False, "not_a_limiter")


class KeepsPolling:
    """An acquire() that never gets a slot and loses the first `lost` cancels, as a polling
    loop does when a library's own timeout inside it turns a cancel into an error it retries."""

    def __init__(self, lost: int) -> None:
        self.lost, self.cancels, self.polls = lost, 0, 0

    async def acquire(self) -> str:
        while True:
            try:
                self.polls += 1
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                self.cancels += 1
                if self.cancels > self.lost:
                    raise


@pytest.mark.parametrize("lost", [0, 1, 3])
def test_an_acquire_that_loses_cancels_is_stopped_not_waited_for(lost: int) -> None:
    limiter = KeepsPolling(lost)

    async def attempt() -> tuple[bool, bool]:
        in_time, task = await shared_limit._within(limiter.acquire(), 0.05)
        return in_time, task.cancelled()

    assert asyncio.run(attempt()) == (False, True)
    assert limiter.cancels == lost + 1


def test_an_acquire_that_never_stops_is_left_running_and_the_check_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shared_limit, "CANCEL_GRACE", 0.02)
    limiter = KeepsPolling(lost=10**9)

    async def attempt() -> tuple[bool, bool, int]:
        in_time, task = await shared_limit._within(limiter.acquire(), 0.05)
        running = task in shared_limit._still_running
        limiter.lost = 0  # let it end, so the loop closes cleanly
        task.cancel()
        await asyncio.wait([task])
        return in_time, running, limiter.cancels

    assert asyncio.run(attempt()) == (False, True, shared_limit.CANCEL_ATTEMPTS + 1)


# -- mutants: right answers rewritten into the lesson's mistakes (tests/mutation) ---------------


def notebook_solution() -> str:
    """The solution cell of course/07 that defines SlotLeases (its source, as the learner's)."""
    text = (Path(__file__).parent.parent / "course" / "07_beyond_one_process.py").read_text()
    cells = text.split("\n# %%")
    solution = next(c for c in cells if 'tags=["solution"]' in c and "class SlotLeases" in c)
    return solution.split("\n", 1)[1]


MUTATED = {
    "notebook_solution": notebook_solution(),
    "lua_take_and_give_back": LUA_ACQUIRE_AND_RELEASE,
}


@pytest.mark.parametrize(
    "mutant",
    [
        param
        for name, source in MUTATED.items()
        for param in source_mutants(name, source, OPERATORS)
    ],
)
def test_the_mutant_is_refused_with_its_cause(
    mutant: Mutant, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    judge(
        mutant,
        request.node,
        lambda build: asyncio.run(check_shared_limit(load(build(), tmp_path))),
    )
