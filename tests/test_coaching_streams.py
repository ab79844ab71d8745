"""labsupport.coaching.streams: notebook 08's explorer measures each relay as the lesson says
(buffered: one event; async: the leaver's stream abandoned; a reader task: read to the end; a
sync generator: pool threads), reruns on a change and shows a fixed text.

Every assertion counts (events, threads, how a stream ended); none bounds a duration. The
leaver's pace is the slowest the explorer allows (0.05 s a token, about 25 tokens after it
leaves), so a relay cannot finish the answer before the server sees the disconnect, however
loaded the machine.
"""

from __future__ import annotations

import ipywidgets
import pytest

import labsupport
from labsupport.coaching.streams import StreamExplorer, StreamScenario, run_streams

SLOW = {"time_to_first_token": 0.05, "time_per_token": 0.05}


def test_a_scenario_refuses_what_would_be_slow_or_meaningless() -> None:
    with pytest.raises(ValueError, match="streams"):
        StreamScenario(streams=500)
    with pytest.raises(ValueError, match="time_to_first_token"):
        StreamScenario(time_to_first_token=2.0)
    with pytest.raises(ValueError, match="time_per_token"):
        StreamScenario(time_per_token=0)
    with pytest.raises(ValueError, match="relay"):
        StreamScenario(relay="threads")  # type: ignore[arg-type]


def test_a_buffered_relay_sends_one_event_and_the_async_one_every_piece(
    offline_lab: labsupport.MockUpstream,
) -> None:
    buffered = run_streams(StreamScenario(streams=3, relay="buffered", **SLOW))
    relayed = run_streams(StreamScenario(streams=3, relay="async", **SLOW))
    assert all(first == last for first, last in buffered.pieces)
    assert len(buffered.leaver_pieces) == 1 and buffered.ending == "read"
    assert all(first < last for first, last in relayed.pieces)
    assert relayed.ending == "abandoned" and relayed.threads == 0
    assert offline_lab.settings.time_per_token is None, "the pace applies only while it runs"


def test_a_reader_task_reads_on_after_its_client_left(
    offline_lab: labsupport.MockUpstream,
) -> None:
    run = run_streams(StreamScenario(streams=2, relay="task", **SLOW))
    assert len(run.leaver_pieces) == 3
    assert run.ending == "read" and run.tokens_after


def test_a_sync_generator_holds_pool_threads_and_is_not_closed_by_the_disconnect(
    offline_lab: labsupport.MockUpstream,
) -> None:
    run = run_streams(StreamScenario(streams=4, relay="sync", **SLOW))
    assert run.threads >= 1
    # Not read on: the garbage collector may close it during the wait, never the relay.
    assert run.ending in {"open", "abandoned"}


def test_moving_a_control_reruns_and_the_text_stays_fixed(
    offline_lab: labsupport.MockUpstream,
) -> None:
    explorer = StreamExplorer(StreamScenario(streams=2, relay="async"))
    assert isinstance(explorer.controls["relay"], ipywidgets.Dropdown)
    first_png, first_run = bytes(explorer.image.value), explorer.run
    assert first_png.startswith(b"\x89PNG") and "closed the upstream" in explorer.caption.value

    explorer.controls["relay"].value = "task"
    assert explorer.scenario.relay == "task" and explorer.run is not first_run
    assert "tokens nobody sees" in explorer.caption.value  # the task relay's note
    explorer.controls["time_per_token"].value = 0.015000000000000001
    assert explorer.scenario.time_per_token == 0.015

    data, metadata = explorer._repr_mimebundle_()
    assert data["text/plain"].startswith(
        "Explorer: 2 streams · first token 0.10 s · 0.015 s per token · reader task and queue. "
        "Move a control to run it again. The reader task"
    )
    assert metadata["image/png"]["alt"] == data["text/plain"]
