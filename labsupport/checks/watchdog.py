"""Run a check's scenario so that learner code cannot hang the kernel.

A checker awaits the learner's code on the notebook's own event loop. If that code blocks the loop
(`threading.Semaphore.acquire()` waiting for a slot only another task could free, `time.sleep(60)`,
a busy loop), no `asyncio.timeout` can fire, because timeouts are callbacks of the very loop that
is stuck, and the cell hangs until the kernel is restarted. `guarded()` adds what the loop cannot
do for itself:

* a **heartbeat** task notes, every few milliseconds, that the loop is running;
* a **watchdog thread** notices when the heartbeat stops. It looks at what the main thread is
  doing (`sys._current_frames()`), and when the same learner frame has held the loop for
  `block_limit` seconds (counted in CPU time when the frame kept running rather than waiting, so
  that a starved CPU cannot make slow code look blocked), or the whole scenario ran past
  `time_limit`, it names the blocking call,
  cancels the scenario, and interrupts the main thread with a real signal (SIGUSR1), again and
  again while the loop stays blocked: a hundred tasks may each block in turn;
* during the scenario a SIGUSR1 handler raises a private `Exception` subclass, but only inside
  learner code running in an event-loop callback, so the exception lands in the learner's task
  (which records it and ends) and never in the loop's own machinery. PEP 475 makes blocking calls
  (`time.sleep`, lock acquisitions, socket reads) return early when a handler raises. Python
  also runs code nobody called in between: a weakref callback or a finalizer when an object
  dies, and the `sys.unraisablehook` that reports what those raised. An exception raised in
  such code cannot reach the learner's task, so while the scenario runs the handler raises
  nothing inside the hook, and the hook drops the watchdog's own exception (the blocked call
  goes on, and the next signal raises again) and passes on every other.

Counting blocks by the *same* frame keeps the verdicts of ordinary wrong answers intact: a sync
client in `async def` blocks the loop for one latency per request, each in another request's
frame, and the checker measures that as usual.

The user's own interrupt (Jupyter's SIGINT) is untouched and raises `KeyboardInterrupt` as ever.
Afterwards the previous SIGUSR1 handler is back. Whatever the scenario changed is restored by its
own `with` blocks (the upstream's `configured(...)`), which unwind with the cancellation; an
interrupted `guarded()` waits for that before the interrupt goes on.

In a browser tab (Pyodide, the course's JupyterLite site) there are no threads and no signals:
the scenario gets the time limit only, which fires while the loop is free. Code that blocks the
loop there is not stopped: under JSPI `time.sleep` does not block it, but a busy loop does, until
it ends.

Limits: signals reach only the main thread, so a scenario awaited in another thread's event loop
(not the case in a notebook) only gets the time limit, which needs a loop that is not blocked.
A call blocked inside C code that never checks for signals (a long C computation) is stopped only
when it returns.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import linecache
import os
import signal
import sys
import sysconfig
import textwrap
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final, Generic, Literal, TypeVar

from ..browser import in_browser

__all__ = ["Blocked", "Guarded", "guarded", "is_learner_code"]

T = TypeVar("T")

HEARTBEAT: Final = 0.01
"""Seconds between heartbeats, and between the watchdog's looks at the loop."""

STALL: Final = 0.05
"""Seconds without a heartbeat after which the watchdog looks at what blocks the loop."""

RESIGNAL: Final = 0.005
"""Seconds between interrupts while the loop stays blocked after the watchdog stepped in."""

GIVE_UP: Final = 30.0
"""Seconds after stepping in when the watchdog stops interrupting (code that ignores signals)."""

UNWIND_LIMIT: Final = 15.0
"""Seconds an interrupted scenario may take to clean up (a server draining its requests for
`serving.GRACEFUL_SHUTDOWN_TIMEOUT` seconds, then the app's shutdown) before the interrupt goes
on without it."""

WAITING_SHARE: Final = 0.9
"""The share of the watchdog's looks that must find the main thread asleep in the kernel for a
block to count as a wait (judged by the clock) rather than running code (judged by CPU time)."""

