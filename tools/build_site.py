"""Build the course website from the committed, executed notebooks (`make site`).

Nothing is re-executed: the site shows the outputs that `make notebooks` stored and nbval checks.
This script stages a Sphinx project in build/site-src/ and builds it into build/site/ with
warnings as errors:

* ``index.md``, the landing page: the README's learner parts (its introduction and the sections
  in `LANDING_SECTIONS`), the lessons and solutions, and how to run them (Binder, a JupyterHub);
* ``notebooks/NN_name.ipynb``, one page per lesson (those that run in a browser tab, given
  ``--lite-url``, with a "Try it in your browser" link into the course's JupyterLite site), and
  ``notebooks/solutions/``, the solved notebooks on their own pages, each titled as a solution
  and linking back to its lesson. The paths match the repository's, so the pages' launch
  buttons open the same file on Binder or, through an nbgitpuller link, on a JupyterHub;
* each figure's alt text, which labsupport's plots store in the output's metadata, handed to
  MyST-NB (it reads alt text from the cell's ``mystnb.image.alt``). A figure without one stops the
  build: re-run `make notebooks`.

Usage: ``python tools/build_site.py [--hub-url URL] [--repository-url URL] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from build_lite import BROWSER_LESSONS

from labsupport.workshop import github_url, workshop_link

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
#: README sections (besides the introduction above the first one) that a learner needs: all but
#: *More*, whose links point into the repository (docs/, CONTRIBUTING.md), not into the site.
LANDING_SECTIONS = (
    "What you will learn",
    "The lessons",
    "Prerequisites",
    "Supported platforms",
    "Quick start",
    "When you are stuck",
    "Your progress",
    "Live mode: a real API",
    "Licence",
)
#: Used when there is no GitHub remote to read: the launch buttons say plainly what to set.
PLACEHOLDER_REPOSITORY = "https://github.com/OWNER/REPO"
BINDER = "https://mybinder.org"


class SiteError(Exception):
    """Something in the sources that the site cannot be built from; the message says what."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site", help="HTML folder")
    parser.add_argument(
        "--notebooks",
        type=Path,
        default=ROOT / "notebooks",
        help="the executed learner notebooks, with solutions/ inside (default: notebooks/)",
    )
    parser.add_argument(
        "--repository-url",
        default=os.environ.get("SITE_REPOSITORY_URL")
        or github_url(_git("remote", "get-url", "origin")),
        help="the repository on GitHub, for the launch buttons (default: the origin remote)",
    )
    parser.add_argument(
        "--branch",
        default=os.environ.get("SITE_BRANCH") or _git("rev-parse", "--abbrev-ref", "HEAD"),
        help="the branch the launch buttons open (default: the current one)",
    )
    parser.add_argument(
        "--hub-url",
        default=os.environ.get("SITE_HUB_URL", ""),
        help="a JupyterHub for the 'launch on JupyterHub' buttons (default: none)",
    )
    parser.add_argument(
        "--lite-url",
        default=os.environ.get("SITE_LITE_URL", ""),
        help="where the JupyterLite site (`make lite`) is published, for the 'Try it in your "
        "browser' links (default: none)",
    )
    args = parser.parse_args(argv)
    repository = args.repository_url or PLACEHOLDER_REPOSITORY
    if repository == PLACEHOLDER_REPOSITORY:
        print(
            f"note: no GitHub remote, so launch buttons point at {PLACEHOLDER_REPOSITORY}; "
            "set SITE_REPOSITORY_URL (or --repository-url) to the repository's GitHub URL",
            file=sys.stderr,
        )
    source = args.out.parent / f"{args.out.name}-src"
    try:
        pages = stage(
            source, args.notebooks, repository, args.branch or "main", args.hub_url, args.lite_url
        )
    except SiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    env = {
        **os.environ,
        "SITE_REPOSITORY_URL": repository,
        "SITE_BRANCH": args.branch or "main",
        "SITE_HUB_URL": args.hub_url,
    }
    shutil.rmtree(args.out, ignore_errors=True)
    command = [
        *(sys.executable, "-m", "sphinx", "--builder", "html", "--fail-on-warning"),
        *("--keep-going", "--quiet", "--jobs", "1", "--fresh-env"),
        *("--doctree-dir", str(source / "_doctrees"), str(source), str(args.out)),
    ]
    status = subprocess.run(command, env=env, check=False).returncode
    if status == 0:
        print(f"site: {pages} notebook pages and a landing page in {args.out}")
    return status


def stage(
    source: Path, notebooks: Path, repository: str, branch: str, hub_url: str, lite_url: str = ""
) -> int:
    """Lay out the Sphinx project in `source`; returns how many notebook pages it has."""
    lessons = sorted(notebooks.glob("*.ipynb"))
    solutions = sorted((notebooks / "solutions").glob("*.ipynb"))
    if not lessons:
        raise SiteError(f"no notebooks in {notebooks}: run `make notebooks` first")
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(BOOK, source, ignore=shutil.ignore_patterns("__pycache__"))
    (source / "notebooks" / "solutions").mkdir(parents=True)
    problems: list[str] = []
    for lesson in lessons:
        page = _page(lesson, problems)
        if lite_url and lesson.stem in BROWSER_LESSONS:
            _link_to_the_browser_edition(page, lesson.name, lite_url)
        _write_notebook(source / "notebooks" / lesson.name, page)
    for solution in solutions:
        page = _page(solution, problems)
        _mark_as_solution(page, solution.name)
        _write_notebook(source / "notebooks" / "solutions" / solution.name, page)
    if problems:
        raise SiteError(
            "figures without alt text (re-run `make notebooks`: labsupport's plots store it):\n  "
            + "\n  ".join(problems)
        )
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    landing = landing_page(readme, lessons, solutions, repository, branch, hub_url, lite_url)
    (source / "index.md").write_text(landing, encoding="utf-8")
    return len(lessons) + len(solutions)


