"""Build the course notebooks from their sources.

Every notebook is written as a jupytext percent-format script, ``course/NN_name.py``. One source
gives two notebooks:

* ``notebooks/NN_name.ipynb`` — the learner's copy: cells tagged ``solution`` are left out;
* ``notebooks/solutions/NN_name.ipynb`` — the instructor's copy: cells tagged ``exercise`` are
  left out.

Both are then executed in this environment's Python kernel, with the notebook's own folder as
the working directory (as nbval and JupyterLab run them), and written with their outputs so that
``pytest --nbval`` can compare a fresh run against them. Only a cell tagged ``raises-exception``
may raise.

The output is deterministic apart from what the code prints: cell ids come from the cell's
position in the source, the notebook metadata is fixed, and no timing metadata is recorded, so
rebuilding an unchanged source only changes outputs.

Usage::

    python tools/build_notebooks.py              # rebuild and execute everything
    python tools/build_notebooks.py --only 02    # just course/02_*.py
    python tools/build_notebooks.py --check      # exit 1 if a notebook is stale; runs nothing
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import jupytext
import nbformat
from nbclient.exceptions import CellControlSignal, DeadKernelError
from nbformat import NotebookNode

from labsupport.instructor.kernels import KERNEL_NAME, notebook_client

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
SOURCE_PATTERN: Final = re.compile(r"^(?P<number>\d{2})_[a-z0-9_]+\.py$")
EXERCISE_TAG: Final = "exercise"
SOLUTION_TAG: Final = "solution"
METADATA_KEY: Final = "async_llm_lab"

Variant = Literal["learner", "solution"]

# The tag that keeps a cell OUT of each variant.
_DROPPED_TAG: Final[dict[Variant, str]] = {"learner": SOLUTION_TAG, "solution": EXERCISE_TAG}

# jupytext stores these in cell metadata only to round-trip the .py layout; they mean nothing in
# a notebook and would make the JSON depend on blank lines in the source.
_JUPYTEXT_LAYOUT_KEYS: Final = frozenset(
    {"lines_to_next_cell", "lines_to_end_of_cell_marker", "cell_marker"}
)

_KERNELSPEC: Final = {
    "name": KERNEL_NAME,
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
}
# Deliberately without "version": the kernel reports its patch release, which differs between
# machines and would make every rebuild churn.
_LANGUAGE_INFO: Final = {
    "name": "python",
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
}


@dataclass(frozen=True)
class Target:
    """One notebook to generate: which source, which variant, and where it goes."""

    source: Path
    variant: Variant
    notebook: Path


def find_sources(root: Path = REPO_ROOT, only: Iterable[str] = ()) -> list[Path]:
    """Return the notebook sources ``course/NN_name.py``, sorted by number.

    ``only`` restricts the result to the given two-digit numbers, e.g. ``["01", "03"]``.
    """
    wanted = set(only)
    for number in wanted:
        if not re.fullmatch(r"\d{2}", number):
            raise ValueError(f"only: expected two-digit notebook numbers like '01', got {number!r}")
    course = root / "course"
    sources = sorted(
        path
        for path in course.glob("*.py")
        if (match := SOURCE_PATTERN.match(path.name))
        and (not wanted or match.group("number") in wanted)
    )
    return sources


def targets_for(source: Path, root: Path = REPO_ROOT) -> tuple[Target, ...]:
    """Return the notebooks generated from ``source``: the learner's, and a solution notebook
    when the source has an exercise (a notebook without one would only be an identical copy)."""
    if not SOURCE_PATTERN.match(source.name):
        raise ValueError(f"source: expected a file named like 'NN_name.py', got {source.name!r}")
    name = source.with_suffix(".ipynb").name
    notebooks = root / "notebooks"
    learner = Target(source, "learner", notebooks / name)
    has_exercise = any(
        EXERCISE_TAG in cell.metadata.get("tags", ()) for cell in read_source(source).cells
    )
    if not has_exercise:
        return (learner,)
    return (learner, Target(source, "solution", notebooks / "solutions" / name))


def read_source(source: Path) -> NotebookNode:
    """Parse a percent-format source into a notebook (jupytext's own view of it)."""
    notebook: NotebookNode = jupytext.read(source, fmt="py:percent")
    return notebook


def source_problems(source: Path) -> list[str]:
    """Describe what is wrong with a source's exercise/solution tagging (empty: nothing).

    A source that asks the learner to do something (an ``exercise`` cell) must also show how
    (a ``solution`` cell), and the other way round; one cell cannot be both.
    """
    cells = read_source(source).cells
    tag_sets = [set(cell.metadata.get("tags", ())) for cell in cells]
    problems = [
        f"{source.name}: cell {index} is tagged both {EXERCISE_TAG!r} and {SOLUTION_TAG!r}"
        for index, tags in enumerate(tag_sets)
        if {EXERCISE_TAG, SOLUTION_TAG} <= tags
    ]
    has_exercise = any(EXERCISE_TAG in tags for tags in tag_sets)
    has_solution = any(SOLUTION_TAG in tags for tags in tag_sets)
    if has_exercise and not has_solution:
        problems.append(f"{source.name}: has {EXERCISE_TAG!r} cells but no {SOLUTION_TAG!r} cell")
    if has_solution and not has_exercise:
        problems.append(f"{source.name}: has {SOLUTION_TAG!r} cells but no {EXERCISE_TAG!r} cell")
    return problems


def generate(target: Target, root: Path = REPO_ROOT) -> NotebookNode:
    """Build ``target``'s notebook from its source, without outputs.

    Cells keep their tags (``exercise`` marks what the learner should change), lose jupytext's
    layout metadata, and get an id from their position in the source, so the same cell has the
    same id in both variants and across rebuilds.
    """
    dropped_tag = _DROPPED_TAG[target.variant]
    source_notebook = read_source(target.source)
    cells = []
    for index, cell in enumerate(source_notebook.cells):
        if dropped_tag in cell.metadata.get("tags", ()):
            continue
        cell_metadata = {
            key: value for key, value in cell.metadata.items() if key not in _JUPYTEXT_LAYOUT_KEYS
        }
        if cell.cell_type == "code":
            new_cell = nbformat.v4.new_code_cell(cell.source, metadata=cell_metadata)
        elif cell.cell_type == "markdown":
            new_cell = nbformat.v4.new_markdown_cell(cell.source, metadata=cell_metadata)
        else:
            new_cell = nbformat.v4.new_raw_cell(cell.source, metadata=cell_metadata)
        new_cell.id = f"cell-{index:03d}"
        cells.append(new_cell)

    source_name = target.source.relative_to(root).as_posix()
    metadata: dict[str, Any] = {
        "kernelspec": dict(_KERNELSPEC),
        "language_info": copy.deepcopy(_LANGUAGE_INFO),
        METADATA_KEY: {
            "generated_from": source_name,
            "variant": target.variant,
            "note": f"Generated by tools/build_notebooks.py (make notebooks) from {source_name}. "
            "Do not edit this file by hand: edit the source and rebuild.",
        },
    }
    notebook: NotebookNode = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
    nbformat.validate(notebook)
    return notebook


def execute(notebook: NotebookNode, cwd: Path) -> NotebookNode:
    """Run every cell of a copy of ``notebook`` in a fresh kernel of this environment.

    Raises ``nbclient.exceptions.CellExecutionError`` if a cell raises without the
    ``raises-exception`` tag, ``nbclient.exceptions.CellTimeoutError`` if a cell runs longer
    than ``labsupport.instructor.kernels.CELL_TIMEOUT_SECONDS`` (both are
    ``CellControlSignal``), and ``nbclient.exceptions.DeadKernelError`` if the kernel dies.
    """
    executed = copy.deepcopy(notebook)
    notebook_client(executed, cwd=cwd).execute()
    # nbclient copies the kernel's language_info (with its patch version) into the metadata;
    # keep the generated, machine-independent metadata instead.
    executed.metadata = copy.deepcopy(notebook.metadata)
    return executed


def write(notebook: NotebookNode, path: Path) -> None:
    """Validate and write ``notebook`` as nbformat 4 JSON (nbformat's stable key order)."""
    nbformat.validate(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def _structure(notebook: NotebookNode) -> dict[str, Any]:
    """What `generate` decides about a notebook: everything except outputs and counts."""
    return {
        "nbformat": (notebook.nbformat, notebook.nbformat_minor),
        "metadata": notebook.metadata,
        "cells": [
            (cell.get("id"), cell.cell_type, cell.source, cell.metadata) for cell in notebook.cells
        ],
    }


def stale_notebooks(root: Path = REPO_ROOT, only: Iterable[str] = ()) -> list[str]:
    """List (as messages) the notebooks that ``make notebooks`` would change or delete.

    A notebook is stale when it is missing, or its cells, tags or metadata differ from what its
    source generates (outputs and execution counts are not compared: they come from running it).
    Without ``only``, a notebook whose source no longer exists is reported as well.
    """
    only = list(only)
    problems: list[str] = []
    expected: set[Path] = set()
    for source in find_sources(root, only):
        for target in targets_for(source, root):
            expected.add(target.notebook)
            relative = target.notebook.relative_to(root).as_posix()
            if not target.notebook.exists():
                problems.append(f"missing: {relative}")
                continue
            on_disk = nbformat.read(target.notebook, as_version=nbformat.NO_CONVERT)
            if _structure(on_disk) != _structure(generate(target, root)):
                problems.append(f"stale: {relative} differs from {source.relative_to(root)}")
    if not only:
        notebooks = root / "notebooks"
        for path in sorted([*notebooks.glob("*.ipynb"), *notebooks.glob("solutions/*.ipynb")]):
            if path not in expected:
                problems.append(f"orphaned: {path.relative_to(root).as_posix()} has no source")
    return problems


def build(target: Target, root: Path = REPO_ROOT, *, run: bool = True) -> None:
    """Generate ``target``'s notebook and, if ``run``, execute it; then write it.

    Nothing is written when execution fails.
    """
    notebook = generate(target, root)
    target.notebook.parent.mkdir(parents=True, exist_ok=True)
    if run:
        notebook = execute(notebook, cwd=target.notebook.parent)
    write(notebook, target.notebook)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate notebooks/ (learner) and notebooks/solutions/ from course/*.py "
        "and execute them to store their outputs."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="list notebooks whose cells/tags/metadata differ from their source and exit 1 if "
        "any; executes nothing and writes nothing",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="NN",
        help="only these sources, by two-digit number (e.g. --only 01 03)",
    )
    parser.add_argument(
        "--no-execute",
        action="store_true",
        help="write the notebooks without running them (no outputs: nbval will not pass)",
    )
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT, help="repository root (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    bad = [number for number in args.only if not re.fullmatch(r"\d{2}", number)]
    if bad:
        parser.error(f"--only takes two-digit numbers like 01, got: {', '.join(bad)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = _parse_args(argv)
    root: Path = args.root.resolve()
    if args.only and not find_sources(root, args.only):
        print(f"no course/NN_*.py source for: {' '.join(args.only)}", file=sys.stderr)
        return 2
    if args.check:
        problems = stale_notebooks(root, args.only)
        for problem in problems:
            print(problem)
        if problems:
            print("run `make notebooks` to regenerate", file=sys.stderr)
        return 1 if problems else 0
    for source in find_sources(root, args.only):
        problems = source_problems(source)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        for target in targets_for(source, root):
            relative = target.notebook.relative_to(root).as_posix()
            print(f"{'writing' if args.no_execute else 'executing'} {relative}", flush=True)
            try:
                build(target, root, run=not args.no_execute)
            except (CellControlSignal, DeadKernelError) as error:
                print(f"{relative} failed (not written):\n{error}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
