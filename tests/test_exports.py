"""labsupport's public names: sorted, complete, resolved lazily (httpx's test_exported_members)."""

from __future__ import annotations

import ast
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


def _homes(package: types.ModuleType) -> dict[str, str]:
    """Each name the package's stub (`__init__.pyi`) imports, and the module it comes from
    (for `from . import checks`, the package itself)."""
    stub = Path(package.__file__ or "").with_suffix(".pyi")
    homes = {}
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                homes[alias.name] = ".".join(filter(None, [package.__name__, node.module]))
    return homes


def test_all_is_sorted_and_unique() -> None:
    assert labsupport.__all__ == sorted(set(labsupport.__all__))


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
        home = importlib.import_module(_homes(labsupport)[name])
        assert name in home.__all__, f"{name} is not public in {home.__name__}"
        assert getattr(home, name) is value
    assert set(labsupport.__all__) <= set(dir(labsupport))


@pytest.mark.parametrize(
    "package", ["labsupport", "labsupport.upstream", "labsupport.coaching", "labsupport.checks"]
)
def test_every_lazy_package_exports_exactly_what_its_stub_imports(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(_homes(module))
    for name, home in _homes(module).items():
        value = getattr(module, name)
        assert value is getattr(importlib.import_module(home), name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="stup"):
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
    assert "httpx" in after  # the mock's; the SDK waits for the lesson's own import
    assert "openai" not in after


def test_the_package_says_it_is_typed() -> None:
    """pyproject ships `py.typed` (PEP 561): mypy checks learners' and tests' calls against it."""
    assert (Path(labsupport.__file__).parent / "py.typed").is_file()


def test_a_checker_imports_only_its_own_module() -> None:
    """Lesson 02's check loads without the other lessons' checkers: in Pyodide the shared-limit
    and streaming checkers' Redis client cannot be imported, and lesson 02 is checked there."""
    probe = (
        "import sys\n"
        "from labsupport.checks import check_parallel_fanout\n"
        "print(sorted(m for m in sys.modules if m.startswith('labsupport.checks.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = ast.literal_eval(done.stdout)
    assert "labsupport.checks.gather" in loaded
    others = ["async_client", "background", "lifespan", "semaphore", "shared_limit", "streaming"]
    assert [f"labsupport.checks.{name}" for name in others if name in loaded] == []
