"""`python -m labsupport doctor`: every check passes here, and each problem comes with its fix."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from labsupport.__main__ import main as labsupport_main
from labsupport.instructor import doctor

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_doctor_passes_on_this_machine() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "labsupport", "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("Python", "Packages", "Jupyter kernel", "Mode", "API key", "Loopback"):
        assert check in result.stdout
    assert "FAIL" not in result.stdout and "All checks passed." in result.stdout


def test_read_lock_reads_the_pins_that_apply_here(tmp_path: Path) -> None:
    """The one lock parser (doctor's, and tools/drift.py's): comments, options and `# via`
    lines are skipped, and a pin whose marker is false on this machine does not count."""
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# a comment\n--index-url x\nOpenAI==3.57.0\n    # via x\n"
        "colorama==0.4.6 ; sys_platform == 'no-such-platform'\n"
        "httpx==0.28.1 ; python_version >= '3.11'\nnot a requirement\nranged>=1.0\n",
        encoding="utf-8",
    )
    assert doctor.read_lock(lock) == {"openai": "3.57.0", "httpx": "0.28.1"}


def test_a_version_mismatch_is_reported_with_its_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / "requirements.lock"
    installed = metadata.version("openai")
    lock.write_text(
        "# a lock with one wrong pin, one missing package, and one for another platform\n"
        "openai==0.0.1\n"
        "    # via async-llm-lab (pyproject.toml)\n"
        "surely-not-installed-package==1.0\n"
        f"tqdm=={metadata.version('tqdm')}\n"
        "appnope==0.0.1 ; sys_platform == 'no-such-platform'\n",
        encoding="utf-8",
    )
    assert doctor.read_lock(lock) == {
        "openai": "0.0.1",
        "surely-not-installed-package": "1.0",
        "tqdm": metadata.version("tqdm"),
    }
    finding = doctor.check_packages(lock)
    assert not finding.ok
    assert f"openai {installed} (lock: 0.0.1)" in finding.detail
    assert "surely-not-installed-package missing (lock: 1.0)" in finding.detail
    assert "appnope" not in finding.detail and "tqdm" not in finding.detail

    assert doctor.main(["--lock", str(lock)]) == 1
    out = capsys.readouterr().out
    assert "Packages        FAIL" in out
    assert "fix: make venv" in out and "1 problem(s) found." in out


def test_a_missing_lock_is_a_failure(tmp_path: Path) -> None:
    finding = doctor.check_packages(tmp_path / "nope.lock")
    assert not finding.ok and "no lock file" in finding.detail


def test_mode_and_key_findings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("LAB_MODE", "online")
    mode = doctor.check_mode()
    assert not mode.ok and "unset LAB_MODE" in mode.fix

    monkeypatch.setenv("LAB_MODE", "live")
    key = doctor.check_key()
    assert not key.ok and "export OPENAI_API_KEY" in key.fix
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8100/v1")
    assert doctor.check_mode().detail == "live: calls go to http://127.0.0.1:8100/v1"

    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-value-42")
    key = doctor.check_key()
    assert key.ok and key.detail == "OPENAI_API_KEY set"
    report = doctor.format_findings([key, doctor.check_mode(), doctor.check_loopback()])
    assert "secret" not in report and "42" not in report


def test_the_report_puts_a_fix_under_each_failure() -> None:
    report = doctor.format_findings(
        [doctor.Finding("One", True, "fine"), doctor.Finding("Another", False, "broken", "do x")]
    )
    assert report.splitlines() == [
        "One      ok    fine",
        "Another  FAIL  broken",
        "               fix: do x",
    ]


def test_the_command_line_lists_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert labsupport_main(["--help"]) == 0
    assert "doctor" in capsys.readouterr().out
    assert labsupport_main(["frobnicate"]) == 2
    assert "usage: python -m labsupport COMMAND" in capsys.readouterr().err


def test_the_first_checks_run_before_anything_they_check_is_imported() -> None:
    """Python and packages come first, with only the standard library and `packaging` loaded,
    so a broken install is reported, not crashed on; the first row prints straight away."""
    heavy = ["openai", "httpx", "httpx2", "respx", "uvicorn", "jupyter_client", "nbclient"]
    probe = (
        "import sys\n"
        "from labsupport.instructor import doctor\n"
        "doctor.check_python(); doctor.check_packages(doctor.DEFAULT_LOCK)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
