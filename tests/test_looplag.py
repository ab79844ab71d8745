"""loop_lag(): blocking calls show up as blocked time, awaits do not."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from labsupport.looplag import LoopLagMonitor, loop_lag


@pytest.mark.anyio
async def test_time_sleep_blocks_the_loop() -> None:
    began = time.perf_counter()
    async with loop_lag() as lag:
        time.sleep(0.3)
    elapsed = time.perf_counter() - began
    assert 0.25 <= lag.longest <= lag.blocked <= elapsed  # never more than the block lasted
    assert lag.stalls == 1


@pytest.mark.anyio
async def test_awaiting_does_not_block_the_loop() -> None:
    """Paired with the same wait done blocking, in one test: a busy machine slows both."""
    async with loop_lag() as awaited:
        await asyncio.sleep(0.3)
    async with loop_lag() as blocking:
        time.sleep(0.3)
    assert 2 * awaited.blocked < blocking.blocked  # 0 against 0.3 on a quiet machine
    assert awaited.samples >= 10


@pytest.mark.anyio
async def test_separate_stalls_add_up() -> None:
    async with loop_lag() as lag:
        time.sleep(0.1)
        await asyncio.sleep(0.05)
        time.sleep(0.2)
    assert lag.stalls >= 2
    assert lag.blocked >= 0.25
    assert 0.15 <= lag.longest < lag.blocked  # two stalls, not one merged


@pytest.mark.anyio
async def test_start_and_stop_measure_a_stall_the_watcher_never_saw() -> None:
    monitor = LoopLagMonitor()
    began = time.perf_counter()
    monitor.start()
    time.sleep(0.2)  # the watcher task has not even started yet
    monitor.stop()
    assert 0.15 <= monitor.blocked <= time.perf_counter() - began
    began = time.perf_counter()
    monitor.start()  # restarting resets the numbers
    await asyncio.sleep(0.05)
    monitor.stop()
    assert monitor.blocked <= time.perf_counter() - began


@pytest.mark.anyio
async def test_no_watcher_task_outlives_the_block() -> None:
    tasks_before = asyncio.all_tasks()
    async with loop_lag():
        await asyncio.sleep(0.01)
    assert asyncio.all_tasks() == tasks_before


@pytest.mark.anyio
async def test_summary_prints_times_in_sanitizable_form() -> None:
    async with loop_lag() as lag:
        time.sleep(0.05)
    assert re.fullmatch(r"event loop blocked \d+\.\d\d s \(longest stall \d+\.\d\d s\)", str(lag))
    assert repr(lag) == f"<LoopLagMonitor stopped: {lag.summary()}>"


@pytest.mark.anyio
async def test_start_and_stop_are_idempotent_like_every_switch() -> None:
    monitor = LoopLagMonitor()
    monitor.stop()  # not running: nothing to do
    assert monitor.start() is monitor and monitor.active
    time.sleep(0.05)
    assert monitor.start() is monitor  # still the same run: the stall is not forgotten
    monitor.stop()
    monitor.stop()
    assert not monitor.active and monitor.stalls == 1 and monitor.blocked >= 0.05


@pytest.mark.anyio
async def test_a_plain_with_block_inside_a_coroutine_measures_too() -> None:
    with LoopLagMonitor() as lag:
        time.sleep(0.05)
    assert lag.stalls == 1 and lag.blocked >= 0.05


def test_start_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        LoopLagMonitor().start()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"interval": 0}, ValueError),
        ({"threshold": -1}, ValueError),
        ({"interval": True}, TypeError),
    ],
)
def test_rejects_bad_settings(options: dict[str, float], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(options))):
        loop_lag(**options)


@pytest.mark.anyio
async def test_a_sleeping_loop_is_blocked_not_starved() -> None:
    """`starved` is the part of the blocked time the thread spent ready to run, waiting for a
    CPU; a thread asleep in time.sleep is not ready, so that stall stays the answer's own."""
    async with loop_lag() as lag:
        time.sleep(0.3)
    assert 0.0 <= lag.starved <= lag.blocked
    assert lag.blocked - lag.starved >= 0.25
