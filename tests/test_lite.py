"""The course's JupyterLite site in a real browser: built offline, served on loopback, and a Pyodide
kernel running labsupport and a lesson in headless Chromium, with no request leaving the page's
origin.

`make lite` (tools/build_lite.py) builds a site that should need nothing but its own files at run
time: Pyodide from npm, the wheels of lite/requirements.lock, labsupport's wheel. This module
builds it into a temporary folder, serves it from 127.0.0.1, opens JupyterLab there in Chromium
(tests/chromium.py) and starts a kernel through JupyterLab's service manager (the site exposes the
app as `window.jupyterapp`). In that kernel:

* a cell imports labsupport, the SDK and FastAPI, then `labsupport.setup()` and five gathered
  calls of the unchanged `AsyncOpenAI()` are answered in the tab by the offline upstream,
  through httpx2's fetch transport (its counters say so);
* lesson 00's code cells run in order (through the kernel, not the notebook's page) and print
  what the stored notebook, executed on CPython, shows.

Each test checks every request the browser context made, the kernel's web worker and the service
worker's included. The times (to a ready kernel, of the cells) go to test-artifacts/*.json, a
screenshot of the site to test-artifacts/.

Needs Chromium, `node_modules/pyodide` (`make node-tools`) and the downloaded wheels (`make
lite`, the one step that uses the package registry): skipped with one line where one is missing,
failed under `make check`.
"""

from __future__ import annotations

import ast
import functools
import http.server
import itertools
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import nbformat
import pytest
from build_lite import BROWSER_LESSONS, LiteBuildError, browser_edition, build
from chromium import chromium
from loopback_http import http_served

from labsupport.browser import REAL_KERNEL

if TYPE_CHECKING:
    from playwright.sync_api import Page

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHECK = "the JupyterLite check"

#: Starts a kernel as JupyterLab does when a notebook opens, once the Pyodide kernel's spec is
#: registered (its plugin does that after the app starts); resolves with the milliseconds from
#: asking to a kernel that answers `kernel_info` (Pyodide loaded, the site's wheels installed).
_START_KERNEL = """async () => {
  const app = window.jupyterapp;
  await app.restored;
  const specs = app.serviceManager.kernelspecs;
  while (!specs.specs?.kernelspecs?.python) {
    await specs.refreshSpecs();
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const asked = performance.now();
  window.liteKernel = await app.serviceManager.kernels.startNew({name: 'python'});
  await window.liteKernel.info;
  return performance.now() - asked;
}"""

#: Runs `code` in that kernel; resolves with the reply's status, what it printed to stdout
#: (stderr has httpx2's warning that `fetch` ignores the SDK's connection limits), its errors'
#: messages and the lines the notebook shows for them (their tracebacks).
_EXECUTE = """async (code) => {
  const future = window.liteKernel.requestExecute({code});
  const printed = [];
  const errors = [];
  const shown = [];
  future.onIOPub = (message) => {
    const type = message.header.msg_type;
    if (type === 'stream' && message.content.name === 'stdout') printed.push(message.content.text);
    if (type === 'error') {
      errors.push(message.content.evalue);
      shown.push(...message.content.traceback);
    }
  };
  const reply = await future.done;
  return {status: reply.content.status, printed: printed.join(''), errors, shown};
}"""

CELL = """\
import sys

import fastapi
import openai

import labsupport

print(sys.platform, labsupport.__name__, openai.__version__, fastapi.__version__)
"""

#: The lab as a lesson starts it, and five gathered calls of the unchanged SDK: answered by the
#: offline upstream in the tab (its counters say so), through httpx2's fetch transport.
LAB_CELL = """\
import asyncio

from openai import AsyncOpenAI

upstream = labsupport.setup(0.2)
client = AsyncOpenAI()
replies = await asyncio.gather(
    *(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"Summarise text {i}."}]
        )
        for i in range(5)
    )
)
answered = all(reply.choices[0].message.content for reply in replies)
print(upstream.stats.calls, upstream.stats.max_in_flight, answered)
"""


class _SiteFiles(http.server.SimpleHTTPRequestHandler):
    """A static file server with the types Pyodide needs: an ES module must be served as
    JavaScript, and WebAssembly as `application/wasm` to compile while it downloads."""

    extensions_map = {  # noqa: RUF012 (the base class declares it a plain class attribute)
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
    }

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the browser's requests, not the server's log."""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site, built by tools/build_lite.py into a temporary folder and served on loopback;
    yields its origin."""
    out = tmp_path_factory.mktemp("lite") / "site"
    build(out)
    handler = functools.partial(_SiteFiles, directory=str(out))
    with http_served(handler) as base:
        yield base


