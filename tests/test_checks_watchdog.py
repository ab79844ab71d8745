"""The watchdog stops learner code that blocks the event loop, names the blocking call, and
leaves the process able to run the next check: the kernel answers the next cell."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from labsupport.checks import watchdog
from labsupport.checks.watchdog import Guarded, guarded
from labsupport.instructor.kernels import KERNEL_NAME, CurrentEnvKernelManager

LIMIT = 0.3  # seconds the same learner frame may hold the loop


async def one_slot(slots: threading.Semaphore) -> None:
    with slots:  # a threading semaphore: the sixth task blocks the loop for good
        await asyncio.sleep(0.01)


async def hundred_tasks_on_a_threading_semaphore() -> None:
    slots = threading.Semaphore(5)
    await asyncio.gather(*(one_slot(slots) for _ in range(100)))


async def threading_lock_across_an_await() -> None:
    lock = threading.Lock()

    async def one() -> None:
        with lock:
            await asyncio.sleep(0.01)

    await asyncio.gather(one(), one())


async def sleeps_a_minute() -> None:
    time.sleep(60)


async def busy_loop() -> None:
    end = time.perf_counter() + 60
    while time.perf_counter() < end:
        pass


async def busy_loop_with_a_body() -> None:
    end = time.perf_counter() + 60
    while True:
        if time.perf_counter() > end:
            break


async def swallows_everything() -> None:
    for _ in range(3):
        with contextlib.suppress(Exception):  # a broad except: the watchdog interrupts again
            time.sleep(60)


class Holder:
    def __init__(self) -> None:
        self.lock = threading.RLock()


async def attribute_lock_across_an_await() -> None:
    holder = Holder()

    async def one() -> None:
        with holder.lock:  # an attribute chain, an RLock: held by this thread, entered again
            await asyncio.sleep(0.01)

    # The RLock lets its own thread in again: block from a thread-held one instead.
    threading.Thread(target=holder.lock.acquire, daemon=True).start()
    await asyncio.sleep(0.05)
    await one()


async def two_items_one_of_them_a_lock() -> None:
    lock = threading.Lock()
    lock.acquire()
    with contextlib.nullcontext(), lock:
        await asyncio.sleep(0.01)


async def acquire_with_a_keyword() -> None:
    lock = threading.Lock()
    lock.acquire()
    lock.acquire(timeout=60)


async def event_nobody_sets() -> None:
    threading.Event().wait()


async def queue_nobody_fills() -> None:
    queue.Queue[int]().get()


async def blocking_socket_read() -> None:
    mine, theirs = socket.socketpair()
    with mine, theirs:
        mine.recv(1)  # blocking I/O: the other end never writes


async def fine() -> int:
    await asyncio.sleep(0.05)
    return 42


def run(scenario: object, *, time_limit: float = 20.0) -> Guarded[object]:
    async def main() -> Guarded[object]:
        return await guarded(scenario, block_limit=LIMIT, time_limit=time_limit)  # type: ignore[arg-type]

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("scenario", "kind", "call"),
    [
        (hundred_tasks_on_a_threading_semaphore, "threading", "threading.Semaphore.acquire()"),
        (threading_lock_across_an_await, "threading", "threading.Lock.__enter__()"),
        (sleeps_a_minute, "sleep", "time.sleep()"),
        (busy_loop, "busy", "`while time.perf_counter() < end:`"),
        # Named by its loop, whichever line of it was running (3.14 puts the loop's jump back
        # on the body's last line, where the main thread lets the watchdog look).
        (busy_loop_with_a_body, "busy", "`while True:`"),
        (swallows_everything, "sleep", "time.sleep()"),
        (attribute_lock_across_an_await, "threading", "threading.RLock.__enter__()"),
        (two_items_one_of_them_a_lock, "threading", "threading.Lock.__enter__()"),
        (acquire_with_a_keyword, "threading", "threading.Lock.acquire()"),
        (event_nobody_sets, "threading", "threading.Event.wait()"),
        (queue_nobody_fills, "threading", "queue.Queue.get()"),
        (blocking_socket_read, "call", "socket.socket.recv()"),
    ],
    ids=lambda value: getattr(value, "__name__", None) or str(value),
)
def test_a_blocked_loop_is_stopped_and_named_then_the_next_scenario_runs(
    scenario: object, kind: str, call: str
) -> None:
    handler = signal.getsignal(signal.SIGUSR1)
    outcome = run(scenario())  # type: ignore[operator]
    assert outcome.blocked is not None, outcome
    assert (outcome.blocked.kind, outcome.blocked.call) == (kind, call)
    assert outcome.blocked.seconds >= LIMIT
    assert f"the event loop was blocked for {outcome.blocked.seconds:.1f} s" in (
        outcome.blocked.describe()
    )
    assert outcome.stopped
    assert signal.getsignal(signal.SIGUSR1) == handler  # put back
    assert threading.active_count() == 1 or all(
        t.name != "labsupport watchdog" for t in threading.enumerate()
    )
    after = run(fine())
    assert (after.value, after.blocked, after.error) == (42, None, None)


class Mortal:
    """An object whose death runs a weakref callback: code nobody called."""


def slow_death(_: object) -> None:
    time.sleep(0.02)  # most of the blocked time is spent here, inside the callback


def failing_death(_: object) -> None:
    time.sleep(0.02)
    raise ValueError("the callback's own error")  # reported through sys.unraisablehook


async def blocks_in_weakref_callbacks(callback: Any) -> None:
    kept = []
    end = time.perf_counter() + 60
    while time.perf_counter() < end:
        time.sleep(0.005)  # a fifth of the time or less: most signals land in the callback
        kept.append(weakref.ref(Mortal(), callback))  # the Mortal dies at once


class ReportedUnraisable:
    """A `sys.unraisablehook` that takes its time (as pytest's does, formatting a traceback from
    source files) and notes what it was given and whether it was left cleanly."""

    def __init__(self) -> None:
        self.errors: list[type[BaseException]] = []
        self.left = 0

    def __call__(self, unraisable: Any) -> None:
        self.errors.append(type(unraisable.exc_value))
        time.sleep(0.02)
        self.left += 1


@pytest.mark.parametrize("callback", [slow_death, failing_death], ids=lambda f: f.__name__)
def test_no_signal_raises_in_a_weakref_callback_or_in_the_report_of_one(
    monkeypatch: pytest.MonkeyPatch, callback: Any
) -> None:
    """A signal that lands in a weakref callback raises where no task can catch it: Python
    reports it as unraisable and the blocked call goes on. Under load on 3.13 one then landed
    inside pytest's unraisable hook, which failed the test ("Failed to process unraisable
    exception"). The watchdog's exception is dropped there, and nothing is raised inside a hook;
    what the learner's callback raised itself is still reported."""
    reported = ReportedUnraisable()
    monkeypatch.setattr(sys, "unraisablehook", reported)
    # Each callback is a new frame, so no one frame holds the loop: the time limit steps in.
    outcome = run(blocks_in_weakref_callbacks(callback), time_limit=2.0)
    assert isinstance(outcome.error, watchdog._Interrupted) and outcome.stopped, outcome
    assert watchdog._Interrupted not in reported.errors
    assert reported.left == len(reported.errors)  # every report ran to its end
    if callback is failing_death:
        assert ValueError in reported.errors
    assert sys.unraisablehook is reported  # put back


