"""Limits kept in Redis: a semaphore with expiring leases and a token bucket, shared by every
connection (as by every worker); clear errors for bad parameters, and for Redis going away or
hanging (the limiter raises, the service answers 503 for a limit or a job it cannot store)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from labsupport.distributed import (
    LimiterUnavailable,
    LocalSlots,
    RedisServer,
    ServiceConfig,
    SharedSemaphore,
    TokenBucket,
    WorkerTaggedServer,
    connect,
)
from labsupport.distributed.jobs import build_queue
from labsupport.distributed.service import create_app
from labsupport.distributed.shared_limit import ATTEMPTS
from labsupport.serving import asgi_client

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.needs("redis-server"),
]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


@pytest.fixture
async def clients(server: RedisServer) -> AsyncIterator[list[aioredis.Redis]]:
    """Four connections: four workers, as far as Redis can tell."""
    connections = [connect(server.url) for _ in range(4)]
    yield connections
    for connection in connections:
        await connection.aclose()


async def test_limit_holders_at_once_across_connections(clients: list[aioredis.Redis]) -> None:
    semaphores = [SharedSemaphore(c, "t", limit=5, lease=10.0) for c in clients]
    tokens = await asyncio.gather(*(semaphores[i % 4].try_acquire() for i in range(20)))
    held = [token for token in tokens if token is not None]
    assert len(held) == 5
    assert await semaphores[0].held() == 5
    await semaphores[1].release(held[0])  # any process may release a token it was given
    assert await semaphores[2].try_acquire() is not None
    assert await semaphores[3].try_acquire() is None


async def test_acquire_waits_for_a_release(clients: list[aioredis.Redis]) -> None:
    semaphore = SharedSemaphore(clients[0], "wait", limit=1, lease=10.0, poll=0.01)
    first = await semaphore.acquire()
    waiting = asyncio.create_task(
        SharedSemaphore(clients[1], "wait", limit=1, lease=10.0).acquire()
    )
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await semaphore.release(first)
    await asyncio.wait_for(waiting, 2)
    assert await semaphore.held() == 1


async def test_an_unreleased_lease_expires(clients: list[aioredis.Redis]) -> None:
    semaphore = SharedSemaphore(clients[0], "crash", limit=2, lease=0.3)
    await semaphore.acquire()
    await semaphore.acquire()  # both holders "crash": nobody releases
    assert await semaphore.try_acquire() is None
    await asyncio.sleep(0.4)
    assert await semaphore.held() == 0
    assert await semaphore.try_acquire() is not None


async def test_acquire_gives_up_after_wait(clients: list[aioredis.Redis]) -> None:
    semaphore = SharedSemaphore(clients[0], "full", limit=1, lease=10.0, poll=0.01, wait=0.1)
    await semaphore.acquire()
    with pytest.raises(TimeoutError, match="'full'"):
        await semaphore.acquire()


async def test_redis_gone_is_a_clear_error_not_a_hang(server: RedisServer) -> None:
    client = connect(server.url, timeout=0.5)
    semaphore = SharedSemaphore(client, "gone", limit=5, lease=10.0)
    bucket = TokenBucket(client, "gone", rate=5, capacity=1)
    await semaphore.acquire()
    server.kill()
    start = time.monotonic()
    with pytest.raises(LimiterUnavailable, match="Redis did not answer"):
        await semaphore.acquire()
    with pytest.raises(LimiterUnavailable, match="token bucket 'gone'"):
        await bucket.take()
    assert time.monotonic() - start < 5  # a bound on a hang, not a timing claim
    await client.aclose()


async def test_token_bucket_paces_starts_across_connections(
    clients: list[aioredis.Redis],
) -> None:
    buckets = [TokenBucket(c, "rpm", rate=20, capacity=2) for c in clients]
    starts: list[float] = []

    async def one(i: int) -> None:
        await buckets[i % 4].take()
        starts.append(time.monotonic())

    await asyncio.gather(*(one(i) for i in range(8)))
    # 2 at once from the full bucket, then one per 1/20 s: the last starts ≥ 6 × 0.05 s later.
    assert max(starts) - min(starts) >= 0.25


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """Redis stops answering but keeps its connections open (SIGSTOP): a hung server, or a
    network that drops packets. Only a socket timeout ends a wait for it."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


class LateRedis:
    """A stand-in for the client: its script calls time out `late` times, then answer 1 (a slot
    taken), as when this process's event loop was too busy to read a reply in time."""

    def __init__(self, late: int) -> None:
        self.late, self.calls = late, 0

    def register_script(self, script: str) -> object:
        async def run(**arguments: object) -> int:
            self.calls += 1
            if self.calls <= self.late:
                raise RedisTimeoutError("Timeout reading from 127.0.0.1")
            return 1

        return run


async def test_a_command_that_timed_out_is_sent_again_before_redis_counts_as_gone() -> None:
    answered = LateRedis(late=ATTEMPTS - 1)
    semaphore = SharedSemaphore(answered, "late", limit=5, lease=10.0)  # type: ignore[arg-type]
    assert await semaphore.try_acquire() is not None
    assert answered.calls == ATTEMPTS

    silent = LateRedis(late=ATTEMPTS)
    semaphore = SharedSemaphore(silent, "late", limit=5, lease=10.0)  # type: ignore[arg-type]
    with pytest.raises(LimiterUnavailable, match=rf"did not answer {ATTEMPTS} times \(Timeout"):
        await semaphore.try_acquire()
    assert silent.calls == ATTEMPTS


