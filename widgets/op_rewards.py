"""Per-operation view of Memory-Manager training: which operations the policy samples, how often its
output is rejected, and the reward each kind of output earns, step by step.

Draws the reward log of ``memr1.rl.rewards.ManagerReward`` (``read_op_log(log_dir)``: one row per sampled
completion with its op counts, validity, rejection kinds and reward) and the op mix that stage 04 computed
(``memr1.rl.rewards.op_mix``, kept in its result).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memr1.rl.rewards import OP_KINDS
from widgets.display import figure_fragment

MIX_COLUMNS = ["phase", *OP_KINDS, "rejected", "completions"]


def completion_kind(row: pd.Series) -> str:
    """One label per completion: rejected, or the dominant operation (ties: the first in OP_KINDS)."""
    if not row["valid"]:
        return "rejected"
    counts = {k: row[f"n_{k}"] for k in OP_KINDS}
    return max(OP_KINDS, key=lambda k: counts[k]) if any(counts.values()) else "empty"


def op_reward_figure(log: pd.DataFrame) -> go.Figure:
    """Top: mean reward per step for each kind of completion. Bottom: rejected share per step."""
    train = (log[log["from_trainer"]] if "from_trainer" in log else log).copy()
    train["kind"] = train.apply(completion_kind, axis=1)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.65, 0.35],
        subplot_titles=["mean reward by kind of completion", "rejected outputs (share)"],
    )
    for kind, part in train.groupby("kind"):
        per_step = part.groupby("step")["reward"].mean()
        fig.add_trace(go.Scatter(x=per_step.index, y=per_step.values, mode="lines+markers", name=kind), row=1, col=1)
    rejected = train.groupby("step")["valid"].apply(lambda v: 1 - v.mean())
    fig.add_trace(go.Bar(x=rejected.index, y=rejected.values, name="rejected", showlegend=False), row=2, col=1)
    return fig.update_layout(height=480, xaxis2_title="step")


class OpRewardView:
    """Figure plus the op-mix table (first vs last steps) of a manager run.

    Args:
        log: the op log (``ManagerTrainResult.op_log``).
        mix: its op mix (``ManagerTrainResult.op_mix``).
    """

    def __init__(self, log: pd.DataFrame, mix: Sequence[dict[str, Any]]):
        needed = {"step", "valid", "reward", *(f"n_{k}" for k in OP_KINDS)}
        if missing := needed - set(log.columns):
            raise ValueError(f"OpRewardView needs op-log columns {sorted(missing)}")
        self.log, self.mix = log, pd.DataFrame(list(mix), columns=MIX_COLUMNS)

    def table_html(self) -> str:
        return self.mix.to_html(index=False, border=0, float_format=lambda v: f"{v:.2f}")

    def static_html(self) -> str:
        return (
            figure_fragment(op_reward_figure(self.log))
            + "<h4>Operation mix, first vs last steps</h4>"
            + self.table_html()
        )

    def widget(self):
        import ipywidgets as w

        return w.VBox([go.FigureWidget(op_reward_figure(self.log)), w.HTML(self.table_html())])
