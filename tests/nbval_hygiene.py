"""What learners do to a notebook, and hygiene probes, riding on nbval's own run (a pytest plugin).

nbval executes each notebook once, top to bottom, in its own kernel, and compares every cell's
outputs with the stored ones. This plugin makes that one execution carry three more guarantees,
so no notebook has to be executed again for them:

**Run twice, interrupted.** Learners re-run a cell to see it again, and stop a slow one with ■
(JupyterLab sends SIGINT to the kernel). So, in every learner notebook, each code cell runs a
second time right after nbval's run and must print the stored outputs again (compared by nbval
itself, with the sanitizer): a re-run counts from where it starts, restarts what it started and
repeats its verdicts. A cell whose second run took longer than `LONG_CELL` seconds then runs a
third time and is interrupted halfway through (`interrupt_kernel()`, as Jupyter does): ■ must
take effect — the cell ends stopped (`KeyboardInterrupt`, or `CancelledError` for a cell that
awaits) or before its uninterrupted run time — unless tagged `drains-on-interrupt` (what is
left after ■ is a graceful shutdown the lesson teaches, which may end normally); the kernel's
reply says which, so no clock decides it on a busy machine; nothing of that run is
compared, but every later cell still is: an interrupted cell leaves no setting
changed, no server running and no count off. A solution notebook is its learner notebook with
the exercise cell swapped for the solution: the cells before the first one that differs were
already exercised in the learner notebook, so there they run once. `--nbval-once` turns all of
this off (one plain nbval run).

**Hygiene probes.** Two cells are added to the run:

* **before the first cell**, ``hygiene: baseline`` records the TCP ports the kernel itself
  listens on (its Jupyter channels);
* **after the last cell**, ``hygiene: probe`` collects garbage (leaks show up when their objects
  are finalised) and fails, naming what it found, if
  - a ResourceWarning, a destroyed pending task or an unclosed client was reported while
    collecting (``conftest.py`` turns ResourceWarnings on for every kernel, so one shown by a
    lesson's own cell is an output strict nbval did not expect, and fails that cell);
  - the lab's socket guard is off, or lets a connection to a non-loopback address through;
  - a port is still listening (after every re-run and interruption above), or a lab thread (or
    any non-daemon thread) is still alive;
  - the suite runs in a loopback-only network namespace (``make test`` puts it in one where
    Linux allows, and says so in ``LAB_NETNS``) and a process without the lab could still
    reach a non-loopback address, or the kernel sees an interface other than ``lo``.

The probes are ordinary nbval cells (``IPyNbCell``) whose reference has never run, so nbval
executes them in the notebook's kernel and fails on an exception, but compares no output.
"""

from __future__ import annotations

import copy
import re
import time
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path
from queue import Empty
from typing import Any

import nbformat
import pytest
from nbval.plugin import IPyNbCell, IPyNbFile, NbCellError

#: A cell whose second run takes longer than this (seconds) runs a third time, interrupted.
LONG_CELL = 1.0
#: The notebooks learners open; their solutions are in `solutions/`, under the same names.
LESSON = re.compile(r"^[0-9][0-9]_.*\.ipynb$")
#: The tag of a cell whose work left after ■ is a shutdown the lesson teaches to wait for (a
#: server finishing its requests in flight, or the writes its worker threads are doing, which
#: no interrupt can stop): interrupted, it must end, but not necessarily early.
DRAINS = "drains-on-interrupt"
#: What a cell stopped by ■ ends with: Python's KeyboardInterrupt, or, for a cell that awaits,
#: the cancellation of its task (ipykernel's SIGINT handler cancels it).
INTERRUPTED = frozenset({"KeyboardInterrupt", "CancelledError"})
#: A repeated cell runs up to three times: pytest-timeout's limit (pyproject) is for one.
REPEATED_CELL_TIMEOUT = 360
_REPEATED = pytest.StashKey[bool]()

# TEST-NET-1 (RFC 5737): reserved for documentation, never routed to a real host.
UNROUTABLE = "192.0.2.1"
BASELINE_NAME = "hygiene: baseline"
PROBE_NAME = "hygiene: probe"

BASELINE_SOURCE = """\
import os as _hygiene_os


def _hygiene_listening():
    own = set()
    for fd in _hygiene_os.listdir("/proc/self/fd"):
        try:
            target = _hygiene_os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            own.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in own:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


_hygiene_kernel_ports = _hygiene_listening()"""

