"""Notebook hygiene: no leaked resources, no secrets, no network, nothing left running.

Two kinds of evidence:

* **Static**, over what is committed: no notebook output mentions a leak (ResourceWarning, an
  unclosed client, a destroyed pending task, a coroutine never awaited, except the one
  deliberate demonstration in 01), and no notebook, course source, service or test holds
  anything shaped like a real API key.
* **Dynamic**, in the run strict nbval makes of every notebook (learner and solution): the
  plugin ``tests/nbval_hygiene.py`` wraps each one in a baseline and a probe cell, which fails
  the notebook if its socket guard is off or lets a non-loopback connection through, if a port
  is still listening or a lab thread alive, or if garbage collection reports a leak; and, when
  ``make test`` runs the suite in a loopback-only network namespace, if anything could leave
  it. The tests here check that every notebook gets the probes, that the probe does fail a
  notebook that leaves things behind, and that the namespace holds.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nbval_hygiene import BASELINE_NAME, PROBE_NAME, UNROUTABLE

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

LEAK_PATTERNS = {
    "ResourceWarning": re.compile(r"ResourceWarning"),
    "destroyed pending task": re.compile(r"Task was destroyed but it is pending"),
    "unclosed client": re.compile(r"Unclosed client"),
    "never awaited": re.compile(r"coroutine .{1,200}? was never awaited"),
}
# The one leak shown on purpose: notebook 01 drops an un-awaited coroutine (`del reply`) in a cell.
DELIBERATE_LEAK = ("01_async_client.ipynb", "del reply", "'AsyncCompletions.create' was never")

# A real key is long and mixes cases and digits; test doubles ("test-key",
# "sk-very-secret-value-42") do not look like that, so they are not reported.
KEY_CANDIDATES = [
    re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?([A-Za-z0-9_-]{20,})"),
    re.compile(r"\bBearer\s+([A-Za-z0-9._~+/=-]{20,})"),
    re.compile(r"\bapi_key\s*=\s*[\"']([^\"'\s]{20,})[\"']"),
]


def looks_like_a_key(text: str) -> list[str]:
    """The substrings of `text` shaped like real credentials (long, mixed case and digits)."""
    found = []
    for pattern in KEY_CANDIDATES:
        for match in pattern.finditer(text):
            secret = match.group(1)
            if all(re.search(kind, secret) for kind in ("[a-z]", "[A-Z]", "[0-9]")):
                found.append(match.group(0))
    return found


def committed_notebooks() -> list[Path]:
    return sorted([*NOTEBOOKS.glob("*.ipynb"), *NOTEBOOKS.glob("solutions/*.ipynb")])


def output_texts(output: dict[str, Any]) -> Iterator[str]:
    """Every piece of text an output shows: streams, errors, and textual display data."""
    if output.get("output_type") == "stream":
        yield _text(output.get("text", ""))
    elif output.get("output_type") == "error":
        yield f"{output.get('ename')}: {output.get('evalue')}"
        yield "\n".join(output.get("traceback", []))
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
            yield _text(value) if isinstance(value, str | list) else json.dumps(value)


def _text(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


def leaks_in(notebook: dict[str, Any], name: str) -> list[str]:
    """Leak messages in a notebook's outputs, as `name cell N: what`; the deliberate one aside."""
    problems = []
    for index, cell in enumerate(notebook.get("cells", [])):
        source = _text(cell.get("source", "")).strip()
        for output in cell.get("outputs", []):
            for text in output_texts(output):
                for what, pattern in LEAK_PATTERNS.items():
                    for match in pattern.finditer(text):
                        allowed_name, allowed_source, allowed_text = DELIBERATE_LEAK
                        line = text[text.rfind("\n", 0, match.start()) + 1 :].split("\n", 1)[0]
                        if (
                            name == allowed_name
                            and allowed_source in source
                            and (allowed_text in line)
                        ):
                            continue
                        problems.append(f"{name} cell {index}: {what}: {line.strip()[:160]}")
    return problems


# ------------------------------------------------------------------------ static: committed


