"""The one way the tests start a browser: Debian's Chromium, driven by Playwright, offline.

Used by tests/test_browser.py (JupyterLab, Run All) and tests/test_site.py (axe-core on the
built site). Chromium is /usr/bin/chromium, or LAB_CHROMIUM; Playwright's own browser download
is never used. A test that drives it is marked `@pytest.mark.needs("chromium")` (conftest.py):
skipped with one line where Chromium is missing, failed under `make check`, so CI can never go
green without the browser checks running.

Everything stays on this machine: Chromium resolves no host name (only 127.0.0.1 is reachable)
and its background traffic (updates, sync, metrics) is off.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path(os.environ.get("LAB_CHROMIUM", "/usr/bin/chromium"))

CHROMIUM_ARGS = [
    # No network but loopback: no name resolves, except the local servers' address.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",  # containers have a small /dev/shm
]


@contextmanager
def chromium(check: str) -> Iterator[Browser]:
    """Headless Chromium, offline, closed on exit; `check` names what it is for (its errors say)."""
    from playwright.sync_api import sync_playwright  # only where a browser is needed

    # Chromium refuses to run as root with its sandbox (containers, CI).
    args = [*CHROMIUM_ARGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield browser
        finally:
            browser.close()
