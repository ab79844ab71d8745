"""Is each direct dependency still maintained? Its newest release and that release's date.

A dependency that stops releasing does not break anything the day it stops: it holds the others
back later, when it pins one of them below a major version everybody else has moved to (arq
held redis-py at 5 while 8 was current). `make drift` prints this report beside what moved, so a
frozen dependency shows up before that.

The facts come from the package index the lock was resolved against, as uv names it in the lock
it writes (`--index-url` / `--extra-index-url` lines, from uv's configuration), through the
index's JSON simple API (PEP 691), which gives each file's upload time (PEP 700). Nothing here
names an index: whatever uv is configured to use is what is asked.

    dependencies = direct_dependencies(pyproject, extras)
    report = release_report(dependencies, index_urls(lock_text), locked, resolvable)
    print(format_report(report, stale_after_days=365))
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

__all__ = [
    "Release",
    "direct_dependencies",
    "format_report",
    "index_urls",
    "newest_release",
    "release_report",
]

SIMPLE_JSON: Final = "application/vnd.pypi.simple.v1+json"
"""The JSON form of the simple repository API (PEP 691)."""

STALE_AFTER_DAYS: Final = 365
"""A dependency whose newest release is older than this is flagged: maintained, or frozen?"""


@dataclass(frozen=True)
class Release:
    """One direct dependency: the range pyproject.toml allows, the version the lock pins, the
    newest version that range resolves to with everything else (`resolvable`), and what the
    index says is its newest release (None: it could not be asked) and when it came out."""

    name: str
    allowed: SpecifierSet
    locked: str | None
    resolvable: str | None
    newest: Version | None = None
    released: datetime | None = None
    problem: str = ""

    def age_days(self, now: datetime) -> int | None:
        return None if self.released is None else (now - self.released).days

    @property
    def outside_range(self) -> bool:
        """The newest release is outside the range pyproject.toml allows."""
        return self.newest is not None and not self.allowed.contains(self.newest)

    @property
    def held_back(self) -> bool:
        """The range allows the newest release, yet the resolver could not take it: another
        dependency's requirement holds this one back."""
        if self.newest is None or self.resolvable is None or self.outside_range:
            return False
        return Version(self.resolvable) < self.newest


def direct_dependencies(pyproject: Path, extras: Iterable[str]) -> dict[str, SpecifierSet]:
    """{canonical name: allowed range} of the project's dependencies and of `extras`."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"pyproject.toml has no extra named {extra!r}")
        lines += optional[extra]
    found: dict[str, SpecifierSet] = {}
    for line in lines:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        found[name] = found.get(name, SpecifierSet()) & requirement.specifier
    return found


def index_urls(lock_text: str) -> list[str]:
    """The indexes a lock written by `uv pip compile --emit-index-url` was resolved against."""
    urls = []
    for line in lock_text.splitlines():
        option, _, value = line.strip().partition(" ")
        if option in ("--index-url", "--extra-index-url") and value.strip():
            urls.append(value.strip())
    return urls


def newest_release(
    client: httpx.Client, index_url: str, name: str
) -> tuple[Version, datetime | None] | None:
    """The newest final release of `name` on the index and when its first file was uploaded
    (None when the index does not say); None when the index has no such project."""
    url = f"{index_url.rstrip('/')}/{canonicalize_name(name)}/"
    response = client.get(url, headers={"Accept": SIMPLE_JSON})
    if response.status_code == 404:
        return None
    response.raise_for_status()
    page: dict[str, Any] = response.json()
    uploaded: dict[Version, datetime] = {}
    released: set[Version] = set()
    for file in page.get("files", []):
        version = _file_version(str(file.get("filename", "")))
        if version is None or version.is_prerelease or file.get("yanked"):
            continue
        released.add(version)
        if stamp := file.get("upload-time"):
            at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
            uploaded[version] = min(at, uploaded.get(version, at))
    if not released:
        return None
    newest = max(released)
    return newest, uploaded.get(newest)


def _file_version(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None  # an old file under a name packaging cannot read: not a release to count


def release_report(
    dependencies: Mapping[str, SpecifierSet],
    indexes: Sequence[str],
    locked: Mapping[str, str],
    resolvable: Mapping[str, str],
    *,
    timeout: float = 30.0,
) -> list[Release]:
    """One `Release` per dependency, from the first index that knows it; `locked` and
    `resolvable` are the pins of the lock and of the upgraded lock."""
    report = []
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        for name, allowed in sorted(dependencies.items()):
            pins = (name, allowed, locked.get(name), resolvable.get(name))
            release = Release(*pins, problem="on no index")
            for index in indexes:
                try:
                    found = newest_release(client, index, name)
                except (httpx.HTTPError, httpx.InvalidURL, ValueError) as error:
                    release = Release(*pins, problem=_say(error))
                    continue
                if found is not None:
                    release = Release(*pins, *found)
                    break
            report.append(release)
    return report


def _say(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:80]


def format_report(
    report: Sequence[Release],
    *,
    now: datetime | None = None,
    stale_after_days: int = STALE_AFTER_DAYS,
) -> str:
    """A table: dependency, locked, resolvable, newest, released (days ago), what to look at."""
    now = now or datetime.now(UTC)
    rows = [("dependency", "locked", "resolvable", "newest", "released", "")]
    for release in report:
        age = release.age_days(now)
        notes = []
        if release.problem:
            notes.append(f"unknown ({release.problem})")
        if release.outside_range:
            notes.append(f"newest outside pyproject's {release.allowed}")
        if release.held_back:
            notes.append("held back by another dependency")
        if age is not None and age > stale_after_days:
            notes.append(f"no release for {age} days: frozen?")
        when = "?" if release.released is None else f"{release.released:%Y-%m-%d} ({age} d)"
        newest = "?" if release.newest is None else str(release.newest)
        pins = (release.locked or "-", release.resolvable or "-")
        rows.append((release.name, *pins, newest, when, "; ".join(notes)))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)]
        lines.append("  ".join([*cells, row[5]]).rstrip())
    return "\n".join(lines)
