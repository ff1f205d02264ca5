"""The papers' two tables, laid out as they print them, with their published rows beside ours.

* **LoCoMo** (Memory-R1, Table 1): for each system, F1 / BLEU-1 / J (×100) per category column and
  overall. The columns carry Memory-R1's names, which follow Mem0's swapped labelling of LoCoMo's
  category ids (Single Hop = 1, Multi-Hop = 3, Open Domain = 4, Temporal = 2; with that mapping every
  published Overall is the count-weighted mean of its categories: docs/design.md §Categories; tested). One
  run gives each mean its 95% bootstrap interval over questions; several seeds give the mean ± std
  over seeds.
* **MEM1** (Table 1, multi-objective QA): for N = 2, 4, 8, 16 objectives, EM and F1 (summed over a
  task's objectives, 0 to N), peak tokens ×10² and seconds per task.

Published rows are numbers printed by the papers with their own (7-14B) models, labelled as such;
they are context, not comparisons: this workbench runs a 135M model.

>>> import pandas as pd
>>> recs = pd.DataFrame({"category": [1, 1, 4], "f1": [1.0, 0.0, 0.5], "bleu1": [1.0, 0.0, 0.5]})
>>> row = locomo_row("toy", [recs])
>>> row["Single Hop"]["f1"], row["Overall"]["f1"], row["questions"]
('50.0 [0.0, 100.0]', '50.0 [0.0, 100.0]', 3)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from memr1.errors import ConfigError
from memr1.eval.bootstrap import bootstrap_ci

LOCOMO_COLUMNS: dict[str, int | None] = {
    "Single Hop": 1,
    "Multi-Hop": 3,
    "Open Domain": 4,
    "Temporal": 2,
    "Overall": None,
}
"""Memory-R1's column → LoCoMo category id (None: every question)."""
LOCOMO_METRICS = ("f1", "bleu1", "j")
TEST_QUESTIONS = 1307
"""Questions of the test split without category 5 (the 8 test conversations)."""

PUBLISHED_LOCOMO: dict[tuple[str, str], tuple[tuple[float, float, float], ...]] = {
    # (backbone, method): F1 / B1 / J for Single Hop, Multi-Hop, Open Domain, Temporal, Overall (Table 1, v5)
    ("LLaMA-3.1-8B-Instruct", "LoCoMo (RAG)"): (
        (12.25, 9.77, 13.81), (13.69, 10.96, 20.48), (11.59, 8.30, 15.96), (9.38, 8.15, 4.65), (11.41, 8.71, 13.62)),
    ("LLaMA-3.1-8B-Instruct", "Mem0"): (
        (27.29, 18.63, 43.93), (18.59, 13.86, 37.35), (34.03, 24.77, 52.27), (26.90, 21.06, 31.40),
        (30.41, 22.22, 45.68)),
    ("LLaMA-3.1-8B-Instruct", "Memory-SFT"): (
        (34.64, 23.73, 56.90), (20.80, 16.26, 37.35), (46.47, 37.35, 63.27), (47.18, 34.58, 54.65),
        (42.81, 32.98, 58.76)),
    ("LLaMA-3.1-8B-Instruct", "Memory-R1-PPO"): (
        (32.52, 24.47, 53.56), (26.86, 23.47, 42.17), (45.30, 39.18, 64.10), (41.57, 26.11, 47.67),
        (41.05, 32.91, 57.54)),
    ("LLaMA-3.1-8B-Instruct", "Memory-R1-GRPO"): (
        (35.73, 27.70, 59.83), (35.65, 30.77, 53.01), (47.42, 41.24, 68.78), (49.86, 38.27, 51.55),
        (45.02, 37.51, 62.74)),
    ("Qwen-2.5-7B-Instruct", "LoCoMo (RAG)"): (
        (9.57, 7.00, 15.06), (11.84, 10.02, 19.28), (8.67, 6.52, 12.79), (8.35, 8.74, 5.43), (8.97, 7.27, 12.17)),
    ("Qwen-2.5-7B-Instruct", "Mem0"): (  # Overall J printed as 53.30; its categories give 58.30
        (24.96, 18.05, 61.92), (20.31, 15.82, 48.19), (32.74, 25.27, 65.20), (33.16, 26.28, 38.76),
        (30.61, 23.55, 53.30)),
    ("Qwen-2.5-7B-Instruct", "Memory-SFT"): (
        (27.81, 20.25, 57.74), (24.62, 22.28, 46.99), (43.33, 34.06, 66.85), (44.41, 34.32, 52.71),
        (39.51, 30.84, 61.13)),
    ("Qwen-2.5-7B-Instruct", "Memory-R1-PPO"): (
        (34.22, 23.61, 57.74), (32.87, 29.48, 53.01), (44.78, 38.72, 66.99), (42.88, 30.30, 42.25),
        (41.72, 33.70, 59.53)),
    ("Qwen-2.5-7B-Instruct", "Memory-R1-GRPO"): (
        (33.64, 26.06, 62.34), (23.55, 20.71, 40.96), (46.86, 40.92, 67.81), (47.75, 38.49, 49.61),
        (43.14, 36.44, 61.51)),
}  # fmt: skip
"""Memory-R1 (arXiv 2508.19828, v5) Table 1, LoCoMo test, 1,307 questions, as printed."""

