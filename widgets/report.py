"""One self-contained HTML report of a run folder, drawn from the typed results of its stages.

``memr1.pipeline.load_run`` reads every finished stage's metrics.json back as its ``StageResult``
(a missing or unknown key is a ``ResultError``, never a "?" on the page); each section below draws
one result type. plotly.js is embedded once, so ``report.html`` opens offline.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from memr1.config import get_profile
from memr1.files import write_text_atomic
from memr1.pipeline import load_run
from memr1.stages.evaluate import EvalResult
from memr1.stages.locomo_data import DataResult
from memr1.stages.mem1 import Mem1Result
from memr1.stages.memory_bank import BankResult
from memr1.stages.report import ReportResult
from memr1.stages.train_answer import AnswerTrainResult
from memr1.stages.train_manager import ManagerTrainResult
from widgets.bank_timeline import evaluated_banks
from widgets.charts import category_bars, recall_bars
from widgets.display import figure_html
from widgets.mem1_context import peak_figure
from widgets.training import TrainingCurves

_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:24px auto;color:#222;font-size:14px}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f8}.banner{background:#fff4d6;border:1px solid #e8c66a;padding:10px;margin:10px 0}
h2{border-bottom:2px solid #333;padding-bottom:4px;margin-top:36px}details{margin:6px 0}"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(rows: list[dict] | pd.DataFrame, floatfmt: str = "{:.2f}") -> str:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    return (
        df.to_html(index=False, border=0, na_rep="–", float_format=lambda v: floatfmt.format(v))
        if len(df)
        else "<p><i>empty</i></p>"
    )


def _fig(fig: go.Figure) -> str:
    return figure_html(fig, include_plotlyjs=False)


def _data(r: DataResult, config: dict[str, Any]) -> str:
    splits = pd.DataFrame([{"split": k, **v} for k, v in r.splits.items()])
    return (
        f"<p>{r.conversations} conversations, {r.sessions} sessions, {r.turns} turns, {r.questions} questions "
        f"without category 5 ({r.questions_with_adversarial} with it). Evidence ids needing attention: "
        f"{_e(r.evidence_problems or 'none')}. File sha256 <code>{_e(r.sha256[:16])}…</code></p>{_table(splits)}"
    )


def _bank(r: BankResult, config: dict[str, Any]) -> str:
    recall = pd.DataFrame(r.recall)
    out = (
        f"<p>Observation replay of {_e(r.replay['sample_id'])}: entries per speaker {_e(r.replay['entries'])}, "
        f"committed turns {_e(r.replay['committed_turns'])}; embedder {_e(r.embedder)}; recall over "
        f"{_e(r.recall_scope)} questions.</p>"
    )
    return out + (_fig(recall_bars(recall)) + _table(recall) if len(recall) else "")


def _training(r: AnswerTrainResult | ManagerTrainResult, config: dict[str, Any]) -> str:
    algorithm = config.get("algorithm", "grpo")
    out = (
        f"<p>{_e(algorithm.upper())}, {r.steps} steps; adapter saved at <code>{_e(r.adapter)}</code>.</p>"
        + _fig(TrainingCurves(r.log_history).figure())  # reward, loss, KL, length, probe: each on its own axes
    )
    if isinstance(r, ManagerTrainResult) and r.op_mix:
        out += "<h3>Memory operations sampled</h3>" + _table(r.op_mix)
    return out


def _evaluation(r: EvalResult, config: dict[str, Any]) -> str:
    table = pd.DataFrame(r.table)
    cols = [c for c in ("f1", "bleu1", "f1_locomo", "em", "j") if c in table]
    judge = r.judge or "no judge configured (J not computed)"
    return (
        f"<p>System <b>{_e(r.system)}</b>, model {_e(r.model)} ({_e(r.backend)}) {_e(r.model_note)}, split "
        f"{_e(r.split)}, {r.questions} questions, metric family {_e(r.metric_family)}. Judge: {_e(judge)}.</p>"
        + (_fig(category_bars(table, cols, title="scores per category")) if cols else "")
        + _table(table)
        + f"<h3>Memory Manager operations</h3><p>applied {_e(r.operations['applied'])}; rejected outputs "
        f"{_e(r.operations['rejected_outputs'] or 'none')}</p><h3>Outputs cut at the token cap</h3>"
        + _table([{"role": role, **counts} for role, counts in r.truncated.items()], "{:.0f}")
        + "<h3>Latency (s)</h3>"
        + _table(r.latency, "{:.4f}")
        + _evaluated_banks(r, config.get("data_dir") or "")
    )


def _evaluated_banks(r: EvalResult, data_dir: str = "") -> str:
    """The bank timeline of the first evaluated conversation ("" for systems without banks); LoCoMo is read
    from the stage's own ``data_dir`` ("" : MEMR1_DATA_DIR or the cache)."""
    timeline = evaluated_banks(r, data_dir or None)
    if timeline is None:
        return ""
    who = "LoCoMo's observations (replay)" if r.system == "replay" else f"the {r.system} system"
    return f"<h3>Memory banks built by {_e(who)}</h3>" + timeline.static_html()


