"""labsupport.setup(): the first cell of every notebook."""

from __future__ import annotations

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
    assert first is not None
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
