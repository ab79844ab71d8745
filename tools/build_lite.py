"""Build the course as a JupyterLite site, offline, into build/lite/ (`make lite`).

JupyterLite runs JupyterLab and a Python kernel (Pyodide, CPython compiled to WebAssembly)
entirely in the browser tab: a learner opens a page and runs the lessons, with nothing to install.
This script builds that site from what is on this machine only, so that the site, once built,
fetches nothing at run time from anywhere but itself:

* **Pyodide** from npm (`node_modules/pyodide`, pinned in package-lock.json; `make node-tools`).
  The npm package is Pyodide's core only: the lock it ships lists ~350 packages whose files live
  on a CDN. The site gets a lock of its own (`static/pyodide/pyodide-lock.json`) that lists only
  the wheels beside it.
* **Wheels** for Pyodide's platform (`pyemscripten_<abi>_wasm32`, read from the npm lock),
  pinned with hashes in lite/requirements.lock (`make lite-lock`) and downloaded once with pip
  into build/lite-wheels/: micropip (the kernel's installer), what the Pyodide kernel itself
  imports (IPython, comm, jedi) and what the lessons import (the SDK, FastAPI, pydantic, ...).
* **labsupport** as a wheel built from this checkout (the `async-llm-lab` project). Its own
  metadata requires the CPython course's whole stack (Jupyter, matplotlib, psutil, ...), parts of
  which have no wheel for Pyodide; so nothing is resolved in the browser: every kernel preloads
  the site lock's packages when it starts, and a lesson's `import labsupport` works with no
  install cell.
* **The learner notebooks** of notebooks/, as the site's files, in their browser edition
  (`browser_edition`): a lesson of `BROWSER_LESSONS` runs top to bottom in the tab, except its
  cells whose source (course/) marks them ``cpython_only="why"``, shown as what a CPython kernel
  recorded, labelled as such; the other lessons open with a note that they need a real kernel.

Usage: ``python tools/build_lite.py [--out DIR]``. Prints the build time and the site's size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "lite" / "requirements.lock"
PYODIDE_NPM = ROOT / "node_modules" / "pyodide"
#: Downloaded wheels, kept between builds; `STAMP` says which lock and platform they are for.
WHEELS = ROOT / "build" / "lite-wheels"
STAMP = WHEELS / "downloaded-for.json"
OUTPUT = ROOT / "build" / "lite"
#: Pyodide's runtime files the kernel loads: the ES module entry point (the kernel's workers are
#: module workers), the WebAssembly interpreter and its JavaScript glue, the standard library.
PYODIDE_CORE = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip")
PYODIDE_LOCK = "pyodide-lock.json"
#: The kernel's package installer, which the site's lock must list: the kernel loads it first.
INSTALLER = "micropip"
KERNEL_PLUGIN = "@jupyterlite/pyodide-kernel-extension:kernel"
#: The lessons that run top to bottom in a browser tab (tests/test_lite.py runs each in Chromium;
#: the course site links each to the JupyterLite site). Not 04: all it measures needs a server on
#: a socket (`lab.serve`: "answered before the audit was written" shows only there), its
#: in-memory contrast runs a `def` background task (a worker thread) and its SQLite part uses
#: aiosqlite (a thread per connection, and no wheel in the site); only its definitions would run.
BROWSER_LESSONS = ("00_start_here", "01_async_client", "02_gather", "03_semaphore", "05_lifespan")
#: A code cell's metadata key, set in the course/ source's `# %%` line to one of
#: `CPYTHON_ONLY_BECAUSE`: the cell cannot run truthfully in a browser tab, so the browser
#: edition shows what CPython recorded, and why.
CPYTHON_ONLY = "cpython_only"
CPYTHON_ONLY_BECAUSE = {
    "race": (
        "its numbers are a race that a browser tab runs slower. On CPython both waves of retries "
        "arrive while the first 5 two-second calls still hold every slot; in the tab, WebAssembly "
        "on one thread takes so long to send 100 calls and their retries that some retries land "
        "after those calls ended, and the text below would not describe what it measured."
    ),
    "explorer": (
        "the explorer reruns its scenario in a thread of its own, with an event loop of its own, "
        "and draws it with matplotlib; a browser tab has no threads, and no matplotlib here."
    ),
    "sync_wait": (
        "it measures (or draws) the trap of a sync call inside `async def`, and a browser tab "
        "does not fall into it. There the sync client's wait for the simulated upstream (a "
        "`time.sleep`, as a network read blocks a thread) does not block: Pyodide in Chromium "
        "suspends the WebAssembly stack while it sleeps (JSPI) and the event loop runs the other "
        "requests meanwhile. Measured in Chromium, the same 20 requests overlapped (all 20 calls "
        "in flight at once), and the text below would not describe what it measured."
    ),
    "threads": (
        "a plain `def` endpoint, FastAPI's thread pool and `asyncio.to_thread` run their work "
        "in worker threads, and a browser tab has none: there each request to the `def` endpoint "
        "fails with a RuntimeError (measured in Chromium), and `asyncio.to_thread` runs its "
        "function inline, on the event loop's thread."
    ),
    "sync_wait_check": (
        "the check judges whether your endpoint blocks the event loop (its blocked time, the "
        "calls in flight), and in a browser tab a sync call does not block it (measured there, "
        "above), so it could not see the trap the exercise is about; it also serves your app "
        "with uvicorn on 127.0.0.1, and the tab has no sockets. Below is the verdict CPython "
        "gave the exercise as it stands."
    ),
    "connections": (
        "it counts the TCP connections a client opens to `lab.FakeServer`, a server on "
        "127.0.0.1. A browser tab has no sockets, and there httpx2 sends through the browser's "
        "`fetch`, which manages connections itself: `httpx2.Limits` is ignored (httpx2 warns "
        "so)."
    ),
    "sockets": (
        "it counts the TCP connections clients open to `lab.FakeServer`, a server on 127.0.0.1 "
        "in a thread of its own, and asks the operating system (through psutil) which sockets "
        "this process still has open to it. A browser tab has no sockets, threads or psutil: "
        "there httpx2 sends through the browser's `fetch`, which opens and reuses connections "
        "out of Python's sight."
    ),
    "aiosqlite": (
        "it opens an aiosqlite connection, which runs its queries in a thread of its own; a "
        "browser tab has no threads (and the site does not install aiosqlite)."
    ),
}
NEEDS_A_KERNEL = (
    "**This lesson needs a real Python kernel.** It uses what a browser tab does not have "
    "(threads, processes or TCP sockets), so it does not run here: the outputs below are the ones "
    "a CPython kernel recorded when the course was built. Run it on your own machine (see the "
    "course's *Quick start*) or on Binder."
)


class LiteBuildError(Exception):
    """Something the site cannot be built without; the message says what to run."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUTPUT, help="where the site goes")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        build(args.out)
    except LiteBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    print(f"JupyterLite site in {args.out}: {size_mb(args.out):.1f} MB, built in {seconds:.1f} s")
    return 0


