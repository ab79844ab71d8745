"""`python -m labsupport doctor`: is this machine ready for the course? And if not, what to do.

For instructors preparing a room (or a learner stuck on setup). Each check gives one row: what
was checked, ok or FAIL, what was found, and for a failure the command that fixes it. The exit
status is 0 only when every check passed, so scripts can use it too.

Checks: the Python version; every package in requirements.lock installed at its pinned version;
that a Jupyter kernel starts in this environment and runs code; the lab mode (LAB_MODE) and,
in live mode, that an API key is present (never shown); that a loopback port can be bound (the
lab's servers need one); that `redis-server` is installed (notebook 07).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from queue import Empty
from typing import Any, Final

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

# Only the standard library and `packaging` are imported up here: the packages check must be able
# to report a missing or broken package, so whatever could be one (jupyter_client, labsupport's
# upstream and its SDKs) is imported inside the check that uses it, after that report.

__all__ = ["Finding", "diagnose", "format_finding", "format_findings", "main", "read_lock"]

DISTRIBUTION = "async-llm-lab"
#: pyproject's `requires-python`, for a checkout whose package is not installed.
REQUIRES_PYTHON: Final = ">=3.11,<3.15"
#: The lock next to the package: the repository root for the editable install every setup uses.
DEFAULT_LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
#: The report's first column is as wide as its longest check name, known before any check runs.
CHECKS: Final = ("Python", "Packages", "Jupyter kernel", "Mode", "API key", "Loopback", "Redis")
_INSTALL_FIX = "make venv  (conda/Binder: pip install -r requirements.lock)"


@dataclass(frozen=True)
class Finding:
    """One row of the report: `check` passed (`ok`) or not, `detail` says what was found, and
    `fix` what to do about a failure."""

    check: str
    ok: bool
    detail: str
    fix: str = ""


def read_lock(lock: Path) -> dict[str, str]:
    """The pins of a requirements lock that apply to this platform: {canonical name: version}.

    Lines look like `name==1.2.3` or `name==1.2.3 ; sys_platform == 'darwin'`; comments, blank
    lines and options are skipped, and a pin whose marker is false here does not apply.
    """
    pins: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        pinned = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if not pinned or (requirement.marker is not None and not requirement.marker.evaluate()):
            continue
        pins[canonicalize_name(requirement.name)] = pinned[0]
    return pins


def check_python() -> Finding:
    """This interpreter satisfies the package's `requires-python`."""
    try:
        required = metadata.metadata(DISTRIBUTION)["Requires-Python"] or REQUIRES_PYTHON
    except metadata.PackageNotFoundError:
        required = REQUIRES_PYTHON
    version = ".".join(map(str, sys.version_info[:3]))
    if version in SpecifierSet(required):
        return Finding("Python", True, f"{version} at {sys.executable} (needs {required})")
    return Finding(
        "Python",
        False,
        f"{version} at {sys.executable}; the course needs {required}",
        "install Python 3.11 to 3.14, then: make PYTHON=python3.13 venv",
    )


def check_packages(lock: Path) -> Finding:
    """Every package pinned in `lock` is installed at exactly that version."""
    if not lock.is_file():
        return Finding(
            "Packages", False, f"no lock file at {lock}", "run from a clone of the repository"
        )
    pins = read_lock(lock)
    problems = []
    for name, pinned in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} missing (lock: {pinned})")
            continue
        if installed != pinned:
            problems.append(f"{name} {installed} (lock: {pinned})")
    try:
        metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        problems.append(f"{DISTRIBUTION} (labsupport) not installed")
    if problems:
        shown = ", ".join(problems[:5]) + (
            f", and {len(problems) - 5} more" if problems[5:] else ""
        )
        return Finding(
            "Packages", False, f"{len(problems)} differ from {lock.name}: {shown}", _INSTALL_FIX
        )
    return Finding("Packages", True, f"all {len(pins)} match {lock.name}")


def check_kernel(timeout: float = 60.0) -> Finding:
    """A Jupyter kernel of this environment starts, runs `1+1`, and shuts down."""
    from jupyter_client.manager import KernelManager

    from .kernels import CurrentEnvKernelSpecManager

    manager = KernelManager(
        kernel_name="python3", kernel_spec_manager=CurrentEnvKernelSpecManager()
    )
    fix = "python -m ipykernel install --sys-prefix, then: make venv"
    try:
        # The kernel's own chatter (a warning about unencrypted local TCP) is not a finding.
        manager.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except Exception as error:
        return Finding("Jupyter kernel", False, f"did not start: {error}", fix)
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=timeout)
        results: list[str] = []

        def collect(message: dict[str, Any]) -> None:
            if message["msg_type"] == "execute_result":
                results.append(message["content"]["data"].get("text/plain", ""))

        reply = client.execute_interactive("1+1", timeout=timeout, output_hook=collect)
    except (RuntimeError, TimeoutError, Empty) as error:
        return Finding("Jupyter kernel", False, f"started but did not answer: {error}", fix)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    if reply["content"]["status"] != "ok" or results != ["2"]:
        return Finding("Jupyter kernel", False, f"1+1 gave {results or reply['content']}", fix)
    return Finding("Jupyter kernel", True, "python3 started, ran 1+1 = 2, shut down")


