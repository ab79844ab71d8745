"""The lab's redis-server: a child process on a free loopback port, memory only, gone when
stopped; and a clear one-line message, with the install command, when it is not installed."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest
import redis

from labsupport.distributed import RedisServer, RedisServerMissing, redis_server_path
from labsupport.distributed.redis_server import install_command

pytestmark = pytest.mark.skipif(
    redis_server_path() is None, reason=f"redis-server is not installed ({install_command()})"
)


def lab_children() -> list[str]:
    """redis-server or uvicorn processes this test process started that are still there."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "redis-server" in command or "uvicorn" in command or "distributed.jobs" in command:
            found.append(f"{child.pid} {child.status()} {command[:80]}")
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    assert lab_children() == []


def test_serves_on_loopback_in_memory_and_stops_without_a_trace() -> None:
    with RedisServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping()
            config = client.config_get("*")
            assert config["bind"] == "127.0.0.1"
            assert config["save"] == "" and config["appendonly"] == "no"
        finally:
            client.close()
        port = server.port
    assert not server.running
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    probe = redis.Redis(port=port, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        probe.ping()
    probe.close()


def test_kill_is_a_crash_and_stop_after_it_is_harmless() -> None:
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url, socket_timeout=1)
    try:
        client.set("k", "v")
        server.kill()
        with pytest.raises(redis.ConnectionError):
            client.get("k")
    finally:
        client.close()
        server.stop()
        server.stop()  # idempotent


def test_two_servers_get_two_ports() -> None:
    with RedisServer() as first, RedisServer() as second:
        assert first.port != second.port


def test_missing_redis_server_says_the_install_command_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LAB_REDIS_SERVER", "/nonexistent/redis-server")
    assert redis_server_path() is None
    with pytest.raises(RedisServerMissing) as raised:
        RedisServer().start()
    message = str(raised.value)
    assert install_command() in message and "\n" not in message
    # IPython shows this instead of a traceback.
    assert raised.value._render_traceback_() == [message]


def test_doctor_finds_redis_server_or_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labsupport.instructor.doctor import check_redis_server

    assert check_redis_server().ok
    monkeypatch.setenv("LAB_REDIS_SERVER", "/nonexistent/redis-server")
    missing = check_redis_server()
    assert (missing.ok, missing.fix) == (False, install_command())
