"""What ``memr1 tables`` writes under its tables: the summary, the paired comparisons, the judges (or the check of
the judge at hand) and the full-context window, every sentence computed from the numbers it is given."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from memr1.errors import ResultError


def paired_lines(deltas: list[dict[str, Any]]) -> list[str]:
    """The table of paired differences (`memr1.stages.tables.paired`), one row per trained run and reference."""
    if not deltas:
        return []
    lines = [
        "",
        "Trained runs against their references (`PAIRS`), question by question (overall F1 ×100 difference, mean "
        "[95% paired bootstrap interval over the questions both runs answered], one line per training seed):",
        "",
        "| system | against | seed | questions | Δ F1 |",
        "|---|---|---|---|---|",
    ]
    for d in deltas:
        lines.append(
            f"| {d['system']} | {d['reference']} | {d['seed']} | {d['questions']} | "
            f"{d['delta_f1']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}] |"
        )
    return lines


def summarize_paired(deltas: list[dict[str, Any]]) -> list[str]:
    """One sentence per compared pair: the mean difference over seeds and how many intervals exclude 0."""
    out = []
    for trained, reference in dict.fromkeys((d["system"], d["reference"]) for d in deltas):  # in PAIRS' order
        mine = [d for d in deltas if d["system"] == trained and d["reference"] == reference]
        above, below = sum(d["lo"] > 0 for d in mine), sum(d["hi"] < 0 for d in mine)
        out.append(
            f"{trained} against {reference}: overall F1 {statistics.mean(d['delta_f1'] for d in mine):+.1f} on "
            f"average over {len(mine)} seed(s); {above} paired interval(s) above 0, {below} below 0, "
            f"{len(mine) - above - below} containing 0."
        )
    return out


def judge_lines(judges: list[tuple[str, dict[str, Any]]], check: str) -> list[str]:
    """Who judged each judged run, how many replies held a label, and how often the label agrees with F1 ≥ 0.5;
    with no judged run, what ``check`` (experiments/judge_check.py's JSON) measured of the judge at hand."""
    if not judges:
        return judge_check_lines(Path(check)) if check and Path(check).is_file() else []
    lines = ["", "Judges (J):", ""]
    for run, j in judges:
        agree, kappa = (j.get("agreement_with_f1", {}).get(k) for k in ("agreement", "kappa"))
        agreement = (
            "–" if agree is None else f"{agree:.0%}" + ("" if kappa is None else f" (Cohen's kappa {kappa:+.2f})")
        )
        lines.append(
            f"- {run}: `{j.get('model')}` ({j.get('served') or j.get('base_url')}, prompt {j.get('prompt_version')}); "
            f"{j.get('verdicts')} answers labelled, {j.get('unparsed')} without a readable label; agreement with "
            f"F1 ≥ 0.5 on the labelled ones: {agreement}"
        )
    return lines


def judge_check_lines(path: Path) -> list[str]:
    """Why J is empty: the check of the local judge, one line per prompt, every number from ``path``."""
    try:
        check = json.loads(path.read_text())
        prompts = check["prompts"]
    except (OSError, ValueError, KeyError) as exc:
        raise ResultError(f"{path}: not a judge_check result ({exc}); rerun experiments/judge_check.py") from None
    lines = [
        "",
        f"J is empty: no run is judged. The judge this machine can serve, `{check.get('served')}` "
        f"({check.get('server')}), was checked on answers of `{check.get('records')}` "
        f"(`{path.with_suffix('.md')}`) for how often it says CORRECT on answers with F1 ≥ 0.5 and below:",
        "",
    ]
    for r in prompts:
        n, d = 2 * r["per_class"], r["difference"]
        if d is None:
            lines.append(f"- prompt `{r['prompt']}`: {r['labelled']} of {n} replies held a label, too few to compare.")
            continue
        lines.append(
            f"- prompt `{r['prompt']}`: {r['labelled']} of {n} replies held a label; CORRECT on "
            f"{r['correct_high']:.0%} of answers with F1 ≥ 0.5 and {r['correct_low']:.0%} below (difference "
            f"{100 * d[0]:+.0f} [{100 * d[1]:+.0f}, {100 * d[2]:+.0f}] points); agreement with F1 ≥ 0.5 "
            f"{r['agreement']:.0%}, Cohen's kappa {r['kappa']:+.2f}: "
            + ("it tells them apart." if d[1] > 0 else "it does not tell them apart.")
        )
    return lines


def summarize(overall: dict[str, list[float]], rows: list[dict], mem1_cells: list[dict], total: int) -> list[str]:
    """Sentences computed from the numbers (none is written in advance)."""

    out = []
    full = [r["system"] for r in rows if r["questions"] == total]
    out.append(f"LoCoMo: {len(rows)} system(s) have runs, {len(full)} of them on all {total} test questions.")
    if overall:
        best = max(overall, key=lambda s: statistics.mean(overall[s]))
        out.append(f"Highest overall F1: {best}, {statistics.mean(overall[best]):.1f}.")
    if mem1_cells:
        peaks: dict[tuple[str, int], list[float]] = {}
        for c in mem1_cells:
            if not c["trained"] and c["n"] in (2, 16):
                peaks.setdefault((c["mode"], c["n"]), []).append(c["peak_mem1_all_tasks"])
        if all((m, n) in peaks for m in ("mem1", "full") for n in (2, 16)):
            p = {k: statistics.mean(v) for k, v in peaks.items()}
            out.append(
                f"MEM1 (untrained): peak tokens grow {p['mem1', 16] / p['mem1', 2]:.1f}× from N = 2 to 16 under "
                f"pruning and {p['full', 16] / p['full', 2]:.1f}× with the full context; at N = 16 pruning peaks at "
                f"{p['mem1', 16] / p['full', 16]:.0%} of the full context."
            )
        em = [c["em"] for c in mem1_cells]
        out.append(f"MEM1 EM: {sum(e > 0 for e in em)} of {len(em)} cells above 0 (max {max(em):.2f}).")
    return out


def operations_lines(banks: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """What built each bank store: per run that built one (a run reading another's banks is not repeated), the
    Memory-Manager operations applied over the test turns and the replies rejected (stage 05's tally)."""
    if not banks:
        return []
    kinds = ("ADD", "UPDATE", "DELETE", "NOOP")
    lines = [
        "",
        "Operations that built each bank store over the test turns (applied; rejected: manager replies not applied):",
        "",
        "| run | " + " | ".join(kinds) + " | rejected |",
        "|---|" + "---|" * (len(kinds) + 1),
    ]
    for run, ops in banks:
        applied, rejected = ops.get("applied", {}), ops.get("rejected_outputs", {})
        counts = " | ".join(str(applied.get(k, 0)) for k in kinds)
        lines.append(f"| {run} | {counts} | {sum(rejected.values())} |")
    return lines


def window_lines(n: dict[str, Any] | None) -> list[str]:
    """The sentence on the full-context run's window (`memr1.stages.tables.window`); none without its numbers."""
    if n is None:
        return []

    def f1(key: str) -> str:  # no question on that side: no mean
        return "–" if n[key] is None else f"{n[key]:.1f}"

    line = (
        f"full-context's window held every evidence turn of {n['inside']} of {n['questions']} questions: F1 "
        f"{f1('f1_inside')} on those and {f1('f1_outside')} on the rest"
    )
    if "base_f1_inside" in n:
        line += f" (base: {f1('base_f1_inside')} and {f1('base_f1_outside')} on the same questions)"
    return ["", line + "."]


__all__ = [
    "judge_check_lines", "judge_lines", "operations_lines", "paired_lines", "summarize", "summarize_paired",
    "window_lines",
]  # fmt: skip
