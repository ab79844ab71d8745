"""The same upstream over real TCP on 127.0.0.1: replies, faults and connection counting."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from labsupport import FakeServer, Fault


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def test_one_shared_client_reuses_one_connection_a_client_per_call_opens_many() -> None:
    with FakeServer(latency=0.01) as server:
        shared = OpenAI(api_key="test-key", base_url=server.base_url)
        for _ in range(5):
            shared.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
        assert server.connections == 1
        shared.close()

        server.reset()
        for _ in range(5):
            with OpenAI(api_key="test-key", base_url=server.base_url) as per_call:
                per_call.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
        assert server.connections == 5
        server.wait_idle()  # the server thread records a call just after its last byte is sent
        assert server.stats.calls == 5 and server.stats.count(200) == 5


def test_concurrent_calls_open_one_connection_each_even_with_a_shared_client() -> None:
    """A pool reuses idle connections only: 4 calls at once need 4 connections."""
    with FakeServer(latency=0.05) as server:

        async def main() -> None:
            async with AsyncOpenAI(api_key="test-key", base_url=server.base_url) as client:
                calls = [
                    client.chat.completions.create(model="gpt-4o-mini", messages=ask("hi"))
                    for _ in range(4)
                ]
                await asyncio.gather(*calls)
                await client.chat.completions.create(model="gpt-4o-mini", messages=ask("again"))

        asyncio.run(main())
        server.wait_idle()
        assert server.connections == 4
        assert server.stats.max_in_flight == 4


def test_replies_faults_and_streaming_match_the_in_process_mock() -> None:
    with FakeServer(latency=0.0, faults=[Fault.matching("fail", status=503)]) as server:
        client = OpenAI(api_key="test-key", base_url=server.base_url, max_retries=0)
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=ask("Sentiment (one word): I love this")
        )
        assert reply.choices[0].message.content == "Positive"
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=ask("please fail"))
        text = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model="gpt-4o-mini", messages=ask("Summarize: One. Two."), stream=True
            )
            if chunk.choices
        )
        assert text == "One."
        server.wait_idle()  # the client stops at "[DONE]", before the server has recorded it
        assert server.stats.status_counts == {200: 2, 503: 1}


def test_stop_frees_the_port_and_the_thread() -> None:
    before = {t.name for t in threading.enumerate()}
    server = FakeServer(latency=0.0).start()
    port = server.port
    OpenAI(api_key="test-key", base_url=server.base_url).models.list()
    server.stop()
    server.stop()
    with socket.socket() as probe:  # nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    with socket.socket() as probe:  # and a new server may bind it (as servers do, reusing it)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
    assert {t.name for t in threading.enumerate()} <= before


def test_a_taken_port_is_a_clear_error_not_an_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            FakeServer(port=port).start()


@pytest.mark.parametrize(
    ("port", "error"), [(-1, ValueError), (70000, ValueError), ("8000", TypeError)]
)
def test_bad_ports_are_rejected(port: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="port must be an int"):
        FakeServer(port=port)  # type: ignore[arg-type]


def test_wait_idle_returns_once_every_answered_call_is_recorded() -> None:
    """A client has its response a moment before the server thread records the call; after
    wait_idle() every answered call is counted as finished."""
    with FakeServer(latency=0.05) as server:
        client = OpenAI(api_key="test-key", base_url=server.base_url)
        callers = [
            threading.Thread(
                target=client.chat.completions.create, kwargs={"model": "m", "messages": ask("hi")}
            )
            for _ in range(8)
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        server.wait_idle()
        recorded = server.stats
        client.close()
    assert recorded.calls == 8 and recorded.in_flight == 0 and recorded.count(200) == 8


def test_wait_idle_gives_up_after_its_timeout() -> None:
    with FakeServer(latency=0.5) as server:
        client = OpenAI(api_key="test-key", base_url=server.base_url)
        calling = threading.Thread(
            target=client.chat.completions.create, kwargs={"model": "m", "messages": ask("hi")}
        )
        calling.start()
        while server.stats.in_flight == 0:
            threading.Event().wait(0.005)
        with pytest.raises(TimeoutError, match=r"still busy after 0\.05 s"):
            server.wait_idle(timeout=0.05)
        calling.join()
        client.close()


def test_base_url_before_start_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        _ = FakeServer().base_url


def test_open_connections_counts_what_is_still_open() -> None:
    with FakeServer(latency=0.0) as server:
        client = OpenAI(api_key="test-key", base_url=server.base_url)
        client.models.list()
        assert server.open_connections == 1
        client.close()
        for _ in range(100):  # the server thread notices the close a moment later
            if server.open_connections == 0:
                break
            threading.Event().wait(0.01)
        assert server.open_connections == 0
    assert server.open_connections == 0


@pytest.mark.parametrize("thread_runs", [True, False], ids=["thread_started", "never_started"])
def test_interrupted_inside_thread_start_it_stops_and_frees_the_port(
    monkeypatch: pytest.MonkeyPatch, thread_runs: bool
) -> None:
    """On a loaded machine the Ctrl+C can land while `Thread.start()` itself still waits for the
    new thread (seen once under `make test` with `yes` on the other core: a FakeServer thread left
    serving). Whether the thread then runs or never began, nothing serves and the port is free."""
    from labsupport.upstream import fake_server

    class InterruptedStart(threading.Thread):
        def start(self) -> None:
            if thread_runs:
                super().start()
            raise KeyboardInterrupt

    monkeypatch.setattr(fake_server.threading, "Thread", InterruptedStart)
    monkeypatch.setattr(fake_server, "_THREAD_START_SECONDS", 0.5)
    server = FakeServer()
    with pytest.raises(KeyboardInterrupt):
        server.start()
    monkeypatch.undo()
    assert not server.active
    assert not [t for t in threading.enumerate() if t.name.startswith("FakeServer:")]
    with socket.socket() as probe:  # no SO_REUSEADDR: the port must be entirely free
        probe.bind(("127.0.0.1", server.port))
    assert server.start() is server and server.active  # and it can still start
    server.stop()


def test_interrupted_while_starting_it_stops_and_frees_the_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl+C in a cell whose `with FakeServer()` is still starting: the interrupt lands in
    `start()`'s wait for the server thread, which must not go on serving without an owner."""
    from labsupport.upstream import fake_server

    real_run_uvicorn = fake_server.run_uvicorn
    main = threading.main_thread().ident or 0

    @contextlib.asynccontextmanager
    async def interrupted_while_starting(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with real_run_uvicorn(*args, **kwargs) as server:
            signal.pthread_kill(main, signal.SIGINT)  # the main thread waits in start()
            await asyncio.sleep(0.2)  # the interrupt lands before the server says it is ready
            yield server

    monkeypatch.setattr(fake_server, "run_uvicorn", interrupted_while_starting)
    server = FakeServer()
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert not server.active
    assert not [t for t in threading.enumerate() if t.name.startswith("FakeServer:")]
    with socket.socket() as probe:  # no SO_REUSEADDR: the port must be entirely free
        probe.bind(("127.0.0.1", server.port))
