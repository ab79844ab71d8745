"""Run the checkers' tests and strict nbval on the Pythons learners have that this venv is not.

Debian ships one Python per suite: bookworm 3.11 (this machine's), trixie 3.13 and sid 3.14. For
each suite this tool makes a throwaway root with `debootstrap --variant=minbase` from the same
Debian mirror this machine's apt uses (read from its sources, so no host name is written here),
installs `requirements.lock` into a venv inside it with the lock's own uv, and runs pytest there
on this checkout (bind-mounted at /src), in a private mount namespace and, for the tests, a
network namespace with only loopback up: nothing the tests start can reach off the machine.

    python tools/other_pythons.py                 # every suite, the default selection
    python tools/other_pythons.py --suite sid -- tests/test_checks_gather.py

Needs root (CI runs as root), debootstrap and util-linux's unshare. A root that installed once
is reused (`build/pythons/SUITE/.ready`); `--fresh` makes it again. Python 3.12 is in no Debian
suite that this machine's mirror serves, so it is not tested here (README: "Supported Pythons").
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "pythons"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
#: Where the host's CA bundle lies in the root: installing Debian's `ca-certificates` there would
#: replace one at the usual path, and pip needs the host's to reach the registry.
ROOT_CA = "/etc/host-ca.crt"
VENV = "/opt/venv"
#: What runs by default: every checker's corpus and strict nbval over every notebook.
DEFAULT_SELECTION = ("tests/test_checks_*.py", "notebooks")
#: Debian's packages the root needs: the interpreter, venv, compilers for any sdist, git for
#: the tests that read the checkout, and redis-server for notebook 07.
PACKAGES = ("python3", "python3-venv", "python3-dev", "gcc", "libc6-dev", "git", "redis-server")


@dataclass(frozen=True)
class Suite:
    name: str
    python: str
    #: sid's Release file is past its Valid-Until on the mirror; apt needs to be told.
    expired_release: bool = False

    @property
    def root(self) -> Path:
        return BUILD / self.name


SUITES = {s.name: s for s in (Suite("trixie", "3.13"), Suite("sid", "3.14", expired_release=True))}


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
    """Debootstrap the suite and install the lock in a venv there (skipped when ready)."""
    ready = suite.root / ".ready"
    if ready.exists() and not fresh:
        return
    if suite.root.exists():
        shutil.rmtree(suite.root)
    suite.root.mkdir(parents=True)
    started = time.monotonic()
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
    (suite.root / "src").mkdir(exist_ok=True)
    shutil.copyfile(HOST_CA, suite.root / ROOT_CA.lstrip("/"))
    uv = _locked("uv")
    install = (
        f"python3 -m venv {VENV} && {VENV}/bin/python -m pip install --quiet {uv} && "
        f"uv pip sync --quiet --python {VENV}/bin/python requirements.lock && "
        # The checkout is on PYTHONPATH, not installed: an editable install would write into it.
        f"PYTHONPATH=/src {VENV}/bin/python -m labsupport.kernel_hint >/dev/null"
    )
    subprocess.run(in_root(suite, install, network=True), check=True)
    ready.write_text(f"{time.monotonic() - started:.0f} s\n")
    print(f"{suite.name}: root ready in {time.monotonic() - started:.0f} s", flush=True)


def _locked(name: str) -> str:
    """`name==version` as requirements.lock pins it."""
    match = re.search(rf"^{re.escape(name)}==\S+", (REPO / "requirements.lock").read_text(), re.M)
    if not match:
        raise SystemExit(f"error: requirements.lock pins no {name}")
    return match.group(0)


def run_tests(suite: Suite, selection: list[str]) -> int:
    """pytest on the suite's Python, loopback only; its exit status."""
    version = f"import sys; assert sys.version.startswith({suite.python!r}), sys.version"
    script = (
        f"python -c {shlex.quote(version)} && "
        f"PYTHONPATH=/src exec python -m pytest -p no:cacheprovider {' '.join(selection)}"
    )
    print(f"{suite.name}: Python {suite.python}: pytest {' '.join(selection)}", flush=True)
    return subprocess.run(in_root(suite, script, network=False)).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--suite", action="append", choices=sorted(SUITES), default=None)
    parser.add_argument("--fresh", action="store_true", help="make the roots again")
    parser.add_argument("selection", nargs="*", help="pytest arguments (default: checkers+nbval)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: run as root (debootstrap, mounts and chroot need it)", file=sys.stderr)
        return 2
    for tool in ("debootstrap", "unshare", "ip"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed (apt-get install debootstrap iproute2)")
            return 2
    status = 0
    for name in args.suite or sorted(SUITES, key=lambda n: SUITES[n].python):
        suite = SUITES[name]
        started = time.monotonic()
        make_root(suite, fresh=args.fresh)
        status |= run_tests(suite, args.selection or list(DEFAULT_SELECTION))
        print(f"{suite.name}: {time.monotonic() - started:.0f} s in all", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
