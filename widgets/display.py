"""Show a plotly figure or a memr1 widget live in Jupyter, or as static HTML under papermill.

papermill runs notebooks without a browser, so an ipywidget would save nothing a reader can see.
``memr1 run`` sets ``MEMR1_STATIC_WIDGETS=1`` for its kernels; then every view is rendered as static
HTML. Set it yourself when you call papermill directly.

plotly.js (about 4.6 MB) is written once per run folder: ``memr1 run`` also sets ``MEMR1_PLOTLYJS_DIR``
to the folder of the executed notebooks, the first figure writes ``plotly.min.js`` there, and every
figure loads it by a relative ``<script src>``, so an executed notebook holds its figures' data only
(kilobytes) and its nbconvert HTML export, saved beside it, draws them. A plain figure also carries
plotly's own mimetype, which JupyterLab draws without any script. Without ``MEMR1_PLOTLYJS_DIR`` the
first figure of a kernel embeds plotly.js, as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

_plotly_js_sent = False
PLOTLY_JS = "plotly.min.js"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


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
    """HTML for a figure inside a notebook output: plotly.js from the run folder's shared file when
    ``MEMR1_PLOTLYJS_DIR`` is set, else embedded with the kernel's first figure only."""
    global _plotly_js_sent
    folder = os.environ.get("MEMR1_PLOTLYJS_DIR", "")
    if folder:
        shared_plotly_js(Path(folder))
        return figure_html(fig, include_plotlyjs="directory")  # <script src="plotly.min.js">
    html = figure_html(fig, include_plotlyjs=not _plotly_js_sent)
    _plotly_js_sent = True
    return html


_plotly_js_checked: set[Path] = set()


def shared_plotly_js(folder: Path) -> Path:
    """``folder/plotly.min.js``, written (atomically) from the installed plotly when missing or another version;
    checked once per folder and kernel, not per figure."""
    path = folder / PLOTLY_JS
    if folder in _plotly_js_checked:
        return path
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    _plotly_js_checked.add(folder)
    if not path.is_file() or path.stat().st_size != len(js.encode()):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(js, encoding="utf-8")
        tmp.replace(path)
    return path


def show(obj: Any, *, static: bool | None = None) -> None:
    """Display ``obj`` (a plotly figure or a StaticRenderable) live or as static HTML."""
    from IPython.display import HTML, display

    static = static_mode() if static is None else static
    if isinstance(obj, StaticRenderable):
        display(HTML(obj.static_html()) if static else obj.widget())
    elif hasattr(obj, "to_html") and hasattr(obj, "data"):  # a plotly figure
        if static:
            bundle = {PLOTLY_MIME: json.loads(obj.to_json()), "text/html": figure_fragment(obj)}
            display(bundle, raw=True)
        else:
            display(obj)
    else:
        raise TypeError(f"show() takes a plotly figure or a memr1 widget, got {type(obj).__name__}")
