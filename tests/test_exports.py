"""labsupport's public names: sorted, complete, resolved lazily (httpx's test_exported_members)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

import labsupport

#: Modules whose every public name is part of labsupport's API (others, such as `load` and
#: `plots`, also hold plumbing that only some lessons import from the module itself).
FULLY_EXPORTED = ["guard", "lab", "looplag", "serving", "upstream"]
#: What `import labsupport` must not import: the SDKs, servers and plotting the lessons need
#: only once they run (`doctor` must get to its packages check without them).
HEAVY = ["openai", "httpx", "httpx2", "respx", "uvicorn", "fastapi", "matplotlib", "nbclient"]


def _ruff_order(name: str) -> tuple[int, str]:
    """isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_unique() -> None:
    assert labsupport.__all__ == sorted(set(labsupport.__all__), key=_ruff_order)


@pytest.mark.parametrize("module_name", FULLY_EXPORTED)
def test_every_public_name_of_the_learner_modules_is_exported(module_name: str) -> None:
    module = importlib.import_module(f"labsupport.{module_name}")
    missing = sorted(set(module.__all__) - set(labsupport.__all__))
    assert missing == [], f"labsupport.{module_name} exports {missing}, labsupport does not"


def test_every_exported_name_resolves_to_what_its_module_defines() -> None:
    for name in labsupport.__all__:
        value = getattr(labsupport, name)
        if isinstance(value, types.ModuleType):
            assert value.__name__ == f"labsupport.{name}"
            continue
        home = importlib.import_module(f"labsupport.{labsupport._HOMES[name]}")
        assert name in home.__all__, f"{name} is not public in {home.__name__}"
        assert getattr(home, name) is value
    assert set(labsupport.__all__) <= set(dir(labsupport))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'stup'"):
        _ = labsupport.stup  # type: ignore[attr-defined]


def test_import_labsupport_imports_nothing_heavy() -> None:
    probe = (
        "import sys, labsupport\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "labsupport.setup\n"  # the first use brings them in
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    before, after = done.stdout.splitlines()
    assert before == "[]"
    assert "respx" in after  # the mock's; the SDK waits for the lesson's own import
    assert "openai" not in after


def test_the_package_says_it_is_typed() -> None:
    """pyproject ships `py.typed` (PEP 561): mypy checks learners' and tests' calls against it."""
    assert (Path(labsupport.__file__).parent / "py.typed").is_file()
