"""loop_lag(): blocking calls show up as blocked time, awaits do not."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from labsupport.looplag import LoopLagMonitor, loop_lag


@pytest.mark.anyio
async def test_time_sleep_blocks_the_loop() -> None:
    async with loop_lag() as lag:
        time.sleep(0.3)
    assert 0.25 <= lag.blocked < 0.6
    assert 0.25 <= lag.longest < 0.6
    assert lag.stalls == 1


@pytest.mark.anyio
async def test_awaiting_does_not_block_the_loop() -> None:
    async with loop_lag() as lag:
        await asyncio.sleep(0.3)
    assert lag.blocked < 0.15  # 0 on a quiet machine; room for one hiccup on a busy CI
    assert lag.samples >= 10


@pytest.mark.anyio
async def test_separate_stalls_add_up() -> None:
    async with loop_lag() as lag:
        time.sleep(0.1)
        await asyncio.sleep(0.05)
        time.sleep(0.2)
    assert lag.stalls >= 2
    assert 0.25 <= lag.blocked < 0.6
    assert 0.15 <= lag.longest < 0.4


@pytest.mark.anyio
async def test_start_and_stop_measure_a_stall_the_watcher_never_saw() -> None:
    monitor = LoopLagMonitor()
    monitor.start()
    time.sleep(0.2)  # the watcher task has not even started yet
    monitor.stop()
    assert 0.15 <= monitor.blocked < 0.5
    monitor.start()  # restarting resets the numbers
    await asyncio.sleep(0.05)
    monitor.stop()
    assert monitor.blocked < 0.15


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
async def test_start_and_stop_must_alternate() -> None:
    monitor = LoopLagMonitor()
    with pytest.raises(RuntimeError, match="not running"):
        monitor.stop()
    monitor.start()
    with pytest.raises(RuntimeError, match="already running"):
        monitor.start()
    monitor.stop()


def test_start_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        LoopLagMonitor().start()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": 0}, "interval"),
        ({"threshold": -1}, "threshold"),
        ({"interval": True}, "interval"),
    ],
)
def test_rejects_bad_settings(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loop_lag(**options)
