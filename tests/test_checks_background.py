"""The notebook 04 checker judges every answer of the corpus
(tests/corpus/ex04_background_audit.py) with its expected verdict and cause, including one
sqlite3 connection shared by `def` tasks, found by the threads that used it."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio.to_thread
import pytest
from corpus import Answer, answers
from corpus import ex04_background_audit as corpus
from fastapi import FastAPI, Request
from mutation import ex04_background as mutants04
from mutation.engine import Mutant, judge, mutants
from openai import AsyncOpenAI

from labsupport import serving
from labsupport.checks import CheckResult, background, check_background_audit
from labsupport.checks._sqlite import sqlite_threads
from labsupport.checks.background import CAUSES

pytestmark = pytest.mark.usefixtures("offline_lab")

N = 5


@pytest.fixture
def lab_latency() -> float:
    return 0.02


def check(app: FastAPI, db_path: str) -> CheckResult:
    return asyncio.run(
        check_background_audit(
            app, lambda: corpus.count_rows(db_path), audit_seconds=corpus.AUDIT_SECONDS, n=N
        )
    )


@pytest.mark.corpus
@pytest.mark.parametrize("answer", answers(corpus))
def test_the_corpus_answer_gets_its_verdict_and_cause(answer: Answer, tmp_path: Path) -> None:
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)
    result = check(answer.build(db_path), db_path)
    assert (result.passed, result.cause) == (answer.passed, answer.cause), str(result)
    assert result.cause in CAUSES
    assert str(result).startswith("✅ PASSED — " if answer.passed else "❌ NOT YET — ")
    if not answer.passed:
        assert result.hint, "a failed check says what to do"


def test_the_corpus_is_big_enough() -> None:
    verdicts = [param.values[0].passed for param in answers(corpus)]
    assert verdicts.count(False) >= 20 and verdicts.count(True) >= 8


def test_the_evidence_counts_rows_and_the_probe(tmp_path: Path) -> None:
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)
    corpus.count_rows(db_path)
    text = str(check(corpus.answer_add_task_with_the_lifespan_connection(db_path), db_path))
    assert "Audit rows written: 6 for 6 requests." in text
    assert "its audit row was not yet written" in text
    assert "for this check's 6 requests" in text
    inline = str(check(corpus.answer_starter_inline(db_path), db_path))
    assert "its audit row was already written" in inline


def test_the_shared_connection_names_its_threads(tmp_path: Path) -> None:
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)
    result = check(corpus.answer_shared_sqlite3_connection(db_path), db_path)
    assert "One sqlite3 connection ran statements from" in str(result)
    assert "aiosqlite" in (result.hint or "")


def test_bad_arguments() -> None:
    app = FastAPI()
    for args, kwargs, words in [
        ((app, 3), {"audit_seconds": 0.1}, "a function"),
        ((app, lambda: 0), {"audit_seconds": 0}, "audit_seconds must be"),
        ((app, lambda: 0), {"audit_seconds": 0.1, "n": 1}, "n must be an int ≥ 2"),
        ((app, lambda: "many"), {"audit_seconds": 0.1}, "count_rows() must return an int"),
    ]:
        result = asyncio.run(check_background_audit(*args, **kwargs))  # type: ignore[arg-type]
        assert result.cause == "bad_input" and words in result.summary, result


def test_the_thread_watch_sees_every_worker_thread_and_puts_no_callback_into_sqlite(
    tmp_path: Path,
) -> None:
    """Both ways to a worker thread are watched: anyio's, which Starlette's `def` tasks take, and
    the executor's, under `asyncio.to_thread` (two pools, so two threads). And SQLite gets no
    callback from the watch: the connection's own trace callback is still the one it had.
    (SQLite runs a trace callback holding the connection's lock; with a second thread binding
    parameters on the connection meanwhile, the two waited for each other for good, a frozen
    process. So the two uses here take turns.)"""
    connection = sqlite3.connect(tmp_path / "shared.sqlite3", check_same_thread=False)
    traced: list[str] = []
    connection.set_trace_callback(traced.append)

    def write(sql: str) -> None:
        connection.execute(sql, ())

    async def scenario() -> int:
        with sqlite_threads() as seen:
            await anyio.to_thread.run_sync(write, "SELECT 1")
            await asyncio.to_thread(write, "SELECT 2")
        return seen.most_threads

    try:
        assert asyncio.run(scenario()) == 2
    finally:
        connection.close()
    assert traced == ["SELECT 1", "SELECT 2"]


# The key words of each weak case's fix (issue 21): its own cause, and a hint that says what to
# do about it, not "a bare asyncio.create_task is not awaited".
HINTS = {
    "async_task_awaits_then_writes_with_sqlite3": ("aiosqlite", "plain `def`"),
    "add_task_with_a_lambda": ("add_task(write, db, row)", "lambda"),
    "unannotated_background_tasks_default": ("background_tasks: BackgroundTasks",),
    "queue_writer_cancelled_without_draining": ("await queue.join()",),
}


@pytest.mark.parametrize("name", list(HINTS))
def test_the_weak_cases_get_the_fix_in_their_hint(name: str, tmp_path: Path) -> None:
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)
    result = check(getattr(corpus, f"answer_{name}")(db_path), db_path)
    assert "create_task" not in (result.hint or ""), str(result)
    for words in HINTS[name]:
        assert words in (result.hint or ""), str(result)


# -- mutants: right answers rewritten into the lesson's mistakes (tests/mutation) ---------------

# Not the tracked-tasks answer: without its drain, whether its few concurrent writes end before
# the lifespan closes the database depends on how long the server takes to shut down (it often
# does), so its drain_skipped mutant is not reliably wrong. The queue's writes are one at a time:
# a backlog is always left.
MUTATED = (
    "add_task_with_the_lifespan_connection",
    "def_task_with_its_own_connection",
    "queue_and_one_writer",
    "queue_with_a_sentinel",
)


@pytest.mark.corpus
@pytest.mark.parametrize("mutant", mutants(corpus, MUTATED, mutants04.OPERATORS))
def test_the_mutant_is_refused_with_its_cause(
    mutant: Mutant, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)
    judge(mutant, request.node, lambda build: check(build(db_path), db_path))


def test_a_shutdown_with_no_write_pending_is_measured_again_and_never_called_tested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy machine every audit write can end before the server's shutdown begins; then an
    app that cancels its pending tasks at shutdown loses nothing, and was judged right. Here
    the server hands the app its shutdown only once every write has ended, in every burst:
    the check runs 3 bursts, and its pass says the shutdown was not measured."""
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)
    shutdowns: list[float] = []
    monkeypatch.setattr(background, "serve", functools.partial(_told_late, shutdowns=shutdowns))
    app = corpus.answer_tasks_cancelled_at_shutdown(db_path)
    result = check(app, db_path)
    assert len(shutdowns) == 3  # 3 bursts
    assert (result.passed, result.cause) == (True, "ok"), str(result)
    assert (
        "in each of 3 bursts, every row was already written when the rows were counted as the "
        "app's shutdown began: what a shutdown does to pending work was not measured"
    ) in result.summary
    assert (
        "When the rows were counted, just after the app's lifespan shutdown began, every audit "
        "row was already written."
    ) in str(result)


