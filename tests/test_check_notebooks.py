"""`python -m labsupport check`: runs notebooks headless and reports each one's first error."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labsupport.instructor import check as check_notebooks


def write_notebook(path: Path, *cells: str, raises: tuple[int, ...] = ()) -> Path:
    notebook = new_notebook(
        cells=[new_markdown_cell("# A tiny notebook")]
        + [
            new_code_cell(source, metadata={"tags": ["raises-exception"]} if i in raises else {})
            for i, source in enumerate(cells)
        ]
    )
    nbformat.write(notebook, path)
    return path


@pytest.mark.slow
def test_check_reports_passing_and_failing_notebooks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_notebook(
        tmp_path / "good.ipynb",
        "from pathlib import Path\nassert Path.cwd().name == 'notebooks'",  # runs from its folder
        "raise KeyError('meant to')",
        raises=(1,),
    )
    bad = write_notebook(tmp_path / "bad.ipynb", "x = 1", "1 / 0", "print('never runs')")
    (tmp_path / "notebooks").mkdir()
    good = good.rename(tmp_path / "notebooks" / "good.ipynb")

    status = check_notebooks.main([str(good), str(bad), "--jobs", "2", "--no-progress"])

    assert status == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(str(tmp_path))}
    assert rows[str(good)].split()[1:2] == ["2/2"] and " ok" in rows[str(good)]
    assert rows[str(bad)].split()[1] == "2/3"
    assert "FAILED  cell 2: ZeroDivisionError: division by zero" in rows[str(bad)]
    assert "1 of 2 notebooks passed." in out


@pytest.mark.slow
def test_check_passes_when_every_notebook_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notebooks" / "solutions").mkdir(parents=True)
    write_notebook(tmp_path / "notebooks" / "01_a.ipynb", "print('hello')")
    write_notebook(tmp_path / "notebooks" / "solutions" / "01_a.ipynb", "print('solved')")
    found = check_notebooks.find_notebooks(tmp_path / "notebooks", solutions=True)
    assert [path.relative_to(tmp_path).as_posix() for path in found] == [
        "notebooks/01_a.ipynb",
        "notebooks/solutions/01_a.ipynb",
    ]
    assert check_notebooks.main([*map(str, found), "--no-progress"]) == 0
    assert "2 of 2 notebooks passed." in capsys.readouterr().out


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        check_notebooks.main([str(tmp_path / "missing.ipynb")])
    with pytest.raises(ValueError, match="folder"):
        check_notebooks.find_notebooks(tmp_path / "nope")
