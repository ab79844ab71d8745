"""Every way out of the process, tried with nothing but `mock_openai().start()` on.

Run by tests/test_guard.py in a subprocess, inside a network namespace with only loopback when
`unshare` is available, so nothing could leave even if the lab let it. An audit hook, installed
before anything else, records every socket call that reached C with a non-loopback address
(CPython raises the audit event just before the system call): the guard must refuse each probe
before that point. Prints one JSON object: {"probes": {name: outcome}, "reached": [...]}.

    python tests/network_probes.py
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

UNROUTABLE = "203.0.113.7"  # TEST-NET-3 (RFC 5737): documentation only, never a real host
NAME = "example.org"
reached: list[str] = []


def _local(host: object) -> bool:
    if host is None or host in ("", b""):
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    if text == "localhost" or text.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[1]
        if sock.family == socket.AF_UNIX:
            return
        host = address[0] if isinstance(address, tuple) and address else address
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or not _local(host):
            reached.append(f"{event} {address!r}")
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
        if not _local(args[0]):
            reached.append(f"{event} {args[0]!r}")
    elif event == "socket.getnameinfo" and not _local(args[0][0]):
        reached.append(f"{event} {args[0]!r}")


sys.addaudithook(_audit)


def udp() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def tcp() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


async def asyncio_sock_connect() -> None:
    with tcp() as sock:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (UNROUTABLE, 80))


async def asyncio_datagram() -> None:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(UNROUTABLE, 53)
    )
    transport.close()


async def asyncio_open(host: str) -> None:
    _, writer = await asyncio.open_connection(host, 80)
    writer.close()


async def asyncio_lookup() -> None:
    await asyncio.get_running_loop().getaddrinfo(NAME, 80)


def packet_socket() -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.sendto(b"\0" * 60, ("lo", 0))


PROBES: dict[str, Callable[[], Any]] = {
    "socket.create_connection (IP)": lambda: socket.create_connection((UNROUTABLE, 80), 2),
    "socket.connect (name resolved in C)": lambda: tcp().connect((NAME, 80)),
    "socket.connect_ex (IP)": lambda: tcp().connect_ex((UNROUTABLE, 80)),
    "socket.sendto (IP)": lambda: udp().sendto(b"x", (UNROUTABLE, 53)),
    "socket.sendto (name resolved in C)": lambda: udp().sendto(b"x", (NAME, 53)),
    "socket.sendto (with flags)": lambda: udp().sendto(b"x", 0, (UNROUTABLE, 53)),
    "socket.sendmsg (IP)": lambda: udp().sendmsg([b"x"], [], 0, (UNROUTABLE, 53)),
    "socket.sendmsg (name resolved in C)": lambda: udp().sendmsg([b"x"], [], 0, (NAME, 53)),
    "socket.getaddrinfo": lambda: socket.getaddrinfo(NAME, 80),
    "socket.gethostbyname": lambda: socket.gethostbyname(NAME),
    "socket.gethostbyname_ex": lambda: socket.gethostbyname_ex(NAME),
    "socket.gethostbyaddr": lambda: socket.gethostbyaddr(UNROUTABLE),
    "socket.getnameinfo": lambda: socket.getnameinfo((UNROUTABLE, 80), 0),
    "raw packet socket (AF_PACKET)": packet_socket,
    "urllib (name)": lambda: __import__("urllib.request").request.urlopen(f"http://{NAME}/"),
    "urllib (IP)": lambda: __import__("urllib.request").request.urlopen(f"http://{UNROUTABLE}/"),
    "http.client": lambda: (
        __import__("http.client").client.HTTPConnection(NAME).request("GET", "/")
    ),
    "asyncio open_connection (IP)": lambda: asyncio_open(UNROUTABLE),
    "asyncio open_connection (name)": lambda: asyncio_open(NAME),
    "asyncio sock_connect": asyncio_sock_connect,
    "asyncio datagram endpoint": asyncio_datagram,
    "asyncio getaddrinfo": lambda: asyncio_lookup(),
    "httpx (IP)": lambda: __import__("httpx").get(f"http://{UNROUTABLE}/"),
    "httpx2 (name)": lambda: __import__("httpx2").get(f"https://{NAME}/"),
}


def _optional() -> None:
    """Probes for libraries that may not be installed here."""
    if importlib.util.find_spec("requests"):
        import requests

        PROBES["requests (IP)"] = lambda: requests.get(f"http://{UNROUTABLE}/", timeout=2)
        PROBES["requests (name)"] = lambda: requests.get(f"https://{NAME}/", timeout=2)
    if importlib.util.find_spec("aiohttp"):
        import aiohttp

        async def aiohttp_get(url: str) -> None:
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                await response.read()

        PROBES["aiohttp (IP)"] = lambda: aiohttp_get(f"http://{UNROUTABLE}/")
        PROBES["aiohttp (name)"] = lambda: aiohttp_get(f"https://{NAME}/")
    if importlib.util.find_spec("aiodns"):
        import aiodns

        async def aiodns_lookup() -> None:
            await aiodns.DNSResolver().query_dns(NAME, "A")

        PROBES["aiodns (c-ares) query"] = aiodns_lookup
    if importlib.util.find_spec("websockets"):
        from websockets.asyncio.client import connect as async_connect
        from websockets.sync.client import connect

        async def websockets_async() -> None:
            async with async_connect("wss://api.openai.com/v1/realtime?model=gpt-realtime"):
                pass

        PROBES["websockets sync (Realtime URL)"] = lambda: connect(
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        )
        PROBES["websockets asyncio (Realtime URL)"] = websockets_async
        PROBES["openai client.realtime"] = lambda: (
            __import__("openai").OpenAI().realtime.connect(model="gpt-realtime").enter()
        )


def _outcome(error: BaseException | None) -> str:
    if error is None:
        return "not refused"
    chain: list[BaseException] = []
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    from labsupport import NetworkBlockedError

    blocked = [e for e in chain if isinstance(e, NetworkBlockedError)]
    if blocked:
        return "blocked: " + str(blocked[0])
    return f"{type(chain[0]).__name__}: {chain[0]}"


def run(name: str, probe: Callable[[], Any]) -> str:
    try:
        result = probe()
        if inspect.isawaitable(result):
            asyncio.run(asyncio.wait_for(_awaited(result), 10))
    except BaseException as error:
        return _outcome(error)
    return _outcome(None)


async def _awaited(result: Any) -> Any:
    return await result


def main() -> None:
    from labsupport import PLACEHOLDER_KEY, mock_openai

    os.environ.pop("OPENAI_API_KEY", None)
    upstream = mock_openai().start()
    _optional()
    key_given = os.environ.get("OPENAI_API_KEY") == PLACEHOLDER_KEY
    probes = {name: run(name, probe) for name, probe in PROBES.items()}
    upstream.stop()
    report = {
        "probes": probes,
        "reached": reached,
        "key_given": key_given,
        "key_removed": "OPENAI_API_KEY" not in os.environ,
        "interfaces": [name for _, name in socket.if_nameindex()],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