BlockKind = Literal["threading", "sleep", "busy", "call"]
"""What held the loop: a `threading` primitive (a lock, semaphore, condition, event, or a
`queue.Queue`, which waits on them), `time.sleep`, Python code that never waited (a busy loop),
or another blocking call."""

_LIBRARY_ROOTS: Final = tuple(
    os.path.realpath(path) + os.sep
    for path in {
        *(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")),
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # labsupport itself
    }
)


def is_learner_code(frame: FrameType) -> bool:
    """Whether `frame` runs code outside the standard library, installed packages and labsupport:
    a notebook cell, or the learner's own module."""
    filename = frame.f_code.co_filename
    if filename.startswith("<"):  # "<frozen …>", "<string>"
        return False
    return not os.path.realpath(filename).startswith(_LIBRARY_ROOTS)


@dataclass(frozen=True)
class Blocked:
    """What the watchdog found holding the event loop when it stepped in."""

    seconds: float
    """How long the loop had not run when the watchdog stepped in."""
    call: str
    """The blocking call, e.g. "threading.Semaphore.acquire()", or the line's code."""
    where: str
    """The learner's frame, e.g. "one_call (line 7: `with slots:`)"."""
    kind: BlockKind

    def describe(self) -> str:
        """One sentence, e.g. "the event loop was blocked for 2.0 s inside
        threading.Semaphore.acquire(), in one_call (line 7: `with slots:`)"."""
        inside = "in a loop that never awaited" if self.kind == "busy" else f"inside {self.call}"
        return f"the event loop was blocked for {self.seconds:.1f} s {inside}, in {self.where}"


@dataclass(frozen=True)
class Guarded(Generic[T]):
    """How a guarded scenario ended: its value or error, and whether the watchdog stepped in."""

    value: T | None
    error: BaseException | None
    blocked: Blocked | None
    """Set when the watchdog stopped a blocked event loop."""
    timed_out: bool
    """Whether the scenario ran past its time limit (blocked or not)."""
    interruptible: bool
    """Whether a blocked loop could be interrupted (only on the main thread)."""

    @property
    def stopped(self) -> bool:
        """Whether the watchdog stopped the scenario (blocked, or out of time)."""
        return self.blocked is not None or self.timed_out


class _Interrupted(Exception):
    """Raised inside learner code that blocked the event loop. An `Exception` (not a
    `BaseException`), so the learner's task records it instead of crashing the loop."""


async def guarded(scenario: Awaitable[T], *, block_limit: float, time_limit: float) -> Guarded[T]:
    """Await `scenario` as its own task, under the watchdog described in the module docstring.

    Never raises what the scenario raises (it is returned as `error`); a cancellation of the
    caller, or a `KeyboardInterrupt`, still propagates, once the scenario it cancelled has
    unwound (its servers stopped, its settings restored).
    """
    if not 0 < block_limit <= time_limit:
        if inspect.iscoroutine(scenario):
            scenario.close()  # never to run: spare the caller a "never awaited" warning
        raise ValueError(f"need 0 < block_limit <= time_limit; got {block_limit}, {time_limit}")
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(scenario)
    if in_browser():
        return await _timed(task, time_limit)
    dog = _Watchdog(loop, task, block_limit=block_limit, time_limit=time_limit)
    heartbeat = loop.create_task(dog.heartbeat(), name="labsupport watchdog heartbeat")
    previous = dog.install_handler()
    previous_hook = dog.install_unraisable_hook()
    dog.start()
    try:
        await asyncio.wait([task])
    finally:
        if not task.done():  # we were cancelled (or interrupted) ourselves
            await _unwound(task)  # still watched: its clean-up is code that may block too
        dog.stop()  # joins the thread: no signal is on its way once it returns
        dog.restore_handler(previous)
        dog.restore_unraisable_hook(previous_hook)
        heartbeat.cancel()
        await asyncio.wait([heartbeat])
        _retrieve_errors(dog.interrupted_tasks)
    return _ended(
        task, blocked=dog.blocked, timed_out=dog.timed_out, interruptible=dog.interruptible
    )


async def _timed(task: asyncio.Future[T], time_limit: float) -> Guarded[T]:
    """`guarded()` where no watchdog thread can start (Pyodide): the time limit alone, which
    cancels the scenario once it runs past it."""
    try:
        done, _ = await asyncio.wait([task], timeout=time_limit)
    finally:
        if not task.done():  # out of time, or we were cancelled ourselves
            await _unwound(task)
    return _ended(task, blocked=None, timed_out=not done, interruptible=False)


def _ended(
    task: asyncio.Future[T], *, blocked: Blocked | None, timed_out: bool, interruptible: bool
) -> Guarded[T]:
    """How the scenario's finished `task` ended, as a `Guarded`."""
    error: BaseException | None = None
    value: T | None = None
    if task.cancelled():
        error = asyncio.CancelledError()
    elif task.exception() is not None:
        error = task.exception()
    else:
        value = task.result()
    return Guarded(value, error, blocked, timed_out, interruptible)


def _retrieve_errors(tasks: set[asyncio.Task[Any]]) -> None:
    """Mark the `_Interrupted` of each of the learner's `tasks` as seen, now or when the task
    ends, so the loop never prints "Task exception was never retrieved" for a task a check gave
    up on.

    Left to the garbage collector, each would print its traceback into a later cell, whenever
    the task happens to be collected; and on Python 3.11 that finalizer, run while `ast.parse`
    builds its tree, makes the parse fail ("AST constructor recursion depth mismatch"), breaking
    whatever compiles code next (IPython, pytest's assertion rewriting)."""
    for task in tasks:
        task.add_done_callback(_seen)


def _seen(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _unwound(task: asyncio.Future[Any]) -> None:
    """Cancel the scenario and wait until it has unwound, so that what it started is undone
    before the interrupt goes on: a server it runs has stopped and freed its port, a setting it
    changed is back. Without the wait, the cell would end while that clean-up still runs in the
    background, and the next cell would find the port still bound.

    Each further interrupt is passed on to the scenario (`serve()` then stops at once); one that
    does not end within `UNWIND_LIMIT` seconds (learner code that swallows cancellations) is
    left to finish on its own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + UNWIND_LIMIT
    task.cancel()
    while not task.done() and (remaining := deadline - loop.time()) > 0:
        try:
            await asyncio.wait([task], timeout=remaining)
        except asyncio.CancelledError:
            task.cancel()


class _Watchdog:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Future[Any],
        *,
        block_limit: float,
        time_limit: float,
    ) -> None:
        self.loop, self.task = loop, task
        self.block_limit, self.time_limit = block_limit, time_limit
        self.interruptible = threading.current_thread() is threading.main_thread()
        self.blocked: Blocked | None = None
        self.timed_out = False
        self.interrupted_tasks: set[asyncio.Task[Any]] = set()
        """The learner's tasks the signal handler raised `_Interrupted` in."""
        self._main = threading.main_thread().ident or 0
        self._start = self._beat = time.perf_counter()
        self._stepped_in: float | None = None
        self._signalled = 0.0
        self._frame: FrameType | None = None
        self._frame_since = 0.0
        self._cpu_since = 0.0
        self._looks = self._asleep = 0
        self._main_native = threading.main_thread().native_id
        self._reporting_unraisable = 0
        """How deep the main thread is in `sys.unraisablehook` (0: not in it)."""
        self._previous_unraisable_hook: Any = sys.unraisablehook
        self._unraisable_hook = self._report_unraisable  # one bound method, to know it again
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="labsupport watchdog", daemon=True)

    # -- on the event loop's thread ---------------------------------------------------------
    async def heartbeat(self) -> None:
        while True:
            self._beat = time.perf_counter()
            await asyncio.sleep(HEARTBEAT)

    def install_handler(self) -> Any:
        if not self.interruptible:
            return None
        return signal.signal(signal.SIGUSR1, self._on_signal)

    def restore_handler(self, previous: Any) -> None:
        if self.interruptible:
            signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_DFL)

    def install_unraisable_hook(self) -> Any:
        previous = sys.unraisablehook
        self._previous_unraisable_hook = previous
        sys.unraisablehook = self._unraisable_hook
        return previous

    def restore_unraisable_hook(self, previous: Any) -> None:
        if sys.unraisablehook is self._unraisable_hook:  # a hook set since then stays
            sys.unraisablehook = previous

    def _report_unraisable(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, _Interrupted):
            return  # raised where no task could catch it; the next signal raises again
        in_main = threading.get_ident() == self._main
        self._reporting_unraisable += in_main
        try:
            self._previous_unraisable_hook(unraisable)
        finally:
            self._reporting_unraisable -= in_main

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Still blocked (no heartbeat since the signal was sent), and inside learner code run by
        # an event-loop callback, not in the report of an unraisable exception: raise there, as
        # if the blocking call had failed.
        if (
            self._stepped_in is not None
            and not self._reporting_unraisable
            and self._beat < self._signalled
            and frame is not None
            and _in_learner_callback(frame)
        ):
            task = asyncio.current_task(self.loop)
            if task is not None:
                self.interrupted_tasks.add(task)
            raise _Interrupted(self.blocked.describe() if self.blocked else "time limit reached")

    # -- on the watchdog's thread -----------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._frame = None

    def _watch(self) -> None:
        while not self._stop.wait(HEARTBEAT if self._stepped_in is None else RESIGNAL):
            now = time.perf_counter()
            stalled = now - self._beat
            if self._stepped_in is None:
                self._look(now, stalled)
            elif stalled >= STALL and now - self._signalled >= RESIGNAL:
                if now - self._stepped_in > GIVE_UP:
                    return
                self._interrupt(now)

    def _look(self, now: float, stalled: float) -> None:
        over_time = now - self._start > self.time_limit
        if stalled < STALL:
            self._frame = None
            if over_time:
                self.timed_out = True
                self._step_in(now)
            return
        # One walk of the stack, kept: the main thread runs on meanwhile, and a coroutine's
        # frame that has suspended since no longer links to its caller (its f_back is None).
        segment = _callback_segment(sys._current_frames().get(self._main))
        learner = next((f for f in segment if is_learner_code(f)), None)
        if learner is None:  # the lab's own code (starting a server, say) is not judged
            self._frame = None
            if over_time:
                self.timed_out = True
                self._step_in(now)
            return
        if learner is not self._frame:  # held, so another call cannot reuse its identity
            # The stall began with this frame, or (after another frame) about one look ago.
            since = now - stalled if self._frame is None else now - HEARTBEAT
            self._frame, self._frame_since = learner, since
            self._cpu_since, self._looks, self._asleep = self._main_cpu(), 0, 0
        # Running all along (a busy loop, or slow code on a starved CPU), or waiting (sleep,
        # lock, socket)? The main thread's scheduler state tells (runnable, or asleep in the
        # kernel). A wait is judged by the clock; code that runs, by the CPU time it used, so
        # a loaded machine cannot make slow code look blocked.
        self._looks += 1
        self._asleep += self._main_asleep()
        cpu = self._main_cpu() - self._cpu_since
        waiting = self._asleep >= WAITING_SHARE * self._looks
        held = now - self._frame_since if waiting else cpu
        if held >= self.block_limit or over_time:
            self.timed_out = over_time
            self.blocked = _describe(segment, learner, stalled, busy=not waiting)
            self._step_in(now)

    def _main_asleep(self) -> int:
        """1 if the main thread is asleep in the kernel now (waiting: a lock, a sleep, a
        socket), 0 if it runs or waits for a CPU; 1 where the platform cannot tell."""
        try:
            with open(f"/proc/self/task/{self._main_native}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return 1
        return int(state in (b"S", b"D"))

    def _main_cpu(self) -> float:
        """Seconds of CPU the main thread has used (0 where the platform cannot tell)."""
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(self._main))
        except (AttributeError, OSError):
            return 0.0

    def _step_in(self, now: float) -> None:
        self._stepped_in = now
        self.loop.call_soon_threadsafe(self.task.cancel)
        if self.blocked is not None:
            self._interrupt(now)

    def _interrupt(self, now: float) -> None:
        if not self.interruptible:
            return
        self._signalled = now
        signal.pthread_kill(self._main, signal.SIGUSR1)


