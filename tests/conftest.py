import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from openai import AsyncOpenAI, OpenAI

import labsupport


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only: the course targets asyncio."""
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in the tests, as Ctrl+C does in a learner's kernel, even
    when the suite was started with SIGINT ignored (a background job of a non-interactive shell
    inherits SIG_IGN, and Python then installs no handler): the interrupt tests send real ones."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session", autouse=True)
def warm_sdk() -> None:
    """Pay the SDK's cold start once per test process, before any test can time it.

    The first call through each SDK client in a process imports modules lazily and builds its
    pydantic validators: tens of milliseconds, on a busy machine more than one latency, that
    would land inside whichever test happens to make the first call."""
    messages = [{"role": "user", "content": "warm-up"}]

    async def one_async_call() -> None:
        async with AsyncOpenAI(api_key="warm-up-key") as aclient:
            await aclient.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]

    with labsupport.mock_openai(latency=0.0), OpenAI(api_key="warm-up-key") as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
        asyncio.run(one_async_call())


@pytest.fixture
def lab_latency() -> float:
    """Seconds per upstream call under `offline_lab`; a test module redefines it to change it."""
    return 0.05


@pytest.fixture
def offline_lab(
    monkeypatch: pytest.MonkeyPatch, lab_latency: float
) -> Iterator[labsupport.MockUpstream]:
    """What a notebook's first cell does, for one test: the offline lab, with no live-mode or
    base-URL setting leaking in from the environment; torn down afterwards."""
    monkeypatch.delenv("LAB_MODE", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    upstream = labsupport.setup(latency=lab_latency)
    assert isinstance(upstream, labsupport.MockUpstream)
    yield upstream
    labsupport.teardown()


# -- the clients matrix (tests/clients_matrix.py) ---------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A clients-matrix case (one with a `surface` parameter) is judged by `verdict`: a clear
    refusal passes, anything wrong fails; the verdict goes to the report for the table."""
    callspec = getattr(item, "callspec", None)
    surface = callspec and callspec.params.get("surface")
    if not surface or callspec is None:
        return (yield)
    from clients_matrix import REFUSED, verdict

    name = item.name.split("[")[0].removeprefix("test_")
    others = [f"{k}={v}" for k, v in callspec.params.items() if k != "surface"]
    case = " ".join([name, *others])
    try:
        result = yield
    except Exception as error:
        judged = verdict(error)
        item.user_properties.append(("clients", (case, str(surface), judged)))
        if judged == REFUSED:
            return None
        raise
    item.user_properties.append(("clients", (case, str(surface), verdict(None))))
    return result


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The clients table: each case × surface as works / refused clearly / wrong."""
    rows: dict[str, dict[str, str]] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == "clients":
                    case, surface, judged = value
                    rows.setdefault(case, {})[surface] = judged
    if not rows:
        return
    from clients_matrix import SURFACES

    width = max(len(case) for case in rows)
    terminalreporter.write_sep("=", "clients: library × surface")
    terminalreporter.write_line(f"{'case':<{width}}  " + "  ".join(f"{s:<16}" for s in SURFACES))
    for case in sorted(rows):
        cells = [rows[case].get(s, "-") for s in SURFACES]
        terminalreporter.write_line(f"{case:<{width}}  " + "  ".join(f"{c:<16}" for c in cells))
    verdicts = [v for row in rows.values() for v in row.values()]
    counts = {v: verdicts.count(v) for v in ("works", "refused clearly")}
    wrong = sum(v.startswith("wrong") for v in verdicts)
    terminalreporter.write_line(
        f"{counts['works']} works, {counts['refused clearly']} refused clearly, {wrong} wrong"
    )
