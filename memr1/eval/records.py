"""Per-question evaluation records: one row per answered question, scored with every metric.

The layout of ``records.parquet`` (written by ``memr1.stages.evaluate``): the question, gold and
predicted answers, the raw model output, the context the answer was given (retrieved memories, or
the dialogue turns of the baselines), token counts and latency, then the metric columns ``f1``,
``bleu1`` (the mem0 family), ``f1_locomo`` (LoCoMo's scorer) and ``em`` (docs/design.md §metrics).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from memr1.data.locomo import Conversation
from memr1.eval.metrics import bleu1_mem0, exact_match, f1_locomo, f1_mem0


def records_frame(records: list, conv: Conversation, system: str, model: str) -> pd.DataFrame:
    """Answer records of one conversation as scored rows (the layout of ``records.parquet``)."""
    return score_records(pd.DataFrame([record_row(r, conv, system, model) for r in records]))


def record_row(r: Any, conv: Conversation, system: str, model: str) -> dict[str, Any]:
    """One answer record (``AnswerRecord`` of the agents or baselines) as a row, before scoring."""
    g = r.generation
    if r.retrieved:
        context = [f"{x.speaker} · {x.entry.as_context()} ({x.score:.2f})" for x in r.retrieved]
    else:
        context = [f"{conv.session_time(conv.turn(d).session)}: {conv.turn(d).render()}" for d in r.sources]
    return {
        "qid": r.qid,
        "sample_id": conv.sample_id,
        "category": r.category,
        "question": r.question,
        "gold": r.gold,
        "prediction": r.answer,
        "raw_output": r.raw,
        "selected": list(r.selected),
        "retrieved": context,
        "context_note": r.context_note,
        "system": system,
        "model": model,
        "prompt_tokens": getattr(g, "prompt_tokens", None),
        "completion_tokens": getattr(g, "completion_tokens", None),
        "latency_s": getattr(g, "latency_s", None),
        "finish_reason": getattr(g, "finish_reason", None),
    }


def score_records(df: pd.DataFrame) -> pd.DataFrame:
    """Add the metric columns (per question, 0 to 1) to a frame of rows; returns the same frame."""
    df["f1"] = [f1_mem0(p, g) for p, g in zip(df.prediction, df.gold)]
    df["bleu1"] = [bleu1_mem0(p, g) for p, g in zip(df.prediction, df.gold)]
    df["f1_locomo"] = [f1_locomo(p, g, c) for p, g, c in zip(df.prediction, df.gold, df.category)]
    df["em"] = [exact_match(p, g) for p, g in zip(df.prediction, df.gold)]
    return df
