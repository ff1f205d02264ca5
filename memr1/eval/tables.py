"""Per-category result tables keyed by LoCoMo category id, with both names and counts.

"Overall" is the count-weighted mean of the category means (equal to the mean over all questions),
which is how Memory-R1's tables compute it.

>>> recs = [{"category": 1, "f1": 1.0}, {"category": 4, "f1": 0.0}, {"category": 4, "f1": 0.5}]
>>> category_table(recs, ["f1"], scale=1.0)[["category", "memory_r1_name", "count", "f1"]].to_dict("records")[-1]
{'category': 'overall', 'memory_r1_name': 'Overall', 'count': 3, 'f1': 0.5}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from memr1.data.splits import CATEGORIES
from memr1.errors import ConfigError


def category_table(
    records: Iterable[Mapping] | pd.DataFrame, metrics: Sequence[str], *, scale: float = 100.0
) -> pd.DataFrame:
    """One row per category id present (ascending) and a final ``overall`` row.

    Args:
        records: one mapping (or DataFrame row) per question with a ``category`` and each metric.
        metrics: metric columns to average (e.g. ``["f1", "bleu1", "judge"]``).
        scale: multiply means by this (100 prints percentages as the papers do).
    """
    df = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    missing = [m for m in ["category", *metrics] if m not in df.columns]
    if df.empty:
        raise ConfigError("category_table needs at least one record")
    if missing:
        raise ConfigError(f"records lack column(s) {missing}; have {sorted(df.columns)}")
    rows: list[dict[str, Any]] = []
    for cid, group in sorted(df.groupby("category"), key=lambda kv: kv[0]):
        cat = CATEGORIES.get(int(cid))
        rows.append(
            {
                "category": int(cid),
                "locomo_name": cat.locomo_name if cat else "?",
                "memory_r1_name": cat.memory_r1_name if cat else "?",
                "count": len(group),
                **{m: float(group[m].mean()) * scale for m in metrics},
            }
        )
    total = sum(r["count"] for r in rows)
    rows.append(
        {
            "category": "overall",
            "locomo_name": "overall",
            "memory_r1_name": "Overall",
            "count": total,
            **{m: sum(r[m] * r["count"] for r in rows) / total for m in metrics},
        }
    )
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub-flavoured markdown table (no extra dependency), floats formatted with ``floatfmt``.

    >>> print(to_markdown(pd.DataFrame({"a": [1], "b": [0.5]})))
    | a | b |
    |---|---|
    | 1 | 0.50 |
    """

    def cell(v) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