def off_origin(urls: list[str], origin: str) -> list[str]:
    """The requests, among `urls`, to anywhere but `origin` (data: and blob: URLs are the page's
    own memory, and attachment: names a markdown cell's attachment, which JupyterLab swaps for
    its data: not requests that leave the page)."""
    return [
        url
        for url in urls
        if urlsplit(url).scheme not in ("data", "blob", "attachment")
        and not url.startswith(origin + "/")
    ]


def test_off_origin_sees_another_host_and_port() -> None:
    origin = "http://127.0.0.1:8000"
    urls = [
        f"{origin}/lab/index.html",
        "data:image/svg+xml;base64,AAAA",
        "http://127.0.0.1:8001/x",
        "http://127.0.0.1:8000.example/y",
        "https://files.example/pyodide.mjs",
        "attachment:cpython-0.png",
    ]
    assert off_origin(urls, origin) == urls[2:5]


def test_the_browser_edition_shows_a_cpython_only_cell_as_what_cpython_recorded() -> None:
    image: dict[str, Any] = {"data": {"image/png": "iVBORw0KGgo=", "text/plain": "a timeline"}}
    image["metadata"] = {"image/png": {"alt": "a timeline"}}
    recorded = nbformat.v4.new_code_cell(
        "explore(requests=20)",
        metadata={"cpython_only": "explorer"},
        outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="20 requests\n"),
            nbformat.v4.new_output("display_data", **image),
        ],
    )
    lesson = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), recorded])
    code, text = browser_edition(lesson, "03_semaphore").cells
    assert code.cell_type == "code" and text.cell_type == "markdown"
    assert text.source.startswith("**Recorded on CPython, not run in your browser:** the explorer")
    assert "```python\nexplore(requests=20)\n```" in text.source
    assert "```text\n20 requests\n```" in text.source  # the figure's caption is not repeated
    assert "![a timeline](attachment:cpython-0.png)" in text.source
    assert text.attachments == {"cpython-0.png": {"image/png": "iVBORw0KGgo="}}

    other = browser_edition(lesson, "07_beyond_one_process")
    assert other.cells[0].source.startswith("**This lesson needs a real Python kernel.**")
    assert other.cells[2].cell_type == "code"  # left as it is: it does not run here anyway

    recorded.metadata["cpython_only"] = "no_such_reason"
    with pytest.raises(LiteBuildError, match="'no_such_reason' is none of"):
        browser_edition(lesson, "03_semaphore")


@dataclass
class LiteTab:
    """JupyterLab of the site in a Chromium tab, with a Pyodide kernel started in it."""

    page: Page
    #: Every URL the browser context requested: the page's, its kernel's and service worker's.
    requested: list[str]
    kernel_ready_after_start_s: float
    kernel_ready_after_page_load_s: float

    def run(self, code: str) -> dict[str, Any]:
        """Run `code` in the kernel: {"status", "printed" (stdout), "errors", "shown" (the
        errors' tracebacks, as the notebook shows them)}."""
        result: dict[str, Any] = self.page.evaluate(_EXECUTE, code)
        return result


@contextmanager
def lite_tab(site: str, screenshot: str) -> Iterator[LiteTab]:
    """A tab on the site with a ready kernel; its screenshot goes to test-artifacts/ at the end."""
    requested: list[str] = []
    with chromium(CHECK) as browser:
        context = browser.new_context()
        context.on("request", lambda request: requested.append(request.url))
        page = context.new_page()
        loading = time.perf_counter()
        page.goto(f"{site}/lab/index.html")
        page.wait_for_function("() => window.jupyterapp !== undefined")
        kernel_ms = page.evaluate(_START_KERNEL)
        ready_after_load = time.perf_counter() - loading
        yield LiteTab(page, requested, round(kernel_ms / 1000, 2), round(ready_after_load, 2))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / screenshot))
        context.close()
    assert requested, "the browser reported no requests: the listener saw nothing"