MEM1_NS = (2, 4, 8, 16)
PUBLISHED_MEM1: dict[str, dict[int, dict[str, float]]] = {
    "MEM1-QA (7B)": {
        2: {"em": 0.709, "f1": 0.838, "peak": 6.40, "s": 6.49},
        4: {"em": 1.120},  # from the paper's RL-vs-SFT table; its main table has no 4-objective column
        8: {"em": 1.87, "f1": 2.31, "peak": 8.01, "s": 8.68},
        16: {"em": 1.97, "f1": 2.39, "peak": 10.4, "s": 8.70},
    },
    "Qwen2.5-14B-Instruct (full context)": {
        2: {"em": 0.732, "f1": 0.902, "peak": 15.6, "s": 5.49},
        8: {"em": 1.55, "f1": 1.87, "peak": 44.7, "s": 16.2},
        16: {"em": 0.567, "f1": 0.703, "peak": 38.4, "s": 29.7},
    },
}
"""MEM1 (arXiv 2506.15841) Table 1: EM and F1 summed over objectives, peak ×10² tokens (prompt excluded, MEM1's
counting), seconds per task, as printed in its Table 1 (4 objectives: its RL-vs-SFT table)."""


def _cell(values: Sequence[float], per_seed: Sequence[float] | None = None, digits: int = 1) -> str:
    """``mean [lo, hi]`` (one run, 95% bootstrap over questions) or ``mean ± std`` over seeds."""
    if per_seed is not None and len(per_seed) > 1:
        return f"{statistics.mean(per_seed):.{digits}f} ± {statistics.stdev(per_seed):.{digits}f}"
    lo, hi = bootstrap_ci(values)
    return f"{statistics.mean(values):.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def locomo_row(system: str, runs: Sequence[pd.DataFrame], model: str = "") -> dict[str, Any]:
    """One system's row: per column and metric a formatted cell; the metrics a run lacks (J unjudged) are "–".
    J is the share CORRECT of the answers the judge labelled (``j`` NaN: no readable verdict).

    ``runs``: one records frame per seed (columns ``category``, ``f1``, ``bleu1``, optionally ``j``; scores
    in [0, 1]), all over the same questions.
    """
    if not runs:
        raise ConfigError(f"{system}: no runs to tabulate")
    sizes = {len(r) for r in runs}
    if len(sizes) != 1:
        raise ConfigError(f"{system}: its seeds answered different numbers of questions ({sorted(sizes)})")
    row: dict[str, Any] = {"system": system, "model": model, "seeds": len(runs), "questions": sizes.pop()}
    for column, cat in LOCOMO_COLUMNS.items():
        parts = [r if cat is None else r[r["category"] == cat] for r in runs]
        cells = {}
        for m in LOCOMO_METRICS:
            # J averages the answers the judge labelled (an unreadable verdict is NaN, never WRONG)
            if any(m not in p for p in parts):
                cells[m] = "–"
                continue
            kept = [p[m].dropna() if m == "j" else p[m] for p in parts]
            if any(k.empty or k.isna().any() for k in kept):
                cells[m] = "–"
                continue
            pooled = [100 * float(v) for v in kept[0]]
            cells[m] = _cell(pooled, [100 * float(k.mean()) for k in kept])
        row[column] = cells
    return row


def evidence_in_window(
    records: pd.DataFrame, evidence: Mapping[str, Sequence[str]], turn_ids: Mapping[str, Sequence[str]]
) -> pd.Series:
    """Per record of a full-context run, whether the transcript it read held every evidence turn of its question.

    The run read the newest K turns of its conversation, K from the record's ``context_note`` (``kept K/M
    turns ...``, `memr1.agents.baselines.kept_turns`). ``evidence``: qid → the question's evidence dia_ids;
    ``turn_ids``: sample_id → its conversation's dia_ids in order. A question without evidence counts as
    outside; a record whose note gives no K raises ConfigError.
    """
    from memr1.agents.baselines import kept_turns

    inside = []
    for qid, sample, note in zip(records["qid"], records["sample_id"], records["context_note"]):
        kept = kept_turns(note)
        if kept is None:
            raise ConfigError(f"record {qid}: context_note {note!r} does not say how many turns were kept")
        window = set(turn_ids[sample][-kept:]) if kept else set()
        wanted = evidence.get(qid, ())
        inside.append(bool(wanted) and all(e in window for e in wanted))
    return pd.Series(inside, index=records.index, name="evidence_in_window")


