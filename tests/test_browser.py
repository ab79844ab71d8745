"""The learner's notebooks in a real browser: JupyterLab + headless Chromium, Run All.

nbval and `labsupport check` talk to the kernel directly; this test goes through what a learner
uses: the JupyterLab front end, its kernel session, and its output renderers (are the plots
really images on the page?). For each learner notebook it opens JupyterLab on a copy of the
notebooks, runs every cell with JupyterLab's own "Run All" command, waits for the kernel to go
idle, then reads JupyterLab's notebook model (not the page: an error output and a warning look
alike in the DOM) and checks that every code cell ran, that no cell failed except those tagged
`raises-exception`, and that every plot the stored notebook has is an image on the page. A
screenshot of each notebook goes to test-artifacts/ (gitignored) for a human to look at.

Chromium is Debian's (/usr/bin/chromium, or LAB_CHROMIUM), driven by Playwright; Playwright's
own browser download is never used. CI installs Chromium (.ci/run), so a missing browser FAILS
this test: a silent skip would let CI go green without the browser check ever running. On a
machine without Chromium, set LAB_SKIP_BROWSER=1 to skip it deliberately.

Everything stays on this machine: JupyterLab listens on 127.0.0.1 with news and update checks
off, and Chromium resolves no host name but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LEARNER_NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("LAB_CHROMIUM", "/usr/bin/chromium"))
NOTEBOOK_SECONDS = 120
# 07 starts about 15 worker processes and waits out an arq job's in-progress mark (12 s).
NOTEBOOK_SECONDS_FOR = {"07_beyond_one_process": 420}

CHROMIUM_ARGS = [
    # No network but loopback: no name resolves, except the JupyterLab server's address.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",  # containers have a small /dev/shm
]


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("LAB_SKIP_BROWSER") == "1":
        pytest.skip("LAB_SKIP_BROWSER=1: the real-browser check was skipped on purpose")
    pytest.fail(
        f"Chromium is not installed at {CHROMIUM}, so the real-browser check cannot run. "
        "Install it (Debian/Ubuntu: apt-get install chromium; .ci/run does this in CI), point "
        "LAB_CHROMIUM at a Chromium binary, or set LAB_SKIP_BROWSER=1 to skip this test."
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """JupyterLab on a copy of notebooks/ (autosave must never touch the real ones); yields
    its base URL, with the token as query."""
    _require_chromium()
    home = tmp_path_factory.mktemp("jupyterlab")
    shutil.copytree(REPO_ROOT / "notebooks", home / "notebooks")
    port, token = _free_port(), secrets.token_hex(16)
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
    _require_chromium()
    from playwright.sync_api import sync_playwright

    args = [*CHROMIUM_ARGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield chromium
        chromium.close()


# JavaScript run in the page. `jupyterapp.shell.currentWidget` is the open notebook panel.
_PANEL_READY = """() => {
    const panel = window.jupyterapp?.shell?.currentWidget;
    const kernel = panel?.sessionContext?.session?.kernel;
    return Boolean(panel?.context?.isReady && kernel && kernel.status === 'idle');
}"""
_RUN_ALL = """async () => await window.jupyterapp.commands.execute('notebook:run-all-cells')"""
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


def _stored_plots(notebook: Path) -> int:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return sum(
        "image/png" in output.get("data", {})
        for cell in cells
        for output in cell.get("outputs", ())
    )


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

        run_all_passed = page.evaluate(_RUN_ALL)
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
        if not any("raises-exception" in cell["tags"] for cell in cells):
            assert run_all_passed is True, "JupyterLab's Run All reported a failure"

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


def test_notebook_01_has_a_plot_to_check() -> None:
    """The plot check above must check something: notebook 01 ends its comparison with a plot."""
    assert _stored_plots(REPO_ROOT / "notebooks" / "01_async_client.ipynb") >= 1