def record(name: str, timings: dict[str, float]) -> None:
    """Keep a test's measurements in test-artifacts/ (and print them, for `pytest -s`)."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"{name}: {timings}")


def timed(tab: LiteTab, code: str) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    result = tab.run(code)
    return result, round(time.perf_counter() - started, 2)


# The build (about 10 to 25 s), Pyodide's start with the site's wheels (about 20 s on two idle
# cores, 50 s with the other core busy) and the first imports of the SDK and FastAPI in
# WebAssembly (about 8 s), on a machine that may be busy.
@pytest.mark.slow
@pytest.mark.needs("chromium", "node-tools", "lite-wheels")
@pytest.mark.timeout(600)
def test_pyodide_kernel_runs_labsupport_and_the_sdk_offline(site: str) -> None:
    with lite_tab(site, "lite.png") as tab:
        imported, import_s = timed(tab, CELL)
        lab, lab_s = timed(tab, LAB_CELL)
    record(
        "lite-timings",
        {
            "kernel_ready_after_start_s": tab.kernel_ready_after_start_s,
            "kernel_ready_after_page_load_s": tab.kernel_ready_after_page_load_s,
            "first_cell_s": import_s,
            "lab_setup_and_five_gathered_calls_s": lab_s,
        },
    )

    assert imported["status"] == "ok", imported["errors"]
    # The versions the site installed are the ones requirements.lock pins for CPython.
    expected = f"emscripten labsupport {version('openai')} {version('fastapi')}\n"
    assert imported["printed"] == expected
    assert lab["status"] == "ok", lab["errors"]
    setup_line, counts = lab["printed"].splitlines()
    assert setup_line.startswith("Offline lab in your browser (Pyodide)")
    assert counts == "5 5 True"  # five calls, all five in flight at once, each with its reply
    assert off_origin(tab.requested, site) == []


@pytest.mark.slow
@pytest.mark.needs("chromium", "node-tools", "lite-wheels")
@pytest.mark.timeout(600)
def test_lesson_00_runs_in_the_browser_and_prints_what_cpython_stored(site: str) -> None:
    """Lesson 00's code cells, in order, in a kernel of the site: each prints what the stored
    notebook (executed on CPython) shows, except the first cell's line, which says where the
    lab runs."""
    lesson = nbformat.read(REPO_ROOT / "notebooks" / "00_start_here.ipynb", as_version=4)
    cells = [cell for cell in lesson.cells if cell.cell_type == "code"]
    with lite_tab(site, "lite-00_start_here.png") as tab:
        started = time.perf_counter()
        results = [tab.run(cell.source) for cell in cells]
        lesson_s = round(time.perf_counter() - started, 2)
    record("lite-00_start_here", {"cells_s": lesson_s, "cells": len(cells)})

    assert [result["errors"] for result in results] == [[]] * len(cells)
    stored = [
        "".join(output.text for output in cell.outputs if output.get("name") == "stdout")
        for cell in cells
    ]
    printed = [result["printed"] for result in results]
    assert printed[0].startswith("Offline lab in your browser (Pyodide)")
    assert printed[1:] == stored[1:]
    assert off_origin(tab.requested, site) == []


#: Cells calling what needs a thread, a process or a TCP socket (labsupport.browser), each with
#: the name its one line starts with.
NEEDS_A_REAL_KERNEL = {
    "lab.FakeServer": "lab.FakeServer(latency=0.05)",
    "lab.serve": "async with lab.serve(FastAPI()) as client:\n    pass",
    "explore": "from labsupport.coaching import explore\n\nexplore(requests=10)",
    "explore_streams": "from labsupport.coaching import explore_streams\n\nexplore_streams()",
    "lab.checks.check_async_endpoint": "await lab.checks.check_async_endpoint(FastAPI())",
    "labsupport.distributed": "from labsupport.distributed import RedisServer",
}


@pytest.mark.slow
@pytest.mark.needs("chromium", "node-tools", "lite-wheels")
@pytest.mark.timeout(600)
def test_what_needs_a_real_kernel_says_so_in_one_line_in_the_browser(site: str) -> None:
    """Each cell ends with `RealKernelRequired` and its one sentence, shown as the cell's whole
    error: no frame from inside labsupport or the libraries it would have used."""
    with lite_tab(site, "lite-real-kernel.png") as tab:
        setup = tab.run("from fastapi import FastAPI\n\nimport labsupport as lab\n\nlab.setup()")
        ran = {what: tab.run(code) for what, code in NEEDS_A_REAL_KERNEL.items()}
        assert off_origin(tab.requested, site) == []
    assert setup["errors"] == []
    for what, result in ran.items():
        assert result["status"] == "error", what
        [message] = result["errors"]
        assert message.startswith(f"{what} needs "), message
        assert message.endswith(
            f"which a browser tab does not have: run this lesson in {REAL_KERNEL}."
        )
        assert result["shown"] == [f"RealKernelRequired: {message}"]


#: What lesson 01's browser edition says of the cells it shows as CPython recorded them
#: (build_lite's "sync_wait" and "threads"), measured in the tab: the sync client inside
#: `async def` lets the other requests run, a `def` endpoint's requests fail with RuntimeError,
#: `asyncio.to_thread` runs its function on the event loop's thread.
WHY_01_IS_RECORDED = """\
import asyncio, json, threading

