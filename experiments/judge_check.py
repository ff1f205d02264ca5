"""Can the judge this machine has tell a right answer from a wrong one? A check before J is filled with it.

J (Memory-R1's LLM-as-a-judge column) is only worth filling if the judge's CORRECT follows correctness.
This script takes the answers of one finished ``memr1 tables`` run (default: memory-r1-answer seed 0, all
1,307 test questions), draws ``n`` answers with F1 >= 0.5 ("high") and ``n`` with F1 < 0.5 ("low"), seeded,
and has the judge grade them through the path that fills J: ``transformers serve`` on 127.0.0.1
(`memr1.eval.judge_server.serve_model`) and `memr1.eval.judge.LLMJudge` over HTTP, once per prompt:

- ``full``: the judge prompt of the tables (a one-sentence reason, then the label, as JSON);
- ``label``: the one-word prompt for small judges (`memr1.eval.judge.LABEL_PROMPT`, 8 reply tokens).

Per prompt: replies with and without a label, the CORRECT rate on each stratum, their difference with a 95%
bootstrap interval (each stratum resampled on its own), agreement with F1 >= 0.5 and Cohen's kappa (0 = chance),
seconds per verdict. F1 >= 0.5 is a rough proxy (a right date in another format scores low), so a sound judge
need not match it, but one that labels both strata alike is not reading the answers.

Verdicts are cached (``runs/experiments/judge_check/verdicts.sqlite``), so a rerun asks only what is missing.

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python experiments/judge_check.py --prompts label:50 full:20
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from memr1.eval.bootstrap import RESAMPLES

MAX_TOKENS = {"full": 128, "label": 8}
"""Reply cap per prompt: a sentence and a label; one word (ample for "CORRECT")."""


def sample(records: Path, per_class: int, seed: int):
    """``per_class`` answers with F1 >= 0.5 and as many below, in a seeded order (the first k of each are a
    smaller sample of the same draw)."""
    import pandas as pd

    df = pd.read_parquet(records, columns=["qid", "question", "gold", "prediction", "f1"])
    high, low = df[df.f1 >= 0.5], df[df.f1 < 0.5]
    if min(len(high), len(low)) < per_class:
        sys.exit(f"{records}: {len(high)} answers with F1 >= 0.5 and {len(low)} below; --prompts asks {per_class} each")
    return high.sample(per_class, random_state=seed), low.sample(per_class, random_state=seed)


def grade(served, prompt: str, high, low, n: int, cache: Path) -> dict:
    """Judge the first ``n`` of each stratum with ``prompt``; the counts and rates of the docstring."""
    from memr1.eval.judge import LLMJudge, Verdict

    cfg = served.judge_config(prompt=prompt, max_tokens=MAX_TOKENS[prompt], cache_path=str(cache))
    out, asked, t0 = {}, 0, time.perf_counter()
    with LLMJudge(cfg) as judge:
        for name, part in (("high", high.head(n)), ("low", low.head(n))):
            items = list(zip(part.question, part.gold, part.prediction))
            verdicts = judge.judge_many(items, progress=True, keep_unparsed=True)
            asked += sum(not (isinstance(v, Verdict) and v.cached) for v in verdicts)
            out[name] = [v.correct if isinstance(v, Verdict) else None for v in verdicts]
        described = judge.describe()
    seconds = time.perf_counter() - t0
    return {
        "prompt": prompt,
        "max_tokens": cfg.max_tokens,
        "judge": described,
        "per_class": n,
        **rates(out["high"], out["low"]),
        "asked": asked,
        "s_per_verdict": seconds / asked if asked else None,
    }


def rates(high: list[bool | None], low: list[bool | None], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """CORRECT rate per stratum over labelled replies and their difference with a bootstrap interval, beside
    agreement with F1 >= 0.5 and Cohen's kappa (`memr1.eval.judge.agreement_with_f1`).

    >>> r = rates([True, True, None, False], [False, False, True, None])
    >>> r["unlabelled"], round(r["correct_high"], 3), round(r["correct_low"], 3), round(r["agreement"], 3)
    (2, 0.667, 0.333, 0.667)
    >>> round(r["kappa"], 3)
    0.333
    """
    from memr1.eval.judge import agreement_with_f1

    agree = agreement_with_f1([*high, *low], [1.0] * len(high) + [0.0] * len(low))
    h = np.array([c for c in high if c is not None], dtype=float)
    lo = np.array([c for c in low if c is not None], dtype=float)
    res = {"labelled": agree["judged"], "unlabelled": len(high) + len(low) - agree["judged"],
           "agreement": agree["agreement"], "kappa": agree["kappa"]}  # fmt: skip
    if not (len(h) and len(lo)):
        return {**res, "correct_high": None, "correct_low": None, "difference": None}
    rng = np.random.default_rng(seed)
    diffs = rng.choice(h, (resamples, len(h))).mean(1) - rng.choice(lo, (resamples, len(lo))).mean(1)
    difference = [float(h.mean() - lo.mean()), *map(float, np.percentile(diffs, [2.5, 97.5]))]
    return {**res, "correct_high": float(h.mean()), "correct_low": float(lo.mean()), "difference": difference}


def write(result: dict, out: Path) -> None:
    """``<out>.json`` and ``<out>.md``; every sentence computed from the numbers."""
    from memr1.files import write_json_atomic, write_text_atomic

    pct = lambda x: "–" if x is None else f"{100 * x:.0f}%"  # noqa: E731
    lines = [
        "# Can the judge here tell right answers from wrong ones?",
        "",
        f"Run {result['date']} on {result['machine']}. Command: `{result['command']}`",
        "",
        f"Judge: {result['served']} served by {result['server']} on 127.0.0.1 (started in {result['start_s']:.0f} s), "
        f"greedy, asked through `LLMJudge` over HTTP. Answers: `{result['records']}`, drawn with seed "
        f"{result['seed']}: n with F1 >= 0.5 (high) and n with F1 < 0.5 (low).",
        "",
        "| prompt | reply cap | n per stratum | labelled | CORRECT on high | CORRECT on low | high − low [95% CI] "
        "| agreement with F1 >= 0.5 | Cohen's kappa | s per verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["prompts"]:
        d = r["difference"]
        diff = "–" if d is None else f"{100 * d[0]:+.0f} [{100 * d[1]:+.0f}, {100 * d[2]:+.0f}] points"
        kappa = "–" if r["kappa"] is None else f"{r['kappa']:+.2f}"
        sec = "–" if r["s_per_verdict"] is None else f"{r['s_per_verdict']:.1f}"
        lines.append(
            f"| {r['prompt']} | {r['max_tokens']} | {r['per_class']} | {r['labelled']} of {2 * r['per_class']} "
            f"| {pct(r['correct_high'])} | {pct(r['correct_low'])} | {diff} | {pct(r['agreement'])} | {kappa} | {sec} |"
        )
    lines += ["", *verdict_lines(result)]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json_atomic(out.with_suffix(".json"), result)


def verdict_lines(result: dict) -> list[str]:
    """One sentence per prompt: is the judge's CORRECT rate different between the strata?"""
    lines = []
    for r in result["prompts"]:
        d = r["difference"]
        if d is None:
            lines.append(
                f"- {r['prompt']}: too few labelled replies in a stratum to compare "
                f"({r['labelled']} of {2 * r['per_class']} labelled)."
            )
        elif d[1] > 0:
            lines.append(
                f"- {r['prompt']}: CORRECT is more frequent on high-F1 answers (interval above 0); "
                f"kappa {r['kappa']:+.2f}."
            )
        else:
            where = "contains 0" if d[2] >= 0 else "is below 0"
            lines.append(
                f"- {r['prompt']}: the CORRECT rates of the two strata are not told apart (interval "
                f"{where}); kappa {r['kappa']:+.2f}: this judge does not separate right from wrong answers."
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=Path, default=Path("runs/tables/locomo/memory-r1-answer/seed0/records.parquet"))
    ap.add_argument("--judge", default="smollm2-135m", help="model served as the judge (name or folder)")
    ap.add_argument(
        "--prompts",
        nargs="+",
        default=["label:50", "full:20"],
        help="PROMPT:N, judging the first N answers of each stratum with that prompt",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, default=Path("runs/experiments/judge_check"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/judge_check"))
    args = ap.parse_args()
    try:
        asks = [(p, int(n)) for p, n in (item.split(":") for item in args.prompts)]
    except ValueError:
        sys.exit(f"--prompts takes PROMPT:N items, e.g. label:50 full:20; got {args.prompts}")
    if bad := [p for p, _ in asks if p not in MAX_TOKENS]:
        sys.exit(f"--prompts: unknown prompt(s) {bad}; choose from {sorted(MAX_TOKENS)}")

    from memr1.eval.judge_server import serve_model

    high, low = sample(args.records, max(n for _, n in asks), args.seed)
    args.runs.mkdir(parents=True, exist_ok=True)
    with serve_model(args.judge) as served:
        graded = [grade(served, p, high, low, n, args.runs / "verdicts.sqlite") for p, n in asks]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "command": shlex.join(["python", *sys.argv]),
        "records": str(args.records),
        "seed": args.seed,
        **served.describe(),
        "prompts": graded,
    }
    write(result, args.out)
    print("\n".join(verdict_lines(result)))


if __name__ == "__main__":
    main()