def test_committed_outputs_show_no_leaks() -> None:
    problems = []
    for path in committed_notebooks():
        notebook = json.loads(path.read_text(encoding="utf-8"))
        problems += leaks_in(notebook, path.name)
    assert not problems, "\n".join(problems)


def test_nothing_committed_looks_like_an_api_key() -> None:
    files = [
        *committed_notebooks(),
        *NOTEBOOKS.rglob("*.py"),  # the capstone package too
        *(ROOT / "course").glob("*.py"),
        *(ROOT / "tests").glob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
    ]
    found = [
        f"{path.relative_to(ROOT)}: {candidate[:12]}…"
        for path in files
        for candidate in looks_like_a_key(path.read_text(encoding="utf-8"))
    ]
    assert not found, "\n".join(found)


def test_key_detector_finds_real_looking_keys_only() -> None:
    # Built at run time, so that this file itself holds nothing key-shaped.
    fake_real = "sk-" + "proj-" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7" * 2
    assert looks_like_a_key(f"key = {fake_real!r}")
    assert looks_like_a_key("Authorization: Bearer " + "eyJhbGciOiJIUzI1NiJ9" + "x7Y")
    assert looks_like_a_key("api_key=" + repr("Zq81" * 6))
    assert not looks_like_a_key('OpenAI(api_key="test-key")')
    assert not looks_like_a_key('setenv("OPENAI_API_KEY", "sk-very-secret-value-42")')
    assert not looks_like_a_key('AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))')


def test_leak_scanner_allows_only_the_deliberate_demonstration() -> None:
    warning = "RuntimeWarning: coroutine 'AsyncCompletions.create' was never awaited"

    def notebook(source: str, text: str) -> dict[str, Any]:
        output = {"output_type": "stream", "name": "stderr", "text": text}
        return {"cells": [{"cell_type": "code", "source": source, "outputs": [output]}]}

    assert not leaks_in(notebook("del reply", warning), "01_async_client.ipynb")
    assert leaks_in(notebook("del reply", warning), "02_gather.ipynb")
    assert leaks_in(notebook("x = 1", warning), "01_async_client.ipynb")
    other = "RuntimeWarning: coroutine 'main' was never awaited"
    assert leaks_in(notebook("del reply", other), "01_async_client.ipynb")
    assert leaks_in(notebook("x", "ResourceWarning: unclosed <socket>"), "03.ipynb")


# ------------------------------------------------- dynamic: probes in nbval's run of each notebook


def _collected(*args: str) -> list[str]:
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0"]
    command += ["-p", "no:cacheprovider", *args]
    listing = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stdout[-3000:] + listing.stderr[-3000:]
    return listing.stdout.splitlines()


@pytest.mark.slow
def test_every_notebook_nbval_runs_is_wrapped_in_the_hygiene_probes() -> None:
    ids = _collected("notebooks")
    notebooks = sorted({line.split("::")[0] for line in ids if ".ipynb::" in line})
    assert len(notebooks) == len(committed_notebooks())
    for notebook in notebooks:
        mine = [line.split("::", 1)[1] for line in ids if line.startswith(f"{notebook}::")]
        assert mine[0] == BASELINE_NAME and mine[-1] == PROBE_NAME, (notebook, mine)
        assert mine.count(BASELINE_NAME) == mine.count(PROBE_NAME) == 1, (notebook, mine)


LEAVES_THINGS_BEHIND = [
    "import labsupport as lab\n\nlab.setup()",
    # A server socket left listening, a non-daemon thread left waiting, and a socket only the
    # garbage collector finds (it is in a reference cycle): what a careless cell leaves.
    "import gc, socket, threading\n\ngc.disable()  # only the probe's collection finds the cycle\n"
    "server = socket.socket()\nserver.bind(('127.0.0.1', 0))\nserver.listen()\n"
    "stop = threading.Event()\nthreading.Thread(target=stop.wait, name='poller').start()\n\n"
    "class Holder:\n    pass\n\n"
    "cycle = Holder()\ncycle.self = cycle\ncycle.sock = socket.socket()\ndel cycle",
    # Lets the kernel shut down after the probe: the thread above is not a daemon.
    "import atexit\n\natexit.register(stop.set)",
]