def test_the_rows_are_counted_once_the_shutdown_began_not_before(tmp_path: Path) -> None:
    """The wrong ✅ seen on a loaded machine: the rows were counted just before the server was
    asked to stop, and the last writes ended while it wound down, so an app that cancels its
    pending writes at shutdown found none to cancel, and passed. Here every count reads the
    table at once and answers only after the burst's writes could have ended, as a count
    delayed by a busy machine does: the count as the shutdown begins must still be taken once
    the app was told to stop, when its cancelling loses rows."""
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)

    async def late_count() -> int:
        rows: int = corpus.count_rows(db_path)
        await asyncio.sleep(5 * corpus.AUDIT_SECONDS)
        return rows

    app = corpus.answer_tasks_cancelled_at_shutdown(db_path)
    result = asyncio.run(
        check_background_audit(app, late_count, audit_seconds=corpus.AUDIT_SECONDS, n=N)
    )
    assert (result.passed, result.cause) == (False, "rows_lost"), str(result)
    assert (
        "When the server's shutdown began, some audit rows were still to be written (still when "
        "the app's lifespan shutdown began)."
    ) in str(result)


def test_writes_the_server_waited_for_count_as_pending_at_its_shutdown(tmp_path: Path) -> None:
    """`BackgroundTasks` run inside the request's ASGI call, and the server waits for running
    calls before the app's lifespan shutdown: by then every row is written. That the shutdown
    was put to the test is shown by the rows still to come when the server was asked to stop,
    and all written once those requests had ended, in the first burst."""
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)
    calls = 0

    def count_rows() -> int:
        nonlocal calls
        calls += 1
        rows: int = corpus.count_rows(db_path)
        return rows

    app = corpus.answer_add_task_with_the_lifespan_connection(db_path)
    result = asyncio.run(
        check_background_audit(app, count_rows, audit_seconds=corpus.AUDIT_SECONDS, n=N)
    )
    assert (result.passed, result.cause) == (True, "ok"), str(result)
    # Before, after the probe, at the server's stop, when its requests ended, at the lifespan
    # shutdown, after it: one burst.
    assert calls == 6
    assert (
        "When the server's shutdown began, some audit rows were still to be written (every one "
        "was written when the requests still running then had ended)."
    ) in str(result)
    assert "not measured" not in result.summary


