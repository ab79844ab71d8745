"""The coaching widgets in a real browser: type a prediction, read the comparison; move the
explorer's slider, see its timeline redrawn.

Uses test_browser.py's JupyterLab and Chromium (same rules: Debian's Chromium, loopback only, a
missing browser fails unless LAB_SKIP_BROWSER=1). The widgets need JupyterLab's widget manager
(jupyterlab-widgets, locked with ipywidgets): without it a widget renders as text, and these
tests fail. The test drives the page as a learner does (typing, clicking, pressing keys) and
reads the result from the page.

Each test runs only the cells up to what it looks at (a measurement, the explorer), not the
whole notebook: test_browser.py runs every cell already.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import pytest
from test_browser import (
    _PANEL_READY,
    _SHUTDOWN,
    NOTEBOOK_SECONDS,
    NOTEBOOK_SECONDS_FOR,
    browser,
    jupyterlab,
)

__all__ = ["browser", "jupyterlab"]  # the fixtures, imported to be found by pytest

LESSON = "01_async_client.ipynb"
_RUN_CELL = """async (index) => {
    const panel = window.jupyterapp.shell.currentWidget;
    panel.content.activeCellIndex = index;
    return await window.jupyterapp.commands.execute('notebook:run-cell');
}"""
_CELL_TEXT = """(index) => {
    const cell = window.jupyterapp.shell.currentWidget.content.model.cells.get(index);
    return cell.outputs.toJSON()
        .map((output) => output.text || (output.data && output.data['text/plain']) || '')
        .map((text) => Array.isArray(text) ? text.join('') : text)
        .join('');
}"""
_CODE_CELLS = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const result = [];
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        result.push({index: i, type: cell.type, source: cell.sharedModel.getSource()});
    }
    return result;
}"""
# Runs cells `first` … `last` one at a time, each to its end; the index of a failed cell, or -1.
_RUN_CELLS = """async ([first, last]) => {
    const panel = window.jupyterapp.shell.currentWidget;
    for (let index = first; index <= last; index++) {
        panel.content.activeCellIndex = index;
        if (!(await window.jupyterapp.commands.execute('notebook:run-cell'))) return index;
    }
    return -1;
}"""
_EXPLORER_IMAGE = """() => {
    const img = document.querySelector('.lab-explorer img');
    return img && img.complete && img.naturalWidth > 0 ? img.src : null;
}"""
_EXPLORER_CAPTION = """() => document.querySelector('.lab-explorer-caption')?.textContent || ''"""


def _open(page: Any, base: str, token: str, notebook: str, seconds: int) -> None:
    page.set_default_timeout(seconds * 1000)
    page.goto(f"{base}/lab/tree/{notebook}?reset&token={token}")
    page.wait_for_function(_PANEL_READY, polling=200)


def _run_cells(page: Any, first: int, last: int) -> None:
    failed = page.evaluate(_RUN_CELLS, [first, last])
    assert failed == -1, f"cell {failed} failed"
    page.wait_for_function(_PANEL_READY, polling=200)


def _first_cell(page: Any, needle: str) -> int:
    cells = page.evaluate(_CODE_CELLS)
    matches = [
        cell["index"] for cell in cells if cell["type"] == "code" and needle in cell["source"]
    ]
    assert matches, f"no code cell contains {needle!r}"
    return int(matches[0])


@pytest.mark.timeout(NOTEBOOK_SECONDS + 60)
def test_a_typed_prediction_is_compared_with_the_measurement(jupyterlab: str, browser: Any) -> None:
    base, token = jupyterlab.split("|")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open(page, base, token, LESSON, NOTEBOOK_SECONDS)
        measurement = _first_cell(page, ".compare(")
        _run_cells(page, 0, measurement)
        assert "No prediction entered" in page.evaluate(_CELL_TEXT, measurement)

        box = page.locator(".lab-prediction input").first
        box.scroll_into_view_if_needed()
        box.fill("0.1")
        page.wait_for_function(
            "() => document.querySelector('.lab-prediction').textContent.includes('0.10 s')"
        )
        page.evaluate(_RUN_CELL, measurement)
        page.wait_for_function(_PANEL_READY, polling=200)
        compared = page.evaluate(_CELL_TEXT, measurement)
        assert "You predicted 0.10 s; it took" in compared, compared
        assert "Investigate:" in compared

        box.fill("soon")
        page.wait_for_function(
            "() => document.querySelector('.lab-prediction').textContent.includes('not a number')"
        )
        page.evaluate(_RUN_CELL, measurement)
        page.wait_for_function(_PANEL_READY, polling=200)
        compared = page.evaluate(_CELL_TEXT, measurement)
        assert "Your prediction cannot be compared: 'soon' is not a number" in compared, compared
        page.evaluate(_SHUTDOWN)
    finally:
        page.close()


