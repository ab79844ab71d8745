"""Run the checkers' tests and strict nbval on the Pythons learners have that this venv is not.

Debian ships one Python per suite: bookworm 3.11 (this machine's), trixie 3.13 and sid 3.14. For
each suite this tool makes a throwaway root with `debootstrap --variant=minbase` from the same
Debian mirror this machine's apt uses (read from its sources, so no host name is written here),
installs `requirements.lock` into a venv inside it with the lock's own uv, and runs pytest there
on this checkout (bind-mounted at /src), in a private mount namespace and, for the tests, a
network namespace with only loopback up: nothing the tests start can reach off the machine.

    python tools/other_pythons.py                 # every suite: checker tests, then notebooks
    python tools/other_pythons.py --suite sid -- tests/test_checks_gather.py

By default each suite runs two parts, as the Makefile's tiers do: the checkers' tests with one
pytest-xdist worker per logical core, then every notebook under strict nbval with one per
physical core. The last lines are a table: suite × part, pass counts and wall time. The exit
status is 1 when any part of any suite failed (or a root could not be made), so `make check`,
which runs this, fails with it.

Needs root (CI runs as root), debootstrap and util-linux's unshare. A root is reused
(`build/pythons/SUITE/.ready` holds the sha256 of the lock and the install command it ran): a
changed lock is synced into it, `--fresh` makes it again. No Debian suite the mirror serves has
Python 3.12, so it is not tested here (README: "Supported Pythons").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "pythons"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
#: Where the host's CA bundle lies in the root: installing Debian's `ca-certificates` there would
#: replace one at the usual path, and pip needs the host's to reach the registry.
ROOT_CA = "/etc/host-ca.crt"
VENV = "/opt/venv"
#: Debian's packages the root needs: the interpreter, venv, compilers for any sdist, git for
#: the tests that read the checkout, and redis-server for notebook 07.
PACKAGES = ("python3", "python3-venv", "python3-dev", "gcc", "libc6-dev", "git", "redis-server")


@dataclass(frozen=True)
class Suite:
    name: str
    python: str

    @property
    def root(self) -> Path:
        return BUILD / self.name


#: sid's Release file is past its Valid-Until on the mirror: debootstrap does not check that
#: date, and nothing runs apt inside a root (apt there would need
#: `-o Acquire::Check-Valid-Until=false`).
SUITES = {s.name: s for s in (Suite("trixie", "3.13"), Suite("sid", "3.14"))}


@dataclass(frozen=True)
class Part:
    """One pytest run in a root: what it selects and how many xdist workers it uses."""

    name: str
    selection: tuple[str, ...]
    workers: str

    @property
    def slug(self) -> str:
        return re.sub(r"\W+", "-", self.name)


#: What runs by default, with the Makefile's worker counts: `--numprocesses=logical` is
#: pyproject's default for tests; the notebooks time real concurrency and were written for one
#: notebook per physical core (the Makefile's NOTEBOOK_WORKERS).
DEFAULT_PARTS = (
    Part("checker tests", ("tests/test_checks_*.py",), "--numprocesses=logical"),
    Part("notebooks", ("notebooks",), "--numprocesses=auto"),
)


@dataclass(frozen=True)
class Counts:
    """A pytest run's results, from its JUnit XML report."""

    passed: int
    skipped: int
    failed: int
    """Failures and errors."""

    def __str__(self) -> str:
        return f"{self.passed} passed, {self.skipped} skipped, {self.failed} failed"


@dataclass(frozen=True)
class Outcome:
    """How one part went: pytest's exit status, its counts and wall time."""

    suite: str
    part: str
    status: int
    seconds: float
    """Wall time."""
    cpu: float
    """CPU time of every process the part ran (pytest, its workers, kernels, servers): with
    `seconds`, how much of the wall time a busy machine added."""
    counts: Counts | None = None

    def row(self) -> str:
        counts = "no results" if self.counts is None else str(self.counts)
        verdict = "ok" if self.status == 0 else f"FAILED (exit {self.status})"
        times = f"{self.seconds:>5.0f} s ({self.cpu:.0f} s CPU)"
        return f"{self.suite:<7} {self.part:<14} {counts:<36} {times:<20} {verdict}"