_HANDLE_FILE: Final = os.path.join("asyncio", "events.py")


def _callback_segment(frame: FrameType | None) -> list[FrameType]:
    """The frames from `frame` outwards up to (not including) the event loop's `Handle._run`,
    or [] when `frame` is not running inside an event-loop callback."""
    frames: list[FrameType] = []
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_run" and code.co_filename.endswith(_HANDLE_FILE):
            return frames
        frames.append(frame)
        frame = frame.f_back
    return []


def _in_learner_callback(frame: FrameType) -> bool:
    return any(is_learner_code(f) for f in _callback_segment(frame))


def _describe(
    segment: list[FrameType], learner: FrameType, stalled: float, *, busy: bool
) -> Blocked:
    """Name the blocking call from the main thread's stack (`segment`, from its innermost frame
    out to the event loop's callback; `learner` is one of them)."""
    filename = learner.f_code.co_filename
    number = learner.f_lineno
    if busy:  # named by its loop: which line of the loop it was on is the bytecode's choice
        number = _enclosing_loop(filename, learner.f_code.co_firstlineno, number) or number
    line = linecache.getline(filename, number).strip()
    where = f"{learner.f_code.co_qualname} (line {number}: `{line}`)"
    if busy:
        return Blocked(stalled, f"`{line}`", where, "busy")
    index = segment.index(learner)
    if index > 0:  # a Python-level callee: the library function the learner called
        call = f"{_qualified(segment[index - 1])}()"
    else:
        called = _called_object(learner)
        if called is None:
            return Blocked(stalled, f"`{line}`", where, "busy")
        call = called
    if call.startswith(("threading.", "queue.")):
        kind: BlockKind = "threading"
    elif call == "time.sleep()":
        kind = "sleep"
    else:
        kind = "call"
    return Blocked(stalled, call, where, kind)


