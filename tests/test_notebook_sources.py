"""The committed notebooks are exactly what their course/ sources build, and were fully executed.

nbval (run by the same `pytest`) checks that re-running a notebook reproduces its stored outputs,
but it cannot tell that a notebook was generated from the current source, and it silently skips
any cell whose stored ``execution_count`` is null. These tests close both gaps, and pin down the
behaviour of ``tools/build_notebooks.py`` itself on a tiny throwaway course.
"""

from __future__ import annotations

import json
from pathlib import Path

import build_notebooks as tool  # tools/ is on pytest's pythonpath (pyproject.toml)
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generated_notebooks(root: Path) -> list[Path]:
    return [
        target.notebook
        for source in tool.find_sources(root)
        for target in tool.targets_for(source, root)
    ]


# ------------------------------------------------------------------------- the committed course


def test_course_has_sources() -> None:
    assert tool.find_sources(ROOT), "course/ has no NN_name.py notebook sources"


def test_notebooks_are_up_to_date_with_sources() -> None:
    problems = tool.stale_notebooks(ROOT)
    assert not problems, "run `make notebooks`:\n" + "\n".join(problems)


def test_every_exercise_has_a_solution() -> None:
    problems = [
        problem for source in tool.find_sources(ROOT) for problem in tool.source_problems(source)
    ]
    assert not problems, "\n".join(problems)


def test_committed_notebooks_were_executed_top_to_bottom() -> None:
    problems = []
    for path in _generated_notebooks(ROOT):
        if not path.exists():
            continue  # reported by test_notebooks_are_up_to_date_with_sources
        notebook = nbformat.read(path, as_version=4)
        counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
        # One fresh kernel running every cell in order numbers them 1, 2, 3, ...; a null count
        # would make nbval skip that cell's comparison.
        if counts != list(range(1, len(counts) + 1)):
            problems.append(f"{path.relative_to(ROOT)}: execution counts {counts}")
    assert not problems, "run `make notebooks`:\n" + "\n".join(problems)


# --------------------------------------------------------------------- the tool, on a toy course

TOY_SOURCE = """\
# %% [markdown]
# # Toy

# %%
from pathlib import Path

print(Path.cwd().name)

# %% tags=["exercise"]
answer = None

# %% tags=["solution"]
answer = 42

# %% tags=["raises-exception"]
raise ValueError("shown on purpose")
"""


@pytest.fixture
def toy_root(tmp_path: Path) -> Path:
    (tmp_path / "course").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "course" / "01_toy.py").write_text(TOY_SOURCE)
    return tmp_path


def _cells(path: Path) -> list[tuple[str, str, list[str]]]:
    notebook = nbformat.read(path, as_version=4)
    return [(cell.id, cell.source, cell.metadata.get("tags", [])) for cell in notebook.cells]


def test_tool_splits_learner_and_solution_notebooks(toy_root: Path) -> None:
    assert tool.main(["--root", str(toy_root), "--no-execute"]) == 0

    learner = _cells(toy_root / "notebooks" / "01_toy.ipynb")
    solution = _cells(toy_root / "notebooks" / "solutions" / "01_toy.ipynb")
    assert [cell[0] for cell in learner] == ["cell-000", "cell-001", "cell-002", "cell-004"]
    assert [cell[0] for cell in solution] == ["cell-000", "cell-001", "cell-003", "cell-004"]
    assert learner[2] == ("cell-002", "answer = None", ["exercise"])
    assert solution[2] == ("cell-003", "answer = 42", ["solution"])

    metadata = nbformat.read(toy_root / "notebooks" / "01_toy.ipynb", as_version=4).metadata
    assert metadata["kernelspec"]["name"] == "python3"
    assert metadata[tool.METADATA_KEY]["generated_from"] == "course/01_toy.py"


def test_tool_output_is_byte_for_byte_stable(toy_root: Path) -> None:
    notebook = toy_root / "notebooks" / "01_toy.ipynb"
    tool.main(["--root", str(toy_root), "--no-execute"])
    first = notebook.read_bytes()
    tool.main(["--root", str(toy_root), "--no-execute"])
    assert notebook.read_bytes() == first


def test_check_reports_missing_stale_and_orphaned_notebooks(toy_root: Path) -> None:
    assert tool.stale_notebooks(toy_root) == [
        "missing: notebooks/01_toy.ipynb",
        "missing: notebooks/solutions/01_toy.ipynb",
    ]
    tool.main(["--root", str(toy_root), "--no-execute"])
    assert tool.stale_notebooks(toy_root) == []
    assert tool.main(["--root", str(toy_root), "--check"]) == 0

    # A hand edit of a cell is stale; outputs and execution counts are not compared.
    learner = toy_root / "notebooks" / "01_toy.ipynb"
    notebook = json.loads(learner.read_text())
    notebook["cells"][1]["execution_count"] = 7
    learner.write_text(json.dumps(notebook))
    assert tool.stale_notebooks(toy_root) == []
    notebook["cells"][1]["source"] = ["print('edited by hand')"]
    learner.write_text(json.dumps(notebook))
    (toy_root / "notebooks" / "99_gone.ipynb").write_text("{}")

    assert tool.stale_notebooks(toy_root) == [
        "stale: notebooks/01_toy.ipynb differs from course/01_toy.py",
        "orphaned: notebooks/99_gone.ipynb has no source",
    ]
    assert tool.main(["--root", str(toy_root), "--check"]) == 1


def test_source_problems_flag_an_exercise_without_solution(toy_root: Path) -> None:
    source = toy_root / "course" / "01_toy.py"
    assert tool.source_problems(source) == []
    source.write_text(TOY_SOURCE.replace('tags=["solution"]', ""))
    assert tool.source_problems(source) == [
        "01_toy.py: has 'exercise' cells but no 'solution' cell"
    ]
    assert tool.main(["--root", str(toy_root), "--no-execute"]) == 1


@pytest.mark.slow
def test_tool_executes_in_the_notebook_folder_and_allows_tagged_errors(toy_root: Path) -> None:
    assert tool.main(["--root", str(toy_root), "--only", "01"]) == 0

    for path, folder in [
        (toy_root / "notebooks" / "01_toy.ipynb", "notebooks"),
        (toy_root / "notebooks" / "solutions" / "01_toy.ipynb", "solutions"),
    ]:
        code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert [cell.execution_count for cell in code] == [1, 2, 3]
        assert code[0].outputs[0]["text"] == f"{folder}\n"
        assert code[2].outputs[0]["ename"] == "ValueError"
