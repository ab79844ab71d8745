"""labsupport.setup(): the first cell of every notebook."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from openai import AsyncOpenAI

import labsupport
from labsupport import PLACEHOLDER_KEY


@pytest.fixture(autouse=True)
def clean_lab(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("LAB_MODE", raising=False)
    yield
    labsupport.teardown()


def test_offline_setup_mocks_guards_and_provides_a_placeholder_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = labsupport.setup(latency=0.05)
    assert upstream is not None and upstream.active and upstream.latency == 0.05
    assert labsupport.guard_active()
    out = capsys.readouterr().out
    assert "Offline lab" in out and "0.05 s per call" in out
    import os

    assert os.environ["OPENAI_API_KEY"] == PLACEHOLDER_KEY
    # Learner code constructs the client exactly as the seed note does.
    AsyncOpenAI(api_key=os.getenv("OPENAI_API_KEY"))
    assert labsupport.current_upstream() is upstream


def test_setup_twice_reconfigures_the_same_upstream_and_resets_it() -> None:
    first = labsupport.setup(latency=0.05)
    assert isinstance(first, labsupport.MockUpstream)
    first._calls = 7  # as if calls had been made
    second = labsupport.setup(latency=0.2)
    assert second is first and second.latency == 0.2 and second.stats.calls == 0


def test_a_real_key_is_kept_and_never_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "real-looking-secret-123")
    labsupport.setup()
    import os

    assert os.environ["OPENAI_API_KEY"] == "real-looking-secret-123"
    assert "secret" not in capsys.readouterr().out


# Live mode's setup (with a server to measure) is tested in test_observed.py.


def test_live_mode_without_a_key_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_MODE", "live")
    with pytest.raises(RuntimeError, match="needs OPENAI_API_KEY"):
        labsupport.setup()


def test_an_unknown_mode_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_MODE", "online")
    with pytest.raises(ValueError, match="LAB_MODE must be one of offline, live"):
        labsupport.setup()


def _run(code: str) -> list[str]:
    """The lines `code` prints in a fresh interpreter (with the offline lab's environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_MODE", "OPENAI_BASE_URL")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_first_cell_imports_neither_the_sdk_nor_a_server() -> None:
    """`setup()` needs the mock and the guard only: the lesson's next cell imports the SDK (and
    FastAPI), and the first cell should not pay for them too."""
    lines = _run(
        "import sys\nimport labsupport as lab\nlab.setup()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'openai', 'fastapi', 'pydantic', 'matplotlib'}))\n"
        "print(sorted(m for m in ('respx', 'httpcore', 'httpcore2') if m in sys.modules))"
    )
    assert lines[-2:] == ["[]", "['httpcore', 'httpcore2']"]


def test_the_warm_up_is_private_to_the_lab() -> None:
    """Warming the SDK and FastAPI after the first cell sends nothing to the upstream: its
    counters and call numbers (which scripted faults count) stay the lesson's."""
    lines = _run(
        "import labsupport as lab\nfrom labsupport import warmup\n"
        "upstream = lab.setup(0.0, faults=[lab.Fault.on_call(1, status=500)])\n"
        "print(warmup.cold_parts())\n"
        "import fastapi, openai\nwarmup.warm_up()\n"
        "print(warmup.cold_parts(), upstream.stats.calls)\n"
        "try:\n"
        "    openai.OpenAI(max_retries=0).models.list()\n"  # not a chat call: does not count
        "    openai.OpenAI(max_retries=0).chat.completions.create(\n"
        "        model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "except openai.InternalServerError:\n"
        "    print('call 1 failed as scripted')"
    )
    assert lines[1:] == ["['openai', 'fastapi']", "[] 0", "call 1 failed as scripted"]


@pytest.mark.slow
def test_in_a_notebook_each_part_is_warmed_after_the_cell_that_imports_it() -> None:
    lines = _run(
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "from labsupport import warmup\n"
        "shell = InteractiveShell.instance()\n"
        "cells = ['import labsupport as lab\\nupstream = lab.setup()', "
        "'from openai import AsyncOpenAI', 'x = 1', 'from fastapi import FastAPI']\n"
        "for cell in cells:\n"
        "    shell.run_cell(cell).raise_error()\n"
        "    print(warmup.cold_parts())\n"
        "print(len(shell.events.callbacks['post_run_cell']), shell.user_ns['upstream'].stats.calls)"
    )
    assert lines[-5:] == [
        "['openai', 'fastapi']",
        "['fastapi']",
        "['fastapi']",
        "[]",
        "0 0",
    ]