def _enclosing_loop(filename: str, first: int, number: int) -> int | None:
    """The first line of the innermost `while` or `for` around line `number` of `filename` that
    starts at or after line `first` (where the running function starts), or None (no loop
    there, or no source to parse).

    Code that runs without awaiting runs a loop; where in the loop the watchdog finds it depends
    on the bytecode: a loop's jump back belongs to the `while` line on 3.11 and to the body's
    last line (`pass`) on 3.14, and the main thread gives up the interpreter at that jump."""
    tree = _parsed("".join(linecache.getlines(filename)), "exec")
    if tree is None:
        return None
    loops = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.While | ast.For | ast.AsyncFor)
        and first <= node.lineno <= number <= (node.end_lineno or node.lineno)
    ]
    return max(loops, default=None)


def _qualified(frame: FrameType) -> str:
    module = frame.f_globals.get("__name__", "?")
    return f"{module}.{frame.f_code.co_qualname}"


_THREADING_TYPES: Final = {"lock": "threading.Lock", "RLock": "threading.RLock"}


def _called_object(frame: FrameType) -> str | None:
    """The C-level call `frame` is executing (it has no frame of its own), such as
    "threading.Lock.__enter__()"; None if its current instruction is not a call.

    Found from what every supported Python (3.11 on) keeps, whatever its bytecode: the source
    position of the current instruction (`co_positions()` at `f_lasti`), read as source text
    and parsed. A call's instruction spans the call expression (`slots.acquire()`); entering a
    `with` spans the statement (or, on some versions, its context expression). The callee's
    name is then looked up in the frame, attribute by attribute, to give its qualified name."""
    segment = _current_source(frame)
    if segment is None:
        return None
    statement = _parsed(textwrap.dedent(segment), "exec")
    if isinstance(statement, ast.Module) and len(statement.body) == 1:
        first = statement.body[0]
        if isinstance(first, ast.With | ast.AsyncWith):
            contexts = [item.context_expr for item in first.items]
            return _entered(frame, contexts)
    expression = _parsed(f"(\n{segment}\n)", "eval")
    if not isinstance(expression, ast.Expression):
        return None
    if isinstance(expression.body, ast.Call):
        return _callee(frame, expression.body.func)
    if isinstance(expression.body, ast.Name | ast.Attribute) and _in_with(frame):
        return _entered(frame, [expression.body])
    return None


