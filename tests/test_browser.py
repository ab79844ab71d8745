"""The learner's notebooks in a real browser: JupyterLab + headless Chromium, Run All.

nbval and `labsupport check` talk to the kernel directly; this test goes through what a learner
uses: the JupyterLab front end, its kernel session, its output renderers (are the plots really
images on the page?) and its widgets. For each learner notebook it opens JupyterLab on a copy of
the notebooks and runs every cell with JupyterLab's own commands, as a learner who plays along:
at each prediction box (labsupport.coaching.predict) it types a guess (at the first, a word
first, and reads the box's "not a number"), then runs on; after the last box, "Run All Below"
(a notebook without boxes: "Run All"). When the kernel is idle it reads JupyterLab's notebook
model (not the page: an error output and a warning look alike in the DOM) and checks that every
code cell ran, that no cell failed except those tagged `raises-exception`, that each measurement
compared the typed guess, and that every plot the stored notebook has is an image on the page.
In a notebook with an explorer it then moves the first slider and waits for the new figure. A
screenshot of each notebook goes to test-artifacts/ (gitignored) for a human to look at. One
run per notebook carries all of this: the widgets need no second execution.

Chromium is started by tests/chromium.py (Debian's, driven by Playwright, offline). CI installs
it (.ci/run), and under `make check` a missing browser FAILS this test (conftest.py's `needs`): a
silent skip would let CI go green without the browser check ever running. Elsewhere it is
skipped with one line. The widgets need
JupyterLab's widget manager (jupyterlab-widgets, locked with ipywidgets): without it a widget
renders as text, and this test fails.

Everything stays on this machine: JupyterLab listens on 127.0.0.1 with news and update checks
off, and Chromium resolves no host name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chromium import chromium

from labsupport.network import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
LEARNER_NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHECK = "the real-browser check"
NOTEBOOK_SECONDS = 120
# 07 starts about 15 worker processes and waits out a killed queue worker's job claims (2 s idle).
NOTEBOOK_SECONDS_FOR = {"07_beyond_one_process": 420}
#: A prediction box (labsupport.coaching.predict), and the comparison printed for a guess of 1
#: (seconds: "You predicted 1.00 s; it took …"; a count: "You predicted 1; there were …").
PREDICTION = re.compile(r"^(\w+) = predict\(", re.MULTILINE)
TYPED_PREDICTION = "1"
COMPARED = re.compile(r"You predicted 1(\.00 s)?; (it took|there (was|were)) ")


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """JupyterLab on a copy of notebooks/ (autosave must never touch the real ones); yields
    its base URL, with the token as query."""
    home = tmp_path_factory.mktemp("jupyterlab")
    shutil.copytree(REPO_ROOT / "notebooks", home / "notebooks")
    port, token = free_port(), secrets.token_hex(16)
    env = {
        key: value
        for key, value in os.environ.items()
        # MPLBACKEND=Agg (set by some CI images) would suppress inline plots; and this test is
        # about offline mode.
        if key not in ("MPLBACKEND", "LAB_MODE", "OPENAI_API_KEY", "OPENAI_BASE_URL")
    }
    # No user-level Jupyter config, kernels or settings leak in.
    for variable in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        env[variable] = str(home / variable.lower())
    command = [
        *(sys.executable, "-m", "jupyter", "lab", str(home / "notebooks")),
        *("--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0"),
        f"--IdentityProvider.token={token}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: commands and models
        f"--LabApp.workspaces_dir={home / 'workspaces'}",  # never restore an old layout
        f"--LabApp.user_settings_dir={home / 'settings'}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    # No "get notified about Jupyter news?" prompt over the screenshot, and no calls home.
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8"
    )
    log = (home / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (home / "jupyterlab.log").read_text()
            try:
                if httpx.get(f"{base}/api/status", params={"token": token}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "JupyterLab did not start within 60 s"
            time.sleep(0.2)
        yield f"{base}|{token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(CHECK) as started:
        yield started


# JavaScript run in the page. `jupyterapp.shell.currentWidget` is the open notebook panel.
_PANEL_READY = """() => {
    const panel = window.jupyterapp?.shell?.currentWidget;
    const kernel = panel?.sessionContext?.session?.kernel;
    return Boolean(panel?.context?.isReady && kernel && kernel.status === 'idle');
}"""
_READ_MODEL = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const result = [];
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        result.push({
            index: i,
            executionCount: cell.executionCount,
            tags: cell.sharedModel.getMetadata().tags || [],
            outputs: cell.outputs.toJSON(),
        });
    }
    return result;
}"""
_RENDERED_IMAGES = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output img'))
    .filter((img) => img.complete && img.naturalWidth > 0).length"""
# For the screenshot: hide the file browser, and bring the first plot (if any) to mid-screen.
_SHOW_FIRST_PLOT = """() => {
    window.jupyterapp.shell.collapseLeft();
    document.querySelector('.jp-OutputArea-output img')?.scrollIntoView({block: 'center'});
}"""
_SHUTDOWN = """async () => await window.jupyterapp.shell.currentWidget.sessionContext.shutdown()"""
_CODE_CELLS = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const result = [];
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type === 'code') result.push({index: i, source: cell.sharedModel.getSource()});
    }
    return result;
}"""
# Runs cells `first` … `last` one at a time, each to its end, as Shift+Enter does; returns the
# cells JupyterLab reported failed (a cell tagged `raises-exception` is meant to).
_RUN_CELLS = """async ([first, last]) => {
    const panel = window.jupyterapp.shell.currentWidget;
    const failed = [];
    for (let index = first; index <= last; index++) {
        panel.content.activeCellIndex = index;
        if (!(await window.jupyterapp.commands.execute('notebook:run-cell'))) failed.push(index);
    }
    return failed;
}"""
# JupyterLab's "Run Selected Cell and All Below" from cell `first` ("Run All" when it is 0).
_RUN_ALL_FROM = """async (first) => {
    const panel = window.jupyterapp.shell.currentWidget;
    panel.content.activeCellIndex = first;
    const passed = await window.jupyterapp.commands.execute(
        first === 0 ? 'notebook:run-all-cells' : 'notebook:run-all-below'
    );
    return passed ? [] : [-1];
}"""
_EXPLORER_IMAGE = """() => {
    const img = document.querySelector('.lab-explorer img');
    return img && img.complete && img.naturalWidth > 0 ? img.src : null;
}"""
_EXPLORER_CAPTION = """() => document.querySelector('.lab-explorer-caption')?.textContent || ''"""


