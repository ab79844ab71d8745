"""The capstone's `POST /chat/stream` (08): pieces relayed as server-sent events, one `error`
event in the service's error shape when the upstream fails mid-stream, the upstream's stream
closed when the client leaves, and one audit row per request written after the stream ends.

Counts and shapes only: no assertion reads a wall clock."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

import labsupport as lab
from labsupport import Fault, MockUpstream
from labsupport.upstream.replies import count_tokens, reply_to

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "notebooks"))
from capstone import create_app

pytestmark = pytest.mark.anyio
MESSAGE = "Explain to a new engineer why streaming replies matter"


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockUpstream]:
    monkeypatch.setenv("OPENAI_API_KEY", lab.PLACEHOLDER_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with lab.mock_openai(time_to_first_token=0.01, time_per_token=0.01) as mock:
        yield mock


def audit_rows(path: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM audit ORDER BY id")]


async def events(client: httpx.AsyncClient, *, leave_after: int | None = None) -> list[Any]:
    """The stream's events as (event name, decoded data); closes the connection after
    `leave_after` pieces."""
    seen: list[Any] = []
    name = "message"
    async with client.stream("POST", "/chat/stream", json={"message": MESSAGE}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                seen.append((name, json.loads(line.removeprefix("data: "))))
                name = "message"
                if len(seen) == leave_after:
                    break
    return seen


async def test_pieces_are_relayed_and_audited_with_their_usage(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    app = create_app(audit_path=tmp_path / "audit.sqlite3")
    async with lab.serve(app) as client:
        seen = await events(client)
    reply = reply_to(MESSAGE).text
    assert {name for name, _ in seen} == {"message"}
    assert "".join(data for _, data in seen) == reply
    assert upstream.stats.tokens == len(seen) > 1
    (row,) = audit_rows(tmp_path / "audit.sqlite3")
    assert (row["status"], row["error"]) == (200, None)
    assert row["completion_tokens"] == count_tokens(reply)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.on_call(1, status=500, after=3), "upstream_error"),
        (Fault.on_call(1, delay=30.0, after=3), "upstream_timeout"),
    ],
    ids=["500", "stall"],
)
async def test_a_failure_mid_stream_ends_it_with_one_error_event(
    upstream: MockUpstream, tmp_path: Path, fault: Fault, kind: str
) -> None:
    upstream.configure(faults=[fault])
    app = create_app(audit_path=tmp_path / "audit.sqlite3", upstream_timeout=0.5)
    async with lab.serve(app) as client:
        seen = await events(client)  # returns: the connection is not left hanging
        after = await client.post("/chat", json={"message": MESSAGE})
    assert [name for name, _ in seen] == ["message"] * 3 + ["error"]
    error = seen[-1][1]["error"]
    assert set(error) == {"type", "message"} and error["type"] == kind
    assert "Traceback" not in json.dumps(seen) and "Scripted" not in json.dumps(seen)
    assert after.status_code == 200  # the slot came back
    row = audit_rows(tmp_path / "audit.sqlite3")[0]
    assert row["error"].startswith("mid-stream ") and row["completion_tokens"] == 3


async def test_a_failure_before_the_stream_is_an_http_error(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    upstream.configure(faults=[Fault.on_call(1, status=500)])
    app = create_app(audit_path=tmp_path / "audit.sqlite3", max_retries=0)
    async with lab.serve(app) as client:
        response = await client.post("/chat/stream", json={"message": MESSAGE})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"
    assert audit_rows(tmp_path / "audit.sqlite3")[0]["status"] == 502


async def test_a_client_who_leaves_stops_the_upstream_and_is_audited_once(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    # One upstream slot, waited for as long as it takes: the second stream runs only once the
    # first one gave its slot back.
    app = create_app(audit_path=tmp_path / "audit.sqlite3", max_upstream_calls=1, slot_wait=60.0)
    # A pace slow enough that the rest of the answer (about 15 events, 3 s) cannot be relayed
    # before the server sees the disconnect, however loaded the machine: at the fixture's 10 ms
    # a starved relay once finished its loop first, and the row said nothing of the leaver.
    with upstream.configured(time_per_token=0.2):
        async with lab.serve(app) as client:
            # A connection of its own: closing it mid-stream is a disconnect the server sees.
            async with httpx.AsyncClient(base_url=client.base_url, trust_env=False) as alone:
                seen = await events(alone, leave_after=3)
            again = await events(client)
    stats = upstream.stats
    assert len(seen) == 3 and len(again) > 3
    assert stats.abandoned == 1
    rows = audit_rows(tmp_path / "audit.sqlite3")
    assert len(rows) == 2
    (left,) = [row for row in rows if row["error"] is not None]
    assert left["error"].startswith("the client left after")
    assert left["completion_tokens"] >= 3  # the pieces relayed before the relay stopped


async def test_an_audit_log_from_before_streams_gets_the_column(
    upstream: MockUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "audit.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE audit (id INTEGER PRIMARY KEY, at REAL NOT NULL, method TEXT NOT NULL, "
            "path TEXT NOT NULL, status INTEGER NOT NULL, duration_ms REAL NOT NULL, "
            "user_id TEXT, prompt TEXT, reply TEXT, error TEXT)"
        )
    async with lab.serve(create_app(audit_path=path)) as client:
        await events(client)
    assert audit_rows(path)[0]["completion_tokens"] == count_tokens(reply_to(MESSAGE).text)