def _current_source(frame: FrameType) -> str | None:
    """The source text of the instruction `frame` is executing, from its code position."""
    positions = list(frame.f_code.co_positions())
    index = frame.f_lasti // 2
    if not 0 <= index < len(positions):
        return None
    line, end_line, column, end_column = positions[index]
    if None in (line, end_line, column, end_column):
        return None
    assert line is not None and end_line is not None
    assert column is not None and end_column is not None
    lines = [
        linecache.getline(frame.f_code.co_filename, number).encode()
        for number in range(line, end_line + 1)
    ]
    if not any(lines):
        return None
    # Columns are byte offsets into each line's UTF-8 encoding.
    lines[-1] = lines[-1][:end_column]
    lines[0] = lines[0][column:]
    return b"".join(lines).decode(errors="replace")


def _in_with(frame: FrameType) -> bool:
    """Whether `frame`'s current line starts a `with` statement."""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).lstrip()
    return line.startswith(("with ", "with(", "async with "))


def _parsed(source: str, mode: str) -> ast.AST | None:
    try:
        return ast.parse(source, mode=mode)
    except (SyntaxError, ValueError):
        return None


def _entered(frame: FrameType, contexts: list[ast.expr]) -> str | None:
    """ "<type>.__enter__()" for the context manager a `with` is entering: the one of a
    threading type if several are entered at once, else the first."""
    found = [(expression, _resolved(frame, expression)) for expression in contexts]
    threading_ones = [
        pair for pair in found if type(pair[1]).__module__ in ("_thread", "threading")
    ]
    expression, target = (threading_ones or found)[0]
    if target is None:
        return f"{ast.unparse(expression)}.__enter__()"
    kind = type(target)
    known = _THREADING_TYPES.get(kind.__qualname__) if kind.__module__ == "_thread" else None
    return f"{known or kind.__module__ + '.' + kind.__qualname__}.__enter__()"


