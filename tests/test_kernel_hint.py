"""A cell run before the notebook's first cell gets one line, in a real kernel of this
environment: `make venv` installed the extension that every course kernel loads at start."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx2
import nbformat
import openai
import pytest
from nbclient import NotebookClient

from labsupport import kernel_hint
from labsupport.instructor.kernels import KERNEL_NAME, CurrentEnvKernelManager

CELLS = {
    # Run before the first cell: the SDK finds no API key, and the lab's names do not exist.
    "client": "import os\nfrom openai import AsyncOpenAI\n"
    'aclient = AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))',
    "name": "upstream.reset()",
    # Not the lab's business: the usual traceback.
    "other": "1 / 0",
    "setup": "import labsupport as lab\nupstream = lab.setup(latency=0.0)",
    "after": "del upstream\nupstream.reset()",
}


def run_in_order(names: list[str]) -> list[list[nbformat.NotebookNode]]:
    """Execute the named cells, in order, in one fresh kernel without an API key: each cell's
    outputs."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(CELLS[name]) for name in names]
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LAB_MODE")}
    client = NotebookClient(
        notebook,
        timeout=60,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=CurrentEnvKernelManager,
        allow_errors=True,
    )
    asyncio.run(client.async_execute(env=env))
    return [cell.outputs for cell in notebook.cells]


def error_of(outputs: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    (error,) = [output for output in outputs if output.output_type == "error"]
    return error


@pytest.mark.slow
def test_cells_run_before_setup_get_one_line_and_other_errors_keep_their_traceback() -> None:
    client, name, other, setup, after = run_in_order(["client", "name", "other", "setup", "after"])

    for outputs, ename in [(client, "OpenAIError"), (name, "NameError")]:
        error = error_of(outputs)
        assert error.ename == ename
        assert len(error.traceback) == 1
        assert error.traceback[0].startswith(kernel_hint.HINT + f" (this cell raised {ename}")
    assert "name 'upstream' is not defined" in error_of(name).traceback[0]

    assert error_of(other).ename == "ZeroDivisionError"
    assert len(error_of(other).traceback) > 1
    assert not [output for output in setup if output.output_type == "error"]
    # Once the lab is set up, a NameError is the learner's own, with its usual traceback.
    assert error_of(after).ename == "NameError"
    assert not any(kernel_hint.HINT in line for line in error_of(after).traceback)


def test_only_the_lab_s_errors_before_setup_get_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_hint, "current_upstream", lambda: None)

    assert kernel_hint.hint_for(NameError("name 'lab' is not defined", name="lab"))
    assert kernel_hint.hint_for(openai.OpenAIError("Missing credentials."))
    assert kernel_hint.hint_for(NameError("name 'x' is not defined", name="x")) is None
    assert kernel_hint.hint_for(ZeroDivisionError()) is None
    # An API call that failed is not about the first cell.
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    assert kernel_hint.hint_for(openai.APIConnectionError(request=request)) is None


def test_install_is_idempotent_and_keeps_the_config_s_other_lines(tmp_path: Path) -> None:
    config = kernel_hint.config_path(str(tmp_path))
    config.parent.mkdir(parents=True)
    config.write_text("c.InteractiveShell.colors = 'nocolor'")
    assert kernel_hint.install(str(tmp_path)) == config
    kernel_hint.install(str(tmp_path))
    lines = config.read_text().splitlines()
    assert lines[0] == "c.InteractiveShell.colors = 'nocolor'"
    assert lines.count(kernel_hint.CONFIG_LINE) == 1


def test_this_environment_has_it_installed() -> None:
    """`make venv` (and Binder's postBuild) run `python -m labsupport.kernel_hint`."""
    assert kernel_hint.CONFIG_LINE in kernel_hint.config_path().read_text().splitlines()