from fastapi import FastAPI
from openai import OpenAI

import labsupport as lab

upstream = lab.setup(0.1)
sync_client = OpenAI()
blocking_app, threaded_app = FastAPI(), FastAPI()


def ask():
    reply = sync_client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    return {"response": reply.choices[0].message.content}


@blocking_app.post("/chat")
async def blocking_chat():
    return ask()


@threaded_app.post("/chat")
def threaded_chat():
    return ask()


async with lab.asgi_client(blocking_app) as client:
    blocked = await lab.fire(client, "POST", "/chat", n=20)
in_flight = upstream.stats.max_in_flight
async with lab.asgi_client(threaded_app) as client:
    threaded = await lab.fire(client, "POST", "/chat", n=3)
on_loop_thread = await asyncio.to_thread(threading.current_thread) is threading.main_thread()
errors = sorted({record.error_type for record in threaded.requests})
print(json.dumps([blocked.ok, in_flight, errors, on_loop_thread]))
"""


@pytest.mark.slow
@pytest.mark.needs("chromium", "node-tools", "lite-wheels")
@pytest.mark.timeout(600)
def test_what_lesson_01_shows_as_recorded_on_cpython_is_untrue_in_the_browser(site: str) -> None:
    with lite_tab(site, "lite-01-recorded-why.png") as tab:
        ran = tab.run(WHY_01_IS_RECORDED)
        assert off_origin(tab.requested, site) == []
    assert ran["errors"] == []
    answered, in_flight, threaded_errors, on_loop_thread = json.loads(
        ran["printed"].splitlines()[-1]
    )
    assert answered
    assert in_flight > 1  # on CPython, 1: the sync client blocks the loop, one call at a time
    assert threaded_errors == ["RuntimeError"]
    assert on_loop_thread


#: Opens a lesson of the site in JupyterLab with a Pyodide kernel; resolves with the
#: milliseconds from opening it to a kernel that answers (Pyodide loaded, the site's wheels in).
_OPEN_LESSON = """async (path) => {
  const app = window.jupyterapp;
  await app.restored;
  const specs = app.serviceManager.kernelspecs;
  while (!specs.specs?.kernelspecs?.python) {
    await specs.refreshSpecs();
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const asked = performance.now();
  const panel = await app.commands.execute('docmanager:open', {path, kernel: {name: 'python'}});
  await panel.context.ready;
  await panel.sessionContext.ready;
  await panel.sessionContext.session.kernel.info;
  app.shell.collapseLeft();
  return performance.now() - asked;
}"""

#: The stored (CPython) outputs cleared, then JupyterLab's Run All, to its end; resolves with
#: whether JupyterLab reported every cell run without an error.
_RUN_ALL = """async () => {
  await window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs');
  return await window.jupyterapp.commands.execute('notebook:run-all-cells');
}"""

#: Every code cell of the open notebook: its execution count and outputs (nbformat's JSON).
_READ_CELLS = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  const result = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type === 'code') {
      result.push({executionCount: cell.executionCount, outputs: cell.outputs.toJSON()});
    }
  }
  return result;
}"""

#: Charts JupyterLab's Vega-Lite renderer drew in the page (an SVG or canvas in each).
_RENDERED_CHARTS = """() => Array.from(document.querySelectorAll('.jp-RenderedVegaLite'))
  .filter((chart) => chart.querySelector('svg, canvas')).length"""

#: For the screenshot: the first chart in mid-screen.
_SHOW_FIRST_CHART = """() => document.querySelector('.jp-RenderedVegaLite')
  ?.scrollIntoView({block: 'center'})"""

#: Lesson 00 has a test of its own, cell by cell (above).
RUN_ALL_LESSONS = [lesson for lesson in BROWSER_LESSONS if lesson != "00_start_here"]

#: Cells that run in the browser and show there what the stored CPython run shows, except what
#: the browser cannot measure, said so: by lesson, each cell's source, and the replacements (the
#: CPython text, the browser's) that turn what CPython showed into what the browser shows. 05's
#: check counts no TCP connections in a tab: its `fetch` makes them, out of Python's sight.
SAID_OTHERWISE_IN_THE_BROWSER = {
    "05_lifespan": {
        "await lab.checks.check_lifespan_client(exercise_app)": [
            (" and 5 connections for 5 sequential", " for 5 sequential"),
            (
                "5 calls over 5 TCP connections.",
                "5 calls (TCP connections not counted: a browser tab has no sockets, and "
                "its `fetch` opens and reuses connections out of Python's sight).",
            ),
            ("0 of them not closed, 0 connections still open.", "0 of them not closed."),
        ]
    }
}


def _sanitizer() -> list[tuple[re.Pattern[str], str]]:
    """The `regex:`/`replace:` pairs of notebooks/nbval_sanitize.cfg, in order."""
    lines = (REPO_ROOT / "notebooks" / "nbval_sanitize.cfg").read_text().splitlines()
    return [
        (re.compile(line.removeprefix("regex: ")), after.removeprefix("replace: "))
        for line, after in itertools.pairwise(lines)
        if line.startswith("regex: ")
    ]


def sanitized(text: str) -> str:
    """`text` as nbval compares it: the sanitizer's masks applied (durations, ratios, ...)."""
    for pattern, replacement in _sanitizer():
        text = pattern.sub(replacement, text)
    return text


def as_the_browser_says(lesson: str, source: str, text: str) -> str:
    """What CPython showed (`text`) for a cell of `lesson`, as the browser says it
    (`SAID_OTHERWISE_IN_THE_BROWSER`); each replacement must apply once."""
    for cpython, browser in SAID_OTHERWISE_IN_THE_BROWSER.get(lesson, {}).get(source, []):
        assert text.count(cpython) == 1, (source, cpython)
        text = text.replace(cpython, browser)
    return text


def text_of(outputs: list[dict[str, Any]]) -> str:
    """What a cell printed and showed as text (stdout, text/plain), as a screen shows it: each
    line from its last carriage return on. (JupyterLab's output area applies them, a progress
    bar's redraws; nbclient stores them as printed.)"""
    texts = [
        output.get("text") or output.get("data", {}).get("text/plain", "")
        for output in outputs
        if output.get("name", "stdout") == "stdout"
    ]
    text = "".join("".join(text) if isinstance(text, list) else text for text in texts)
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


@pytest.mark.slow
@pytest.mark.needs("chromium", "node-tools", "lite-wheels")
@pytest.mark.timeout(900)
@pytest.mark.parametrize("lesson", RUN_ALL_LESSONS)
def test_lesson_runs_top_to_bottom_in_the_browser(site: str, lesson: str) -> None:
    """Run All of a lesson in the site: no cell errors, no request leaves the page's origin, the
    charts render, and each cell shows what the stored CPython run shows, up to the values
    the notebooks' sanitizer masks (durations, ratios) and what the browser cannot measure
    (`SAID_OTHERWISE_IN_THE_BROWSER`)."""
    # The site's edition: the cells marked as CPython-only are text there (see build_lite.py).
    stored = browser_edition(
        nbformat.read(REPO_ROOT / "notebooks" / f"{lesson}.ipynb", as_version=4), lesson
    )
    requested: list[str] = []
    with chromium(CHECK) as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.on("request", lambda request: requested.append(request.url))
        page = context.new_page()
        page.set_default_timeout(600_000)
        page.goto(f"{site}/lab/index.html?reset")
        page.wait_for_function("() => window.jupyterapp !== undefined")
        kernel_ms = page.evaluate(_OPEN_LESSON, f"{lesson}.ipynb")
        started = time.perf_counter()
        passed = page.evaluate(_RUN_ALL)
        lesson_s = round(time.perf_counter() - started, 2)
        cells = page.evaluate(_READ_CELLS)
        charts = page.evaluate(_RENDERED_CHARTS)
        page.evaluate(_SHOW_FIRST_CHART)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"lite-{lesson}.png"))
        context.close()
    record(f"lite-{lesson}", {"kernel_ready_s": round(kernel_ms / 1000, 2), "run_all_s": lesson_s})
    # What each code cell showed in the browser, to read beside the stored notebook.
    printed = [text_of(cell["outputs"]) for cell in cells]
    (ARTIFACTS / f"lite-{lesson}-outputs.json").write_text(json.dumps(printed, indent=1) + "\n")

    errors = [
        f"cell {number}: {output['ename']}: {output['evalue']}"
        for number, cell in enumerate(cells)
        for output in cell["outputs"]
        if output["output_type"] == "error"
    ]
    assert errors == []
    assert passed
    assert [cell["executionCount"] is not None for cell in cells] == [True] * len(cells)
    assert off_origin(requested, site) == []
    code = [cell for cell in stored.cells if cell.cell_type == "code"]
    stored_charts = sum(
        "image/png" in output.get("data", {}) for cell in code for output in cell.outputs
    )
    assert charts == stored_charts
    assert printed[0].startswith("Offline lab in your browser (Pyodide)")  # where the lab runs
    expected = [as_the_browser_says(lesson, cell.source, text_of(cell.outputs)) for cell in code]
    differ = [
        number
        for number, (cpython, ran) in enumerate(zip(expected, printed, strict=True))
        if number > 0 and sanitized(cpython) != sanitized(ran)
    ]
    assert differ == [], {number: (expected[number], printed[number]) for number in differ}