def landing_page(
    readme: str,
    lessons: Sequence[Path],
    solutions: Sequence[Path],
    repository: str,
    branch: str,
    hub_url: str,
    lite_url: str = "",
) -> str:
    """The README's learner parts, then the table of contents and the ways to run the course."""
    title, intro, sections = _split_readme(readme)
    missing = [name for name in LANDING_SECTIONS if name not in sections]
    if missing:
        raise SiteError(f"README.md has no section named {missing} (tools/build_site.py needs it)")
    parts = [f"# {title}", intro.strip()]
    parts += [f"## {name}\n\n{sections[name].strip()}" for name in LANDING_SECTIONS]
    parts.append(_toctree("Lessons", [f"notebooks/{path.stem}" for path in lessons]))
    parts.append(_toctree("Solutions", [f"notebooks/solutions/{path.stem}" for path in solutions]))
    binder = f"{BINDER}/v2/gh/{_github_path(repository)}/{branch}?urlpath=lab/tree/notebooks"
    run = [
        "## Run the notebooks",
        "",
        "Every lesson page has a launch button (the rocket, at the top) that opens it live.",
        "",
        f"- **On Binder**, free and nothing to install: [launch the course on Binder]({binder}).",
    ]
    if hub_url:
        link = workshop_link(hub_url, repository=repository, branch=branch)
        run.append(
            f"- **On the workshop's JupyterHub**: [open the course on the hub]({link}) (it copies "
            "the lessons into your home there, and keeps your changes on later visits)."
        )
    if lite_url:
        names = ", ".join(name[:2] for name in BROWSER_LESSONS)
        run.append(
            f"- **In your browser**, nothing to install: [the course in JupyterLite]"
            f"({lite_lesson_url(lite_url)}), a Python kernel in the page. Lessons {names} run "
            "there (each has a *Try it in your browser* link); the others need a real kernel."
        )
    run.append("- **On your own machine**: see *Quick start* above.")
    parts.append("\n".join(run))
    return "\n\n".join(parts) + "\n"


def _split_readme(readme: str) -> tuple[str, str, dict[str, str]]:
    """The README's title, its introduction, and its `## ` sections by heading."""
    chunks = re.split(r"^## (.+)$", readme, flags=re.MULTILINE)
    head, rest = chunks[0], chunks[1:]
    match = re.match(r"#\s+(.+)\n", head)
    if not match:
        raise SiteError("README.md does not start with a `# title` line")
    sections = {rest[i].strip(): rest[i + 1] for i in range(0, len(rest), 2)}
    return match.group(1).strip(), head[match.end() :], sections


def _toctree(caption: str, documents: Sequence[str]) -> str:
    entries = "\n".join(documents)
    return f"```{{toctree}}\n:caption: {caption}\n:maxdepth: 1\n\n{entries}\n```"


def _github_path(repository: str) -> str:
    return repository.removesuffix("/").removesuffix(".git").split("github.com/", 1)[-1]


def _page(notebook: Path, problems: list[str]) -> dict[str, Any]:
    """The notebook as JSON, each figure's alt text moved where MyST-NB reads it."""
    page: dict[str, Any] = json.loads(notebook.read_text(encoding="utf-8"))
    for index, cell in enumerate(page["cells"]):
        alts = [
            output.get("metadata", {}).get("image/png", {}).get("alt")
            for output in cell.get("outputs", ())
            if "image/png" in output.get("data", {})
        ]
        if not alts:
            continue
        if not all(alts) or len(set(alts)) > 1:
            problems.append(f"{notebook}, cell {index}")
            continue
        cell["metadata"].setdefault("mystnb", {}).setdefault("image", {})["alt"] = alts[0]
    return page


def lite_lesson_url(lite_url: str, notebook: str = "") -> str:
    """JupyterLab in the JupyterLite site at `lite_url`, with `notebook` open if given."""
    lab = f"{lite_url.removesuffix('/')}/lab/index.html"
    return f"{lab}?path={notebook}" if notebook else lab


def _link_to_the_browser_edition(page: dict[str, Any], name: str, lite_url: str) -> None:
    """Under the lesson's title, a link that opens it in the JupyterLite site."""
    first = next(cell for cell in page["cells"] if cell["cell_type"] == "markdown")
    text = "".join(first["source"])
    heading = re.match(r"#\s+.+", text)
    if not heading:
        raise SiteError(f"{name} does not start with a `# title`")
    tip = (
        f"\n\n```{{tip}}\n**Try it in your browser**: [open this lesson in JupyterLite]"
        f"({lite_lesson_url(lite_url, name)}), nothing to install: its Python runs in the "
        "page.\n```\n"
    )
    first["source"] = f"{heading.group(0)}{tip}{text[heading.end() :]}"


def _mark_as_solution(page: dict[str, Any], name: str) -> None:
    """Title the page as a solution (the sidebar lists both) and point back to the lesson."""
    first = next(cell for cell in page["cells"] if cell["cell_type"] == "markdown")
    text = "".join(first["source"])
    heading = re.match(r"#\s+(.+)", text)
    if not heading:
        raise SiteError(f"solutions/{name} does not start with a `# title`")
    note = (
        f"\n\n```{{note}}\nThis is the lesson with its exercises solved. Try them yourself first, "
        f"in [the lesson](../{name}).\n```\n"
    )
    first["source"] = f"# Solutions: {heading.group(1)}{note}{text[heading.end() :]}"


def _write_notebook(path: Path, page: dict[str, Any]) -> None:
    path.write_text(json.dumps(page, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