def _stored_plots(notebook: Path) -> int:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum(
        "image/png" in output.get("data", {})
        for cell in cells
        for output in cell.get("outputs", ())
    )


def _code_cells(page: Any) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = page.evaluate(_CODE_CELLS)
    return cells


def _predictions(cells: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """Each prediction box as (its cell, the cell that compares it, its variable's name)."""
    found = []
    for cell in cells:
        for name in PREDICTION.findall(cell["source"]):
            compared = [
                later["index"]
                for later in cells
                if later["index"] > cell["index"] and f"{name}.compare(" in later["source"]
            ]
            assert compared, f"cell {cell['index']}: nothing compares {name}"
            found.append((cell["index"], compared[0], name))
    return found


def _type_prediction(page: Any, cell: int, *, nonsense_first: bool) -> None:
    """Type a guess into the box as a learner does; first a word, if asked."""
    box = page.locator(f".jp-Cell:nth-child({cell + 1}) .lab-prediction input")
    feedback = page.locator(f".jp-Cell:nth-child({cell + 1}) .lab-prediction")
    box.scroll_into_view_if_needed()
    if nonsense_first:
        box.fill("soon")
        box.press("Tab")
        feedback.filter(has_text="'soon' is not a number").wait_for()
    box.fill(TYPED_PREDICTION)
    box.press("Tab")  # the learner moves on; the box has sent its value to the kernel
    feedback.filter(has_text="✓ your prediction").wait_for()


def _move_the_explorer(page: Any) -> None:
    """Three steps left on the explorer's first slider (requests): a new run, a new figure."""
    explorer = page.locator(".lab-explorer").first
    explorer.scroll_into_view_if_needed()
    page.wait_for_function(_EXPLORER_IMAGE)
    before_image = page.evaluate(_EXPLORER_IMAGE)
    requests_before = int(page.evaluate(_EXPLORER_CAPTION).split(" requests")[0].split()[-1])
    expected = json.dumps(f"{requests_before - 3} requests")
    handle = explorer.locator(".noUi-handle").first
    handle.focus()
    for _ in range(3):
        handle.press("ArrowLeft")
    page.wait_for_function(f"() => ({_EXPLORER_CAPTION})().startsWith({expected})")
    page.wait_for_function(f"() => ({_EXPLORER_IMAGE})() !== {json.dumps(before_image)}")


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.needs("chromium")
@pytest.mark.timeout(max(NOTEBOOK_SECONDS, *NOTEBOOK_SECONDS_FOR.values()) + 60)
@pytest.mark.parametrize("notebook", LEARNER_NOTEBOOKS, ids=lambda path: path.stem)
def test_run_all_in_jupyterlab(notebook: Path, jupyterlab: str, browser: Any) -> None:
    base, token = jupyterlab.split("|")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.set_default_timeout(NOTEBOOK_SECONDS_FOR.get(notebook.stem, NOTEBOOK_SECONDS) * 1000)
        # `?reset` starts from an empty workspace instead of a remembered layout.
        page.goto(f"{base}/lab/tree/{notebook.name}?reset&token={token}")
        page.wait_for_function(_PANEL_READY, polling=200)
        predictions = _predictions(_code_cells(page))

        # Run All, as a learner who types a guess into each prediction box as it appears:
        # the cells up to a box, the guess, and on; after the last box, Run All Below.
        refused: list[int] = []
        first = 0
        for number, (asked, _, _) in enumerate(predictions):
            refused += page.evaluate(_RUN_CELLS, [first, asked])
            page.wait_for_function(_PANEL_READY, polling=200)
            _type_prediction(page, asked, nonsense_first=number == 0)
            first = asked + 1
        refused += page.evaluate(_RUN_ALL_FROM, first)
        page.wait_for_function(_PANEL_READY, polling=200)
        cells = page.evaluate(_READ_MODEL)

        not_run = [cell["index"] for cell in cells if cell["executionCount"] is None]
        assert not not_run, f"cells never ran: {not_run}"
        failures = [
            f"cell {cell['index']}: {output['ename']}: {output['evalue']}"
            for cell in cells
            if "raises-exception" not in cell["tags"]
            for output in cell["outputs"]
            if output["output_type"] == "error"
        ]
        assert not failures, "\n".join(failures)
        tagged = {cell["index"] for cell in cells if "raises-exception" in cell["tags"]}
        assert set(refused) <= tagged, f"JupyterLab reported these cells failed: {refused}"

        texts = {cell["index"]: _output_text(cell["outputs"]) for cell in cells}
        for _, measured, name in predictions:
            assert COMPARED.search(texts[measured]), (name, texts[measured])
            assert "Investigate:" in texts[measured], (name, texts[measured])
        if any("explore(" in cell["source"] for cell in _code_cells(page)):
            _move_the_explorer(page)

        expected_plots = _stored_plots(notebook)
        plots = sum(
            "image/png" in output.get("data", {}) for cell in cells for output in cell["outputs"]
        )
        assert plots == expected_plots, "inline plots missing (is MPLBACKEND set?)"
        page.wait_for_function(f"() => ({_RENDERED_IMAGES})() >= {expected_plots}")
        page.evaluate(_SHOW_FIRST_PLOT)
        page.wait_for_timeout(500)  # let the scrolled-to cells paint
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"browser-{notebook.stem}.png"))
        page.evaluate(_SHUTDOWN)
    finally:
        page.close()


def _output_text(outputs: list[dict[str, Any]]) -> str:
    texts = [
        output.get("text") or output.get("data", {}).get("text/plain", "") for output in outputs
    ]
    return "".join("".join(text) if isinstance(text, list) else text for text in texts)


def test_every_lesson_with_an_exercise_asks_for_a_prediction() -> None:
    """The prediction checks above must check something: 01-05 and 07 each ask at least once,
    and 01 and 03 have an explorer."""

    def sources(path: Path) -> str:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")

    code = {path.stem[:2]: sources(path) for path in LEARNER_NOTEBOOKS}
    asking = {lesson for lesson, source in code.items() if PREDICTION.search(source)}
    assert asking >= {"01", "02", "03", "04", "05", "07"}, sorted(asking)
    assert {lesson for lesson, source in code.items() if "explore(" in source} >= {"01", "03"}


def test_notebook_01_has_a_plot_to_check() -> None:
    """The plot check above must check something: notebook 01 ends its comparison with a plot."""
    assert _stored_plots(REPO_ROOT / "notebooks" / "01_async_client.ipynb") >= 1
