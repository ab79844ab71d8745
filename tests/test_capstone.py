"""The capstone service (the package notebooks/capstone/) under load, faults and bad input.

Every figure the capstone notebook shows is asserted here at full size: 1,000 requests over real
HTTP (uvicorn on 127.0.0.1), against the offline upstream. Assertions are on counts, which a
slow machine cannot change, never on wall-clock thresholds.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
from fastapi import Request

import labsupport as lab
from labsupport import Fault, MockUpstream, RateLimit

# The service lives with the notebooks, as a package next to them, not in labsupport.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
from capstone import create_app
from capstone.audit import note
from capstone.errors import retry_after_seconds
from capstone.resources import Resources

LATENCY = 0.02
BOUND = 20
N = 1_000
# The client from lab.serve() has 100 connections; more requests than that in flight would only
# queue inside httpx's pool, whose bookkeeping grows with the queue.
CLIENT_CONCURRENCY = 100
# Client, server and upstream share this process's one event loop, so under 1,000 requests a
# wait for an upstream slot is mostly a wait for the CPU: on a loaded machine it can pass the
# default `slot_wait` (5 s). These tests count answers, so no request may be shed.
NO_SHEDDING = 120.0

pytestmark = pytest.mark.anyio


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockUpstream]:
    monkeypatch.setenv("OPENAI_API_KEY", lab.PLACEHOLDER_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with lab.mock_openai(latency=LATENCY) as mock:
        yield mock


def audit_rows(path: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM audit ORDER BY id")]


def ticket(i: int) -> dict[str, str]:
    return {"message": f"Summarize in 5 words: ticket {i} says the export button is broken."}


def expected_fraction_hits(seed: int, calls: int, rate: float) -> int:
    """How many of the first `calls` calls a seeded `Fault.fraction(rate)` fails (one draw each)."""
    draws = random.Random(seed)
    return sum(draws.random() < rate for _ in range(calls))


# --------------------------------------------------------------------------------------- load


@pytest.mark.slow
async def test_1000_requests_all_answered_audited_and_bounded(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    app = create_app(
        audit_path=tmp_path / "audit.sqlite3", max_upstream_calls=BOUND, slot_wait=NO_SHEDDING
    )
    async with lab.serve(app) as client:
        report = await lab.fire(
            client, "POST", "/chat", json=ticket, n=N, concurrency=CLIENT_CONCURRENCY
        )
    stats = upstream.stats
    rows = audit_rows(tmp_path / "audit.sqlite3")

    assert report.status_counts == {200: N}
    assert all(body["response"] for body in report.bodies)
    assert stats.calls == N and stats.count(200) == N
    assert 1 < stats.max_in_flight <= BOUND
    assert report.in_flight_max > BOUND  # the bound held although far more requests overlapped
    # One row per request, all on disk once the service has shut down.
    assert len(rows) == N
    assert Counter(row["status"] for row in rows) == {200: N}
    assert all(row["reply"] and row["prompt"] and row["error"] is None for row in rows)
    assert report.p50 <= report.p95


async def test_batch_bound_is_shared_across_requests(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    app = create_app(audit_path=tmp_path / "audit.sqlite3", max_upstream_calls=5)
    batch = {"messages": [f"Sentiment (one word): item {i} is great" for i in range(12)]}
    async with lab.serve(app) as client:
        report = await lab.fire(client, "POST", "/batch", json=batch, n=3)
    assert report.status_counts == {200: 3}
    assert all(
        [item["response"] for item in body["results"]] == ["Positive"] * 12
        for body in report.bodies
    )
    assert upstream.stats.calls == 36
    assert upstream.stats.max_in_flight == 5  # 36 calls from 3 requests, never more than 5


# ------------------------------------------------------------------------------------- faults


@pytest.mark.slow
async def test_1000_requests_with_faults_get_clean_json_errors(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    quota = 900
    upstream.configure(
        faults=[Fault.fraction(0.1, status=500)],
        rate_limit=RateLimit(max_per_window=quota, window=600.0, retry_after=2.0),
    )
    app = create_app(
        audit_path=tmp_path / "audit.sqlite3",
        max_upstream_calls=BOUND,
        max_retries=0,
        slot_wait=NO_SHEDDING,
    )
    async with lab.serve(app) as client:
        report = await lab.fire(
            client, "POST", "/chat", json=ticket, n=N, concurrency=CLIENT_CONCURRENCY
        )
        limited = await client.post("/chat", json=ticket(N))
    failures = expected_fraction_hits(upstream.settings.seed, quota, 0.1)
    expected = {200: quota - failures, 429: N - quota, 502: failures}

    assert failures > 0
    assert report.status_counts == expected  # every request answered: no exception, no hang
    assert upstream.stats.count(500) == failures and upstream.stats.count(429) == N - quota + 1
    for record in report.requests:
        if record.status == 200:
            continue
        assert record.status is not None
        error = record.body["error"]
        assert set(error) == {"type", "message"} and error["message"]
        assert error["type"] == {429: "rate_limited", 502: "upstream_error"}[record.status]
        assert "Traceback" not in json.dumps(record.body)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.headers["content-type"] == "application/json"

    rows = audit_rows(tmp_path / "audit.sqlite3")
    assert len(rows) == N + 1
    assert Counter(row["status"] for row in rows) == {**expected, 429: N - quota + 1}
    assert all(
        row["error"].startswith("InternalServerError") for row in rows if row["status"] == 502
    )
    assert all(row["error"].startswith("RateLimitError") for row in rows if row["status"] == 429)


async def test_timeout_partial_fan_out_and_unreachable_upstream(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    upstream.configure(
        faults=[Fault.matching(r"^List 3 topics", status=500), Fault.matching("slow", delay=5)]
    )
    app = create_app(audit_path=tmp_path / "audit.sqlite3", upstream_timeout=0.2, max_retries=0)
    async with lab.serve(app) as client:
        slow = await client.post("/chat", json={"message": "a slow question"})
        partial = await client.post("/analyze", json={"text": "The update made it faster."})
        upstream.configure(faults=[Fault.matching(".", status=503)])
        all_failed = await client.post("/analyze", json={"text": "x"})

    assert slow.status_code == 504
    assert slow.json()["error"]["type"] == "upstream_timeout"
    assert partial.status_code == 200
    body = partial.json()
    assert body["sentiment"] == "Positive" and body["summary"] and body["topics"] is None
    assert body["errors"]["topics"]["type"] == "upstream_error"
    assert all_failed.status_code == 502  # nothing to show: the error itself

    with socket.socket() as closed_port:  # bound, not listening: a connection is refused
        closed_port.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed_port.getsockname()[1]}/v1"
        app = create_app(
            audit_path=tmp_path / "unreachable.sqlite3", base_url=nowhere, max_retries=0
        )
        async with lab.serve(app) as client:
            unreachable = await client.post("/chat", json={"message": "hello"})
    assert unreachable.status_code == 503
    assert unreachable.headers["retry-after"] == "1"
    assert unreachable.json()["error"]["type"] == "upstream_unavailable"
    statuses = [row["status"] for row in audit_rows(tmp_path / "audit.sqlite3")]
    assert statuses == [504, 200, 502]


async def test_a_request_behind_busy_slots_is_shed_with_503_not_queued(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    upstream.configure(faults=[Fault.matching("^slow", delay=5)])
    app = create_app(audit_path=tmp_path / "audit.sqlite3", max_upstream_calls=BOUND, slot_wait=0.2)
    async with lab.serve(app) as client:
        slow = [
            asyncio.create_task(client.post("/chat", json={"message": f"slow {i}"}))
            for i in range(BOUND)
        ]
        for _ in range(500):  # until the slow calls hold every slot (bounded)
            if upstream.stats.calls == BOUND:
                break
            await asyncio.sleep(0.01)
        normal = await client.post("/chat", json={"message": "a normal question"})
        answered_while_all_slow_ran = not any(task.done() for task in slow)
        slow_answers = await asyncio.gather(*slow)

    assert normal.status_code == 503 and normal.headers["retry-after"] == "1"
    assert normal.json()["error"] == {
        "type": "upstream_busy",
        "message": f"All {BOUND} upstream slots stayed busy for 0.2 s; retry shortly.",
    }
    assert answered_while_all_slow_ran  # shed at once, not queued behind the slow calls
    assert [answer.status_code for answer in slow_answers] == [200] * BOUND
    assert upstream.stats.calls == BOUND  # the shed request never reached the upstream
    statuses = Counter(row["status"] for row in audit_rows(tmp_path / "audit.sqlite3"))
    assert statuses == {200: BOUND, 503: 1}


@pytest.mark.parametrize(
    ("poison", "refused"),
    [
        ({"not": "text"}, "ProgrammingError: Error binding parameter"),
        (2**64, "OverflowError: Python int too large"),
    ],
)
async def test_a_row_sqlite_refuses_is_dead_lettered_and_the_writer_moves_on(
    upstream: MockUpstream, tmp_path: Path, poison: object, refused: str
) -> None:
    app = create_app(audit_path=tmp_path / "audit.sqlite3")

    @app.post("/poison")
    async def poisoned_row(request: Request) -> dict[str, bool]:
        note(request, reply=poison)  # a value SQLite cannot store
        return {"ok": True}

    async with lab.serve(app) as client:
        # At once: the poison row is committed in one batch with rows that can be stored.
        first, poisoned = await asyncio.gather(
            lab.fire(client, "POST", "/chat", json=ticket, n=30), client.post("/poison")
        )
        after = await lab.fire(client, "POST", "/chat", json=lambda i: ticket(100 + i), n=30)
        health = await client.get("/health")
    rows = audit_rows(tmp_path / "audit.sqlite3")
    dead_letters = (tmp_path / "audit.sqlite3.dead.jsonl").read_text().splitlines()
    dead = [json.loads(line) for line in dead_letters]

    assert first.status_counts == after.status_counts == {200: 30}
    assert poisoned.status_code == 200
    assert health.json()["status"] == "ok"  # the writer did not stall on that row
    # Every answered request has its row: 60 in the store, the poison one dead-lettered.
    assert Counter(row["path"] for row in rows) == {"/chat": 60}
    assert [(row["path"], row["reply"]) for row in dead] == [("/poison", poison)]
    assert dead[0]["refused"].startswith(refused)


# ---------------------------------------------------------------------------------- bad input

BAD_INPUT: dict[str, tuple[dict[str, Any], int, str]] = {
    "malformed JSON": ({"content": b'{"message": "hi",}'}, 422, "body: not valid JSON"),
    "no body": ({}, 422, "body: Field required"),
    "missing message": ({"json": {"temperature": 0.5}}, 422, "message: Field required"),
    "wrong type": ({"json": {"message": 42}}, 422, "message: Input should be a valid string"),
    "empty message": ({"json": {"message": ""}}, 422, "message: String should have at least"),
    "blank message": ({"json": {"message": " \n\u00a0"}}, 422, "message: needs at least one"),
    "control characters only": ({"json": {"message": "\x01\x7f"}}, 422, "neither whitespace"),
    "temperature false": ({"json": {"message": "hi", "temperature": False}}, 422, "number"),
    "temperature as a string": ({"json": {"message": "hi", "temperature": "1.5"}}, 422, "number"),
    "invalid UTF-8": ({"content": b'{"message": "\xff"}'}, 422, "body: not valid JSON (not UTF"),
    "nested too deep": ({"content": b"[" * 60_000}, 422, "body: not valid JSON (nested"),
    "number too long": ({"content": b'{"message": ' + b"1" * 5_000 + b"}"}, 422, "not valid JSON"),
    "message too long": ({"json": {"message": "x" * 4_001}}, 422, "at most 4000 characters"),
    "absurd temperature": ({"json": {"message": "hi", "temperature": 7}}, 422, "temperature:"),
    "negative temperature": ({"json": {"message": "hi", "temperature": -1}}, 422, "temperature"),
    "temperature as text": ({"json": {"message": "hi", "temperature": "hot"}}, 422, "number"),
    "typo in a field": ({"json": {"message": "hi", "temprature": 1}}, 422, "temprature: Extra"),
    "bad user id": ({"json": {"message": "hi", "user_id": "a b"}}, 422, "user_id:"),
    "JSON array": ({"json": ["hi"]}, 422, "body:"),
    "body over limit": ({"content": b'{"message": "' + b"x" * 70_000 + b'"}'}, 413, "larger"),
}


async def test_bad_input_is_refused_before_the_upstream(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    app = create_app(audit_path=tmp_path / "audit.sqlite3")
    headers = {"content-type": "application/json"}
    async with lab.serve(app) as client:
        responses = {
            label: await client.post("/chat", headers=headers, **request)
            for label, (request, _, _) in BAD_INPUT.items()
        }
        batch = await client.post("/batch", json={"messages": ["ok"] * 51})
        empty_item = await client.post("/batch", json={"messages": ["ok", ""]})

        async def chunks() -> Any:  # no Content-Length: the limit counts what arrives
            for _ in range(10):
                yield b"x" * 10_000

        chunked = await client.post("/chat", headers=headers, content=chunks())

    for label, (_, status, fragment) in BAD_INPUT.items():
        response = responses[label]
        assert response.status_code == status, label
        error = response.json()["error"]
        assert fragment in error["message"], (label, error)
        assert error["type"] == ("too_large" if status == 413 else "invalid_request")
    assert batch.status_code == 422 and "at most 50 items" in batch.json()["error"]["message"]
    assert empty_item.status_code == 422
    assert empty_item.json()["error"]["message"].startswith("messages[1]:")
    assert chunked.status_code == 413 and chunked.json()["error"]["type"] == "too_large"
    assert upstream.stats.calls == 0
    rows = audit_rows(tmp_path / "audit.sqlite3")
    assert len(rows) == len(BAD_INPUT) + 3
    assert all(row["error"] for row in rows)


async def test_unexpected_bug_is_a_json_500_and_audited(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Any, prompt: str, **options: Any) -> str:
        raise KeyError("a bug")

    monkeypatch.setattr(Resources, "ask", broken)
    app = create_app(audit_path=tmp_path / "audit.sqlite3")
    async with lab.asgi_client(app) as client:
        with pytest.raises(KeyError):  # in process, the app's exception reaches the caller...
            await client.post("/chat", json={"message": "hi"})
    # ...after the handler produced the JSON a real server sends, and the row was recorded.
    assert [row["status"] for row in audit_rows(tmp_path / "audit.sqlite3")] == [500]


# --------------------------------------------------------------------------------- lifecycle


async def test_shutdown_closes_client_and_drains_audit(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    app = create_app(audit_path=tmp_path / "audit.sqlite3")
    tasks_before = asyncio.all_tasks()
    async with lab.asgi_client(app) as client:
        await asyncio.gather(*(client.post("/chat", json=ticket(i)) for i in range(30)))
    assert len(audit_rows(tmp_path / "audit.sqlite3")) == 30
    # Neither the audit writer nor anything else of the service outlives the shutdown.
    assert asyncio.all_tasks() - tasks_before == set()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_upstream_calls", 0),
        ("max_upstream_calls", 2.5),
        ("max_retries", -1),
        ("max_body_bytes", True),
        ("upstream_timeout", 0),
        ("upstream_timeout", "1"),
        ("slot_wait", float("inf")),
        ("audit_path", 42),
    ],
)
def test_create_app_rejects_bad_settings(tmp_path: Path, option: str, value: object) -> None:
    settings: dict[str, Any] = {"audit_path": tmp_path / "audit.sqlite3", option: value}
    with pytest.raises(pydantic.ValidationError, match=option):
        create_app(**settings)


def test_create_app_needs_an_audit_path() -> None:
    with pytest.raises(pydantic.ValidationError, match="audit_path"):
        create_app()


def test_retry_after_parsing() -> None:
    parse = retry_after_seconds
    assert parse(httpx.Headers({"retry-after-ms": "1500"})) == 2
    assert parse(httpx.Headers({"retry-after": "3"})) == 3
    assert parse(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 1
    assert parse(httpx.Headers({})) == 1


# ---------------------------------------------------------------------------------- deadlines


async def test_upstream_timeout_is_the_whole_wait_retries_included(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    upstream.configure(faults=[Fault.matching("slow", delay=5)])
    app = create_app(audit_path=tmp_path / "audit.sqlite3", upstream_timeout=0.3, max_retries=2)
    async with lab.serve(app) as client:
        slow = await client.post("/chat", json={"message": "a slow question"})
        both_slow = await client.post("/batch", json={"messages": ["slow 1", "slow 2"]})

    # One attempt, not three: the deadline covers the retries, so none is left to make.
    assert slow.status_code == 504
    assert slow.json()["error"] == {
        "type": "upstream_timeout",
        "message": "The upstream part of this request did not finish within its 0.3 s deadline "
        "(waiting for the model provider (attempt 1)).",
    }
    # A batch shares one deadline. With 20 slots both items were in flight at once.
    assert [item["error"]["type"] for item in both_slow.json()["results"]] == [
        "upstream_timeout"
    ] * 2
    assert upstream.stats.calls == 3


async def test_no_request_waits_for_a_slot_past_its_deadline(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    upstream.configure(faults=[Fault.matching("slow", delay=5)])
    app = create_app(
        audit_path=tmp_path / "audit.sqlite3", upstream_timeout=0.3, max_upstream_calls=1
    )
    async with lab.serve(app) as client:
        response = await client.post("/batch", json={"messages": ["slow 1", "slow 2"]})
    messages = sorted(item["error"]["message"] for item in response.json()["results"])

    assert response.status_code == 200
    assert ["(waiting for a free upstream slot)" in m for m in messages] == [True, False]
    assert upstream.stats.calls == 1  # the second item never reached the upstream


async def test_a_failing_call_frees_its_slot_while_it_waits_to_retry(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    upstream.configure(latency=0.1, faults=[Fault.matching("^fail", status=500, retry_after=0.5)])
    app = create_app(audit_path=tmp_path / "audit.sqlite3", max_upstream_calls=1, max_retries=1)
    async with lab.serve(app) as client:
        failing = asyncio.create_task(client.post("/chat", json={"message": "fail, twice"}))
        for _ in range(200):  # until the failing call holds the only slot (bounded)
            if upstream.stats.calls:
                break
            await asyncio.sleep(0.01)
        healthy = await client.post("/chat", json={"message": "ok"})
        failed = await failing

    assert healthy.status_code == 200
    assert failed.status_code == 502  # its retry failed too: the last error is the answer
    # The healthy request was served during the failing one's backoff, not after its retry.
    assert [call.prompt for call in upstream.stats.timeline] == ["fail, twice", "ok", "fail, twice"]


# ----------------------------------------------------------------------------------- contract


async def test_errors_outside_the_endpoints_have_the_same_shape(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    app = create_app(audit_path=tmp_path / "audit.sqlite3")
    async with lab.serve(app) as client:
        wrong_method = await client.get("/chat")
        nowhere = await client.get("/nowhere")
        latin1 = await client.post(
            "/chat",
            content='{"message": "café"}'.encode("latin-1"),
            headers={"content-type": "application/json; charset=latin-1"},
        )
        healthy = await client.get("/health")

    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["type"] == "method_not_allowed"
    assert nowhere.status_code == 404 and nowhere.json()["error"]["type"] == "not_found"
    assert latin1.status_code == 422
    assert latin1.json()["error"]["message"] == "body: not valid JSON (not UTF-8 at byte 16)"
    assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
    assert upstream.stats.calls == 0
