"""MEM1 context views: tokens per turn (pruned vs full context) and peak tokens against N.

``context_figure`` draws one line per episode: x = turn, y = context tokens the model saw at that
turn; hovering a point shows the internal state written at that turn, the query and the retrieved
ids. Under MEM1 pruning the line stays nearly flat; with the full context it climbs every turn
(MEM1, Zhou, Qu et al., arXiv 2506.15841, Fig. 4). Both are plain plotly figures, so
``widgets.display.show`` renders them live or as static HTML under papermill.

    show(context_figure([mem1_episode, full_episode]))
    show(peak_figure(aggregate(episodes)))
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from memr1.agents.mem1 import Episode

MODE_COLOURS = {"mem1": "#1f77b4", "full": "#d62728", "truncate": "#ff7f0e"}
POLICY_DASHES = ("solid", "dash", "dot", "dashdot")


def _hover_text(text: str, width: int = 70, limit: int = 600) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, width)) or "(empty)"


def context_figure(
    episodes: Sequence[Episode], *, labels: Sequence[str] | None = None, title: str = "Context tokens per turn"
) -> go.Figure:
    """One line per episode (label: mode, policy and task unless given); the state is on hover."""
    fig = go.Figure()
    for i, ep in enumerate(episodes):
        label = labels[i] if labels else f"{ep.mode} · {ep.policy} · {ep.task_id}"
        custom = [
            [
                _hover_text(t.state),
                html.escape(t.query or ("answer: " + " ; ".join(t.answers or ()))),
                html.escape(", ".join(t.retrieved_ids) or "-"),
                t.generated_tokens,
            ]
            for t in ep.turns
        ]
        fig.add_trace(
            go.Scatter(
                x=[t.turn for t in ep.turns],
                y=[t.context_tokens for t in ep.turns],
                mode="lines+markers",
                name=label,
                customdata=custom,
                line={"color": MODE_COLOURS.get(ep.mode)},
                hovertemplate=(
                    "turn %{x}: %{y} context tokens, %{customdata[3]} generated<br>"
                    "<b>internal state</b><br>%{customdata[0]}<br><b>action</b> %{customdata[1]}"
                    "<br><b>retrieved</b> %{customdata[2]}<extra>%{fullData.name}</extra>"
                ),
            )
        )
    unit = episodes[0].tokenizer if episodes else "tokens"
    return fig.update_layout(
        title=title,
        xaxis_title="turn",
        yaxis_title=f"context tokens ({unit})",
        height=420,
        hovermode="closest",
        legend={"orientation": "h", "y": -0.2},
    )


def peak_figure(
    table: pd.DataFrame,
    column: str = "peak_tokens",
    *,
    title: str = "Peak context tokens against the number of objectives",
    error: str | None = None,
) -> go.Figure:
    """Lines of ``column`` (mean over tasks) against N, one per (policy, mode) of an ``aggregate`` table.

    ``error`` names a column of error-bar half-widths (e.g. the std over seeds). Colour shows the mode,
    the line style the policy (``POLICY_DASHES``, in order of first appearance)."""
    fig = go.Figure()
    policies = list(dict.fromkeys(table["policy"]))
    for (policy, mode), rows in table.groupby(["policy", "mode"], sort=False):
        rows = rows.sort_values("n_objectives")
        fig.add_trace(
            go.Scatter(
                x=rows["n_objectives"],
                y=rows[column],
                error_y=None if error is None else {"type": "data", "array": rows[error].fillna(0)},
                mode="lines+markers",
                name=f"{mode} · {policy}",
                line={
                    "color": MODE_COLOURS.get(mode),
                    "dash": POLICY_DASHES[policies.index(policy) % len(POLICY_DASHES)],
                },
            )
        )
    tokenizer = table["tokenizer"].iloc[0] if "tokenizer" in table and len(table) else "tokens"
    return fig.update_layout(
        title=title, xaxis_title="objectives N", yaxis_title=f"{column} ({tokenizer})", xaxis_type="log", height=380
    )