@dataclass(frozen=True)
class CorpusInBrowser:
    """An exercise's corpus (tests/corpus/), judged in the browser as the notebook judges it."""

    module: str
    check: str  # the checker's call, `{answer}` for the answer's function
    latency: float  # the upstream's, as in tests/test_checks_<exercise>.py


#: The corpora of the lessons that run in the browser, and how each is checked there.
CORPORA = [
    CorpusInBrowser("ex02_gather", "check_parallel_fanout({answer})", 0.05),
    CorpusInBrowser("ex03_semaphore", "check_bounded_batch({answer}, 5)", 0.05),
    CorpusInBrowser("ex05_lifespan", "check_lifespan_client({answer})", 0.05),
]
#: Answers not judged in the browser: those that use threads (a `threading` lock held across an
#: await waits for a release only another thread could make, and no watchdog thread can stop
#: it; `asyncio.to_thread` has no worker thread to run in), which a browser tab does not have.
USES_THREADS = re.compile(r"\bthreading\.|\bto_thread\(|\brun_in_executor\(")
#: FastAPI's route decorators: a plain `def` endpoint, or a plain `def` dependency
#: (`Depends(f)`), runs in FastAPI's thread pool, which cannot start a thread in a browser tab
#: ("can't start new thread"): the answers with one use threads too.
ROUTES = frozenset({"get", "post", "put", "patch", "delete"})
#: Answers the browser judges otherwise than CPython, and why. Under JSPI (Chromium's stack
#: switching, which Pyodide uses) `time.sleep` suspends the WebAssembly stack and lets the event
#: loop run, so a sleep inside `async def` does not block the loop there: the very trap these
#: answers fall into on CPython. For the same reason `asyncio.run` inside the running loop does
#: not raise there: it runs its coroutine to the end, so the nested-loop answer runs on (and
#: is judged on what it then returns). And httpx2 sends through the browser's `fetch`, which
#: ignores `httpx2.Limits`: a pool limit bounds nothing there, and the semaphore checker says so.
#: Lesson 05's sync `OpenAI` client waits for the offline upstream's answer with `time.sleep` (as
#: a blocking socket read waits on CPython), which under JSPI lets the loop run too: the sync
#: client called inside `async def` holds the loop on CPython, and does not in the tab.
JUDGED_OTHERWISE = {
    "time_sleep_backoff",
    "gather_then_a_blocking_pause",
    "time_sleep_pacing",
    "asyncio_run_inside",
    "pool_limit_of_five",
    "time_sleep_to_be_polite",
    "sync_client_in_the_lifespan",
}