async def test_redis_that_stops_answering_is_a_clear_error_not_a_hang(
    server: RedisServer,
) -> None:
    client = connect(server.url, timeout=0.5)
    semaphore = SharedSemaphore(client, "frozen", limit=5, lease=10.0)
    await semaphore.acquire()  # connected
    with frozen(server), pytest.raises(LimiterUnavailable, match=r"\(TimeoutError: "):
        await asyncio.wait_for(semaphore.acquire(), 30)  # a bound on a hang, not a timing claim
    await client.aclose()


async def test_the_service_answers_503_when_redis_stops_answering(server: RedisServer) -> None:
    # An upstream nobody listens on: a limiter that let the call through would make it a 502.
    config = ServiceConfig(
        upstream_url="http://127.0.0.1:9/v1", limiter="shared", redis_url=server.url
    )
    async with asgi_client(create_app(config)) as client:
        with frozen(server):
            response = await asyncio.wait_for(client.post("/chat", json={"message": "hi"}), 30)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "limiter_unavailable"
    assert "Redis did not answer" in error["message"]


async def test_redis_that_stops_answering_during_a_call_is_a_503_not_a_hang(
    server: RedisServer,
) -> None:
    with WorkerTaggedServer(latency=0.5) as upstream:
        config = ServiceConfig(
            upstream_url=upstream.base_url, limiter="shared", limit=2, redis_url=server.url
        )
        async with asgi_client(create_app(config)) as client:
            call = asyncio.create_task(client.post("/chat", json={"message": "hi"}))
            while upstream.stats.in_flight < 1:  # the slot is taken, the call is running
                await asyncio.sleep(0.01)
            with frozen(server):  # ...and the release cannot reach Redis
                response = await asyncio.wait_for(call, 30)
        assert upstream.stats.count(200) == 1
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "limiter_unavailable"


async def test_the_service_answers_503_when_redis_stops_answering_an_enqueue(
    server: RedisServer, tmp_path: Path
) -> None:
    with WorkerTaggedServer(latency=0.0) as upstream:
        config = ServiceConfig(
            upstream_url=upstream.base_url, redis_url=server.url, audit_path=str(tmp_path / "a")
        )
        async with asgi_client(create_app(config)) as client:
            with frozen(server):  # the upstream answers; the job cannot be stored
                request = client.post("/queued", json={"message": "hi", "request_id": "r1"})
                response = await asyncio.wait_for(request, 30)
        assert upstream.stats.count(200) == 1
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "queue_unavailable"


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"limit": 0, "lease": 1.0}, ValueError, "limit must be an int ≥ 1; got 0"),
        ({"limit": True, "lease": 1.0}, TypeError, "limit must be an int; got True"),
        ({"limit": 5, "lease": 0}, ValueError, "lease must be a finite number of seconds "),
        ({"limit": 5, "lease": float("inf")}, ValueError, "lease must be a finite number"),
        ({"limit": 5, "lease": "3"}, TypeError, "lease must be a number of seconds "),
        ({"limit": 5, "lease": 1.0, "poll": -1}, ValueError, "poll must be a finite number"),
        ({"limit": 5, "lease": 1.0, "wait": 0}, ValueError, "wait must be a finite number"),
    ],
)
async def test_bad_semaphore_parameters_name_the_argument(
    clients: list[aioredis.Redis],
    arguments: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    """A wrong type is a TypeError, a value out of range a ValueError: one per mistake."""
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        SharedSemaphore(clients[0], "bad", **arguments)  # type: ignore[arg-type]


async def test_bad_bucket_and_local_parameters_name_the_argument(
    clients: list[aioredis.Redis],
) -> None:
    with pytest.raises(ValueError, match=r"^rate must"):
        TokenBucket(clients[0], "bad", rate=0, capacity=1)
    with pytest.raises(ValueError, match=r"^capacity must"):
        TokenBucket(clients[0], "bad", rate=1, capacity=0)
    with pytest.raises(ValueError, match=r"^name must"):
        SharedSemaphore(clients[0], " ", limit=1, lease=1.0)
    with pytest.raises(ValueError, match=r"^limit must"):
        LocalSlots(0)
    with pytest.raises(ValueError, match=r"^url must"):
        connect("http://127.0.0.1:6379")


async def test_local_slots_bound_one_process_only() -> None:
    slots = LocalSlots(2)
    tokens = [await slots.acquire(), await slots.acquire()]
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await slots.release(tokens[0])
    await asyncio.wait_for(waiting, 1)


async def test_a_request_enqueued_twice_while_its_job_waits_is_one_job(server: RedisServer) -> None:
    queue = build_queue(server.url, timeout=1.0)  # no queue worker runs: the jobs wait
    async with queue.worker:
        await queue.enqueue("r1", "hi", "hello")
        await queue.enqueue("r1", "hi", "hello")  # the request id is the job id: stored once
        await queue.enqueue("r2", "hi", "hello")
        assert await queue.worker.queue_size() == 2