def build(out: Path) -> None:
    """Build the site into `out`, from the JupyterLite project (its `lite_dir`) this writes
    afresh beside it, in `<out>-src/`."""
    lock = pyodide_lock()
    stage = out.with_name(f"{out.name}-src")
    if stage.exists():
        shutil.rmtree(stage)
    pyodide_dir = stage / "static" / "pyodide"
    pyodide_dir.mkdir(parents=True)
    for name in PYODIDE_CORE:
        shutil.copy2(PYODIDE_NPM / name, pyodide_dir / name)
    for wheel in download_wheels():
        shutil.copy2(wheel, pyodide_dir / wheel.name)
    build_labsupport_wheel(pyodide_dir)
    wheels = sorted(pyodide_dir.glob("*.whl"))
    if INSTALLER not in {distribution(wheel) for wheel in wheels}:
        raise LiteBuildError(f"lite/requirements.lock must pin {INSTALLER} (the kernel needs it)")
    write_json(pyodide_dir / PYODIDE_LOCK, site_lock(lock, wheels))
    write_json(stage / "jupyter-lite.json", site_config(sorted(map(distribution, wheels))))
    notebooks = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        edition = browser_edition(nbformat.read(notebook, as_version=4), notebook.stem)
        notebooks.append(stage / "files" / notebook.name)
        notebooks[-1].parent.mkdir(exist_ok=True)
        nbformat.write(edition, notebooks[-1])
    if out.exists():
        shutil.rmtree(out)
    # In the stage: the build's task database (.jupyterlite.doit.db, in its working directory)
    # goes with the stage, or tasks it remembers as done would skip patching the new site.
    run(
        [sys.executable, "-m", "jupyter", "lite", "build"],
        "--lite-dir",
        str(stage.resolve()),
        "--output-dir",
        str(out.resolve()),
        # Source maps are for debugging JupyterLab itself, about half the site's size.
        "--no-sourcemaps",
        *(argument for notebook in notebooks for argument in ("--contents", str(notebook))),
        cwd=stage,
    )


