"""Dataset statistics as plain DataFrames (widgets turn them into figures).

>>> from memr1.data.locomo import load_locomo   # doctest: +SKIP
>>> conversation_table(load_locomo()).turns.sum()  # doctest: +SKIP
5882
"""

from __future__ import annotations

import pandas as pd

from memr1.data.locomo import Conversation, LoCoMo
from memr1.data.splits import CATEGORIES, PAPER_SPLIT, SPLITS, split_questions


def conversation_table(data: LoCoMo) -> pd.DataFrame:
    """One row per conversation: speakers, sessions, turns, tokens (whitespace), questions by kind."""
    held = {s: name for name, ids in PAPER_SPLIT.items() for s in ids}
    rows = []
    for c in data.conversations:
        turns = list(c.turns())
        rows.append(
            {
                "sample_id": c.sample_id,
                "split": held.get(c.sample_id, "test"),
                "speakers": " / ".join(c.speakers),
                "sessions": len(c.sessions),
                "turns": len(turns),
                "words": sum(len(t.text.split()) for t in turns),
                "images": sum(t.image_caption is not None for t in turns),
                "questions": sum(q.category != 5 for q in c.qa),
                "adversarial": sum(q.category == 5 for q in c.qa),
                "observations": len(c.observations),
            }
        )
    return pd.DataFrame(rows)


def split_category_table(data: LoCoMo) -> pd.DataFrame:
    """Question counts per paper split (rows) and category id (columns, both names in the header)."""
    rows = []
    for split in SPLITS:
        qs = split_questions(data, split)
        row = {"split": split, "total": len(qs)}
        for cid in (1, 2, 3, 4):
            cat = CATEGORIES[cid]
            row[f"{cid} {cat.locomo_name} ({cat.memory_r1_name})"] = sum(q.category == cid for q in qs)
        rows.append(row)
    return pd.DataFrame(rows)


def session_table(conv: Conversation) -> pd.DataFrame:
    """One row per session of a conversation: date-time, turns per speaker."""
    rows = []
    for s in conv.sessions:
        row = {"session": s.index, "date_time": s.date_time, "turns": len(s.turns)}
        for sp in conv.speakers:
            row[sp] = sum(t.speaker == sp for t in s.turns)
        rows.append(row)
    return pd.DataFrame(rows)


def evidence_distance_table(data: LoCoMo) -> pd.DataFrame:
    """How far back each question's evidence lies, seen from the end of its conversation.

    Columns: ``turns_back`` (turns between the earliest evidence turn and the last turn),
    ``sessions_back`` (same in sessions), ``span_turns`` (earliest to latest evidence turn),
    ``evidence`` (number of evidence turns). Questions without resolvable evidence are left out.
    """
    rows = []
    for c in data.conversations:
        last = c.num_turns() - 1
        last_session = c.sessions[-1].index
        for q in c.qa:
            if q.category == 5 or not q.evidence:
                continue
            turns = [c.turn(e) for e in q.evidence]
            first = min(turns, key=lambda t: t.position)
            rows.append(
                {
                    "qid": q.qid,
                    "category": q.category,
                    "category_name": f"{q.category} {CATEGORIES[q.category].locomo_name}",
                    "turns_back": last - first.position,
                    "sessions_back": last_session - first.session,
                    "span_turns": max(t.position for t in turns) - first.position,
                    "evidence": len(turns),
                }
            )
    return pd.DataFrame(rows)


def dataset_summary(data: LoCoMo) -> dict:
    """The numbers stage 01 records in metrics.json (all plain ints and strings)."""
    from memr1.data.fetch import sha256_of

    conv = conversation_table(data)
    splits = {
        row["split"]: {k: int(v) for k, v in row.items() if k != "split"}
        for row in split_category_table(data).to_dict("records")
    }
    return {
        "file": str(data.path),
        "sha256": sha256_of(data.path),
        "conversations": len(data.conversations),
        "sessions": int(conv.sessions.sum()),
        "turns": int(conv.turns.sum()),
        "questions": len(data.questions()),
        "questions_with_adversarial": len(data.questions(include_adversarial=True)),
        "splits": splits,
        "evidence_problems": data.evidence_report(),
    }