def test_a_hook_the_scenario_set_is_left_in_place() -> None:
    async def sets_its_own_hook() -> None:
        sys.unraisablehook = hook

    hook = ReportedUnraisable()
    before = sys.unraisablehook
    try:
        assert run(sets_its_own_hook()).error is None
        assert sys.unraisablehook is hook
    finally:
        sys.unraisablehook = before


def test_a_free_loop_is_left_alone_even_when_it_is_blocked_briefly_many_times() -> None:
    async def many_short_blocks() -> int:
        async def one() -> None:
            time.sleep(0.02)  # each task's own frame: 40 × 0.02 s is 0.8 s in a row
            await asyncio.sleep(0)

        await asyncio.gather(*(one() for _ in range(40)))
        return 1

    outcome = run(many_short_blocks())
    assert (outcome.value, outcome.blocked, outcome.timed_out) == (1, None, False)


def test_a_scenario_past_its_time_limit_is_cancelled() -> None:
    outcome = run(asyncio.sleep(60), time_limit=LIMIT)
    assert outcome.timed_out and outcome.blocked is None
    assert isinstance(outcome.error, asyncio.CancelledError)


def test_the_users_interrupt_is_still_a_keyboard_interrupt() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, signal.raise_signal, signal.SIGINT)
        await guarded(asyncio.sleep(5), block_limit=LIMIT, time_limit=20)

    handler = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert signal.getsignal(signal.SIGUSR1) == handler


