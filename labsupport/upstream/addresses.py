"""Which hosts are this machine, and how the lab compares HTTP origins.

The mock lets loopback traffic through to the lab's own servers, the socket guard lets nothing
else out, and both the mock and live mode's observer recognise the API by its origin
(scheme, host and port, with the default port filled in) and base path.
"""

from __future__ import annotations

import ipaddress

import httpx

__all__ = ["is_loopback", "origin", "origin_and_path"]


def is_loopback(host: str | bytes) -> bool:
    """Whether `host` names this machine: "localhost" (and *.localhost), 127.0.0.0/8 or ::1,
    written as text or bytes, bracketed or with an IPv6 zone."""
    text = host.decode() if isinstance(host, bytes) else host
    if text == "localhost" or text.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def origin(scheme: str, host: str, port: int | None) -> str:
    """`scheme://host:port`, with the scheme's default port when `port` is None."""
    return f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}"


def origin_and_path(url: str) -> tuple[str, str]:
    """The origin of `url` and its path without a trailing slash."""
    parsed = httpx.URL(url)
    return origin(parsed.scheme, parsed.host, parsed.port), parsed.path.rstrip("/")
