"""Showing a widget in a notebook with a plain-text form that never changes between runs.

A widget's output in a notebook is a reference to a live model (its id is random, and nbval
skips it) plus a ``text/plain`` form, which nbval compares. ipywidgets makes that form from the
widget's traits, so it would change with every value; here it is one fixed sentence instead, and
a static picture can ride along for viewers without a kernel (a PNG beside the widget: JupyterLab
renders the widget, a static page renders the picture).
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the prediction boxes draw no figure: they load in a browser tab (Pyodide),
    # where matplotlib is not installed
    from matplotlib.figure import Figure


def widget_bundle(
    widget: Any, text: str, figure: Figure | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The MIME bundle (data, metadata) that shows `widget`, with `text` as its plain-text form
    and, given a `figure`, that figure as a PNG for static viewers, with `text` as its alt."""
    data: dict[str, Any] = dict(widget._repr_mimebundle_() or {})
    data["text/plain"] = text
    metadata: dict[str, Any] = {}
    if figure is not None:
        data["image/png"] = base64.b64encode(png_bytes(figure)).decode("ascii")
        metadata["image/png"] = {"alt": text}
    return data, metadata


def png_bytes(figure: Figure) -> bytes:
    """`figure` as PNG bytes, cropped as the inline backend crops it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
