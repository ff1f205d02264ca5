"""Figure of evidence recall per LoCoMo category (from ``memr1.eval.recall``)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def recall_bars(table: pd.DataFrame, k_per_speaker: int = 30) -> go.Figure:
    """Grouped bars per category of a ``category_table`` over the recall columns all / any / oracle."""
    labels = [f"{r.category} {r.locomo_name}<br>({r.memory_r1_name}, n={r.count})" for r in table.itertuples()]
    names = {"all": f"every evidence turn in top-{k_per_speaker}×2", "any": "some evidence turn retrieved",
             "oracle": "every evidence turn somewhere in the bank"}
    fig = go.Figure([go.Bar(name=names[c], x=labels, y=table[c], text=table[c].round(1), textposition="outside")
                     for c in ("all", "any", "oracle")])
    return fig.update_layout(barmode="group", yaxis_title="% of questions", yaxis_range=[0, 105], height=380,
                             title="Evidence recall of Answer-Agent retrieval on the observation-replay banks")
