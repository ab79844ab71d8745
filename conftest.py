"""Settings for every pytest run from this repository: tests/ and the notebooks nbval re-runs.

Tiers are markers (registered in pyproject.toml), never lists of files: `make test` runs what is
neither `slow`, `corpus` nor `notebook`, `make notebooks-test` the notebooks, `make check`
everything. A test that needs a program the system provides says so with
`@pytest.mark.needs("redis-server")`: without it the test is skipped with one line saying what to
install, except under `make check` (LAB_NO_SKIP=1), where a missing program fails the test, so CI
can never pass without it.
"""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# Every notebook nbval runs gets a baseline cell before its first and a probe cell after its
# last: no leak, no network, nothing left running (tests/nbval_hygiene.py).
pytest_plugins = ["tests.nbval_hygiene", "tests.mutation.plugin"]

# Checks record each result in the learner's progress file (labsupport.progress). The suite runs
# every checker and the solved notebooks, so it must not: a learner running `make test` would see
# every exercise "passed". Kernels and servers the tests start inherit this environment.
os.environ["LAB_PROGRESS"] = "off"
# Shown, not ignored (Python's default), in every kernel and process the tests start: a lesson's
# cell that leaks a socket or a client then prints a warning strict nbval did not expect.
os.environ["PYTHONWARNINGS"] = "default::ResourceWarning"

ROOT = Path(__file__).resolve().parent
#: Set by `make check`: a test whose program is missing fails instead of being skipped.
NO_SKIP = "LAB_NO_SKIP"


def _chromium() -> str | None:
    """Debian's Chromium (or LAB_CHROMIUM): what tests/test_browser.py and test_site.py drive."""
    chromium = Path(os.environ.get("LAB_CHROMIUM", "/usr/bin/chromium"))
    if chromium.is_file():
        return None
    return f"Chromium is not installed at {chromium} (apt-get install chromium, or LAB_CHROMIUM)"


def _redis_server() -> str | None:
    from labsupport.distributed import redis_server_path
    from labsupport.distributed.redis_server import install_command

    if redis_server_path() is not None:
        return None
    return f"redis-server is not installed ({install_command()})"


def _node_tools() -> str | None:
    """The npm packages package.json pins: axe-core (the site), configurable-http-proxy (hub) and
    Pyodide (the JupyterLite site)."""
    tools = [
        ROOT / "node_modules" / "axe-core" / "axe.min.js",
        ROOT / "node_modules" / ".bin" / "configurable-http-proxy",
        ROOT / "node_modules" / "pyodide" / "pyodide.mjs",
    ]
    if all(tool.exists() for tool in tools):
        return None
    return "the npm tools are not installed in node_modules/ (make node-tools)"


def _lite_wheels() -> str | None:
    """The Pyodide wheels tools/build_lite.py downloads (the only step of `make lite` that needs
    the package registry; tests run loopback-only)."""
    from build_lite import wheels_downloaded

    if wheels_downloaded():
        return None
    return "the JupyterLite site's wheels are not downloaded for lite/requirements.lock (make lite)"


#: What `@pytest.mark.needs(name)` can name: a function that says what is missing, or None.
PROGRAMS: dict[str, Callable[[], str | None]] = {
    "chromium": _chromium,
    "redis-server": _redis_server,
    "node-tools": _node_tools,
    "lite-wheels": _lite_wheels,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every cell nbval collects from a notebook is in the `notebook` tier; a `needs` that names
    no known program is a mistake in the test, said before anything runs."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
        for marker in item.iter_markers("needs"):
            unknown = sorted(set(marker.args) - PROGRAMS.keys())
            if unknown:
                raise pytest.UsageError(
                    f"{item.nodeid}: needs{unknown}: known are {sorted(PROGRAMS)}"
                )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, under `make check`, fail) a test whose `needs` names a missing program, before
    its fixtures start anything."""
    for marker in item.iter_markers("needs"):
        for name in marker.args:
            missing = PROGRAMS[name]()
            if missing is None:
                continue
            if os.environ.get(NO_SKIP) == "1":
                pytest.fail(f"{missing}; `make check` ({NO_SKIP}=1) never skips it", pytrace=False)
            pytest.skip(missing)


def pytest_report_header() -> str | None:
    """One line at the top of a run that cannot skip, so its log says so."""
    if os.environ.get(NO_SKIP) == "1":
        return f"{NO_SKIP}=1: a test whose program is missing fails (make check)"
    return None
