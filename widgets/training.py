"""Training curves (reward, loss, KL, completion length, probe F1 / EM / format), live during a run.

``TrainingCurves.callback()`` is a transformers ``TrainerCallback`` that records every log line; in a live
kernel ``show_live()`` displays a plotly ``FigureWidget`` that it updates as lines arrive. Under papermill
nothing is live, so ``show_final()`` renders the finished curves as static HTML.

    curves = TrainingCurves()
    curves.show_live()
    result = run(cfg, callbacks=[curves.callback()])  # memr1.stages.train_answer.run
    curves.show_final()
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from widgets.display import figure_fragment, show, static_mode

PANELS = (
    (("reward",), "reward (mean over completions)"),
    (("loss",), "loss"),
    (("kl",), "KL to the reference"),
    (("completions/mean_length",), "completion length (tokens)"),
    (("eval/f1", "eval/em"), "probe (greedy validation): F1, EM"),
    (("eval/format",), "probe: share writing the answer line"),
)
"""Each panel: the log keys it draws (one line each) and its title; every panel has its own axes."""


class TrainingCurves:
    """Curves of a GRPO run, from a live callback or from a finished ``log_history``."""

    def __init__(self, history: Iterable[dict] = ()):
        self.history: list[dict] = [dict(h) for h in history if "step" in h]
        self._live: go.FigureWidget | None = None

    def callback(self):
        from transformers import TrainerCallback

        curves = self

        class _Record(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    curves.add({"step": state.global_step, **logs})

        return _Record()

    def add(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if self._live is not None:
            fresh = self.figure()
            with self._live.batch_update():
                for trace, new in zip(self._live.data, fresh.data):
                    trace.x, trace.y = new.x, new.y

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(h["step"], float(h[key])) for h in self.history if key in h and h[key] is not None]
        return [p[0] for p in points], [p[1] for p in points]

    def figure(self) -> go.Figure:
        rows = (len(PANELS) + 1) // 2
        fig = make_subplots(rows=rows, cols=2, subplot_titles=[t for _, t in PANELS])
        for i, (keys, _) in enumerate(PANELS):
            for key in keys:
                x, y = self.series(key)
                fig.add_trace(
                    go.Scatter(x=x, y=y, mode="lines+markers", name=key, showlegend=len(keys) > 1),
                    row=i // 2 + 1,
                    col=i % 2 + 1,
                )
        return fig.update_layout(height=260 * rows, title="RL training", legend={"orientation": "h"})

    def widget(self) -> go.FigureWidget:
        self._live = go.FigureWidget(self.figure())
        return self._live

    def static_html(self) -> str:
        return figure_fragment(self.figure())

    def show_live(self) -> None:
        """Display the live figure now (a live kernel only; papermill gets ``show_final``)."""
        if not static_mode():
            from IPython.display import display

            display(self.widget())

    def show_final(self) -> None:
        """Display the finished curves when nothing was live (papermill, static export)."""
        if static_mode():
            show(self)