def browser_edition(notebook: NotebookNode, name: str) -> NotebookNode:
    """The notebook as the site serves it. A lesson of `BROWSER_LESSONS` runs in the tab: each
    code cell marked `CPYTHON_ONLY` becomes a text cell with its code and what it showed on
    CPython, said to be that. Any other lesson opens with a note that it needs a real kernel."""
    edition: NotebookNode = nbformat.from_dict(json.loads(json.dumps(notebook)))
    if name not in BROWSER_LESSONS:
        edition.cells.insert(0, nbformat.v4.new_markdown_cell(NEEDS_A_KERNEL, id="browser-note"))
        return edition
    edition.cells = [
        recorded_on_cpython(cell) if CPYTHON_ONLY in cell.metadata else cell
        for cell in edition.cells
    ]
    return edition


def recorded_on_cpython(cell: NotebookNode) -> NotebookNode:
    """A code cell that cannot run in the browser, as text: why, its code, and what it printed
    and drew in the CPython kernel that executed the notebook (images as the cell's
    attachments, with their alt text)."""
    reason = cell.metadata[CPYTHON_ONLY]
    if reason not in CPYTHON_ONLY_BECAUSE:
        raise LiteBuildError(
            f"cell {cell.get('id')}: {CPYTHON_ONLY}={reason!r} is none of "
            f"{sorted(CPYTHON_ONLY_BECAUSE)} (tools/build_lite.py says why each cannot run there)"
        )
    lines = [
        f"**Recorded on CPython, not run in your browser:** {CPYTHON_ONLY_BECAUSE[reason]}",
        "",
        "```python",
        cell.source,
        "```",
    ]
    texts = [  # a figure's text/plain is its caption, which has an output of its own
        output.get("text") or output.get("data", {}).get("text/plain", "")
        for output in cell.outputs
        if output.get("name", "stdout") == "stdout" and "image/png" not in output.get("data", {})
    ]
    printed = "".join(texts).rstrip()
    if printed:
        lines += ["", "What it showed in a CPython kernel:", "", "```text", printed, "```"]
    attachments = {}
    for number, output in enumerate(o for o in cell.outputs if "image/png" in o.get("data", {})):
        image = f"cpython-{number}.png"
        attachments[image] = {"image/png": output["data"]["image/png"]}
        alt = output.get("metadata", {}).get("image/png", {}).get("alt", "figure")
        lines += ["", f"![{alt}](attachment:{image})"]
    recorded: NotebookNode = nbformat.v4.new_markdown_cell("\n".join(lines), id=cell.get("id"))
    if attachments:
        recorded.attachments = attachments
    return recorded


def pyodide_lock() -> dict[str, Any]:
    """The lock the npm Pyodide ships: its `info` names the platform and the Python."""
    path = PYODIDE_NPM / PYODIDE_LOCK
    if not path.is_file():
        raise LiteBuildError(f"{path.relative_to(ROOT)} is missing: run `make node-tools`")
    lock: dict[str, Any] = json.loads(path.read_text())
    return lock


def platform_tag(lock: dict[str, Any]) -> str:
    """The wheel platform tag of this Pyodide (PEP 783), e.g. `pyemscripten_2026_0_wasm32`."""
    info = lock["info"]
    return f"pyemscripten_{info['abi_version']}_{info['arch']}"


def python_version(lock: dict[str, Any]) -> str:
    """This Pyodide's Python as `major.minor`, e.g. `3.14`."""
    return ".".join(str(lock["info"]["python"]).split(".")[:2])


def wheels_downloaded() -> bool:
    """Whether build/lite-wheels/ holds the wheels of the current lock for this Pyodide: then a
    build needs no network at all."""
    if not (PYODIDE_NPM / PYODIDE_LOCK).is_file():
        return False
    return STAMP.is_file() and json.loads(STAMP.read_text()) == wheels_wanted()


def wheels_wanted() -> dict[str, str]:
    return {"lock": sha256(LOCK), "platform": platform_tag(pyodide_lock())}


