"""A socket-level guard: while one is on, this process cannot reach any address but loopback.

The mock upstream refuses the non-loopback HTTP requests it sees. The guard is the wall
underneath every library, HTTP or not (urllib, requests, asyncio streams, raw sockets,
WebSockets): it wraps every way a Python program reaches another machine —

* `socket.socket.connect`, `connect_ex`, `sendto` and `sendmsg`, which take the address;
* `socket.getaddrinfo`, `gethostbyname`, `gethostbyname_ex`, `gethostbyaddr` and
  `getnameinfo`, since a name lookup itself sends a packet to a DNS server;
* the lookups of pycares (c-ares, aiodns, aiohttp's default resolver when installed), which
  sends its DNS queries from C with sockets of its own.

A host is checked *before* it reaches C: `connect(("example.org", 80))` would resolve the name
inside the C call, so a name that is not this machine is refused as it is. Loopback
(127.0.0.0/8, ::1, "localhost") and Unix sockets stay allowed, so the lab's own servers and the
Jupyter kernel keep working; any other address family (raw packets, netlink) is refused. A
refused attempt raises `labsupport.NetworkBlockedError` and sends nothing.

Each `MockUpstream` holds a `NetworkGuard` while it runs; the sockets stay patched while any
guard is on, so two mocks (or a mock and a test's own guard) may start and stop in any order.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, Self

from .network import NetworkBlockedError, is_loopback
from .switch import Switch

__all__ = ["NetworkGuard", "guard_active"]

_lock = threading.Lock()
_guards: set[NetworkGuard] = set()
_originals: dict[tuple[object, str], Callable[..., Any]] = {}

#: Families whose addresses the guard understands; sockets of any other family cannot send.
_INTERNET: Final = (socket.AF_INET, socket.AF_INET6)
_LOCAL: Final = tuple(
    family for name in ("AF_UNIX",) if (family := getattr(socket, name, None)) is not None
)


class NetworkGuard(Switch):
    """While started, nothing in this process reaches an address other than loopback.

    `api_hosts` are hosts that only the offline upstream may answer for (the OpenAI API's):
    a refusal to reach one of them says that the call went around the mock (a WebSocket such
    as the SDK's `client.realtime`, or a library that does not use httpx) and is not
    available offline.
    """

    def __init__(self, api_hosts: Iterable[str] = ()) -> None:
        self.api_hosts = frozenset(host.lower() for host in api_hosts)

    @property
    def active(self) -> bool:
        return self in _guards

    def start(self) -> Self:
        """Turn the guard on. Idempotent."""
        with _lock:
            if not _guards:
                _patch()
            _guards.add(self)
        return self

    def stop(self) -> None:
        """Turn this guard off; the sockets are restored once no guard is on. Idempotent."""
        with _lock:
            _guards.discard(self)
            if not _guards and _originals:
                _unpatch()

    def __repr__(self) -> str:
        return f"<NetworkGuard {'on' if self.active else 'off'}>"


def guard_active() -> bool:
    """Whether any guard is on (the sockets of this process are patched)."""
    return bool(_guards)


# -- the checks ------------------------------------------------------------------------------


def _host_allowed(host: object) -> bool:
    # No host (None, "") means this machine to getaddrinfo: binding, not reaching out.
    if host is None or host in ("", b""):
        return True
    return isinstance(host, str | bytes) and is_loopback(host)


def _refuse(what: str, host: object) -> NetworkBlockedError:
    text = host.decode(errors="replace") if isinstance(host, bytes) else str(host)
    api_hosts = frozenset().union(*(guard.api_hosts for guard in list(_guards)))
    if text.lower() in api_hosts:
        return NetworkBlockedError(
            f"The offline lab blocked {what} {text!r}, the OpenAI API, from outside the "
            "offline upstream: WebSocket connections (the Realtime API, client.realtime) and "
            "HTTP libraries other than httpx and aiohttp are not available offline. Use the "
            "SDK's HTTP calls, or set LAB_MODE=live to use the real API (see the README)."
        )
    return NetworkBlockedError(
        f"The offline lab blocked {what} {text!r}: only loopback addresses are reachable while "
        "it is on. Set LAB_MODE=live to use a real network (see the README)."
    )


def _check_address(sock: socket.socket, address: Any, what: str) -> None:
    family = sock.family
    if family in _LOCAL:
        return
    if family not in _INTERNET:
        raise _refuse(f"{what} an {getattr(family, 'name', family)} socket at", address)
    host = address[0] if isinstance(address, tuple) and address else address
    if not _host_allowed(host) or host in ("", b"", None):
        raise _refuse(what, host)


def _check_host(host: object, what: str) -> None:
    if not _host_allowed(host):
        raise _refuse(what, host)


# -- patching --------------------------------------------------------------------------------


def _patch() -> None:
    cls = socket.socket
    connect, connect_ex, sendto = cls.connect, cls.connect_ex, cls.sendto
    getaddrinfo, gethostbyname = socket.getaddrinfo, socket.gethostbyname
    gethostbyname_ex, gethostbyaddr = socket.gethostbyname_ex, socket.gethostbyaddr
    getnameinfo = socket.getnameinfo

    def guarded_connect(self: socket.socket, address: Any) -> None:
        _check_address(self, address, "a connection to")
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self, address, "a connection to")
        return connect_ex(self, address)

    def guarded_sendto(self: socket.socket, data: Any, *args: Any) -> int:
        # sendto(data, address) or sendto(data, flags, address)
        _check_address(self, args[-1] if args else None, "a datagram to")
        return sendto(self, data, *args)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        _check_host(host, "a name lookup of")
        return getaddrinfo(host, *args, **kwargs)

    def guarded_gethostbyname(host: Any) -> str:
        _check_host(host, "a name lookup of")
        return gethostbyname(host)

    def guarded_gethostbyname_ex(host: Any) -> tuple[str, list[str], list[str]]:
        _check_host(host, "a name lookup of")
        return gethostbyname_ex(host)

    def guarded_gethostbyaddr(host: Any) -> tuple[str, list[str], list[str]]:
        _check_host(host, "a reverse lookup of")
        return gethostbyaddr(host)

    def guarded_getnameinfo(address: Any, flags: int) -> tuple[str, str]:
        host = address[0] if isinstance(address, tuple) and address else address
        _check_host(host, "a reverse lookup of")
        return getnameinfo(address, flags)

    replacements: dict[tuple[object, str], Callable[..., Any]] = {
        (cls, "connect"): guarded_connect,
        (cls, "connect_ex"): guarded_connect_ex,
        (cls, "sendto"): guarded_sendto,
        (socket, "getaddrinfo"): guarded_getaddrinfo,
        (socket, "gethostbyname"): guarded_gethostbyname,
        (socket, "gethostbyname_ex"): guarded_gethostbyname_ex,
        (socket, "gethostbyaddr"): guarded_gethostbyaddr,
        (socket, "getnameinfo"): guarded_getnameinfo,
    }
    if hasattr(cls, "sendmsg"):
        sendmsg = cls.sendmsg

        def guarded_sendmsg(self: socket.socket, buffers: Any, *args: Any) -> int:
            # sendmsg(buffers[, ancdata[, flags[, address]]]): no address means connected.
            if len(args) >= 3 and args[2] is not None:
                _check_address(self, args[2], "a message to")
            return sendmsg(self, buffers, *args)

        replacements[(cls, "sendmsg")] = guarded_sendmsg
    replacements.update(_c_ares_replacements())
    for (owner, name), guarded in replacements.items():
        _originals[(owner, name)] = getattr(owner, name)
        setattr(owner, name, guarded)


def _c_ares_replacements() -> dict[tuple[object, str], Callable[..., Any]]:
    """Guards for pycares (c-ares, used by aiodns and so by aiohttp when installed): it resolves
    names with its own sockets, in C, where the socket patches cannot see it."""
    if importlib.util.find_spec("pycares") is None:
        return {}
    import pycares

    channel = pycares.Channel
    replacements: dict[tuple[object, str], Callable[..., Any]] = {}
    for name, what in (
        ("getaddrinfo", "a name lookup of"),
        ("query", "a DNS query for"),
        ("search", "a DNS query for"),
        ("gethostbyaddr", "a reverse lookup of"),
        ("getnameinfo", "a reverse lookup of"),
    ):
        original = getattr(channel, name, None)
        if original is None:
            continue

        def guarded(
            self: Any,
            host: Any,
            *args: Any,
            _call: Any = original,
            _what: str = what,
            **kwargs: Any,
        ) -> Any:
            _check_host(host[0] if isinstance(host, tuple) and host else host, _what)
            return _call(self, host, *args, **kwargs)

        replacements[(channel, name)] = guarded
    return replacements


def _unpatch() -> None:
    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()
