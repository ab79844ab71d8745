"""Durable post-request work: an arq job queue on Redis, and its worker process.

A `BackgroundTasks` task lives in the memory of the process that answered: kill that process
and the task is gone, without a trace. A job queue keeps the work in Redis instead, and a
separate queue worker runs it. arq marks a job "in progress" with a key that expires (here the
job's timeout + 1 s); if its worker dies, the mark expires and a worker runs the job again. So a
job can run **more than once**, and the job must be idempotent: here the audit row's primary key
is the request id, and a second run's insert does nothing.

Run a queue worker (what `QueueWorker` in `workers.py` starts):

    python -m labsupport.distributed.jobs    # reads LAB_JOBS_REDIS_URL and LAB_JOBS_AUDIT_PATH
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import aiosqlite
from arq import Worker, func
from arq.connections import ArqRedis, RedisSettings

from ._orphans import die_with_parent
from .shared_limit import SOCKET_TIMEOUT

__all__ = [
    "AUDIT_SCHEMA",
    "IN_PROGRESS_MARGIN",
    "JOB_TIMEOUT",
    "audit_counts",
    "connect_queue",
    "insert_audit_row",
    "main",
    "write_audit",
]

JOB_TIMEOUT: Final = 2.0
"""Seconds a job may run: then arq cancels it, and the job fails (a timeout is not retried)."""

IN_PROGRESS_MARGIN: Final = 1.0
"""How much longer than `JOB_TIMEOUT` a job's in-progress mark lasts (arq's own margin is 10 s;
see `build_worker`): after a worker is killed, its jobs run again 3 s after they started."""

AFTER_WRITE_SECONDS: Final = 1.0
"""What the job does after its write (say, notify someone): a kill in this gap is the case that
makes a non-idempotent job write twice."""

AUDIT_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit (
    request_id TEXT PRIMARY KEY,  -- the idempotency key: one row per request, however many runs
    prompt TEXT, reply TEXT, at REAL
);
CREATE TABLE IF NOT EXISTS naive_audit (  -- the same write without a key, for comparison
    request_id TEXT, prompt TEXT, reply TEXT, at REAL
);
CREATE TABLE IF NOT EXISTS job_runs (  -- one row per time a job started
    request_id TEXT, job_try INTEGER, pid INTEGER, at REAL
);
"""


async def connect_queue(redis_url: str) -> ArqRedis:
    """A connection that can enqueue jobs (`await queue.enqueue_job(...)`). Like the limiter's
    client, its commands fail within `SOCKET_TIMEOUT` when Redis stops answering: arq's own
    `create_pool` sets only a connect timeout, so an enqueue to a hung Redis waited for good."""
    queue: ArqRedis = ArqRedis.from_url(
        redis_url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )
    try:
        await queue.ping()  # Redis down at start-up: say so now, as create_pool did
    except BaseException:
        await queue.aclose()
        raise
    return queue


@asynccontextmanager
async def _open(path: str) -> AsyncIterator[aiosqlite.Connection]:
    async with aiosqlite.connect(path, timeout=10) as db:
        await db.execute("PRAGMA journal_mode=WAL")  # several processes write to it
        await db.executescript(AUDIT_SCHEMA)
        yield db


async def insert_audit_row(path: str, request_id: str, prompt: str, reply: str) -> None:
    """One audit row, keyed by the request id: inserting it twice leaves one row."""
    async with _open(path) as db:
        await db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
            (request_id, prompt, reply, time.time()),
        )
        await db.commit()


async def write_audit(ctx: dict[str, Any], request_id: str, prompt: str, reply: str) -> str:
    """The queued audit write. Idempotent: its effect is the same however often it runs."""
    path = ctx["audit_path"]
    async with _open(path) as db:
        await db.execute(
            "INSERT INTO job_runs VALUES (?, ?, ?, ?)",
            (request_id, ctx["job_try"], os.getpid(), time.time()),
        )
        await db.execute(
            "INSERT INTO naive_audit VALUES (?, ?, ?, ?)", (request_id, prompt, reply, time.time())
        )
        await db.commit()
    await insert_audit_row(path, request_id, prompt, reply)
    await asyncio.sleep(AFTER_WRITE_SECONDS)
    return request_id


async def audit_counts(path: str) -> dict[str, int]:
    """What the audit file holds: rows, distinct requests, job runs, naive rows."""
    async with _open(path) as db:
        queries = {
            "audit rows": "SELECT COUNT(*) FROM audit",
            "naive rows": "SELECT COUNT(*) FROM naive_audit",
            "naive duplicates": "SELECT COUNT(*) - COUNT(DISTINCT request_id) FROM naive_audit",
            "job runs": "SELECT COUNT(*) FROM job_runs",
            "jobs run twice or more": (
                "SELECT COUNT(*) FROM (SELECT request_id FROM job_runs GROUP BY request_id "
                "HAVING COUNT(*) > 1)"
            ),
        }
        counts = {}
        for name, query in queries.items():
            rows = list(await db.execute_fetchall(query))
            counts[name] = int(rows[0][0])
        return counts


def build_worker(redis_url: str, audit_path: str) -> Worker:
    """The queue worker: runs `write_audit` jobs from Redis, up to 10 at a time."""
    worker = Worker(
        functions=[func(write_audit, timeout=JOB_TIMEOUT, max_tries=5)],
        redis_settings=RedisSettings.from_dsn(redis_url),
        ctx={"audit_path": audit_path},
        poll_delay=0.1,
        keep_result=60,
        health_check_interval=1,
    )
    # arq sets a job's in-progress mark once, as the job starts, and never renews it; while the
    # mark exists no worker starts the job. arq makes it last the longest job timeout + 10 s
    # (it has no setting for that): a job still running when its mark expired would be started
    # again beside itself. Here it cannot be still running: its own timeout cancels it
    # JOB_TIMEOUT after it starts, and the margin covers arq's Redis round trips before that
    # clock starts and after it stops (removing the job from the queue). Were a slow run ever
    # doubled, it would do no harm: the job is idempotent (the audit row's key is the request
    # id). So a killed worker's jobs run again 3 s after they started instead of 12 s.
    worker.in_progress_timeout_s = JOB_TIMEOUT + IN_PROGRESS_MARGIN
    return worker


def main() -> None:
    """Run a queue worker until SIGTERM/SIGINT (what arq's CLI does, configured from env)."""
    die_with_parent()
    worker = build_worker(os.environ["LAB_JOBS_REDIS_URL"], os.environ["LAB_JOBS_AUDIT_PATH"])
    worker.run()


if __name__ == "__main__":
    main()
