"""One self-contained HTML report of a run folder: every finished stage's results, figures and config.

plotly.js is embedded once in the page, so ``report.html`` opens offline. Sections are chosen by the
stage name's prefix (``01_`` data, ``02_`` memory bank, ``03_``/``04_`` training, ``05_`` evaluation,
``06_`` MEM1); anything else is shown as its metrics JSON.
"""

from __future__ import annotations

import html
import json
from typing import Any, Callable

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from memr1.config import get_profile
from memr1.runs import load_run
from widgets.charts import category_bars, recall_bars
from widgets.display import figure_html

_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:24px auto;color:#222;font-size:14px}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f8}.banner{background:#fff4d6;border:1px solid #e8c66a;padding:10px;margin:10px 0}
h2{border-bottom:2px solid #333;padding-bottom:4px;margin-top:36px}details{margin:6px 0}"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(rows: list[dict] | pd.DataFrame, floatfmt: str = "{:.2f}") -> str:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    return df.to_html(index=False, border=0, na_rep="–",
                      float_format=lambda v: floatfmt.format(v)) if len(df) else "<p><i>empty</i></p>"


def _fig(fig: go.Figure) -> str:
    return figure_html(fig, include_plotlyjs=False)


def _data(m: dict) -> str:
    splits = pd.DataFrame([{"split": k, **v} for k, v in m.get("splits", {}).items()])
    return (f"<p>{m.get('conversations')} conversations, {m.get('sessions')} sessions, {m.get('turns')} turns, "
            f"{m.get('questions')} questions without category 5 ({m.get('questions_with_adversarial')} with it). "
            f"Evidence ids needing attention: {_e(m.get('evidence_problems'))}. File sha256 "
            f"<code>{_e(m.get('sha256', '')[:16])}…</code></p>{_table(splits)}")


def _bank(m: dict) -> str:
    rep, recall = m.get("replay", {}), pd.DataFrame(m.get("recall", []))
    out = (f"<p>Observation replay of {_e(rep.get('sample_id'))}: entries per speaker {_e(rep.get('entries'))}, "
           f"committed turns {_e(rep.get('committed_turns'))}; embedder {_e(m.get('embedder'))}; recall over "
           f"{_e(m.get('recall_scope'))} questions.</p>")
    return out + (_fig(recall_bars(recall)) + _table(recall) if len(recall) else "")


def _training(m: dict) -> str:
    hist = pd.DataFrame([h for h in m.get("log_history", []) if "step" in h])
    out = f"<p>{_e(m.get('steps', '?'))} steps; adapter saved at <code>{_e(m.get('adapter', ''))}</code>.</p>"
    curves = [c for c in ("reward", "loss", "kl", "completions/mean_length", "eval/em") if c in hist]
    if curves:
        fig = go.Figure([go.Scatter(x=hist.dropna(subset=[c])["step"], y=hist.dropna(subset=[c])[c],
                                    mode="lines+markers", name=c) for c in curves])
        out += _fig(fig.update_layout(title="training curves", xaxis_title="step", height=360))
    if m.get("op_mix"):
        out += "<h3>Memory operations sampled</h3>" + _table(m["op_mix"])
    return out


def _evaluation(m: dict) -> str:
    table = pd.DataFrame(m.get("table", []))
    cols = [c for c in ("f1", "bleu1", "f1_locomo", "em", "j") if c in table]
    ops = m.get("operations", {})
    judge = m.get("judge") or "no judge configured (J not computed)"
    return (f"<p>System <b>{_e(m.get('system'))}</b>, model {_e(m.get('model'))} ({_e(m.get('backend'))}) "
            f"{_e(m.get('model_note', ''))}, split {_e(m.get('split'))}, {_e(m.get('questions'))} questions, "
            f"metric family {_e(m.get('metric_family'))}. Judge: {_e(judge)}.</p>"
            + (_fig(category_bars(table, cols, title="scores per category")) if cols else "") + _table(table)
            + f"<h3>Memory Manager operations</h3><p>applied {_e(ops.get('applied'))}; rejected outputs "
              f"{_e(ops.get('rejected_outputs') or 'none')}</p><h3>Latency (s)</h3>"
            + _table(m.get("latency", []), "{:.4f}"))


def _mem1(m: dict) -> str:
    out = (f"<p>{_e(m.get('environment'))} tasks with {_e(m.get('n_objectives'))} objectives, model "
           f"{_e(m.get('model'))}; tokens counted with {_e(m.get('tokenizer'))}.</p>" + _table(m.get("table", [])))
    if m.get("memory_r1_comparison"):
        out += "<h3>MEM1 beside Memory-R1 on the same LoCoMo questions</h3>" + _table(m["memory_r1_comparison"])
    return out


SECTIONS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "01": ("Data: LoCoMo and the paper split", _data), "02": ("Memory bank: observation replay", _bank),
    "03": ("Training: Answer Agent (GRPO)", _training), "04": ("Training: Memory Manager (GRPO)", _training),
    "05": ("Evaluation on LoCoMo", _evaluation), "06": ("MEM1: accuracy and peak tokens", _mem1),
}


def report_html(run_dir: str) -> str:
    """The whole report page for the run folder ``run_dir``."""
    run = load_run(run_dir)
    profile = run["profile"]
    banner = f"Profile <b>{_e(profile)}</b>: {_e(run['profile_reason'] or 'chosen by the caller')}."
    if profile == "smoke":
        banner += (" Every model number in this report comes from a tiny random model built locally (no download):"
                   " it shows the pipeline runs end to end on real LoCoMo data and says nothing about the methods.")
    elif profile in ("cpu", "paper"):
        banner += f" {_e(get_profile(profile).description)}."
    body = [f"<h1>memr1 run <code>{_e(run['name'])}</code></h1><div class='banner'>{banner}</div>",
            "<h3>Stages</h3>" + _table([{"stage": k, **{kk: vv for kk, vv in v.items() if kk != 'error'}}
                                         for k, v in run["status"].items()])]
    for stage, data in run["stages"].items():
        title, render = SECTIONS.get(stage[:2], (stage, None))
        metrics = data.get("metrics", {})
        content = render(metrics) if render else f"<pre>{_e(json.dumps(metrics, indent=1)[:20000])}</pre>"
        body.append(f"<h2>{_e(title)} <small>({_e(stage)})</small></h2>{content}"
                    f"<details><summary>configuration</summary>{_table([data.get('config', {})])}</details>")
    prov = next((d["provenance"] for d in run["stages"].values() if "provenance" in d), {})
    body.append(f"<h2>Provenance</h2><p>python {_e(prov.get('python'))} on {_e(prov.get('machine'))}</p>"
                + _table([prov.get("packages", {})]))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>memr1 {_e(run['name'])}</title>"
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>{''.join(body)}</body></html>")


def write_report(run_dir: str) -> str:
    """Write ``run_dir/report.html`` atomically and return its path."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(run_dir) / "report.html"
    fd, tmp = tempfile.mkstemp(prefix="report.", suffix=".html.tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(report_html(run_dir))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return str(path)