def download_wheels() -> list[Path]:
    """The wheels lite/requirements.lock pins, for this Pyodide's platform, downloaded by pip once
    (checked against the lock's hashes) and reused while the lock and the platform stay the same.
    """
    if not wheels_downloaded():
        if WHEELS.exists():
            shutil.rmtree(WHEELS)
        lock = pyodide_lock()
        version = python_version(lock)
        abi = "cp" + version.replace(".", "")
        run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes"],
            *("--only-binary=:all:", "--platform", platform_tag(lock)),
            *("--python-version", version, "--implementation", "cp"),
            *("--abi", abi, "--abi", "none", "--abi", "abi3"),
            *("--dest", str(WHEELS), "--requirement", str(LOCK)),
        )
        write_json(STAMP, wheels_wanted())
    return sorted(WHEELS.glob("*.whl"))


def distribution(wheel: Path) -> str:
    """A wheel's normalized project name (the file name's first field, PEP 427)."""
    return wheel.name.split("-")[0].replace("_", "-").lower()


def site_lock(lock: dict[str, Any], wheels: list[Path]) -> dict[str, Any]:
    """Pyodide's lock for the site: this Pyodide's `info`, and one package per wheel beside it.

    Every one is preloaded when a kernel starts (`site_config`), so no dependency is resolved in
    the browser and each entry `depends` on nothing; `imports` names the wheel's top-level
    modules, as Pyodide's own lock does (it loads a package when a cell imports one of them).
    """
    packages = {
        distribution(wheel): {
            "name": distribution(wheel),
            "version": wheel.name.split("-")[1],
            "file_name": wheel.name,
            "install_dir": "site",
            "sha256": sha256(wheel),
            "package_type": "package",
            "imports": top_level_modules(wheel),
            "depends": [],
            "unvendored_tests": False,
        }
        for wheel in wheels
    }
    return {"info": lock["info"], "packages": packages}


def top_level_modules(wheel: Path) -> list[str]:
    """The importable names a wheel installs: its top-level packages and modules."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    found = set()
    for name in names:
        first, _, rest = name.partition("/")
        if first.endswith((".dist-info", ".data")):
            continue
        if rest.endswith(".py") or rest.endswith(".so") or (not rest and first.endswith(".py")):
            found.add(first.removesuffix(".py").split(".")[0])
    return sorted(found)


def build_labsupport_wheel(into: Path) -> None:
    """labsupport (the `async-llm-lab` project) as a wheel, built from this checkout."""
    uv = Path(sys.executable).parent / "uv"
    if not uv.is_file():
        raise LiteBuildError("uv is not in this environment: run `make venv`")
    # Offline: the build backend (setuptools) comes from uv's cache, where `make venv` put it
    # when it installed this project; the tests build the site with no network at all.
    run([str(uv), "build", "--wheel", "--offline", "--quiet", "--out-dir", str(into)], str(ROOT))


def site_config(preloaded: list[str]) -> dict[str, Any]:
    """`jupyter-lite.json`: every kernel starts with the `preloaded` packages of the site's lock,
    so a lesson's `import labsupport` works as on CPython, with no install cell; piplite (the
    `%pip` of the Pyodide kernel) never falls back to the public index. The build adds Pyodide's
    URL and the kernel's own wheel index to it."""
    return {
        "jupyter-lite-schema-version": 0,
        "jupyter-config-data": {
            "appName": "async-llm-lab",
            # window.jupyterapp, as `jupyter lab --LabApp.expose_app_in_browser` gives: the
            # browser test (tests/test_lite.py) drives the kernel through its service manager.
            "exposeAppInBrowser": True,
            "litePluginSettings": {
                KERNEL_PLUGIN: {
                    "disablePyPIFallback": True,
                    "loadPyodideOptions": {"packages": preloaded},
                }
            },
        },
    }


def run(command: list[str], *arguments: str, cwd: Path = ROOT) -> None:
    """Run a build step; its failure ends the build with the step's own output above."""
    completed = subprocess.run([*command, *arguments], cwd=cwd, check=False)
    if completed.returncode != 0:
        raise LiteBuildError(f"{' '.join(command)} failed (exit status {completed.returncode})")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def size_mb(directory: Path) -> float:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()) / 1e6


if __name__ == "__main__":
    sys.exit(main())
