"""`python -m labsupport workshop-link HUB_URL`: one link that puts the course in every learner's
home on a JupyterHub.

The link is an nbgitpuller link: a learner who opens it logs in to the hub, their server starts,
and nbgitpuller clones the course into ``~/async-llm-lab`` (`COURSE_FOLDER`, whatever the
repository or fork is called), or, if it is already there, merges the newest commits without
overwriting the learner's own changes; then JupyterLab opens the first notebook. The hub's user
image needs nbgitpuller (the course's `workshop` extra, and so its lock, has it). deploy/ holds
hub configurations that use it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode, urlsplit

__all__ = ["COURSE_FOLDER", "FIRST_NOTEBOOK", "github_url", "workshop_link"]

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
FIRST_NOTEBOOK = "notebooks/00_start_here.ipynb"
#: The folder in each learner's home that the link pulls the course into. deploy/'s hubs import
#: the course from there (PYTHONPATH) and the README sends learners there, so it is one fixed name.
COURSE_FOLDER = "async-llm-lab"


def workshop_link(
    hub_url: str, *, repository: str, branch: str, notebook: str = FIRST_NOTEBOOK
) -> str:
    """The nbgitpuller link on `hub_url` that pulls `repository` at `branch` and opens
    `notebook` (a path inside the repository) in JupyterLab.

    Raises ValueError for a hub URL that is not http(s)://host[/prefix], or an empty repository.
    """
    hub = urlsplit(hub_url)
    if hub.scheme not in ("http", "https") or not hub.netloc or hub.query or hub.fragment:
        raise ValueError(f"HUB_URL must look like https://hub.example.org, got {hub_url!r}")
    if not repository.strip() or not branch.strip():
        raise ValueError("the repository and the branch must not be empty")
    query = urlencode(
        {
            "repo": repository,
            "branch": branch,
            # Named: nbgitpuller's default is the repository's name, ".git" ending included.
            "targetpath": COURSE_FOLDER,
            "urlpath": f"lab/tree/{COURSE_FOLDER}/{notebook}",
        },
        safe="/:",
    )
    return f"{hub_url.rstrip('/')}/hub/user-redirect/git-pull?{query}"


def github_url(remote: str) -> str:
    """An ``https://github.com/OWNER/REPO`` URL for a GitHub remote (https or ssh), else ""."""
    ssh = re.fullmatch(r"git@github\.com:(.+?)(?:\.git)?", remote)
    if ssh:
        return f"https://github.com/{ssh.group(1)}"
    return remote.removesuffix(".git") if remote.startswith("https://github.com/") else ""


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=REPOSITORY_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Print the link; exit status 2 when the hub URL or the repository is missing or bad."""
    parser = argparse.ArgumentParser(
        prog="python -m labsupport workshop-link",
        description="Print the nbgitpuller link that gives every learner on a JupyterHub the "
        "course in their home, in one click.",
    )
    parser.add_argument("hub_url", metavar="HUB_URL", help="the hub, e.g. https://hub.example.org")
    parser.add_argument(
        "--repository",
        help="the course's git URL, as the hub can clone it (default: this clone's origin remote)",
    )
    parser.add_argument("--branch", help="the branch to pull (default: the current one)")
    parser.add_argument(
        "--notebook", default=FIRST_NOTEBOOK, help=f"the file to open (default: {FIRST_NOTEBOOK})"
    )
    args = parser.parse_args(argv)
    remote = _git("remote", "get-url", "origin")
    repository = args.repository or github_url(remote) or remote
    if not repository:
        parser.error("this clone has no origin remote: pass --repository URL (the hub clones it)")
    branch = args.branch or _git("rev-parse", "--abbrev-ref", "HEAD") or "main"
    try:
        print(
            workshop_link(
                args.hub_url, repository=repository, branch=branch, notebook=args.notebook
            )
        )
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