def test_an_app_that_cannot_be_served_again_keeps_its_first_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A right answer whose first burst left nothing for the shutdown to test is served again;
    one that closes, at shutdown, a client it built outside its lifespan then answers 500. That
    is not this lesson's question: the first burst's pass stands, and says what was not
    measured and why (a second burst once turned such an answer into bad_reply on 3.13)."""
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)
    client = AsyncOpenAI()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        pending: set[asyncio.Task[None]] = set()
        async with aiosqlite.connect(db_path) as db:
            yield {"audit_db": db, "pending": pending}
            await asyncio.gather(*pending)
        await client.close()  # built once, outside the lifespan: a second serve fails

    app = FastAPI(lifespan=lifespan)

    @app.post("/chat")
    async def chat(request: corpus.ChatRequest, http: Request) -> dict[str, str]:
        response = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": request.message}]
        )
        reply = response.choices[0].message.content or ""
        task = asyncio.create_task(
            corpus.slow_write_audit_row(http.state.audit_db, (request.user_id, reply))
        )
        http.state.pending.add(task)
        task.add_done_callback(http.state.pending.discard)
        return {"response": reply}

    monkeypatch.setattr(background, "serve", _told_late)
    result = check(app, db_path)
    assert (result.passed, result.cause) == (True, "ok"), str(result)
    assert "(in 1 burst, every row was already written" in result.summary
    assert "Served again to measure the shutdown with writes still to come, the app failed" in (
        str(result)
    )


def _told_late(app: Any, shutdowns: list[float] | None = None) -> Any:
    """`serve(app)`, handing the app its lifespan shutdown only once every audit write of the
    burst has ended (noted in `shutdowns`)."""

    async def app_told_late(scope: Any, receive: Any, send: Any) -> None:
        async def receiving() -> Any:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                if shutdowns is not None:
                    shutdowns.append(time.perf_counter())
                await asyncio.sleep(5 * corpus.AUDIT_SECONDS)
            return message

        await app(scope, receiving, send)

    return serving.serve(app_told_late)


def test_a_failing_answer_is_not_served_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an answer that would pass is served again to put its shutdown to the test: a
    failure stands as it is. Here every write ends before the shutdown begins, and the answer
    whose tasks nobody keeps is judged on its one burst (served again, its closed client had
    turned it into bad_reply on 3.13 under load)."""
    db_path = str(tmp_path / "audit.sqlite3")
    corpus.create_table(db_path)
    shutdowns: list[float] = []
    monkeypatch.setattr(background, "serve", functools.partial(_told_late, shutdowns=shutdowns))
    result = check(corpus.answer_create_task_not_kept(db_path), db_path)
    assert (result.passed, result.cause) == (False, "task_not_kept"), str(result)
    assert len(shutdowns) == 1