_JUDGE = """\
import importlib.util, json, sys
import labsupport as lab

lab.setup({latency})
# The corpus imports the SDK: the lab warms it up after this cell, as after a lesson's cell.
spec = importlib.util.spec_from_file_location("{module}", "/tmp/{module}.py")
corpus = importlib.util.module_from_spec(spec)
sys.modules["{module}"] = corpus
spec.loader.exec_module(corpus)
"""

_ONE = """\
result = await lab.checks.{check}
print(json.dumps([result.passed, result.cause]))
"""


def expected_verdicts(module: str) -> dict[str, tuple[bool, str]]:
    """Each answer's verdict and cause on CPython, from its docstring (tests/corpus/__init__.py's
    convention; the checkers' own tests assert them)."""
    source = (REPO_ROOT / "tests" / "corpus" / f"{module}.py").read_text()
    return {
        name: (verdict == "PASSED", cause)
        for name, verdict, cause in re.findall(
            r'^def answer_(\w+)\(.*\n\s+"""(PASSED|NOT YET), (\w+):', source, flags=re.MULTILINE
        )
    }


def answers_using_threads(module: str) -> set[str]:
    """The answers of a corpus whose code uses threads (`USES_THREADS`), or whose app FastAPI
    runs in part in its thread pool (`ROUTES`)."""
    tree = ast.parse((REPO_ROOT / "tests" / "corpus" / f"{module}.py").read_text())
    module_level = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    return {
        node.name.removeprefix("answer_")
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("answer_")
        and (USES_THREADS.search(ast.unparse(node)) or in_the_thread_pool(node, module_level))
    }