def _callee(frame: FrameType, expression: ast.expr) -> str:
    """The qualified name of the function `expression` names in `frame`, as "module.name()"."""
    target = _resolved(frame, expression)
    if target is None:
        return f"{ast.unparse(expression)}()"
    owner = getattr(target, "__self__", None)
    name = getattr(target, "__name__", None) or ast.unparse(expression)
    if owner is not None and not inspect.ismodule(owner):  # a method of a C type's object
        kind = type(owner)
        known = _THREADING_TYPES.get(kind.__qualname__) if kind.__module__ == "_thread" else None
        return f"{known or kind.__module__ + '.' + kind.__qualname__}.{name}()"
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or name
    return f"{module}.{qualname}()" if module else f"{ast.unparse(expression)}()"


def _resolved(frame: FrameType, expression: ast.expr) -> Any:
    """The object a name or attribute chain (`slots`, `self.slot`, `time.sleep`) stands for
    in `frame`; None for any other expression, or a name not found."""
    if isinstance(expression, ast.Name):
        return _lookup(frame, expression.id)
    if isinstance(expression, ast.Attribute):
        owner = _resolved(frame, expression.value)
        return None if owner is None else getattr(owner, expression.attr, None)
    return None


def _lookup(frame: FrameType, name: str) -> Any:
    for scope in (frame.f_locals, frame.f_globals, frame.f_builtins):
        if name in scope:
            return scope[name]
    return None
