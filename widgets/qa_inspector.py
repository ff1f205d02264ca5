"""QA inspector: pick a question, see the memories it retrieved, the ones the Answer Agent selected,
its answer against the gold one, and the scores (with the judge's reason when there is a judge).

Works on the per-question records of ``memr1.stages.evaluate`` (a DataFrame, e.g. read back from
``records.parquet``). Live: a dropdown over questions. Static (papermill): one collapsible block per
question, worst F1 first, capped at ``max_static`` questions.
"""

from __future__ import annotations

import html
import re

import pandas as pd

from memr1.data.splits import CATEGORIES

_CSS = """<style>
.m1-qa{font-family:system-ui,sans-serif;font-size:13px}.m1-qa details{border-bottom:1px solid #ddd;padding:4px 0}
.m1-qa .sel{background:#e3f4e6}.m1-qa ol{margin:4px 0;padding-left:28px}
.m1-qa pre{white-space:pre-wrap;background:#f6f6f6;padding:6px}
.m1-qa .ok{color:#1a7f37}.m1-qa .bad{color:#b42318}
</style>"""


def _e(text: object) -> str:
    return html.escape("" if text is None else str(text))


def _is_selected(memory: str, selected: list[str]) -> bool:
    """Whether a retrieved line ("speaker · time: text (score)") is among the selected lines."""
    body = re.sub(r"\s*\(-?\d+\.\d+\)$", "", memory.split(": ", 1)[-1]).strip().lower()
    return any(body and body in s.lower() for s in selected)


def question_html(rec: pd.Series) -> str:
    """Everything about one question as an HTML fragment."""
    selected = list(rec.get("selected", []) or [])
    retrieved = list(rec.get("retrieved", []) or [])
    cat = CATEGORIES.get(int(rec["category"]))
    scores = " · ".join(
        f"{k} {rec[k]:.2f}" for k in ("f1", "bleu1", "f1_locomo", "em") if k in rec and pd.notna(rec[k])
    )
    judge = ""
    if "judge_label" in rec and isinstance(rec["judge_label"], str) and rec["judge_label"]:
        cls = "ok" if rec["judge_label"] == "CORRECT" else "bad"
        judge = f"<br>judge: <b class='{cls}'>{_e(rec['judge_label'])}</b> — {_e(rec.get('judge_reason', ''))}"
    mems = "".join(f"<li class='{'sel' if _is_selected(m, selected) else ''}'>{_e(m)}</li>" for m in retrieved)
    note = f"<br><i>{_e(rec['context_note'])}</i>" if rec.get("context_note") else ""
    return (
        f"<p><b>{_e(rec['qid'])}</b> · category {int(rec['category'])} {cat.locomo_name if cat else ''} "
        f"({cat.memory_r1_name if cat else ''})<br><b>Q:</b> {_e(rec['question'])}<br><b>gold:</b> {_e(rec['gold'])}"
        f"<br><b>answer:</b> {_e(rec['prediction'])}<br>{scores}{judge}{note}</p>"
        f"<b>retrieved ({len(retrieved)}; selected ones shaded)</b><ol>{mems}</ol>"
        f"<details><summary>raw output</summary><pre>{_e(rec.get('raw_output', ''))}</pre></details>"
    )


class QAInspector:
    """Browse per-question evaluation records.

    Args:
        records: one row per question with at least qid, category, question, gold, prediction,
            retrieved (list of str), selected (list of str) and metric columns.
        max_static: questions rendered in the static view.
    """

    def __init__(self, records: pd.DataFrame, max_static: int = 40):
        missing = {"qid", "category", "question", "gold", "prediction"} - set(records.columns)
        if missing:
            raise ValueError(f"QAInspector needs record columns {sorted(missing)}")
        self.records = records.reset_index(drop=True)
        self.max_static = max_static

    def static_html(self) -> str:
        order = self.records.sort_values("f1", kind="stable") if "f1" in self.records else self.records
        blocks = []
        for _, rec in order.head(self.max_static).iterrows():
            f1 = f"F1 {rec['f1']:.2f} · " if "f1" in rec else ""
            blocks.append(
                f"<details><summary>{f1}{_e(rec['qid'])}: {_e(rec['question'])} → "
                f"<i>{_e(rec['prediction'])}</i> (gold: {_e(rec['gold'])})</summary>"
                f"{question_html(rec)}</details>"
            )
        more = len(self.records) - len(blocks)
        tail = f"<p><i>{more} more questions in records.parquet</i></p>" if more > 0 else ""
        head = f"<b>{len(self.records)} questions</b>, worst F1 first"
        return f"{_CSS}<div class='m1-qa'>{head}{''.join(blocks)}{tail}</div>"

    def widget(self):
        import ipywidgets as w

        options = [(f"{r.qid} · c{r.category} · {str(r.question)[:70]}", i) for i, r in self.records.iterrows()]
        pick = w.Dropdown(options=options, layout=w.Layout(width="95%"))
        body = w.HTML()

        def render(*_):
            body.value = f"{_CSS}<div class='m1-qa'>{question_html(self.records.iloc[pick.value])}</div>"

        pick.observe(render, "value")
        render()
        return w.VBox([pick, body])
