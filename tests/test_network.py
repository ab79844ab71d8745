"""labsupport.network: the error every refusal raises, the loopback check, listening sockets."""

from __future__ import annotations

import socket

import httpx
import httpx2
import pytest

from labsupport.network import (
    NetworkBlockedError,
    bound_tcp_socket,
    check_port,
    client_kind,
    free_port,
    is_loopback,
    loopback_address,
)


def test_network_blocked_error_is_what_offline_code_already_catches() -> None:
    error = NetworkBlockedError("blocked")
    for kind in (OSError, ConnectionError, httpx.ConnectError, httpx.HTTPError):
        assert isinstance(error, kind)
    for httpx2_kind in (httpx2.ConnectError, httpx2.TransportError, httpx2.HTTPError):
        assert isinstance(error, httpx2_kind)
    assert str(error) == "blocked"
    with pytest.raises(RuntimeError, match="request"):  # as httpx's own, before a request
        _ = error.request


@pytest.mark.parametrize(
    "host",
    ["localhost", "api.localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]", "::1%lo", b"::1"],
)
def test_loopback_hosts(host: str | bytes) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host", ["", "0.0.0.0", "10.0.0.1", "::", "example.org", "localhost.example.org", "::ffff:1"]
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_loopback_address_is_what_to_bind() -> None:
    assert loopback_address("localhost") == "127.0.0.1"
    assert loopback_address("::1") == "::1"
    for host in ("0.0.0.0", "api.localhost", ""):
        with pytest.raises(ValueError, match="host must be a loopback address"):
            loopback_address(host)
    with pytest.raises(TypeError, match="host must be a str"):
        loopback_address(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("port", "error"), [(-1, ValueError), (65536, ValueError), (True, TypeError), ("80", TypeError)]
)
def test_check_port_refuses_what_is_not_a_port(port: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="port must be an int"):
        check_port(port)


def test_bound_tcp_socket_names_a_taken_port_and_closes_its_socket() -> None:
    with bound_tcp_socket("127.0.0.1", 0) as sock:
        sock.listen()
        port = sock.getsockname()[1]
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only then
        taken = pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: ")
        with taken, bound_tcp_socket("127.0.0.1", port):
            pass
    assert sock.fileno() == -1


def test_free_port_is_a_released_loopback_port_another_process_can_bind() -> None:
    port = free_port()
    assert 0 < port <= 65535
    with socket.create_server(("127.0.0.1", port)):  # released: a server can take it
        pass
    with pytest.raises(ValueError, match="host must be a loopback address"):
        free_port("0.0.0.0")


def test_client_kind_follows_the_sdk_header() -> None:
    assert client_kind({"x-stainless-async": "async:asyncio"}) == "async"
    assert client_kind({"x-stainless-async": "false"}) == "sync"
    assert client_kind({}) == "sync"
    assert client_kind(httpx.Headers({"X-Stainless-Async": "async:trio"})) == "async"
