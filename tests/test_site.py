"""The course website (`make site`): it builds from the committed notebooks without a warning,
has a page per notebook with its figures and their alt text, launch buttons, search, no broken
internal link, nothing fetched from the web, and no WCAG 2.1 A/AA violation that axe-core finds.

The site is built once for this module, into a temporary folder, by tools/build_site.py (Sphinx
with warnings as errors). The accessibility check runs axe-core (npm, installed into
node_modules/ by `make node-tools`, which `make check` runs) in Debian's Chromium through
Playwright, started by tests/chromium.py, on every page in the theme's light and dark modes. Set
LAB_SITE_NOTEBOOKS to build from another folder of executed notebooks (a regenerated copy).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import build_lite
import build_site
import pytest
from chromium import chromium
from loopback_http import http_served

from labsupport.workshop import workshop_link

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = Path(os.environ.get("LAB_SITE_NOTEBOOKS", REPO_ROOT / "notebooks"))
LESSONS = sorted(NOTEBOOKS.glob("*.ipynb"))
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("*.ipynb"))
AXE = REPO_ROOT / "node_modules" / "axe-core" / "axe.min.js"
REPOSITORY = "https://github.com/example-org/async-llm-lab"
HUB = "https://hub.example.org"
LITE = "https://course.example.org/lite/"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
# A Sphinx build of every notebook, then Chromium over every page: minutes.
pytestmark = pytest.mark.slow


@dataclass
class Page(HTMLParser):
    """What the checks need from one HTML page: its links, ids, images and external loads."""

    links: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    images: list[dict[str, str]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        for name in ("id", "name"):
            if name in attributes and tag != "meta":
                self.ids.add(attributes[name])
        if tag == "a" and "href" in attributes:
            self.links.append(attributes["href"])
        if tag == "img":
            self.images.append(attributes)
        # What the browser fetches by itself when it opens the page.
        for kind, attribute in (("script", "src"), ("link", "href"), ("img", "src")):
            if tag == kind and attribute in attributes:
                self.loads.append(attributes[attribute])
                if tag != "a":
                    self.links.append(attributes[attribute])


@dataclass(frozen=True)
class Site:
    root: Path
    stdout: str
    stderr: str
    seconds: float

    @functools.cached_property
    def pages(self) -> dict[Path, Page]:
        parsed = {}
        for path in sorted(self.root.rglob("*.html")):
            if {"_sources", "_static"} & set(path.parts):  # copies and theme macros, not pages
                continue
            page = Page()
            page.feed(path.read_text(encoding="utf-8"))
            parsed[path.relative_to(self.root)] = page
        return parsed


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    out = tmp_path_factory.mktemp("site") / "html"
    command = [
        *(sys.executable, str(REPO_ROOT / "tools" / "build_site.py"), "--out", str(out)),
        *("--notebooks", str(NOTEBOOKS), "--repository-url", REPOSITORY),
        *("--branch", "main", "--hub-url", HUB, "--lite-url", LITE),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"the site did not build:\n{done.stdout}\n{done.stderr}"
    print(f"site built in {seconds:.1f} s")
    return Site(out, done.stdout, done.stderr, seconds)


def test_builds_with_warnings_as_errors_and_says_what_it_built(site: Site) -> None:
    assert "WARNING" not in site.stderr, site.stderr
    pages = len(LESSONS) + len(SOLUTIONS)
    assert f"site: {pages} notebook pages and a landing page" in site.stdout
    assert (site.root / ".nojekyll").exists()  # GitHub Pages serves the _static/ folders


def test_every_notebook_has_a_page_with_its_stored_outputs(site: Site) -> None:
    for notebook in LESSONS:
        assert (site.root / "notebooks" / f"{notebook.stem}.html").is_file(), notebook.name
    for notebook in SOLUTIONS:
        page = site.root / "notebooks" / "solutions" / f"{notebook.stem}.html"
        text = page.read_text(encoding="utf-8")
        assert "Solutions: " in text and f'href="../{notebook.stem}.html"' in text
    # Stored outputs, not re-execution: a line the first lesson printed is on its page.
    first = json.loads(LESSONS[1].read_text(encoding="utf-8"))
    printed = next(
        line.strip()
        for cell in first["cells"]
        for output in cell.get("outputs", ())
        if output.get("output_type") == "stream"
        for line in output["text"]
        if len(line.strip()) > 20 and "<" not in line and "&" not in line
    )
    html = (site.root / "notebooks" / f"{LESSONS[1].stem}.html").read_text(encoding="utf-8")
    assert printed in html


def test_the_landing_page_is_the_readme_for_learners_with_every_lesson(site: Site) -> None:
    index = site.root / "index.html"
    text = index.read_text(encoding="utf-8")
    for section in build_site.LANDING_SECTIONS:
        assert f">{section}<" in text, section
    assert ">More<" not in text  # its links point into the repository, not into the site
    links = site.pages[Path("index.html")].links
    for notebook in LESSONS:
        assert f"notebooks/{notebook.stem}.html" in links
    for notebook in SOLUTIONS:
        assert f"notebooks/solutions/{notebook.stem}.html" in links


def test_no_broken_internal_link(site: Site) -> None:
    broken = []
    for relative, page in site.pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith("mailto:"):
                continue
            target = (
                (site.root / relative).parent / unquote(parts.path)
                if parts.path
                else site.root / relative
            )
            target = target.resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{relative}: {link} (no such file)")
                continue
            if parts.fragment and target.suffix == ".html":
                anchors = site.pages.get(target.relative_to(site.root.resolve()))
                if anchors is not None and unquote(parts.fragment) not in anchors.ids:
                    broken.append(f"{relative}: {link} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_nothing_is_fetched_from_the_web(site: Site) -> None:
    external = [
        f"{relative}: {load}"
        for relative, page in site.pages.items()
        for load in page.loads
        if urlsplit(load).scheme in ("http", "https") or load.startswith("//")
    ]
    assert not external, "\n".join(external)


def test_every_figure_has_its_alt_text(site: Site) -> None:
    for notebook in [*LESSONS, *SOLUTIONS]:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        stored = [
            output["metadata"]["image/png"]["alt"]
            for cell in cells
            for output in cell.get("outputs", ())
            if "image/png" in output.get("data", {})
        ]
        folder = "notebooks/solutions" if notebook.parent.name == "solutions" else "notebooks"
        page = site.pages[Path(folder) / f"{notebook.stem}.html"]
        figures = [image for image in page.images if "_images/" in image.get("src", "")]
        assert [image.get("alt") for image in figures] == stored, notebook.name
    for relative, page in site.pages.items():
        for image in page.images:
            alt = image.get("alt", "")
            assert alt and Path(image.get("src", "")).name not in alt, (relative, image)


def test_lesson_pages_have_binder_and_jupyterhub_launch_buttons(site: Site) -> None:
    notebook = LESSONS[1]
    links = site.pages[Path("notebooks") / f"{notebook.stem}.html"].links
    binder = (
        "https://mybinder.org/v2/gh/example-org/async-llm-lab/main"
        f"?urlpath=lab/tree/notebooks/{notebook.name}"
    )
    assert binder in links
    expected = urlsplit(workshop_link(HUB, repository=REPOSITORY, branch="main", notebook=""))
    hub_links = [urlsplit(link) for link in links if link.startswith(f"{HUB}/hub/user-redirect")]
    assert len(hub_links) == 1
    (hub,) = hub_links
    assert hub.path == expected.path == "/hub/user-redirect/git-pull"
    query, wanted = parse_qs(hub.query), parse_qs(expected.query)
    assert (query["repo"], query["branch"]) == (wanted["repo"], wanted["branch"])
    assert query["urlpath"] == [f"lab/tree/async-llm-lab/notebooks/{notebook.name}"]


def test_lessons_that_run_in_a_browser_tab_link_to_the_jupyterlite_site(site: Site) -> None:
    lite = f"{LITE}lab/index.html"
    assert lite in site.pages[Path("index.html")].links
    for notebook in LESSONS:
        links = site.pages[Path("notebooks") / f"{notebook.stem}.html"].links
        opened = f"{lite}?path={notebook.name}"
        assert (opened in links) == (notebook.stem in build_lite.BROWSER_LESSONS), notebook.stem
    assert len(build_lite.BROWSER_LESSONS) >= 3


def test_search_finds_the_lessons(site: Site) -> None:
    assert (site.root / "search.html").is_file()
    index = (site.root / "searchindex.js").read_text(encoding="utf-8")
    for word in ("semaphor", "gather", "lifespan"):
        assert word in index


# ------------------------------------------------------------------------------ accessibility


@pytest.fixture(scope="module")
def served(site: Site) -> Iterator[str]:
    """The built site over HTTP on 127.0.0.1 (as a host would serve it)."""
    handler = functools.partial(_QuietHandler, directory=str(site.root))
    with http_served(handler) as base:
        yield base


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.needs("chromium", "node-tools")
@pytest.mark.timeout(600)
def test_axe_finds_no_wcag_21_aa_violation_on_any_page_in_light_or_dark_mode(
    site: Site, served: str
) -> None:
    pages = list(site.pages)
    violations: list[str] = []
    checked = 0
    with chromium("the accessibility check") as browser:
        for mode in ("light", "dark"):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            # pydata-sphinx-theme reads the reader's choice from localStorage.
            context.add_init_script(
                f"localStorage.setItem('mode', '{mode}');localStorage.setItem('theme', '{mode}')"
            )
            tab = context.new_page()
            for relative in pages:
                tab.goto(f"{served}/{relative.as_posix()}", wait_until="load")
                assert tab.evaluate("document.documentElement.dataset.theme") == mode
                tab.add_script_tag(path=str(AXE))
                result = tab.evaluate(
                    "async (tags) => await axe.run(document, "
                    "{runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
                    WCAG_21_AA,
                )
                checked += 1
                for violation in result["violations"]:
                    nodes = [", ".join(node["target"]) for node in violation["nodes"][:3]]
                    violations.append(
                        f"{mode} {relative}: {violation['id']} ({violation['impact']}): "
                        f"{violation['help']} — {len(violation['nodes'])} nodes, e.g. {nodes}"
                    )
            context.close()
    print(
        f"axe-core: {checked} page views ({len(pages)} pages × 2 modes), "
        f"{len(violations)} violations"
    )
    assert checked == 2 * len(pages) and len(pages) >= len(LESSONS) + len(SOLUTIONS) + 1
    assert not violations, "\n".join(violations)
