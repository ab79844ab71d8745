"""The socket guard: with the lab on, nothing but loopback is reachable — proven without sending."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from openai import OpenAI

from labsupport import NetworkBlockedError, NetworkGuard, guard_active


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
    with NetworkGuard():
        yield attempts


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


def test_start_and_stop_are_idempotent_and_restore_the_originals() -> None:
    connect, lookup = socket.socket.connect, socket.getaddrinfo
    guard = NetworkGuard()
    assert guard.start() is guard and guard.start() is guard
    assert guard_active() and guard.active and socket.socket.connect is not connect
    guard.stop()
    guard.stop()
    assert not guard_active() and socket.socket.connect is connect
    assert socket.getaddrinfo is lookup


def test_the_sockets_stay_guarded_while_any_guard_is_on() -> None:
    connect = socket.socket.connect
    first, second = NetworkGuard().start(), NetworkGuard().start()
    first.stop()
    assert guard_active() and socket.socket.connect is not connect
    with pytest.raises(NetworkBlockedError):
        socket.getaddrinfo("example.org", 80)
    second.stop()
    assert not guard_active() and socket.socket.connect is connect


def test_a_refused_api_host_says_websockets_are_not_available_offline() -> None:
    with (
        NetworkGuard(api_hosts=["api.openai.com"]),
        pytest.raises(
            NetworkBlockedError, match=r"WebSocket connections .* are not available offline"
        ),
    ):
        socket.getaddrinfo("api.openai.com", 443)


# every way out, with only mock_openai() on, in a subprocess -----------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _in_a_loopback_only_namespace() -> list[str]:
    """A command prefix that runs a process in a network namespace with only `lo` (up), or
    nothing when this machine cannot make one (then the audit hook alone is the evidence)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return []
    trial = subprocess.run(
        ["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, check=False
    )
    return (
        ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "-"]
        if (trial.returncode == 0)
        else []
    )


@pytest.fixture(scope="module")
def probe_report() -> dict[str, Any]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("OPENAI_API_KEY", None)
    environment.pop("OPENAI_BASE_URL", None)
    command = [*_in_a_loopback_only_namespace(), sys.executable, "tests/network_probes.py"]
    done = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_mock_openai_alone_refuses_every_way_out_before_it_reaches_c(
    probe_report: dict[str, Any],
) -> None:
    probes: dict[str, str] = probe_report["probes"]
    assert len(probes) >= 24
    not_blocked = {name: outcome for name, outcome in probes.items() if "blocked:" not in outcome}
    assert not_blocked == {}
    # The audit hook saw no socket call with an address off this machine reach C.
    assert probe_report["reached"] == []


def test_websocket_attempts_say_the_realtime_api_is_not_available_offline(
    probe_report: dict[str, Any],
) -> None:
    websockets = {
        name: outcome
        for name, outcome in probe_report["probes"].items()
        if "ebsocket" in name or "realtime" in name
    }
    if not websockets:
        pytest.skip("websockets is not installed")
    for outcome in websockets.values():
        assert "not available offline" in outcome


def test_mock_openai_alone_gives_the_placeholder_key_and_takes_it_back(
    probe_report: dict[str, Any],
) -> None:
    assert probe_report["key_given"] and probe_report["key_removed"]


IMPORT_LITELLM = """
import json, sys
reached = []
sys.addaudithook(
    lambda event, args: reached.append(f"{event} {args[1:]!r}")
    if event in ("socket.connect", "socket.getaddrinfo") else None
)
from labsupport import mock_openai
mock_openai().start()
import litellm
from litellm.litellm_core_utils.get_model_cost_map import get_model_cost_map_source_info
info = get_model_cost_map_source_info()
print(json.dumps({"source": info["source"], "reason": info["fallback_reason"],
                  "models": len(litellm.model_cost), "reached": reached}))
"""


@pytest.mark.slow
def test_import_litellm_offline_falls_back_to_its_bundled_price_list() -> None:
    """litellm fetches its model price list at import and, on `httpx.HTTPError`, uses its bundled
    copy: `NetworkBlockedError` is one, so the import succeeds as on a machine with no network."""
    if importlib.util.find_spec("litellm") is None:  # not importorskip: that would fetch
        pytest.skip("litellm (the clients extra) is not installed")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_OFFLINE_MODE", "OPENAI_API_KEY"):
        environment.pop(name, None)  # the switches that would skip the fetch
    command = [*_in_a_loopback_only_namespace(), sys.executable, "-c", IMPORT_LITELLM]
    done = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["source"] == "local" and report["models"] > 100
    # The mock refused the request (an httpx one) before any socket: not DNS, not a timeout.
    assert "NetworkBlockedError" in report["reason"]
    assert "The offline lab blocked a request to https://" in report["reason"]
    assert report["reached"] == []  # refused before the socket call reached C


AIOHTTP_OFFLINE = """
import asyncio, json, os, sys, time
reached = []
sys.addaudithook(
    lambda event, args: reached.append(f"{event} {args[1:]!r}")
    if event in ("socket.connect", "socket.getaddrinfo") and "127.0.0.1" not in repr(args)
    else None
)
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm, openai
from labsupport import mock_openai

ASK = [{"role": "user", "content": "Sentiment (one word): I love this course"}]

async def main():
    report = {}
    with mock_openai(latency=0.0) as upstream:
        async with openai.AsyncOpenAI(http_client=openai.DefaultAioHttpClient()) as client:
            reply = await client.chat.completions.create(model="gpt-4o-mini", messages=ASK)
            report["sdk"] = reply.choices[0].message.content
        reply = await litellm.acompletion(model="openai/gpt-4o-mini", messages=ASK)
        report["litellm"] = reply.choices[0].message.content
        report["calls"] = upstream.stats.calls
        refused = openai.AsyncOpenAI(
            base_url="https://example.org/v1", http_client=openai.DefaultAioHttpClient()
        )
        retries = []
        async def count_retry(**_):
            retries.append(1)
        refused._sleep_for_retry = count_retry
        try:
            await refused.models.list()
        except Exception as error:
            report["refusal"] = [type(error).__name__, str(error), len(retries)]
        await refused.close()
    report["reached"] = reached
    print(json.dumps(report))

asyncio.run(main())
"""


def test_aiohttp_works_offline_and_its_refusals_are_immediate() -> None:
    """In a network namespace with only loopback: the SDK's aiohttp backend and litellm's
    default async path are answered by the mock; a host off this machine is refused at once
    (no retry), in words that name the lab, and nothing reached a socket off this machine."""
    if importlib.util.find_spec("litellm") is None:
        pytest.skip("litellm (the clients extra) is not installed")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("OPENAI_API_KEY", None)
    command = [*_in_a_loopback_only_namespace(), sys.executable, "-c", AIOHTTP_OFFLINE]
    done = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert (report["sdk"], report["litellm"], report["calls"]) == ("Positive", "Positive", 2)
    kind, message, retries = report["refusal"]
    assert (kind, retries) == ("NetworkBlockedError", 0)
    assert "The offline lab blocked a request to https://example.org" in message
    assert report["reached"] == []