UNGUARDED_CONNECT = f"""\
import socket
try:
    socket.create_connection(("{UNROUTABLE}", 80), timeout=2).close()
    print("connected")
except OSError as error:
    print(f"OSError {{error.errno}}")
"""

PROBE_SOURCE = f"""\
def _hygiene_problems():
    import gc, logging, os, re, socket, subprocess, sys, threading, warnings

    import labsupport

    problems = []

    class Reported(logging.Handler):  # asyncio reports destroyed tasks and unclosed clients
        def emit(self, record):
            problems.append(f"while collecting garbage: {{record.getMessage()[:200]}}")

    reported = Reported()
    logging.getLogger("asyncio").addHandler(reported)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            gc.collect()
            gc.collect()
    finally:
        logging.getLogger("asyncio").removeHandler(reported)
    problems += [
        f"while collecting garbage: {{w.category.__name__}}: {{str(w.message)[:200]}}"
        for w in caught
        if issubclass(w.category, ResourceWarning)
    ]

    if not labsupport.guard_active():
        problems.append("the lab's socket guard is off")
    try:
        socket.create_connection(("{UNROUTABLE}", 80), timeout=2).close()
        problems.append("the guard let a connection to {UNROUTABLE} through")
    except labsupport.NetworkBlockedError:
        pass
    except OSError as error:
        problems.append(f"the guard did not refuse {UNROUTABLE} (OSError {{error.errno}})")

    interfaces = [name for _, name in socket.if_nameindex()]
    if os.environ.get("LAB_NETNS") == "loopback-only":
        if interfaces != ["lo"]:
            problems.append(f"not in a loopback-only namespace: interfaces {{interfaces}}")
        unguarded = subprocess.run(  # a process without the lab: only the namespace stops it
            [sys.executable, "-c", {UNGUARDED_CONNECT!r}], capture_output=True, text=True
        )
        if not unguarded.stdout.startswith("OSError"):
            problems.append(f"an unguarded process reached {UNROUTABLE}: {{unguarded.stdout!r}}")

    listening = sorted(_hygiene_listening() - _hygiene_kernel_ports)
    if listening:
        problems.append(f"still listening on ports {{listening}}")
    lab_thread = re.compile(r"^(FakeServer|lab |uvicorn)")
    # The event loop's default executor (asyncio_N: name lookups, to_thread) is the kernel's.
    kernel_thread = re.compile(r"^(MainThread|asyncio_\\d+)$")
    for thread in threading.enumerate():
        if lab_thread.match(thread.name) or not (
            thread.daemon or kernel_thread.match(thread.name)
        ):
            problems.append(f"thread {{thread.name!r}} (daemon={{thread.daemon}}) still alive")
    return problems


_hygiene_found = _hygiene_problems()
assert not _hygiene_found, "hygiene: " + "; ".join(_hygiene_found)"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--nbval-once",
        action="store_true",
        help="run each notebook cell once (no second run, no interrupted run)",
    )


def first_own_cell(solution: Path, sources: list[str]) -> int:
    """How many code cells the solution notebook at `solution`, whose code cells are
    `sources`, shares with its learner notebook, in order."""
    learner = nbformat.read(solution.parent.parent / solution.name, as_version=4)
    theirs = [cell.source for cell in learner.cells if cell.cell_type == "code"]
    shared = 0
    for their_source, our_source in zip(theirs, sources, strict=False):
        if their_source != our_source:
            break
        shared += 1
    return shared


def _repeat_from(notebook: IPyNbFile, sources: list[str]) -> int | None:
    """The first code cell of `notebook` (whose code cells are `sources`) to run twice, or
    None for none of them."""
    path = Path(notebook.path)
    if not LESSON.match(path.name):
        return None
    if path.parent.name == "solutions":
        return first_own_cell(path, sources)
    return 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After nbval's run of a lesson's cell: its second run, then maybe an interrupted one."""
    if not (isinstance(item, IPyNbCell) and item.stash.get(_REPEATED, False)):
        return (yield)
    # nbval merges the stored stream outputs into the first one, in place, to compare them:
    # the second run needs them as stored.
    stored = copy.deepcopy(item.cell.outputs)
    yield  # nbval's run: executes the cell and compares its outputs; raises if they differ
    item.cell.outputs = stored
    began = time.monotonic()
    try:
        item.runtest()
    except NbCellError as error:
        raise NbCellError(
            error.cell_num,
            f"on its second run (a re-run must print what the first run printed): {error}",
            error.source,
            error.inner_traceback,
        ) from None
    took = time.monotonic() - began
    if took > LONG_CELL:
        item.user_properties.append(("interrupted", _interrupt_halfway(item, took)))