def junit_counts(report: Path) -> Counts | None:
    """The counts in a pytest JUnit XML report; None if there is none (pytest never got that
    far). A skip is counted apart: the mutation tests skip mutants that do not apply."""
    try:
        root = ElementTree.parse(report).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))

    def total(*keys: str) -> int:
        return sum(int(suite.get(key, 0)) for suite in suites for key in keys)

    failed, skipped = total("errors", "failures"), total("skipped")
    return Counts(total("tests") - failed - skipped, skipped, failed)


def debian_mirror(sources: Path = Path("/etc/apt/sources.list.d/debian.sources")) -> str:
    """The Debian archive this machine's apt uses (deb822 `URIs:` of the main archive)."""
    if sources.exists():
        for uri in re.findall(r"^URIs:\s*(\S+)", sources.read_text(), flags=re.M):
            if not uri.rstrip("/").endswith("-security"):
                return str(uri)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        match = re.search(r"^deb\s+(\S+)\s+\S+\s+main", legacy.read_text(), flags=re.M)
        if match:
            return str(match.group(1))
    raise SystemExit("error: no Debian mirror found in this machine's apt sources")


def in_root(suite: Suite, script: str, *, network: bool) -> list[str]:
    """The command that runs `script` (sh) as root inside the suite's root.

    A private mount namespace holds the bind of this checkout and the kernel filesystems, so they
    vanish when the command ends; without `network` there is only loopback, brought up before
    `chroot` (a chroot cannot make namespaces of its own).
    """
    root = suite.root
    mounts = [
        f"mount --bind {shlex.quote(str(REPO))} {root}/src",
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /dev {root}/dev",
        f"mount -t tmpfs tmpfs {root}/tmp",
        f"mount -t tmpfs tmpfs {root}/dev/shm",
    ]
    if not network:
        mounts.insert(0, "ip link set lo up")
    env = {
        "HOME": "/root",
        "PATH": f"{VENV}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PIP_CERT": ROOT_CA,
        "SSL_CERT_FILE": ROOT_CA,
        "PYTHONDONTWRITEBYTECODE": "1",
        "CI": os.environ.get("CI", ""),
        # The root has every program the tests need: one missing fails its test (conftest.py).
        "LAB_NO_SKIP": "1",
    }
    if not network:
        env["LAB_NETNS"] = "loopback-only"
    inner = "cd /src && " + script
    chroot = ["chroot", str(root), "env", "-i"]
    chroot += [f"{k}={v}" for k, v in env.items()]
    chroot += ["sh", "-c", inner]
    outer = " && ".join(mounts) + " && exec " + shlex.join(chroot)
    return ["unshare", "--mount", *([] if network else ["--net"]), "sh", "-c", outer]


