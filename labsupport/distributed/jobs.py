"""Durable post-request work: a streaq job queue on Redis, and its worker process.

A `BackgroundTasks` task lives in the memory of the process that answered: kill that process
and the task is gone, without a trace. A job queue keeps the work in Redis instead, and a
separate queue worker runs it. What streaq (7.2, on Redis streams) guarantees:

* **stored before it returns**: `await job` stores the job's data and adds it to a Redis stream;
  the process that enqueued it may die the next moment;
* **at least once**: a queue worker takes a job as a pending entry of the stream's consumer
  group, and acknowledges it only when the job has ended. While the job runs, its worker renews
  that claim every 0.9 × `idle_timeout`; a claim left unrenewed for `idle_timeout` (its worker
  was killed, or lost Redis) is taken by the next worker that reads the stream, which runs the
  job again, counting its tries up to `max_tries`. So a running job is not started a second
  time while its worker lives, and a killed worker's jobs are not lost, but a job can run
  **more than once**.

What the lab adds: `idle_timeout` of `IDLE_TIMEOUT` (2 s, streaq's default is 60 s), so a killed
worker's jobs run again within seconds; the request id as the job id, so the same request
enqueued twice while its job waits or runs is stored once (streaq stores a job's data only if
its id is new); a write that fails (the file locked past its timeout) asks streaq to run the
job again (`StreaqRetry`) instead of recording it failed, which would lose its row; and an
idempotent job: the audit row's primary key is the request id, so a
second run's insert does nothing. Each run is also logged in `job_runs`, for the lesson to count.

Run a queue worker (what `QueueWorker` in `workers.py` starts):

    python -m labsupport.distributed.jobs    # reads LAB_JOBS_REDIS_URL and LAB_JOBS_AUDIT_PATH
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import aiosqlite
import coredis.exceptions
from streaq import StreaqRetry, Worker
from streaq.task import AsyncRegisteredTask

from ._orphans import die_with_parent

__all__ = [
    "AUDIT_SCHEMA",
    "IDLE_TIMEOUT",
    "JOB_TIMEOUT",
    "AuditQueue",
    "QueueUnavailable",
    "audit_counts",
    "build_queue",
    "insert_audit_row",
    "main",
    "ready_key",
    "write_audit",
]

IDLE_TIMEOUT: Final = 2.0
"""Seconds a job's claim may go unrenewed before another queue worker takes the job (streaq's
`idle_timeout`): after a kill -9, its jobs run again a few seconds later."""

JOB_TIMEOUT: Final = 10.0
"""Seconds a job may run: then streaq cancels it and records it failed (not retried)."""

MAX_TRIES: Final = 5
"""Runs of one job, a killed worker's included, before streaq gives up on it."""

QUEUE_NAME: Final = "audit"

PREPARE_ATTEMPTS: Final = 5
"""Tries at making the audit file's tables, another process's schema change in the way."""

AFTER_WRITE_SECONDS: Final = 3.0
"""What the job does after its write (say, notify someone): a kill in this gap is the case that
makes a non-idempotent job write twice. Long enough that 07's kill, once the 5 jobs have
written, finds all 5 in it on a loaded machine (at 1 s, 4 had ended once: 6 runs, not 10)."""

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


class QueueUnavailable(Exception):
    """Redis did not store the job (refused, or no answer within the client's timeout)."""


@dataclass(frozen=True)
class AuditQueue:
    """A streaq `Worker` (the queue: it enqueues, and in a queue worker's process it runs) and
    its one task, the audit write. Enqueue inside `async with queue.worker:`."""

    worker: Worker[None]
    task: AsyncRegisteredTask[[str, str, str], str]

    async def enqueue(self, request_id: str, prompt: str, reply: str) -> None:
        """Store the audit job of one request, with the request id as the job id."""
        job = self.task.enqueue(request_id, prompt, reply)
        job.id = request_id  # a second enqueue of this request, while its job exists, is a no-op
        try:
            await job
        except (coredis.exceptions.ConnectionError, TimeoutError) as error:
            # coredis raises the builtin TimeoutError, which the service reads as "no slot".
            raise QueueUnavailable(f"{type(error).__name__}: {error}") from error


