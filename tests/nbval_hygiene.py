"""Hygiene probes that ride on nbval's own run of every notebook (a pytest plugin).

nbval executes each notebook once, top to bottom, in its own kernel. This plugin adds two
cells to that run, so the same execution that proves the stored outputs also proves the
notebook is clean, without running every notebook a second time:

* **before the first cell**, ``hygiene: baseline`` records the TCP ports the kernel itself
  listens on (its Jupyter channels);
* **after the last cell**, ``hygiene: probe`` collects garbage (leaks show up when their objects
  are finalised) and fails, naming what it found, if
  - a ResourceWarning, a destroyed pending task or an unclosed client was reported while
    collecting (``conftest.py`` turns ResourceWarnings on for every kernel, so one shown by a
    lesson's own cell is an output strict nbval did not expect, and fails that cell);
  - the lab's socket guard is off, or lets a connection to a non-loopback address through;
  - a port is still listening, or a lab thread (or any non-daemon thread) is still alive;
  - the suite runs in a loopback-only network namespace (``make test`` puts it in one where
    Linux allows, and says so in ``LAB_NETNS``) and a process without the lab could still
    reach a non-loopback address, or the kernel sees an interface other than ``lo``.

The probes are ordinary nbval cells (``IPyNbCell``) whose reference has never run, so nbval
executes them in the notebook's kernel and fails on an exception, but compares no output.
"""

from __future__ import annotations

from collections import defaultdict

import nbformat
import pytest
from nbval.plugin import IPyNbCell, IPyNbFile

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


def _probe(notebook: IPyNbFile, name: str, source: str, cell_num: int) -> IPyNbCell:
    options: defaultdict[str, bool] = defaultdict(bool, check=False)
    cell = nbformat.v4.new_code_cell(source)  # never run: nbval compares no output
    return IPyNbCell.from_parent(notebook, name=name, cell_num=cell_num, cell=cell, options=options)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Wrap each notebook's cells in a baseline and a probe cell run in its kernel."""
    notebooks: dict[IPyNbFile, list[int]] = {}
    for index, item in enumerate(items):
        if isinstance(item, IPyNbCell) and isinstance(item.parent, IPyNbFile):
            notebooks.setdefault(item.parent, []).append(index)
    # Insert from the end of the list, so earlier indices stay valid.
    for notebook, indices in sorted(notebooks.items(), key=lambda entry: -entry[1][0]):
        first, last = indices[0], indices[-1]
        if indices != list(range(first, last + 1)):  # reordered by another plugin
            raise pytest.UsageError(f"{notebook.nodeid}: its cells do not run in a row")
        cells = len(indices)
        items.insert(last + 1, _probe(notebook, PROBE_NAME, PROBE_SOURCE, cells))
        items.insert(first, _probe(notebook, BASELINE_NAME, BASELINE_SOURCE, -1))
