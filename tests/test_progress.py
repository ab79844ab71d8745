"""Progress without a server: checks append to a JSON-lines file; two commands read them back."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

import labsupport.checks
from labsupport import progress
from labsupport.__main__ import main
from labsupport.checks import CheckResult, check_async_endpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class ChatRequest(BaseModel):
    message: str


@pytest.fixture
def progress_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Recording on (the root conftest turns it off for the suite), into a temp file."""
    path = tmp_path / "home" / ".async-llm-lab" / "progress.jsonl"
    monkeypatch.delenv("LAB_PROGRESS", raising=False)
    monkeypatch.setenv("LAB_PROGRESS_FILE", str(path))
    monkeypatch.setattr(progress, "_unsaved_said", False)
    return path


def _app(*, blocking: bool) -> FastAPI:
    app, sync_client, async_client = FastAPI(), OpenAI(), AsyncOpenAI()

    @app.post("/chat")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        messages: Any = [{"role": "user", "content": request.message}]
        if blocking:
            reply = sync_client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        else:
            reply = await async_client.chat.completions.create(
                model="gpt-4o-mini", messages=messages
            )
        return {"response": reply.choices[0].message.content}

    return app


def _result(passed: bool) -> CheckResult:
    """A result built outside any checker."""
    cause = "ok" if passed else "made_up"
    return CheckResult(exercise="x", passed=passed, cause=cause, summary="a sentence")


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write(path: Path, *attempts: tuple[str, int, str, bool, str | None]) -> None:
    """Progress lines (user, minutes after START, notebook, passed, cause)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        for user, minutes, notebook, passed, cause in attempts:
            line = {
                "format": 1,
                "time": (START + timedelta(minutes=minutes)).isoformat(),
                "user": user,
                "notebook": notebook,
                "exercise": f"the {notebook} exercise",
                "verdict": "passed" if passed else "not yet",
                "cause": cause,
                "summary": f"what the check saw ({cause or 'all good'})",
            }
            file.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------------------------ writing


@pytest.mark.usefixtures("offline_lab")
def test_each_check_appends_one_line_with_its_notebook_and_verdict(progress_path: Path) -> None:
    failed = asyncio.run(check_async_endpoint(_app(blocking=True)))
    passed = asyncio.run(check_async_endpoint(_app(blocking=False)))
    assert (failed.passed, passed.passed) == (False, True)

    first, second = _lines(progress_path)
    assert first["notebook"] == second["notebook"] == "01_async_client"
    assert first["exercise"] == failed.exercise
    assert (first["verdict"], second["verdict"]) == ("not yet", "passed")
    assert first["cause"] == getattr(failed, "cause", None)
    assert first["format"] == 1 and first["user"]
    assert datetime.fromisoformat(first["time"]) <= datetime.fromisoformat(second["time"])


def test_on_a_hub_the_learner_is_the_hub_user(
    progress_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    progress.record(_result(True), notebook="01_async_client")
    assert [line["user"] for line in _lines(progress_path)] == ["ada"]


def test_a_result_built_outside_a_course_checker_is_not_recorded(progress_path: Path) -> None:
    _result(True)
    assert not progress_path.exists()


def test_recording_off_writes_nothing(progress_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_PROGRESS", "off")
    progress.record(_result(True), notebook="01_async_client")
    assert not progress_path.exists()


def test_an_unwritable_file_never_breaks_a_check_and_is_said_once(
    progress_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    progress_path.mkdir(parents=True)  # a folder where the file should be: open() fails
    for _ in range(3):
        progress.record(_result(False), notebook="01_async_client")
    err = capsys.readouterr().err
    assert err.count("progress not saved") == 1
    assert str(progress_path) in err and "LAB_PROGRESS_FILE" in err


def test_every_course_checker_maps_to_a_notebook_that_exists() -> None:
    checkers = {
        getattr(labsupport.checks, name).__module__.removeprefix("labsupport.checks.")
        for name in labsupport.checks.__all__
        if name.startswith("check_")
    }
    unmapped = checkers - set(progress.COURSE_EXERCISES)
    assert not unmapped, f"add these checkers to labsupport.progress.COURSE_EXERCISES: {unmapped}"
    for checker in checkers:
        notebook = progress.COURSE_EXERCISES[checker]
        assert (REPO_ROOT / "notebooks" / f"{notebook}.ipynb").is_file(), notebook


# ------------------------------------------------------------------------------------ reading


def test_progress_table_says_what_is_done_and_what_to_do_next(
    progress_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(
        progress_path,
        ("ada", 0, "01_async_client", False, "blocking-call"),
        ("ada", 5, "01_async_client", True, None),
        ("ada", 20, "02_gather", False, "one_failure_lost_all"),
    )
    assert main(["progress"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("0")}
    assert "passed" in rows["01_async_client"] and " 2 " in rows["01_async_client"]
    assert "not yet" in rows["02_gather"]
    assert "not tried" in rows["03_semaphore"]
    assert "Next: back to notebooks/02_gather.ipynb" in out
    assert "your last check said: what the check saw (one_failure_lost_all)" in out


def test_progress_without_a_file_points_to_the_first_notebook(
    progress_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["progress"]) == 0
    assert "No checks recorded yet" in capsys.readouterr().out


def test_corrupt_lines_are_skipped_with_a_clear_message_never_a_traceback(
    progress_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(progress_path, ("ada", 0, "01_async_client", True, None))
    with progress_path.open("ab") as file:
        file.write(b"{not json\n")
        file.write(b"\xff\xfe garbage\n")
        file.write(b"[1, 2]\n")
        file.write(b'{"format": 99}\n')
        file.write(b'{"format": 1, "time": "yesterday", "user": "a", "notebook": "n", ')
        file.write(b'"exercise": "e", "verdict": "passed"}\n')
        file.write(b'{"format": 1, "time": "2026-12-01T10:00:00", "user": "a", ')
        file.write(b'"notebook": "n", "exercise": "e", "verdict": "maybe"}\n')
        file.write(b"\n")
        file.write(b'{"format": 1, "time": "2026-12-01T10:00')  # cut off mid-write
    assert main(["progress"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "skipped 7 unreadable lines" in captured.err
    for problem in ("line 2: not JSON", "line 3: not UTF-8", "line 4: not a JSON object"):
        assert problem in captured.err
    assert "passed" in captured.out.split("01_async_client", 1)[1].splitlines()[0]

    log = progress.read_progress(progress_path)
    assert len(log.attempts) == 1
    assert "line 5: format 99, expected 1" in log.problems
    assert "line 6: time 'yesterday' is not ISO 8601" in log.problems
    assert "line 7: unknown verdict 'maybe'" in log.problems


def test_an_unreadable_progress_file_is_an_error_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main(["progress", "--file", str(folder)]) == 1
    assert "error: cannot read" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ class


def test_class_report_over_homes_learner_by_exercise_causes_and_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    homes = tmp_path / "home"
    history: dict[str, list[tuple[int, str, bool] | tuple[int, str, bool, str]]] = {
        "ada": [(0, "01_async_client", False, "blocking-call"), (10, "01_async_client", True)],
        "bob": [
            (0, "01_async_client", False, "blocking-call"),
            (4, "01_async_client", False, "never-awaited"),
            (8, "01_async_client", False, "blocking-call"),
            # A break of an hour is not time spent.
            (68, "01_async_client", True),
            (70, "02_gather", False, "one failure lost every result"),
        ],
        "cyd": [],
    }
    for user, attempts in history.items():
        path = homes / user / ".async-llm-lab" / "progress.jsonl"
        path.parent.mkdir(parents=True)
        path.touch()
        _write(path, *[(user, *attempt, None)[:5] for attempt in attempts])

    assert main(["class-report", str(homes)]) == 0
    out = capsys.readouterr().out
    assert "Class report: 3 learners, 7 checks" in out
    table = [re.split(r"\s{2,}", line) for line in out.splitlines()[2:6]]
    rows = {row[0]: row for row in table}
    numbers = [notebook[:2] for notebook in sorted(progress.COURSE_EXERCISES.values())]
    untried = ["-"] * (len(numbers) - 2)
    assert rows["learner"] == ["learner", *numbers, "time spent"]
    assert rows["ada"] == ["ada", "passed/2", "-", *untried, "10 min"]
    # 4 + 4 + 2 minutes: the hour-long break (8 → 68) is not time spent.
    assert rows["bob"] == ["bob", "passed/4", "not yet/1", *untried, "10 min"]
    # An empty file: the learner is named after the home.
    assert rows["cyd"] == ["cyd", "-", "-", *untried, "0 min"]
    causes = out.split("Most common causes of failure, per exercise:", 1)[1]
    first = causes.split("02_gather", 1)[0]
    assert "2 of 3 passed, 4 failed tries; median time to pass 39 min" in first
    assert first.index("3 × blocking-call") < first.index("1 × never-awaited")
    assert "1 × one failure lost every result" in causes


def test_class_report_mentions_corrupt_lines_and_missing_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "progress.jsonl"
    _write(path, ("ada", 0, "01_async_client", True, None))
    with path.open("a", encoding="utf-8") as file:
        file.write("garbage\n")
    assert main(["class-report", str(path), str(tmp_path / "nobody")]) == 0
    captured = capsys.readouterr()
    assert "no progress file there" in captured.err
    assert f"{path}: line 2: not JSON" in captured.out
    assert main(["class-report", str(tmp_path / "nobody")]) == 1
    assert "error: no progress file found" in capsys.readouterr().err


def test_the_commands_are_registered_in_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "progress" in out and "class-report" in out
