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

import functools
import http.server
import json
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
from build_lite import build
from chromium import chromium
from loopback_http import http_served

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

#: Runs `code` in that kernel; resolves with the reply's status and what it printed to stdout
#: (stderr has httpx2's warning that `fetch` ignores the SDK's connection limits).
_EXECUTE = """async (code) => {
  const future = window.liteKernel.requestExecute({code});
  const printed = [];
  const errors = [];
  future.onIOPub = (message) => {
    const type = message.header.msg_type;
    if (type === 'stream' && message.content.name === 'stdout') printed.push(message.content.text);
    if (type === 'error') errors.push(message.content.evalue);
  };
  const reply = await future.done;
  return {status: reply.content.status, printed: printed.join(''), errors};
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
    own memory, not requests that leave it)."""
    return [
        url
        for url in urls
        if urlsplit(url).scheme not in ("data", "blob") and not url.startswith(origin + "/")
    ]


def test_off_origin_sees_another_host_and_port() -> None:
    origin = "http://127.0.0.1:8000"
    urls = [
        f"{origin}/lab/index.html",
        "data:image/svg+xml;base64,AAAA",
        "http://127.0.0.1:8001/x",
        "http://127.0.0.1:8000.example/y",
        "https://files.example/pyodide.mjs",
    ]
    assert off_origin(urls, origin) == urls[2:]


@dataclass
class LiteTab:
    """JupyterLab of the site in a Chromium tab, with a Pyodide kernel started in it."""

    page: Page
    #: Every URL the browser context requested: the page's, its kernel's and service worker's.
    requested: list[str]
    kernel_ready_after_start_s: float
    kernel_ready_after_page_load_s: float

    def run(self, code: str) -> dict[str, Any]:
        """Run `code` in the kernel: {"status", "printed" (stdout), "errors"}."""
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