def ready_key(worker_id: str) -> str:
    """The key a queue worker sets once it has started (the lab waits for it)."""
    return f"lab:queue-worker:{worker_id}"


def build_queue(
    redis_url: str, audit_path: str = "", *, worker_id: str = "", timeout: float | None = None
) -> AuditQueue:
    """The audit queue on the Redis at `redis_url`. A queue worker runs its jobs against the
    SQLite file `audit_path`, up to 10 at a time; `timeout` bounds each Redis command of a
    client that only enqueues (a worker blocks on the stream for `IDLE_TIMEOUT` at a time)."""
    worker_id = worker_id or uuid.uuid4().hex[:8]
    redis_kwargs = {}
    if timeout is not None:
        redis_kwargs = {"stream_timeout": timeout, "connect_timeout": timeout}

    @asynccontextmanager
    async def started() -> AsyncIterator[None]:
        # Runs as the worker starts, connected: tell whoever waits for it.
        await worker.redis.set(ready_key(worker_id), "started", px=60_000)
        yield

    worker: Worker[None] = Worker(
        redis_url=redis_url,
        redis_kwargs=redis_kwargs,
        queue_name=QUEUE_NAME,
        concurrency=10,
        idle_timeout=IDLE_TIMEOUT,
        lifespan=started,
        id=worker_id,
    )

    @worker.task(name="write_audit", timeout=timedelta(seconds=JOB_TIMEOUT), max_tries=MAX_TRIES)
    async def audit_job(request_id: str, prompt: str, reply: str) -> str:
        try:
            return await write_audit(audit_path, audit_job.context.tries, request_id, prompt, reply)
        except sqlite3.OperationalError as error:  # say, locked past its timeout: not lost,
            raise StreaqRetry(delay=1) from error  # run again (up to MAX_TRIES runs)

    return AuditQueue(worker, audit_job)


_prepared: set[str] = set()
"""Audit files whose tables this process has made sure of."""


@asynccontextmanager
async def _open(path: str) -> AsyncIterator[aiosqlite.Connection]:
    async with aiosqlite.connect(path, timeout=10) as db:
        if path not in _prepared:  # two first uses at once both prepare: it is idempotent
            await _prepare(db)
            _prepared.add(path)
        yield db


async def _prepare(db: aiosqlite.Connection) -> None:
    """WAL mode (several processes write to the file) and the tables, once per process: run by
    every connection, this DDL made concurrent jobs fail at once with "database is locked"
    (SQLite does not wait for its busy timeout there)."""
    for attempt in range(PREPARE_ATTEMPTS):
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.executescript(AUDIT_SCHEMA)
            return
        except sqlite3.OperationalError:
            if attempt == PREPARE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


async def insert_audit_row(path: str, request_id: str, prompt: str, reply: str) -> None:
    """One audit row, keyed by the request id: inserting it twice leaves one row."""
    async with _open(path) as db:
        await db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
            (request_id, prompt, reply, time.time()),
        )
        await db.commit()


async def write_audit(path: str, job_try: int, request_id: str, prompt: str, reply: str) -> str:
    """The queued audit write. Idempotent: its effect is the same however often it runs."""
    async with _open(path) as db:
        await db.execute(
            "INSERT INTO job_runs VALUES (?, ?, ?, ?)",
            (request_id, job_try, os.getpid(), time.time()),
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


def main() -> None:
    """Run a queue worker until SIGTERM/SIGINT, configured from the environment."""
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    queue = build_queue(
        os.environ["LAB_JOBS_REDIS_URL"],
        os.environ["LAB_JOBS_AUDIT_PATH"],
        worker_id=os.environ.get("LAB_JOBS_WORKER_ID", ""),
    )
    queue.worker.run_sync()


if __name__ == "__main__":
    main()
