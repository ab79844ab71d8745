"""How the lab compares HTTP origins.

Both the mock and live mode's observer recognise the API by its origin (scheme, host and port,
with the default port filled in) and base path. Which hosts are this machine is
`labsupport.network.is_loopback`.
"""

from __future__ import annotations

import httpx

__all__ = ["origin", "origin_and_path"]


def origin(scheme: str, host: str, port: int | None) -> str:
    """`scheme://host:port`, with the scheme's default port when `port` is None."""
    return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}"


def origin_and_path(url: str) -> tuple[str, str]:
    """The origin of `url` and its path without a trailing slash."""
    parsed = httpx.URL(url)
    return origin(parsed.scheme, parsed.host, parsed.port), parsed.path.rstrip("/")
