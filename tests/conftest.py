from collections.abc import Iterator

import pytest

import labsupport


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio only: the course targets asyncio."""
    return "asyncio"


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
