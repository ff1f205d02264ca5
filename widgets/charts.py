"""Plotly bar charts of per-category tables (``memr1.eval.tables.category_table`` output)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go


def category_bars(
    table: pd.DataFrame,
    columns: Sequence[str],
    *,
    names: Mapping[str, str] | None = None,
    title: str = "",
    yaxis: str = "score (%)",
) -> go.Figure:
    """Grouped bars: one group per category row (both names and the count), one bar per column."""
    names = names or {}
    labels = [f"{r.category} {r.locomo_name}<br>({r.memory_r1_name}, n={r.count})" for r in table.itertuples()]
    fig = go.Figure(
        [
            go.Bar(name=names.get(c, c), x=labels, y=table[c], text=table[c].round(1), textposition="outside")
            for c in columns
        ]
    )
    return fig.update_layout(barmode="group", yaxis_title=yaxis, yaxis_range=[0, 105], height=380, title=title)


def recall_bars(table: pd.DataFrame, k_per_speaker: int = 30) -> go.Figure:
    """Evidence recall per category (columns all / any / oracle of ``memr1.eval.recall``)."""
    names = {
        "all": f"every evidence turn in top-{k_per_speaker}×2",
        "any": "some evidence turn retrieved",
        "oracle": "every evidence turn somewhere in the bank",
    }
    return category_bars(
        table,
        ["all", "any", "oracle"],
        names=names,
        yaxis="% of questions",
        title="Evidence recall of Answer-Agent retrieval on the observation-replay banks",
    )
