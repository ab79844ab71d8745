"""Binder / JupyterHub: what repo2docker would build from this repository, without building it.

repo2docker copies only the environment file before it installs it, and the rest of the
repository afterwards; so binder/environment.yml asks for Python and pip only, and
binder/postBuild installs requirements.lock and the course package. The root environment.yml
serves conda users. Both must agree with the lock: the dependencies are written once, there.
`repo2docker --no-build --no-run` prints the Dockerfile it would use, with no Docker and no
network.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from labsupport.instructor.doctor import read_lock

REPO_ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT_FILES = [REPO_ROOT / "environment.yml", REPO_ROOT / "binder" / "environment.yml"]


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded


@pytest.mark.slow
def test_repo2docker_builds_the_binder_environment_then_runs_post_build() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "repo2docker", "--no-build", "--no-run"),
            # As on mybinder.org: a non-root user owns the copied repository.
            *("--user-id", "1000", "--user-name", "jovyan", str(REPO_ROOT)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "Building conda environment for python=3.11" in output
    dockerfile = result.stdout
    steps = [
        "COPY --chown=1000:1000 src/binder/environment.yml ${REPO_DIR}/binder/environment.yml",
        '--file "binder/environment.yml"',
        "COPY --chown=1000:1000 src/ ${REPO_DIR}/",
        "RUN ./binder/postBuild",
    ]
    positions = [dockerfile.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions), "environment, then the repository, then postBuild"
    # binder/apt.txt: notebook 07 starts the system's redis-server.
    assert re.search(r"apt-get install [^\n]*\bredis-server\b", dockerfile)


def test_post_build_installs_the_lock_and_the_course_package() -> None:
    post_build = REPO_ROOT / "binder" / "postBuild"
    assert post_build.stat().st_mode & 0o111, "binder/postBuild must be executable"
    commands = post_build.read_text(encoding="utf-8")
    assert "pip install --no-cache-dir -r requirements.lock" in commands
    assert "pip install --no-cache-dir --no-deps -e ." in commands


def test_the_environment_files_agree_with_the_lock() -> None:
    lock = read_lock(REPO_ROOT / "requirements.lock")
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    locked_python = re.search(r"--python-version (\d+\.\d+)", makefile)
    assert locked_python, "the Makefile's lock target names the Python it locks for"

    for path in ENVIRONMENT_FILES:
        name = path.relative_to(REPO_ROOT)
        conda: list[str] = [dep for dep in load(path)["dependencies"] if isinstance(dep, str)]
        pythons = [dep for dep in conda if re.match(r"python\b", dep)]
        assert pythons == [f"python={locked_python.group(1)}"], name
        pip_sections = [dep["pip"] for dep in load(path)["dependencies"] if isinstance(dep, dict)]
        for line in conda + [line for section in pip_sections for line in section]:
            match = re.match(r"([A-Za-z0-9_.-]+)\s*={1,2}\s*([^\s;]+)", line)
            if match is None or match.group(1) == "python":
                continue
            package, version = match.group(1).lower().replace("_", "-"), match.group(2)
            assert lock.get(package, version) == version, f"{name}: {line} vs lock {lock[package]}"
        # The binder file cannot see the lock (repo2docker copies it alone): Python and pip only.
        if path.parent.name == "binder":
            assert sorted(conda) == ["pip", f"python={locked_python.group(1)}"] and not pip_sections
        else:
            assert pip_sections == [["-r requirements.lock", "-e ."]], name
