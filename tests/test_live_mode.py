"""Live mode for real: the learner notebooks run unchanged against an OpenAI-compatible server.

The server is the course's fake upstream, started as its own process (`python -m labsupport
fake-server`) on 127.0.0.1, so the notebooks' kernels reach it over real TCP through the SDK's
real network code, exactly as they would reach the OpenAI API: LAB_MODE=live, a dummy
OPENAI_API_KEY, and OPENAI_BASE_URL pointing at it. Outputs are not compared (a real API's
timings and replies vary); every cell must run, and none may raise except those tagged
`raises-exception`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from labsupport.instructor.check import format_runs, run_notebooks

REPO_ROOT = Path(__file__).resolve().parent.parent
# 01–05, and 08: a real API streams too (its relay, leaver and slow reader run over TCP).
LIVE_NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("0[1-58]_*.ipynb"))
DUMMY_KEY = "live-mode-test-dummy"


@pytest.fixture(scope="module")
def fake_server_url() -> Iterator[str]:
    """Start the fake upstream as a separate process on a free loopback port; yield its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "labsupport", "fake-server", "--port", "0", "--latency", "0.05"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()  # printed once it accepts requests; "" if it died
        match = re.search(r"http://127\.0\.0\.1:\d+/v1", ready)
        assert match, f"the fake server did not start: {ready!r}, exit {process.poll()}"
        yield match.group(0)
    finally:
        process.send_signal(signal.SIGINT)  # its main() stops the server cleanly on Ctrl+C
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_there_are_notebooks_to_run_live() -> None:
    assert len(LIVE_NOTEBOOKS) == 6, "not all of notebooks/0[1-58]_*.ipynb: run `make notebooks`"


# Six notebooks, two at a time, on a loaded 2-core machine: more than the default two minutes.
@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.timeout(360)
def test_the_learner_notebooks_run_unchanged_in_live_mode(fake_server_url: str) -> None:
    env = {
        **os.environ,
        "LAB_MODE": "live",
        "OPENAI_API_KEY": DUMMY_KEY,
        "OPENAI_BASE_URL": fake_server_url,
    }
    env.pop("MPLBACKEND", None)
    # Two at a time: CI has two cores, and a notebook mostly waits on its upstream.
    runs = asyncio.run(run_notebooks(LIVE_NOTEBOOKS, jobs=2, env=env, progress=False))
    assert all(run.passed for run in runs), "\n" + format_runs(runs)

    for run in runs:
        first_code = next(cell for cell in run.notebook.cells if cell.cell_type == "code")
        first_output = "".join(output.get("text", "") for output in first_code.outputs)
        # The first code cell says which mode and which server; never the key.
        assert f"Live mode: calls go to {fake_server_url}" in first_output, run.path.name
        text = str(run.notebook)
        assert DUMMY_KEY not in text, f"{run.path.name} printed the API key"
        assert "Offline lab" not in text