def test_the_watchdog_names_calls_without_reading_opcodes() -> None:
    """Opcode names differ between Python versions (3.12 dropped PRECALL and LOAD_METHOD, 3.14
    BEFORE_WITH): the watchdog reads source positions and frames, which every version keeps."""
    source = Path(watchdog.__file__).read_text(encoding="utf-8")
    assert "import dis" not in source and "opname" not in source


def test_bad_limits() -> None:
    with pytest.raises(ValueError, match="block_limit"):
        run(fine(), time_limit=0.1)


KERNEL_CELLS = [
    "import asyncio, threading\nimport labsupport as lab\nupstream = lab.setup(latency=0.05)\n"
    "from openai import AsyncOpenAI\naclient = AsyncOpenAI()",
    # The learner's answer to notebook 03 with a threading semaphore: without the watchdog,
    # this cell deadlocks the kernel for good.
    "slots = threading.Semaphore(5)\n\n"
    "async def one(text):\n"
    "    with slots:\n"
    "        r = await aclient.chat.completions.create(model='gpt-4o-mini',\n"
    "            messages=[{'role': 'user', 'content': text}])\n"
    "        return r.choices[0].message.content\n\n"
    "async def summarize_all(texts):\n"
    "    return await asyncio.gather(*(one(t) for t in texts))\n\n"
    "result = await lab.checks.check_bounded_batch(summarize_all, limit=5)\n"
    "print(result.cause)\nprint(result.summary)",
    "print('latency', upstream.settings.latency, 'limit', upstream.settings.rate_limit)",
    "slots = asyncio.Semaphore(5)\n\n"
    "async def one(text):\n"
    "    async with slots:\n"
    "        r = await aclient.chat.completions.create(model='gpt-4o-mini',\n"
    "            messages=[{'role': 'user', 'content': text}])\n"
    "        return r.choices[0].message.content\n\n"
    "print((await lab.checks.check_bounded_batch(summarize_all, limit=5)).cause)",
]


@pytest.mark.slow
def test_in_a_real_kernel_a_deadlocking_answer_is_stopped_and_the_next_cell_answers() -> None:
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in KERNEL_CELLS]
    )
    client = NotebookClient(
        notebook,
        timeout=60,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=CurrentEnvKernelManager,
    )
    asyncio.run(client.async_execute())
    printed = ["".join(o.get("text", "") for o in cell.outputs) for cell in notebook.cells]
    cause, summary = printed[1].splitlines()[:2]
    assert cause == "threading_primitive"
    assert "inside threading.Semaphore.acquire()" in summary and "`with slots:`" in summary
    assert printed[2] == "latency 0.05 limit None\n"  # the upstream is as the lesson left it
    assert printed[3] == "ok\n"