@pytest.mark.timeout(NOTEBOOK_SECONDS + 60)
def test_moving_the_explorer_slider_redraws_the_timeline(jupyterlab: str, browser: Any) -> None:
    base, token = jupyterlab.split("|")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open(page, base, token, LESSON, NOTEBOOK_SECONDS)
        _run_cells(page, 0, _first_cell(page, "explore("))
        page.locator(".lab-explorer").first.scroll_into_view_if_needed()
        page.wait_for_function(_EXPLORER_IMAGE)
        before_image = page.evaluate(_EXPLORER_IMAGE)
        before_caption = page.evaluate(_EXPLORER_CAPTION)
        requests_before = int(before_caption.split(" requests")[0].split()[-1])
        expected = f"{requests_before - 3} requests"

        handle = page.locator(".lab-explorer .noUi-handle").first  # the "requests" slider
        handle.focus()
        for _ in range(3):
            handle.press("ArrowLeft")
        page.wait_for_function(f"() => ({_EXPLORER_CAPTION})().startsWith({json.dumps(expected)})")
        page.wait_for_function(f"() => ({_EXPLORER_IMAGE})() !== {json.dumps(before_image)}")

        page.get_by_role("button", name="AsyncOpenAI").first.click()
        page.wait_for_function(f"() => ({_EXPLORER_CAPTION})().includes('AsyncOpenAI')")
        page.wait_for_function(f"() => ({_EXPLORER_CAPTION})().includes('overlapping')")
        page.evaluate(_SHUTDOWN)
    finally:
        page.close()


class Lesson(NamedTuple):
    """A lesson's first prediction: the variable holding it, what to type, and the start of the
    comparison the measurement cell must then print."""

    notebook: str
    guess: str
    typed: str
    compared: str


LESSONS = [
    Lesson("02_gather", "one_by_one_guess", "0.1", "You predicted 0.10 s; it took"),
    Lesson("04_background_tasks", "background_guess", "2", "You predicted 2.00 s; it took"),
    Lesson(
        "05_lifespan",
        "per_request_guess",
        "1",
        "You predicted 1; there were 10 connections, 9 more than you predicted:",
    ),
    Lesson(
        "07_beyond_one_process",
        "per_worker_guess",
        "5",
        "You predicted 5; there were 20 calls in flight at once, 15 more than you predicted:",
    ),
]


@pytest.mark.timeout(max(NOTEBOOK_SECONDS, *NOTEBOOK_SECONDS_FOR.values()) + 60)
@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.notebook)
def test_each_lessons_prediction_box_is_compared(
    lesson: Lesson, jupyterlab: str, browser: Any
) -> None:
    """Run up to the prediction box, type a guess, run on to the measurement, read it."""
    base, token = jupyterlab.split("|")
    seconds = NOTEBOOK_SECONDS_FOR.get(lesson.notebook, NOTEBOOK_SECONDS)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open(page, base, token, f"{lesson.notebook}.ipynb", seconds)
        asked = _first_cell(page, f"{lesson.guess} = predict(")
        measurement = _first_cell(page, f"{lesson.guess}.compare(")
        _run_cells(page, 0, asked)

        box = page.locator(f".jp-Cell:nth-child({asked + 1}) .lab-prediction input")
        box.scroll_into_view_if_needed()
        box.fill(lesson.typed)
        box.press("Tab")  # the learner moves on; the box has sent its value to the kernel
        feedback = page.locator(f".jp-Cell:nth-child({asked + 1}) .lab-prediction")
        feedback.filter(has_text="✓ your prediction").wait_for()

        _run_cells(page, asked + 1, measurement)
        compared = page.evaluate(_CELL_TEXT, measurement)
        assert lesson.compared in compared, compared
        assert "Investigate:" in compared
        page.evaluate(_SHUTDOWN)
    finally:
        page.close()
