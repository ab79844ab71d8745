"""A socket-level guard: while it is on, this process cannot reach any address but loopback.

The mock upstream already refuses non-loopback HTTP requests it sees. The guard is the second
wall, underneath every library: it wraps `socket.socket.connect`, `connect_ex` and `sendto`, and
`socket.getaddrinfo` (a name lookup would itself send a packet to a DNS server). Loopback
(127.0.0.0/8, ::1, "localhost") and Unix sockets stay allowed, so the lab's own servers and the
Jupyter kernel keep working. A refused attempt raises `NetworkBlockedError` and sends nothing.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from .upstream.addresses import is_loopback
from .upstream.mock import NetworkBlockedError

__all__ = ["guard_active", "install_guard", "uninstall_guard"]

_lock = threading.Lock()
_originals: dict[str, Callable[..., Any]] = {}


def _loopback_host(host: object) -> bool:
    # No host (None, "") means this machine to getaddrinfo: binding, not reaching out.
    if host is None or host in ("", b""):
        return True
    return isinstance(host, str | bytes) and is_loopback(host)


def _refuse(what: str, host: object) -> NetworkBlockedError:
    return NetworkBlockedError(
        f"The offline lab blocked {what} {host!r}: only loopback addresses are reachable while "
        "it is on. Set LAB_MODE=live to use a real network (see the README)."
    )


def _check_address(sock: socket.socket, address: Any, what: str) -> None:
    is_ip = sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)
    if is_ip and not _loopback_host(address[0]):
        raise _refuse(what, address[0])


def install_guard() -> None:
    """Block every non-loopback connection from this process. Idempotent."""
    with _lock:
        if _originals:
            return
        connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
        sendto, getaddrinfo = socket.socket.sendto, socket.getaddrinfo

        def guarded_connect(self: socket.socket, address: Any) -> None:
            _check_address(self, address, "a connection to")
            connect(self, address)

        def guarded_connect_ex(self: socket.socket, address: Any) -> int:
            _check_address(self, address, "a connection to")
            return connect_ex(self, address)

        def guarded_sendto(self: socket.socket, data: Any, *args: Any) -> int:
            _check_address(self, args[-1], "a datagram to")
            return sendto(self, data, *args)

        def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not _loopback_host(host):
                raise _refuse("a name lookup of", host)
            return getaddrinfo(host, *args, **kwargs)

        _originals.update(
            connect=connect, connect_ex=connect_ex, sendto=sendto, getaddrinfo=getaddrinfo
        )
        socket.socket.connect = guarded_connect  # type: ignore[method-assign,assignment]
        socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign,assignment]
        socket.socket.sendto = guarded_sendto  # type: ignore[assignment]
        socket.getaddrinfo = guarded_getaddrinfo


def uninstall_guard() -> None:
    """Restore the real socket functions. Idempotent."""
    with _lock:
        if not _originals:
            return
        socket.socket.connect = _originals.pop("connect")  # type: ignore[method-assign]
        socket.socket.connect_ex = _originals.pop("connect_ex")  # type: ignore[method-assign]
        socket.socket.sendto = _originals.pop("sendto")  # type: ignore[method-assign]
        socket.getaddrinfo = _originals.pop("getaddrinfo")


def guard_active() -> bool:
    """Whether the guard is installed."""
    return bool(_originals)