def pytest_with_the_plugin(folder: Path, *args: str) -> tuple[int, str]:
    """pytest in `folder` with nbval and tests/nbval_hygiene.py, but without this project's
    conftest and pyproject options: (its exit status, its report without colours)."""
    command = [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(folder)]
    command += ["-p", "tests.nbval_hygiene", "-p", "no:cacheprovider"]
    command += ["--nbval-current-env", "-q", "--color=no", "-rf", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # `tests.nbval_hygiene`, as conftest.py names it
    result = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    return result.returncode, re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # IPython's colours


@pytest.mark.slow
def test_the_probe_fails_a_notebook_that_leaves_things_behind(tmp_path: Path) -> None:
    import nbformat

    cells = [nbformat.v4.new_code_cell(source) for source in LEAVES_THINGS_BEHIND]
    notebook = tmp_path / "careless.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook)
    returncode, report = pytest_with_the_plugin(tmp_path, "--nbval-lax", notebook.name)

    assert returncode == 1, report[-3000:]
    assert "1 failed, 4 passed" in report, report[-3000:]  # baseline, 3 cells, probe
    assert f"FAILED {notebook.name}::{PROBE_NAME}" in report, report[-3000:]
    found = report[report.index("AssertionError: hygiene: ") :].splitlines()[0]
    assert re.search(r"still listening on ports \[\d+\]", found), found
    assert "thread 'poller' (daemon=False) still alive" in found, found
    assert "while collecting garbage: ResourceWarning: unclosed <socket.socket" in found, found


INTERRUPTED = [
    "import labsupport as lab\n\nlab.setup()",
    # Stopped by the interrupt, halfway through its third run.
    "import asyncio\n\nawait asyncio.sleep(2)",
    # Swallows the cancellation the interrupt brings, and its third run lasts longer than its
    # second: it cannot end before its uninterrupted run time, however loaded the machine.
    "import time\n\ntry:\n    runs += 1\nexcept NameError:\n    runs = 1\n"
    "end = time.monotonic() + 2 * runs\nwhile time.monotonic() < end:\n    try:\n"
    "        await asyncio.sleep(end - time.monotonic())\n"
    "    except asyncio.CancelledError:\n        pass",
    # Stopped by the interrupt, then unwinds longer than the rest of its run would have taken
    # (a server finishing its requests in flight): it ends with the interrupt's error, so ■ took
    # effect, though the cell ran no shorter.
    "import time\n\ntry:\n    await asyncio.sleep(2)\nexcept asyncio.CancelledError:\n"
    "    time.sleep(1.5)\n    raise",
]


def test_an_interrupted_cell_must_be_stopped(tmp_path: Path) -> None:
    import nbformat

    cells = [nbformat.v4.new_code_cell(source) for source in INTERRUPTED]
    notebook = tmp_path / "01_interrupted.ipynb"  # a lesson's name: its cells run again
    nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook)
    returncode, report = pytest_with_the_plugin(tmp_path, "--nbval-lax", notebook.name)

    assert returncode == 1, report[-3000:]
    assert "1 failed, 5 passed" in report, report[-3000:]  # baseline, 4 cells, probe
    assert f"FAILED {notebook.name}::Cell 2" in report, report[-3000:]
    assert "ended without the interrupt's error: the interrupt did not stop it" in report


def test_the_suite_runs_in_a_loopback_only_namespace() -> None:
    if os.environ.get("LAB_NETNS") != "loopback-only":
        pytest.skip(
            "not run by `make test` in a network namespace (Linux without user namespaces or "
            "iproute2?); the socket guard's evidence in every notebook still holds"
        )
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
    # With no guard at all (this process has none), the kernel itself has no route off the host.
    with pytest.raises(OSError) as refused:
        socket.create_connection((UNROUTABLE, 80), timeout=2).close()
    assert refused.value.errno == errno.ENETUNREACH