MEM1_COLUMNS = {
    "policy": "policy", "mode": "context", "n_objectives": "N", "tasks": "tasks", "answered": "answered",
    "em": "EM", "f1": "F1", "peak_tokens": "peak tokens (ours)", "peak_mem1_all_tasks": "peak (MEM1 counting)",
    "dependency_mem1": "dependency (MEM1)", "turns": "turns", "wall_s": "s / task",
}  # fmt: skip
"""Columns of stage 06's table shown in the report, and their headings (the tokenizer is said once, above)."""


def _mem1(r: Mem1Result, config: dict[str, Any]) -> str:
    table = pd.DataFrame(r.table)
    shown = table[[c for c in MEM1_COLUMNS if c in table]].rename(columns=MEM1_COLUMNS)
    fmt = {"EM": "{:.2f}", "F1": "{:.2f}", "answered": "{:.0%}", "turns": "{:.1f}", "s / task": "{:.1f}"}
    for col in shown.columns:
        if col in fmt:
            shown[col] = shown[col].map(lambda v, f=fmt[col]: f.format(v))
        elif shown[col].dtype.kind == "f":
            shown[col] = shown[col].map(lambda v: f"{v:,.0f}")
    algorithm = f", {config.get('algorithm', 'grpo').upper()}" if r.trained_steps else ""  # older configs: GRPO
    out = (
        f"<p>{_e(r.environment)} tasks, trained at N = {r.n_objectives} ({r.trained_steps} steps{_e(algorithm)}), "
        f"held out at N = {_e(', '.join(map(str, r.eval_objectives)))}; model {_e(r.model)}; tokens counted with "
        f"{_e(r.tokenizer)}.</p>" + _fig(peak_figure(table)) + _table(shown)
    )
    if r.memory_r1_comparison:
        out += "<h3>MEM1 beside Memory-R1 on the same LoCoMo questions</h3>" + _table(r.memory_r1_comparison)
    return out


SECTIONS: dict[type, tuple[str, Callable[[Any, dict[str, Any]], str]]] = {
    DataResult: ("Data: LoCoMo and the paper split", _data),
    BankResult: ("Memory bank: observation replay", _bank),
    AnswerTrainResult: ("Training: Answer Agent (GRPO)", _training),
    ManagerTrainResult: ("Training: Memory Manager (GRPO)", _training),
    EvalResult: ("Evaluation on LoCoMo", _evaluation),
    Mem1Result: ("MEM1: accuracy and peak tokens", _mem1),
}
"""Result type → (section title, renderer of the result and its stage config). The report stage's own result is
not drawn."""


