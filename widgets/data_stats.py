"""Plotly figures of LoCoMo statistics (the tables come from ``memr1.data.stats``)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from memr1.data.locomo import LoCoMo
from memr1.data.splits import CATEGORIES
from memr1.data.stats import evidence_distance_table, session_table


def turns_per_session(data: LoCoMo, sample_id: str) -> go.Figure:
    """Stacked bars: turns per session of one conversation, by speaker, dated on hover."""
    conv = data.conversation(sample_id)
    df = session_table(conv).melt(
        id_vars=["session", "date_time", "turns"],
        value_vars=list(conv.speakers),
        var_name="speaker",
        value_name="speaker_turns",
    )
    fig = px.bar(
        df,
        x="session",
        y="speaker_turns",
        color="speaker",
        hover_data=["date_time", "turns"],
        title=f"{sample_id}: turns per session ({conv.num_turns()} turns, {len(conv.sessions)} sessions)",
    )
    return fig.update_layout(barmode="stack", yaxis_title="turns", height=360)


def qa_per_category(data: LoCoMo) -> go.Figure:
    """Grouped bars: questions per category id in every conversation (adversarial included, hatched)."""
    rows = [
        {
            "sample_id": q.sample_id,
            "category": f"{q.category} {CATEGORIES[q.category].locomo_name} ({CATEGORIES[q.category].memory_r1_name})",
        }
        for q in data.questions(include_adversarial=True)
    ]
    df = pd.DataFrame(rows).value_counts().rename("questions").reset_index()
    fig = px.bar(
        df,
        x="sample_id",
        y="questions",
        color="category",
        title="Questions per category id (LoCoMo name, Memory-R1 name)",
        category_orders={"category": sorted(df.category.unique())},
    )
    return fig.update_layout(barmode="stack", height=380)


def evidence_distance(data: LoCoMo) -> go.Figure:
    """Histogram: sessions between a question's earliest evidence and the conversation's end."""
    df = evidence_distance_table(data).sort_values("category")
    fig = px.histogram(
        df,
        x="sessions_back",
        color="category_name",
        nbins=35,
        barmode="stack",
        hover_data=["turns_back"],
        title="How far back the evidence lies (sessions before the last one)",
    )
    return fig.update_layout(xaxis_title="sessions back", yaxis_title="questions", height=360)
