"""The socket guard: with the lab on, nothing but loopback is reachable — proven without sending."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import httpx
import httpx2
import pytest
from openai import OpenAI

from labsupport import NetworkBlockedError, guard_active, install_guard, uninstall_guard


@pytest.fixture
def recorded_attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Replace the real connect/lookup with recorders *under* the guard: if the guard let
    anything through, it would be recorded here, and still nothing would be sent."""
    attempts: list[object] = []

    def fake_connect(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise ConnectionRefusedError("recorder: nothing sent")

    real_getaddrinfo = socket.getaddrinfo

    def fake_getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        attempts.append(host)
        try:
            ipaddress.ip_address(str(host))
        except ValueError:
            raise socket.gaierror("recorder: names are not resolved here") from None
        return real_getaddrinfo(host, port, *args, **kwargs)  # type: ignore[arg-type]  # numeric: sends nothing

    monkeypatch.setattr(socket.socket, "connect", fake_connect)
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    install_guard()
    try:
        yield attempts
    finally:
        uninstall_guard()


def send_datagram(address: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"x", address)


@pytest.mark.parametrize(
    "attempt",
    [
        lambda: httpx.get("http://203.0.113.7/"),
        lambda: httpx2.get("http://203.0.113.7/"),
        lambda: httpx.get("https://example.invalid/"),
        lambda: OpenAI(
            api_key="test-key", base_url="http://203.0.113.7/v1", max_retries=0
        ).models.list(),
        lambda: socket.create_connection(("203.0.113.7", 80)),
        lambda: send_datagram(("203.0.113.7", 53)),
    ],
    ids=["httpx-ip", "httpx2-ip", "httpx-name", "openai-sdk", "create_connection", "udp"],
)
def test_non_loopback_is_refused_and_nothing_is_sent(
    recorded_attempts: list[object], attempt: object
) -> None:
    with pytest.raises(Exception) as caught:
        attempt()  # type: ignore[operator]
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    # Libraries wrap it (httpx: ConnectError), but the lab's refusal is the root cause.
    assert any(isinstance(error, NetworkBlockedError) for error in chain), chain
    assert "offline lab blocked" in str(caught.value) or "Connection error" in str(caught.value)
    assert recorded_attempts == []


def test_loopback_stays_reachable(recorded_attempts: list[object]) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 9))
    assert recorded_attempts == ["127.0.0.1", ("127.0.0.1", 9)]


def test_install_and_uninstall_are_idempotent_and_restore_the_originals() -> None:
    connect = socket.socket.connect
    install_guard()
    install_guard()
    assert guard_active() and socket.socket.connect is not connect
    uninstall_guard()
    uninstall_guard()
    assert not guard_active() and socket.socket.connect is connect