def _paper_tables(run: Any, run_dir: str) -> str:
    """The two papers' tables from this run's own results, published rows beside, and what they say."""
    from pathlib import Path

    from memr1.eval.paper_tables import (
        PUBLISHED_LOCOMO,
        TEST_QUESTIONS,
        locomo_grid,
        locomo_row,
        mem1_grid,
        mem1_rows,
    )

    grpo = PUBLISHED_LOCOMO["LLaMA-3.1-8B-Instruct", "Memory-R1-GRPO"][-1][0]  # its Overall F1
    parts, said = [], []
    for stage, saved in run.stages.items():
        records = Path(run_dir) / stage / "records.parquet"
        if isinstance(saved.result, EvalResult) and records.is_file():
            r = saved.result
            row = locomo_row(r.system, [pd.read_parquet(records)], r.model)
            parts.append("<h3>LoCoMo (Memory-R1's Table 1 layout)</h3>" + _grid_table(locomo_grid([row])))
            overall = r.table[-1]
            said.append(
                f"{r.system} answered {r.questions} {_e(r.split)} questions: F1 {overall['f1']:.1f}, "
                f"BLEU-1 {overall['bleu1']:.1f}"
                + (f", J {overall['j']:.1f}" if "j" in overall else ", not judged")
                + f" (published Memory-R1-GRPO on LLaMA-3.1-8B: F1 {grpo:.2f} over {TEST_QUESTIONS:,} questions)."
            )
        if isinstance(saved.result, Mem1Result):
            r = saved.result
            table = mem1_grid(mem1_rows(r.table), r.model)
            parts.append("<h3>MEM1 (its Table 1 layout)</h3>" + _grid_table(table))
            em = [row["em"] for row in r.table]
            said.append(f"MEM1: {sum(e > 0 for e in em)} of {len(em)} (policy, context, N) cells scored EM above 0.")
    if not parts:
        return ""
    summary = "".join(f"<li>{s}</li>" for s in said)
    return f"<h2>The papers' tables, from this run</h2><ul>{summary}</ul>" + "".join(parts)


def _grid_table(grid: tuple[list[str], list[list[str]]]) -> str:
    """A ``memr1.eval.paper_tables`` grid as an HTML table."""
    head, body = grid
    return (
        "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in body) + "</table>"
    )  # fmt: skip


def report_html(run_dir: str) -> str:
    """The whole report page for the run folder ``run_dir``."""
    run = load_run(run_dir)
    banner = f"Profile <b>{_e(run.profile)}</b>: {_e(run.profile_reason or 'chosen by the caller')}."
    if run.profile == "smoke":
        banner += (
            " Every model number in this report comes from a tiny random model built locally (no download):"
            " it shows the pipeline runs end to end on real LoCoMo data and says nothing about the methods."
        )
    elif run.profile in ("cpu", "paper"):
        profile = get_profile(run.profile)
        banner += f" {_e(profile.description)}."
        if profile.budgets:
            listed = ", ".join(f"<code>{_e(k)}={_e(v)}</code>" for k, v in profile.budgets)
            banner += f" Budgets of this profile (each stage's own overrides win over them): {listed}."
    body = [
        f"<h1>memr1 run <code>{_e(run.name)}</code></h1><div class='banner'>{banner}</div>",
        _paper_tables(run, run_dir),
        "<h3>Stages</h3>"
        + _table([{"stage": k, **{kk: vv for kk, vv in v.items() if kk != "error"}} for k, v in run.status.items()]),
    ]
    for stage, saved in run.stages.items():
        if isinstance(saved.result, ReportResult):
            continue
        title, render = SECTIONS[type(saved.result)]
        html = render(saved.result, saved.config)  # the evaluation reads LoCoMo from its stage's data_dir
        body.append(
            f"<h2>{_e(title)} <small>({_e(stage)})</small></h2>{html}"
            f"<details><summary>configuration</summary>{_table([saved.config])}</details>"
        )
    prov = next((s.provenance for s in run.stages.values()), {})
    body.append(
        f"<h2>Provenance</h2><p>python {_e(prov.get('python'))} on {_e(prov.get('machine'))}</p>"
        + _table([prov.get("packages", {})])
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>memr1 {_e(run.name)}</title>"
        f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>{''.join(body)}</body></html>"
    )


def write_report(run_dir: str) -> str:
    """Write ``run_dir/report.html`` atomically and return its path."""
    from pathlib import Path

    return str(write_text_atomic(Path(run_dir) / "report.html", report_html(run_dir)))