def in_the_thread_pool(answer: ast.FunctionDef, module_level: dict[str, ast.FunctionDef]) -> bool:
    """Whether the answer's app has a plain `def` endpoint (a function under a route decorator)
    or a plain `def` dependency (`Depends(f)`, `f` defined in the answer or the module)."""
    nested = [node for node in ast.walk(answer) if node is not answer]
    local = {
        node.name: node
        for node in nested
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    functions: dict[str, ast.AST] = {**module_level, **local}  # the answer's own come first
    sync = {name for name, function in functions.items() if isinstance(function, ast.FunctionDef)}
    for node in nested:
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(decorator, ast.Call)
            and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr in ROUTES
            for decorator in node.decorator_list
        ):
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "Depends"
            and node.args
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in sync
        ):
            return True
    return False


def test_the_answers_using_threads_are_found() -> None:
    assert answers_using_threads("ex02_gather") == {
        "threading_lock_per_call",
        "threads_each_running_asyncio_run",
        "sync_client_in_threads",
    }
    assert answers_using_threads("ex03_semaphore") == {"threading_semaphore"}
    assert answers_using_threads("ex05_lifespan") == {
        "shared_sync_client_through_to_thread",
        "sync_client_in_a_def_endpoint",  # a `def` endpoint
        "app_state_with_a_dependency",  # a `def` dependency
    }


@pytest.mark.slow
@pytest.mark.needs("chromium", "node-tools", "lite-wheels")
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("corpus", CORPORA, ids=lambda corpus: corpus.module)
def test_the_browser_judges_the_corpus_as_cpython_does(site: str, corpus: CorpusInBrowser) -> None:
    expected = expected_verdicts(corpus.module)
    source = (REPO_ROOT / "tests" / "corpus" / f"{corpus.module}.py").read_text()
    judged: dict[str, tuple[bool, str]] = {}
    with lite_tab(site, f"lite-corpus-{corpus.module}.png") as tab:
        written = tab.run(f"open('/tmp/{corpus.module}.py', 'w').write({source!r})")
        loaded = tab.run(_JUDGE.format(latency=corpus.latency, module=corpus.module))
        assert [written["errors"], loaded["errors"]] == [[], []]
        started = time.perf_counter()
        for name in sorted(expected.keys() - answers_using_threads(corpus.module)):
            answer = f"corpus.answer_{name}()"
            ran = tab.run(_ONE.format(check=corpus.check.format(answer=answer)))
            assert ran["errors"] == [], (name, ran["errors"])
            passed, verdict_cause = json.loads(ran["printed"].splitlines()[-1])
            judged[name] = (passed, verdict_cause)
        corpus_s = round(time.perf_counter() - started, 2)
        assert off_origin(tab.requested, site) == []
    record(f"lite-corpus-{corpus.module}", {"answers": len(judged), "checks_s": corpus_s})

    differ = {name for name, verdict in judged.items() if verdict != expected[name]}
    assert differ == JUDGED_OTHERWISE & set(judged), {
        name: (expected[name], judged[name]) for name in differ
    }
    assert len(judged) == len(expected) - len(answers_using_threads(corpus.module))