Grid = tuple[list[str], list[list[str]]]
"""A table as ``(header, rows of cells)``: what the markdown files and the HTML report both print."""


def locomo_grid(rows: Sequence[Mapping[str, Any]]) -> Grid:
    """Our rows, then the published ones, in Memory-R1's Table 1 layout (F1 / BLEU-1 / J per column)."""
    cols = list(LOCOMO_COLUMNS)
    head = ["system", "model", "questions", "seeds", *(f"{c} F1 / B1 / J" for c in cols)]
    body = [
        [r["system"], r["model"], str(r["questions"]), str(r["seeds"]),
         *(" / ".join(r[c][m] for m in LOCOMO_METRICS) for c in cols)]
        for r in rows
    ]  # fmt: skip
    for (backbone, method), values in PUBLISHED_LOCOMO.items():
        cells = [" / ".join(f"{v:.2f}" for v in triple) for triple in values]
        body.append([f"{method} (published)", backbone, str(TEST_QUESTIONS), "–", *cells])
    return head, body


def markdown(grid: Grid) -> str:
    """A ``Grid`` as a GitHub-flavoured markdown table."""
    head, body = grid
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def locomo_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    return markdown(locomo_grid(rows))


def mem1_rows(cells: Sequence[Mapping[str, Any]]) -> list[dict[Any, Any]]:
    """Rows of MEM1's layout: one per (policy, mode), and per N the mean (± std over seeds) of EM, F1, peak ×10²
    (MEM1's counting, over all tasks) and seconds per task.

    ``cells``: ``experiments/mem1_horizon.py`` cells (``trained``, ``mode``, ``n``, one per seed) or the rows of
    ``memr1.eval.mem1_metrics.aggregate`` (``policy``, ``mode``, ``n_objectives``; stage 06's table)."""
    groups: dict[tuple[str, str], dict[int, list[Mapping[str, Any]]]] = {}
    for c in cells:
        policy = ("RL at N = 2" if c["trained"] else "untrained") if "trained" in c else str(c["policy"])
        n = int(c["n"] if "n" in c else c["n_objectives"])
        groups.setdefault((policy, c["mode"]), {}).setdefault(n, []).append(c)
    out = []
    for (policy, mode), by_n in sorted(groups.items(), key=lambda kv: (kv[0][0] != "untrained", kv[0])):
        context = "MEM1 pruning" if mode == "mem1" else "full context"
        row: dict[Any, Any] = {"system": f"{policy}, {context}", "seeds": max(len(v) for v in by_n.values())}
        for n in MEM1_NS:
            got = by_n.get(n, [])
            row[n] = {
                "em": _spread([c["em"] for c in got], 2),
                "f1": _spread([c["f1"] for c in got], 2),
                "peak": _spread([c["peak_mem1_all_tasks"] / 100 for c in got], 1),
                "s": _spread([c["wall_s"] for c in got], 1),
            }
        out.append(row)
    return out


def _spread(values: Sequence[float], digits: int) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def mem1_grid(rows: Sequence[Mapping[Any, Any]], model: str) -> Grid:
    """Our rows, then the published ones, as MEM1's Table 1: per N, EM / F1 / peak ×10² / s."""
    head = ["system", "model", "seeds", *(f"N = {n}: EM / F1 / peak / s" for n in MEM1_NS)]
    keys = ("em", "f1", "peak", "s")
    body = [[r["system"], model, str(r["seeds"]), *(" / ".join(r[n][k] for k in keys) for n in MEM1_NS)] for r in rows]
    for name, by_n in PUBLISHED_MEM1.items():
        cells = [" / ".join(_num(by_n.get(n, {}).get(k)) for k in keys) for n in MEM1_NS]
        body.append([f"{name} (published)", name.split(" ")[0], "–", *cells])
    return head, body


def mem1_markdown(rows: Sequence[Mapping[Any, Any]], model: str) -> str:
    return markdown(mem1_grid(rows, model))


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:g}"


__all__ = [
    "LOCOMO_COLUMNS",
    "MEM1_NS",
    "PUBLISHED_LOCOMO",
    "PUBLISHED_MEM1",
    "TEST_QUESTIONS",
    "locomo_grid",
    "locomo_markdown",
    "locomo_row",
    "markdown",
    "mem1_grid",
    "mem1_markdown",
    "mem1_rows",
]