def make_root(suite: Suite, *, fresh: bool) -> None:
    """Debootstrap the suite (unless its root exists) and sync the lock into a venv there
    (unless the root already holds this lock, installed this way)."""
    ready = suite.root / ".ready"
    install = (
        f"{{ test -x {VENV}/bin/python || python3 -m venv {VENV}; }} && "
        f"{VENV}/bin/python -m pip install --quiet {_locked('uv')} && "
        # Compiled, as `make venv` does: the tests run with PYTHONDONTWRITEBYTECODE (nothing
        # written into the checkout), so without it every process would compile each module it
        # imports: every kernel, worker and lazily importing first request slower than on the
        # venv's 3.11, which is not what these runs compare.
        f"uv pip sync --quiet --compile-bytecode --python {VENV}/bin/python requirements.lock && "
        # The checkout is on PYTHONPATH, not installed: an editable install would write into it.
        f"PYTHONPATH=/src {VENV}/bin/python -m labsupport.kernel_hint >/dev/null"
    )
    lock = (REPO / "requirements.lock").read_bytes()
    installed = hashlib.sha256(lock + install.encode()).hexdigest()
    if fresh and suite.root.exists():
        shutil.rmtree(suite.root)
    if ready.exists() and ready.read_text().strip() == installed:
        return
    started = time.monotonic()
    if not (suite.root / "src").is_dir():  # no root, or a debootstrap that stopped half-way
        if suite.root.exists():
            shutil.rmtree(suite.root)
        suite.root.mkdir(parents=True)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                suite.name,
                str(suite.root),
                debian_mirror(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        shutil.copyfile(HOST_CA, suite.root / ROOT_CA.lstrip("/"))
        (suite.root / "src").mkdir()
    subprocess.run(in_root(suite, install, network=True), check=True)
    ready.write_text(installed + "\n")
    print(f"{suite.name}: root ready in {time.monotonic() - started:.0f} s", flush=True)


def _locked(name: str) -> str:
    """`name==version` as requirements.lock pins it."""
    match = re.search(rf"^{re.escape(name)}==\S+", (REPO / "requirements.lock").read_text(), re.M)
    if not match:
        raise SystemExit(f"error: requirements.lock pins no {name}")
    return match.group(0)


def run_part(suite: Suite, part: Part) -> Outcome:
    """pytest on the suite's Python, loopback only, for one part."""
    report = BUILD / f"{suite.name}-{part.slug}.xml"
    report.unlink(missing_ok=True)
    version = f"import sys; assert sys.version.startswith({suite.python!r}), sys.version"
    pytest = [
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        part.workers,
        f"--junitxml=/src/{report.relative_to(REPO)}",
    ]
    # The selection's globs are left to sh in the root (tests/test_checks_*.py).
    script = (
        f"python -c {shlex.quote(version)} && "
        f"PYTHONPATH=/src exec {shlex.join(pytest)} {' '.join(part.selection)}"
    )
    print(f"{suite.name}: Python {suite.python}: {part.name}: pytest {' '.join(part.selection)}")
    sys.stdout.flush()
    started, cpu = time.monotonic(), _children_cpu()
    status = subprocess.run(in_root(suite, script, network=False)).returncode
    seconds, cpu = time.monotonic() - started, _children_cpu() - cpu
    return Outcome(suite.name, part.name, status, seconds, cpu, junit_counts(report))


def _children_cpu() -> float:
    """CPU seconds used so far by this process's finished descendants (those waited for)."""
    times = os.times()
    return times.children_user + times.children_system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--suite", action="append", choices=sorted(SUITES), default=None)
    parser.add_argument("--fresh", action="store_true", help="make the roots again")
    parser.add_argument(
        "selection", nargs="*", help="pytest arguments (default: checker tests, then notebooks)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: run as root (debootstrap, mounts and chroot need it)", file=sys.stderr)
        return 2
    for tool in ("debootstrap", "unshare", "ip"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed (apt-get install debootstrap iproute2)")
            return 2
    parts: tuple[Part, ...] = DEFAULT_PARTS
    if args.selection:
        parts = (Part("selection", tuple(args.selection), "--numprocesses=logical"),)
    outcomes: list[Outcome] = []
    for name in args.suite or sorted(SUITES, key=lambda n: SUITES[n].python):
        suite = SUITES[name]
        started, cpu = time.monotonic(), _children_cpu()
        try:
            make_root(suite, fresh=args.fresh)
        except subprocess.CalledProcessError as error:
            seconds, cpu = time.monotonic() - started, _children_cpu() - cpu
            print(f"{suite.name}: the root could not be made: {error}", flush=True)
            outcomes.append(Outcome(suite.name, "root", error.returncode or 1, seconds, cpu))
            continue
        outcomes += [run_part(suite, part) for part in parts]
        print(f"{suite.name}: {time.monotonic() - started:.0f} s in all", flush=True)
    print("\nOther Pythons:")
    for outcome in outcomes:
        print(f"  {outcome.row()}")
    return int(any(outcome.status != 0 for outcome in outcomes))


if __name__ == "__main__":
    raise SystemExit(main())