def check_mode() -> Finding:
    """LAB_MODE names a known mode; in live mode, which server the SDK will call."""
    from ..lab import MODE_VARIABLE, lab_mode
    from ..upstream import OPENAI_API_BASE

    try:
        mode = lab_mode()
    except ValueError as error:
        return Finding(
            "Mode", False, str(error), f"unset {MODE_VARIABLE}, or set it to offline or live"
        )
    if mode == "offline":
        return Finding("Mode", True, "offline (default): a simulated API, nothing leaves")
    base = os.environ.get("OPENAI_BASE_URL") or OPENAI_API_BASE
    return Finding("Mode", True, f"live: calls go to {base}")


def check_key() -> Finding:
    """Whether OPENAI_API_KEY is set; required only in live mode. The key is never shown."""
    from ..lab import MODE_VARIABLE, lab_mode

    present = bool(os.environ.get("OPENAI_API_KEY"))
    try:
        live = lab_mode() == "live"
    except ValueError:
        live = False
    state = "set" if present else "not set"
    if present or not live:
        return Finding(
            "API key", True, f"OPENAI_API_KEY {state}{'' if live else ' (not needed offline)'}"
        )
    return Finding(
        "API key",
        False,
        "OPENAI_API_KEY not set, and live mode needs it",
        "export OPENAI_API_KEY=... in the shell that starts Jupyter (never in a notebook), "
        f"or unset {MODE_VARIABLE}",
    )


def check_loopback() -> Finding:
    """A TCP port on 127.0.0.1 can be bound: the lab's servers (uvicorn, FakeServer) need one."""
    from ..network import bound_tcp_socket

    try:
        with bound_tcp_socket("127.0.0.1", 0) as sock:  # as serve() and FakeServer bind
            sock.listen()
    except OSError as error:
        return Finding(
            "Loopback",
            False,
            f"cannot bind 127.0.0.1: {error.strerror}",
            "enable the loopback interface (127.0.0.1) in this container or VM",
        )
    return Finding("Loopback", True, "can bind a port on 127.0.0.1")


def check_redis_server() -> Finding:
    """The system's `redis-server` (notebook 07 starts its own on a loopback port)."""
    from ..distributed.redis_server import install_command, redis_server_path

    path = redis_server_path()
    if path is None:
        return Finding(
            "Redis", False, "redis-server not found (notebook 07 needs it)", install_command()
        )
    return Finding("Redis", True, f"redis-server at {path}")


def run_checks(lock: Path = DEFAULT_LOCK) -> Iterator[Finding]:
    """Run every check, in the order of the report, yielding each finding as it is made."""
    checks: list[Callable[[], Finding]] = [
        check_python,
        lambda: check_packages(lock),
        check_kernel,
        check_mode,
        check_key,
        check_loopback,
        check_redis_server,
    ]
    for check in checks:
        yield check()


def diagnose(lock: Path = DEFAULT_LOCK) -> list[Finding]:
    """Every finding, in the order of the report."""
    return list(run_checks(lock))


def format_finding(finding: Finding, width: int = max(map(len, CHECKS))) -> str:
    """One row: the check (padded to `width`), ok or FAIL, the detail; a `fix:` line under it."""
    status = "ok  " if finding.ok else "FAIL"
    row = f"{finding.check.ljust(width)}  {status}  {finding.detail}"
    if not finding.ok and finding.fix:
        row += f"\n{''.ljust(width)}        fix: {finding.fix}"
    return row


def format_findings(findings: Sequence[Finding]) -> str:
    """A plain-text table, one row per check, with a `fix:` line under each failure."""
    width = max(len(finding.check) for finding in findings)
    return "\n".join(format_finding(finding, width) for finding in findings)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 when every check passed, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport doctor",
        description="Check that this machine is ready for the async-llm-lab course.",
    )
    parser.add_argument(
        "--lock", type=Path, default=DEFAULT_LOCK, help="requirements lock (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    failed = 0
    for finding in run_checks(args.lock):  # each row as soon as it is known: the kernel is slow
        print(format_finding(finding), flush=True)
        failed += not finding.ok
    print(f"\n{'All checks passed.' if not failed else f'{failed} problem(s) found.'}")
    return 1 if failed else 0