def _interrupt_halfway(cell: IPyNbCell, took: float) -> bool:
    """Run `cell` again and interrupt it `took / 2` seconds in (if it is still running then,
    which it says); wait until the kernel is idle again. Nothing it printed is compared, but ■
    must have taken effect: the cell was stopped (its reply is the interrupt's error), or it
    ended before the `took` seconds its uninterrupted run took. (A cell stopped by ■ may still
    take a while to unwind: a check's servers finish their requests in flight.) The course's
    kernel extension makes ■ take effect at once for awaiting cells:
    `labsupport.kernel_interrupt`."""
    kernel = cell.parent.kernel
    timeout = cell.config.option.nbval_cell_timeout
    began = time.monotonic()
    message = kernel.execute_cell_input(cell.cell.source, allow_stdin=False)
    interrupted = False
    try:
        kernel.await_reply(message, timeout=took / 2)
    except Empty:
        kernel.interrupt()  # SIGINT, as Jupyter sends it; an idle kernel ignores it
        interrupted = True
        try:
            reply = _execute_reply(kernel, message, timeout)
        except Empty:
            cell.raise_cell_error(f"still running {timeout} s after it was interrupted")
        ran = time.monotonic() - began
        stopped = reply["content"].get("ename") in INTERRUPTED
        if not stopped and ran >= took and DRAINS not in cell.cell.metadata.get("tags", ()):
            cell.raise_cell_error(
                f"interrupted {took / 2:.1f} s in, it ran {ran:.1f} s in all, no less than its "
                f"uninterrupted run ({took:.1f} s), and ended without the interrupt's error: "
                "the interrupt did not stop it"
            )
    kernel.await_idle(message, timeout=timeout)
    return interrupted


def _execute_reply(kernel: Any, message: str, timeout: float) -> dict[str, Any]:
    """The kernel's reply to the execute request `message` (nbval's `await_reply` waits for it
    but does not return it); raises `Empty` after `timeout` seconds without a message."""
    while True:
        reply: dict[str, Any] = kernel.get_message(stream="shell", timeout=timeout)
        if reply["parent_header"].get("msg_id") == message:
            return reply


def _probe(notebook: IPyNbFile, name: str, source: str, cell_num: int) -> IPyNbCell:
    options: defaultdict[str, bool] = defaultdict(bool, check=False)
    cell = nbformat.v4.new_code_cell(source)  # never run: nbval compares no output
    return IPyNbCell.from_parent(notebook, name=name, cell_num=cell_num, cell=cell, options=options)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the cells to run twice; wrap each notebook's cells in a baseline and a probe cell."""
    notebooks: dict[IPyNbFile, list[int]] = {}
    for index, item in enumerate(items):
        if isinstance(item, IPyNbCell) and isinstance(item.parent, IPyNbFile):
            notebooks.setdefault(item.parent, []).append(index)
    if not config.getoption("nbval_once"):
        for notebook, indices in notebooks.items():
            code = [cell for i in indices if isinstance(cell := items[i], IPyNbCell)]
            repeat_from = _repeat_from(notebook, [cell.cell.source for cell in code])
            for cell in code:
                if repeat_from is not None and cell.cell_num >= repeat_from:
                    cell.stash[_REPEATED] = True
                    cell.add_marker(pytest.mark.timeout(REPEATED_CELL_TIMEOUT))
    # Insert from the end of the list, so earlier indices stay valid.
    for notebook, indices in sorted(notebooks.items(), key=lambda entry: -entry[1][0]):
        first, last = indices[0], indices[-1]
        if indices != list(range(first, last + 1)):  # reordered by another plugin
            raise pytest.UsageError(f"{notebook.nodeid}: its cells do not run in a row")
        cells = len(indices)
        items.insert(last + 1, _probe(notebook, PROBE_NAME, PROBE_SOURCE, cells))
        items.insert(first, _probe(notebook, BASELINE_NAME, BASELINE_SOURCE, -1))
