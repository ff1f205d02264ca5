"""Show a plotly figure or a memr1 widget live in Jupyter, or as static HTML under papermill.

papermill runs notebooks without a browser, so an ipywidget would save nothing a reader can see.
``memr1 run`` sets ``MEMR1_STATIC_WIDGETS=1`` for its kernels; then every view is rendered as
self-contained HTML (plotly.js is embedded once per kernel). Set it yourself when you call papermill
directly.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

_plotly_js_sent = False


@runtime_checkable
class StaticRenderable(Protocol):
    """A memr1 widget: a live ipywidget and a static HTML rendering of the same state."""

    def widget(self) -> Any: ...

    def static_html(self) -> str: ...


def static_mode() -> bool:
    """True when views should be rendered as static HTML (``MEMR1_STATIC_WIDGETS=1``)."""
    return os.environ.get("MEMR1_STATIC_WIDGETS", "") == "1"


def figure_html(fig: Any, *, include_plotlyjs: bool | str = True) -> str:
    """An HTML fragment for a plotly figure (embedding plotly.js unless told otherwise)."""
    return fig.to_html(
        full_html=False, include_plotlyjs=include_plotlyjs, config={"displaylogo": False, "responsive": True}
    )


def figure_fragment(fig: Any) -> str:
    """HTML for a figure inside a notebook output: plotly.js is embedded with the first one only."""
    global _plotly_js_sent
    html = figure_html(fig, include_plotlyjs=not _plotly_js_sent)
    _plotly_js_sent = True
    return html


def show(obj: Any, *, static: bool | None = None) -> None:
    """Display ``obj`` (a plotly figure or a StaticRenderable) live or as static HTML."""
    from IPython.display import HTML, display

    static = static_mode() if static is None else static
    if isinstance(obj, StaticRenderable):
        display(HTML(obj.static_html()) if static else obj.widget())
    elif hasattr(obj, "to_html") and hasattr(obj, "data"):  # a plotly figure
        display(HTML(figure_fragment(obj)) if static else obj)
    else:
        raise TypeError(f"show() takes a plotly figure or a memr1 widget, got {type(obj).__name__}")