async def _interrupt(client: Any, manager: Any, code: str) -> dict[str, Any]:
    """Run `code`, interrupt the kernel 3 s later as Jupyter's stop button does; the reply, once
    the kernel is idle again.

    After a cell that ends in an error, ipykernel aborts the requests that reach it before it
    has finished doing so (its stop-on-error): a next cell sent as soon as the reply arrives
    was answered "aborted" in 7 of 96 runs on a busy machine, and printed nothing. The kernel
    reports "idle" once that is settled."""
    waiting = client.execute(code)
    await asyncio.sleep(3)
    await manager.interrupt_kernel()
    reply: dict[str, Any] = await client._async_get_shell_msg(timeout=30)
    assert reply["parent_header"]["msg_id"] == waiting
    while True:
        message = await client._async_get_iopub_msg(timeout=30)
        if (
            message["parent_header"].get("msg_id") == waiting
            and message["content"].get("execution_state") == "idle"
        ):
            return reply["content"]  # type: ignore[no-any-return]


def _shown(message: dict[str, Any]) -> str:
    """What an output message shows: a stream's text, or an error's name and value (so that a
    failed assertion says what the cell did instead of printing)."""
    content = message["content"]
    if message["msg_type"] == "error":
        return f"{content['ename']}: {content['evalue']}\n"
    return str(content.get("text", ""))


async def _interrupted_kernel_session() -> tuple[dict[str, Any], str]:
    """In a real kernel: interrupt a check whose answer awaits for a minute (its watchdog
    thread and SIGUSR1 handler on), then run one more cell."""
    manager = CurrentEnvKernelManager(kernel_name=KERNEL_NAME)
    await manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        await client.execute_interactive(KERNEL_CELLS[0], timeout=60)
        checked = await _interrupt(
            client,
            manager,
            "async def summarize_all(texts):\n"
            "    await asyncio.sleep(60)\n\n"
            "await lab.checks.check_bounded_batch(summarize_all, limit=5)",
        )
        printed: list[str] = []
        await client.execute_interactive(
            "import signal, threading\n"
            "print(signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL,\n"
            "      [t.name for t in threading.enumerate() if 'watchdog' in t.name],\n"
            "      upstream.settings.rate_limit)",
            timeout=60,
            output_hook=lambda m: printed.append(_shown(m)),
        )
        return checked, "".join(printed)
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)


@pytest.mark.slow
def test_in_a_real_kernel_the_users_interrupt_stops_a_check_and_cleans_up() -> None:
    checked, printed = asyncio.run(_interrupted_kernel_session())
    # ipykernel 7 ends an interrupted top-level `await` by cancelling the cell's task.
    assert checked["status"] == "error"
    assert checked["ename"] in ("KeyboardInterrupt", "CancelledError")
    assert printed == "True [] None\n"  # handler back, no watchdog left, upstream restored


def test_without_threads_the_time_limit_alone_stops_a_scenario(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In Pyodide (no threads, no signals) `guarded` starts no watchdog: a scenario past its time
    limit is cancelled, one within it keeps its value."""
    monkeypatch.setattr(watchdog.sys, "platform", "emscripten")
    started = threading.active_count()

    async def both() -> tuple[watchdog.Guarded[str], watchdog.Guarded[str]]:
        async def answer(seconds: float) -> str:
            await asyncio.sleep(seconds)
            return "answered"

        slow = await watchdog.guarded(answer(30), block_limit=0.1, time_limit=0.2)
        quick = await watchdog.guarded(answer(0), block_limit=0.1, time_limit=5)
        assert threading.active_count() == started  # no watchdog thread was started
        return slow, quick

    slow, quick = asyncio.run(both())
    assert (slow.timed_out, slow.blocked, slow.interruptible) == (True, None, False)
    assert isinstance(slow.error, asyncio.CancelledError) and slow.value is None
    assert (quick.timed_out, quick.value, quick.error) == (False, "answered", None)
