"""labsupport.coaching: predictions compare (and survive nonsense), the explorer reruns on a
change, and the hint ladder climbs per (exercise, cause) and resets on a pass."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ipywidgets
import pytest

import labsupport
from labsupport.coaching import hints
from labsupport.coaching.explorer import Explorer, Scenario, run_scenario
from labsupport.coaching.predict import compare, parse_prediction, predict

REPO_ROOT = Path(__file__).resolve().parent.parent
BECAUSE = "each request waited for the one before"
NEXT = "the loop-lag line"

# ------------------------------------------------------------------------------ predictions


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(2.5, 2.5), (3, 3.0), ("0.1", 0.1), (" 2 s ", 2.0), ("2.5 seconds", 2.5), ("2,5", 2.5)],
)
def test_seconds_are_read_from_numbers_and_text(raw: object, expected: float) -> None:
    parsed = parse_prediction(raw)
    assert parsed.problem is None
    assert parsed.number == pytest.approx(expected)


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_nothing_entered_is_no_prediction(raw: object) -> None:
    assert parse_prediction(raw).number is None
    assert parse_prediction(raw).problem is None


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("abc", "'abc' is not a number"),
        (-1, "negative"),
        (math.nan, "not a finite number"),
        ("inf", "not a finite number"),
        (True, "yes/no"),
        ([2], "a list is not a number"),
    ],
)
def test_nonsense_gets_a_sentence_never_an_exception(raw: object, words: str) -> None:
    parsed = parse_prediction(raw)
    assert parsed.number is None
    assert parsed.problem is not None and words in parsed.problem
    comparison = compare(raw, 2.07, because=BECAUSE, investigate=NEXT)
    assert comparison.close is None
    assert comparison.text.startswith("Your prediction cannot be compared:")
    assert "it took 2.07 s" in comparison.text


def test_counts_must_be_whole_and_possible() -> None:
    assert parse_prediction(95, unit="429s", maximum=100).number == 95
    assert "whole number" in str(parse_prediction(3.5, unit="429s").problem)
    assert "more than the 100 possible" in str(
        parse_prediction(101, unit="429s", maximum=100).problem
    )


def test_a_far_guess_says_how_far_and_why() -> None:
    comparison = compare(0.1, 2.07, because=BECAUSE, investigate=NEXT)
    assert comparison.close is False
    first, second = comparison.text.splitlines()
    assert first == f"You predicted 0.10 s; it took 2.07 s, 21× what you predicted: {BECAUSE}."
    assert second == f"  Investigate: {NEXT}"
    faster = compare(2.0, 0.11, because="they overlapped", investigate=NEXT)
    assert "18× faster than you predicted" in faster.text


def test_a_close_guess_is_called_close() -> None:
    assert compare(2.0, 2.07, because=BECAUSE, investigate=NEXT).close is True
    assert compare(1.0, 2.07, because=BECAUSE, investigate=NEXT).close is False
    counted = compare(95, 95, unit="429s", maximum=100, because="5 fit", investigate=NEXT)
    assert counted.close is True and "there were 95 429s, exactly" in counted.text
    off = compare(0, 95, unit="429s", maximum=100, because="5 fit", investigate=NEXT)
    assert off.close is False and "95 more than you predicted" in off.text


def test_one_of_a_count_is_singular() -> None:
    one = compare(1, 1, unit="connections", because="it was reused", investigate=NEXT)
    assert one.text.startswith("You predicted 1; there was 1 connection, exactly:")
    refused = compare(None, 1, unit="calls refused with 429", because="b", investigate=NEXT)
    assert refused.text.startswith("No prediction entered: there was 1 call refused with 429:")


def test_no_prediction_prints_one_stable_line_and_the_next_step() -> None:
    text = compare(None, 2.07, because=BECAUSE, investigate=NEXT).text
    assert text == f"No prediction entered: it took 2.07 s: {BECAUSE}.\n  Investigate: {NEXT}"


def test_the_box_propagates_what_is_typed_and_says_if_it_is_readable() -> None:
    prediction = predict("20 requests: how many seconds?")
    assert isinstance(prediction.box, ipywidgets.Text)
    assert "type your guess" in prediction.feedback.value
    prediction.box.value = "2"
    assert prediction.value == "2"
    assert "your prediction: 2.00 s" in prediction.feedback.value
    assert prediction.compare(2.07, because=BECAUSE, investigate=NEXT).close is True
    prediction.box.value = "lots"
    assert "is not a number" in prediction.feedback.value
    assert prediction.compare(2.07, because=BECAUSE, investigate=NEXT).close is None


def test_a_value_given_in_code_fills_the_box() -> None:
    prediction = predict("TCP connections for 10 calls?", unit="connections", value=10)
    assert prediction.box.value == "10"
    assert prediction.compare(10, because="one per call", investigate=NEXT).close is True


def test_the_stored_form_of_the_box_never_changes() -> None:
    prediction = predict("How many seconds?")
    data, _ = prediction._repr_mimebundle_()
    before = data["text/plain"]
    prediction.box.value = "7"
    data, _ = prediction._repr_mimebundle_()
    assert data["text/plain"] == before == "Prediction: How many seconds? (type it in the box)"
    assert "application/vnd.jupyter.widget-view+json" in data


def test_a_prediction_needs_a_question() -> None:
    with pytest.raises(ValueError, match="question"):
        predict("  ")


# ------------------------------------------------------------------------------ explorer


def test_a_scenario_refuses_what_would_be_slow_or_meaningless() -> None:
    with pytest.raises(ValueError, match="requests"):
        Scenario(requests=500)
    with pytest.raises(ValueError, match="latency"):
        Scenario(latency=5.0)
    with pytest.raises(ValueError, match="client"):
        Scenario(client="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bound"):
        Scenario(bound=0)


def test_the_sync_client_runs_one_at_a_time_and_the_async_one_overlaps(
    offline_lab: labsupport.MockUpstream,
) -> None:
    blocked = run_scenario(Scenario(requests=4, latency=0.02, client="sync"))
    awaited = run_scenario(Scenario(requests=4, latency=0.02, client="async"))
    assert blocked.report.in_flight_max == 1 and len(blocked.calls) == 4
    assert awaited.report.in_flight_max == 4
    assert offline_lab.latency == 0.05, "the scenario's latency applies only while it runs"


def test_a_semaphore_over_the_limit_gets_429s_and_one_at_the_limit_none(
    offline_lab: labsupport.MockUpstream,
) -> None:
    # A call over the limit gets its 429 only if it arrives while the first 4 still run: with
    # the explorer's longest calls (0.1 s) the 5th surely does, while on a loaded machine the
    # last may start after the first ended (at 0.02 s it was 5 x 200 and 3 x 429 once).
    over = run_scenario(Scenario(requests=8, latency=0.1, bound=8, upstream_limit=4))
    at = run_scenario(Scenario(requests=8, latency=0.1, bound=4, upstream_limit=4))
    assert over.report.status_counts.keys() == {200, 429}
    assert over.report.status_counts[200] >= 4 and len(over.report.requests) == 8
    assert at.report.status_counts == {200: 8}
    assert offline_lab.settings.rate_limit is None


def test_moving_a_control_reruns_and_redraws(offline_lab: labsupport.MockUpstream) -> None:
    explorer = Explorer(Scenario(requests=3, latency=0.02, client="sync"))
    assert isinstance(explorer.controls["requests"], ipywidgets.IntSlider)
    first_png, first_run = bytes(explorer.image.value), explorer.run
    assert first_png.startswith(b"\x89PNG") and "one at a time" in explorer.caption.value

    explorer.controls["client"].value = "async"
    assert explorer.scenario.client == "async" and explorer.run is not first_run
    assert bytes(explorer.image.value) != first_png and "overlapping" in explorer.caption.value

    explorer.controls["bound"].value = 2
    assert explorer.scenario.bound == 2
    explorer.controls["bound"].value = 0
    assert explorer.scenario.bound is None, "0 on the slider is no semaphore"


def test_the_explorer_shows_a_static_figure_with_a_fixed_text(
    offline_lab: labsupport.MockUpstream,
) -> None:
    explorer = Explorer(Scenario(requests=2, latency=0.02), controls=("requests",))
    data, metadata = explorer._repr_mimebundle_()
    assert set(data) == {"text/plain", "image/png", "application/vnd.jupyter.widget-view+json"}
    assert data["text/plain"] == (
        "Explorer: 2 requests · 0.02 s each · AsyncOpenAI, awaited · no semaphore. "
        "Move a control to run it again."
    )
    assert metadata["image/png"]["alt"] == data["text/plain"]
    assert list(explorer.controls) == ["requests"]


def test_a_failed_run_is_a_caption_not_a_traceback(offline_lab: labsupport.MockUpstream) -> None:
    explorer = Explorer(Scenario(requests=2, latency=0.02))
    labsupport.teardown()  # no upstream any more: the next run cannot happen
    explorer.controls["requests"].value = 3
    assert explorer.caption.value.startswith("✗ could not run it: RuntimeError")


# ------------------------------------------------------------------------------ hint ladder


@dataclass(frozen=True)
class Result:
    exercise: str
    passed: bool
    cause: str
    summary: str = "the event loop was blocked for 1.95 s of 2.01 s."
    evidence: tuple[str, ...] = ("20 requests took 2.01 s ≈ 20.1× latency",)
    hint: str | None = "Use AsyncOpenAI and await the call."


EXERCISE = "01 · a non-blocking endpoint"
LESSON = "01_async_client"


@pytest.fixture
def fresh_ladder(monkeypatch: pytest.MonkeyPatch) -> hints.HintLadder:
    ladder = hints.HintLadder()
    monkeypatch.setattr(hints, "ladder", ladder)
    monkeypatch.setattr(hints, "COACHED_NOTEBOOKS", frozenset({LESSON}))
    return ladder


def failed(cause: str = "loop_blocked") -> Result:
    return Result(EXERCISE, False, cause)


def test_the_same_cause_climbs_one_rung_per_failure(fresh_ladder: hints.HintLadder) -> None:
    texts = [hints.coach(failed(), notebook=LESSON) for _ in range(4)]
    first, second, third, fourth = texts
    assert "20 requests took" in first and "Hint: Use AsyncOpenAI" in first, (
        "a first failure has a hint"
    )
    assert "___" not in first and "if it fails the same way: an example with blanks" in first
    assert "Fill in the blanks" in second and "ticket_client = ___(api_key" in second
    assert "notebooks/solutions/01_async_client.ipynb" not in second
    assert "The full solution: notebooks/solutions/01_async_client.ipynb" in third
    assert fourth == third, "the last rung is the last"


def test_another_cause_starts_its_own_ladder(fresh_ladder: hints.HintLadder) -> None:
    hints.coach(failed("loop_blocked"), notebook=LESSON)
    hints.coach(failed("loop_blocked"), notebook=LESSON)
    other = hints.coach(failed("not_awaited"), notebook=LESSON)
    assert "Fill in the blanks" not in other
    assert "The full solution" in hints.coach(failed("loop_blocked"), notebook=LESSON)


def test_a_pass_resets_the_exercise(fresh_ladder: hints.HintLadder) -> None:
    hints.coach(failed(), notebook=LESSON)
    hints.coach(failed(), notebook=LESSON)
    passed = hints.coach(Result(EXERCISE, True, "ok", "20 requests overlapped."), notebook=LESSON)
    assert passed.startswith("✅ PASSED") and "Hint" not in passed
    assert "Fill in the blanks" not in hints.coach(failed(), notebook=LESSON)


def test_a_check_rerun_straight_after_itself_is_the_same_attempt(
    fresh_ladder: hints.HintLadder,
) -> None:
    assert fresh_ladder.climb(failed(), cell=7) == 1
    assert fresh_ladder.climb(failed(), cell=8) == 1, "cell 8 right after cell 7: a click"
    assert fresh_ladder.climb(failed(), cell=10) == 2, "cell 9 ran in between: an attempt"
    assert fresh_ladder.climb(failed(), cell=11) == 2


def test_the_same_result_shown_twice_keeps_its_rung(fresh_ladder: hints.HintLadder) -> None:
    result = failed()
    assert hints.coach(result, notebook=LESSON) == hints.coach(result, notebook=LESSON)
    assert fresh_ladder.failures == {(EXERCISE, "loop_blocked"): 1}


def test_without_a_cause_the_ladder_keys_by_summary(fresh_ladder: hints.HintLadder) -> None:
    @dataclass(frozen=True)
    class OldResult:
        exercise: str
        passed: bool
        summary: str
        evidence: tuple[str, ...] = ()
        hint: str | None = "a hint"

    hints.coach(OldResult(EXERCISE, False, "blocked"), notebook=LESSON)
    assert "Fill in the blanks" in hints.coach(
        OldResult(EXERCISE, False, "blocked"), notebook=LESSON
    )
    assert fresh_ladder.failures == {(EXERCISE, "blocked"): 2}


def test_lessons_not_yet_coached_show_the_whole_result(fresh_ladder: hints.HintLadder) -> None:
    result = failed()
    assert hints.coach(result, notebook="02_gather") == str(result)
    assert fresh_ladder.failures == {}


def test_the_progress_file_carries_the_count_over_a_restart(
    fresh_ladder: hints.HintLadder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "progress.jsonl"
    monkeypatch.delenv("LAB_PROGRESS", raising=False)
    monkeypatch.setenv("LAB_PROGRESS_FILE", str(path))
    for cause in ("loop_blocked", "loop_blocked", "loop_blocked"):  # the last: the one shown
        labsupport.progress.record(failed(cause), notebook=LESSON)
    assert "The full solution" in hints.coach(failed(), notebook=LESSON)


def test_a_pass_in_the_progress_file_resets_the_count_over_a_restart(
    fresh_ladder: hints.HintLadder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LAB_PROGRESS", raising=False)
    monkeypatch.setenv("LAB_PROGRESS_FILE", str(tmp_path / "progress.jsonl"))
    for result in (failed(), failed(), Result(EXERCISE, True, "ok"), failed()):
        labsupport.progress.record(result, notebook=LESSON)  # the last: the one shown
    first = hints.coach(failed(), notebook=LESSON)
    assert "Fill in the blanks" not in first, "the failures before the pass no longer count"
    assert fresh_ladder.failures == {(EXERCISE, "loop_blocked"): 1}


def test_the_progress_file_counts_only_the_same_cause(
    fresh_ladder: hints.HintLadder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LAB_PROGRESS", raising=False)
    monkeypatch.setenv("LAB_PROGRESS_FILE", str(tmp_path / "progress.jsonl"))
    for cause in ("not_awaited", "not_awaited", "loop_blocked"):  # the last: the one shown
        labsupport.progress.record(failed(cause), notebook=LESSON)
    assert "Fill in the blanks" not in hints.coach(failed("loop_blocked"), notebook=LESSON)


def test_every_lesson_with_an_exercise_is_coached_with_a_faded_example() -> None:
    lessons = set(labsupport.progress.COURSE_EXERCISES.values())
    assert lessons <= hints.COACHED_NOTEBOOKS, "a lesson's check shows its whole result at once"
    for lesson in sorted(lessons):
        example = hints.faded_example(hints.lesson_source(lesson))
        assert example is not None and hints.BLANK in example, lesson


def test_the_faded_example_blanks_what_the_solution_adds() -> None:
    example = hints.faded_example(REPO_ROOT / "course" / "03_semaphore.py")
    assert example is not None
    assert "___ = asyncio.___(5)" in example
    assert "Semaphore" not in example, "the answer's key name is hidden"
    assert "async def summarize_all(texts: list[str]) -> list[str]:" in example
    assert hints.faded_example(REPO_ROOT / "course" / "no_such_lesson.py") is None


def test_the_faded_example_keeps_the_control_flow_and_builtins_visible() -> None:
    """07's answer is in Redis's SET NX PX and the names it adds, not in `while True` or
    `range`: those stay; an attribute named like a builtin (`redis.set`) is still blanked."""
    example = hints.faded_example(REPO_ROOT / "course" / "07_beyond_one_process.py")
    assert example is not None
    assert "while True:" in example and "in range(limit)" in example
    assert "self.redis.set(" not in example and "self.redis.___(" in example
    assert example.count(hints.BLANK) < 30


def test_a_result_finds_its_lesson_by_its_checker_exercise() -> None:
    from labsupport.checks import async_client, semaphore, shared_limit

    assert hints.notebook_of(async_client.EXERCISE) == "01_async_client"
    assert hints.notebook_of(semaphore.EXERCISE) == "03_semaphore"
    assert hints.notebook_of(shared_limit.EXERCISE) == "07_beyond_one_process"
    assert hints.notebook_of("an exercise of my own") is None


def test_a_check_result_in_a_notebook_climbs_the_ladder(fresh_ladder: hints.HintLadder) -> None:
    from IPython.lib.pretty import pretty

    from labsupport.checks import CheckResult, async_client

    def check() -> CheckResult:
        return CheckResult(
            exercise=async_client.EXERCISE,
            passed=False,
            cause="loop_blocked",
            summary="the event loop was blocked.",
            evidence=("20 requests took 2.01 s",),
            hint="Use AsyncOpenAI and await the call.",
        )

    first, second = check(), check()
    assert "Hint:" in str(first) and "Fill in the blanks" not in str(second), "never coached"
    assert "Hint: Use AsyncOpenAI and await the call." in pretty(first)
    assert "Fill in the blanks" not in pretty(first)
    assert "Fill in the blanks" in pretty(second)


def test_the_explorers_edge_cases_say_what_happens() -> None:
    """A semaphore with the sync client does nothing; one permit above the upstream's limit
    lets a 429 free its permit at once, so the waiting requests are refused one after another."""
    sync_note = Scenario(requests=5, client="sync", bound=2).note()
    assert sync_note is not None and "changes nothing" in sync_note
    drain = Scenario(requests=20, bound=6, upstream_limit=5).note()
    assert drain is not None and "gives its permit back at once" in drain
    assert Scenario(requests=20, bound=5, upstream_limit=5).note() is None
    assert Scenario(requests=20, client="async", bound=3).note() is None


@pytest.mark.usefixtures("offline_lab")
def test_one_permit_over_the_limit_refuses_most_requests() -> None:
    """The drain the note explains, measured: Semaphore(6) against a limit of 5."""
    run = run_scenario(Scenario(requests=20, latency=0.1, bound=6, upstream_limit=5))
    refused = run.report.status_counts.get(429, 0)
    assert refused >= 8, run.report.status_counts  # 15 on an idle machine


def test_the_explorers_and_predictions_load_without_matplotlib() -> None:
    """The browser edition (Pyodide) has no matplotlib: `from labsupport.coaching import
    explore, predict` must not import it (a figure imports it when it is drawn)."""
    code = (
        "import sys\n"
        "from labsupport.coaching import explore, predict\n"
        "print('matplotlib' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout == "False\n"
