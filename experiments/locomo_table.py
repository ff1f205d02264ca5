"""The LoCoMo test table on SmolLM2-135M (CPU): every memory system of stage 05 on one fixed subset.

Subset: the test split's questions (8 conversations, category 5 excluded) whose evidence lies in the
first ``--turns`` turns of their conversation, every system seeing only those turns (memory is built
from them; full-context and rag read them). It is fixed by the data, not drawn; each category keeps
all of its answerable questions. Systems: base (the untrained extractor + manager + answer agent),
heuristic, rag, full-context, replay (oracle memory), memory-r1-answer (the trained answer agent on
base's banks) and memory-r1 (trained manager + trained answer agent). The trained adapters are the
seed-0 runs of ``experiments/answer_grpo.py`` and ``experiments/manager_grpo.py``.

Budgets as in the other CPU experiments: 5 memories per speaker, ``direct`` answers of ≤ 32 tokens,
the ``lines`` extractor and manager prompts (≤ 64 and ≤ 160 tokens). Resumable: a system with a
metrics.json is not rerun. Results: ``docs/results/locomo_test.{json,md}``.

    .venv/bin/python experiments/locomo_table.py --turns 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from stats import mean_std

RUNS = Path("runs/experiments/locomo_table")
ANSWER_ADAPTER = "runs/experiments/answer_grpo/f1-lr0.0001-seed{seed}/train"
MANAGER_ADAPTER = "runs/experiments/manager_grpo/lr0.0001-seed{seed}/train"
SYSTEMS = ("heuristic", "replay", "rag", "full-context", "base", "memory-r1-answer", "memory-r1")
TRAINED = ("memory-r1-answer", "memory-r1")
"""Systems with adapters: run once per training seed (the adapters of that seed)."""


def config(system: str, turns: int, seed: int = 0):
    from memr1.stages.evaluate import EvalConfig
    from memr1.stages.tables import LOCOMO_PARAMS  # the budgets of every CPU LoCoMo run

    params = {
        **LOCOMO_PARAMS,
        "system": system,
        "max_turns": turns,
        "answerable": True,
        "run_dir": str(RUNS / f"turns{turns}" / (f"{system}-seed{seed}" if system in TRAINED else system)),
        "store_dir": str(RUNS / f"turns{turns}" / "store"),  # memory-r1-answer reuses base's banks
    }
    if system in TRAINED:
        params["answer_adapter"] = ANSWER_ADAPTER.format(seed=seed)
    if system == "memory-r1":
        params["manager_adapter"] = MANAGER_ADAPTER.format(seed=seed)
    return EvalConfig.from_params(params)


def bootstrap_f1(records, n: int = 2000) -> list[float]:
    """95% interval of the mean F1 (×100) over questions, by resampling questions (seed 0)."""
    import numpy as np

    f1 = 100 * records["f1"].to_numpy()
    means = np.random.default_rng(0).choice(f1, size=(n, len(f1))).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def summary(result) -> dict:
    overall = result.table[-1]
    lat = {row["component"]: row for row in result.latency}
    return {
        "questions": result.questions,
        "f1": overall["f1"],
        "bleu1": overall["bleu1"],
        "em": overall["em"],
        "latency_p50_s": {c: lat[c]["p50_s"] for c in lat},
        "calls": {c: lat[c]["calls"] for c in lat},
        "truncated": result.truncated,
        "operations": result.operations,
        "by_category": [
            {k: row[k] for k in ("category", "memory_r1_name", "count", "f1", "em") if k in row}
            for row in result.table[:-1]
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of the adapters (trained rows)")
    ap.add_argument("--out", default="docs/results/locomo_test")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out).with_suffix(".json")
    results = json.loads(out.read_text()) if out.exists() else {"systems": {}}
    if not args.table_only:
        from memr1.files import write_json_atomic
        from memr1.stages.evaluate import run

        results.setdefault("started", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1"
        results["turns"] = args.turns
        cells = [(s, seed) for s in args.systems for seed in (args.seeds if s in TRAINED else [0])]
        for system, seed in cells:
            key = f"{system}-seed{seed}" if system in TRAINED else system
            cfg = config(system, args.turns, seed)
            done = Path(cfg.run_dir) / "metrics.json"
            if key in results["systems"] and done.exists():
                continue
            t0 = time.time()
            result = run(cfg)
            results["systems"][key] = summary(result) | {"wall_s": round(time.time() - t0, 1), "seed": seed}
            print(key, results["systems"][key]["f1"], results["systems"][key]["wall_s"], flush=True)
            write_json_atomic(out, results)
    write_table(results, args)


def write_table(results: dict, args: argparse.Namespace) -> None:
    import statistics

    import pandas as pd

    def fmt(x) -> str:
        return "–" if x is None else f"{x:.2f}"

    rows, turns = results["systems"], results["turns"]
    n = next(iter(rows.values()))["questions"] if rows else 0
    wall = sum(r["wall_s"] for r in rows.values())
    lines = [
        "# LoCoMo test table on SmolLM2-135M (CPU)",
        "",
        f"Made by `experiments/locomo_table.py --turns {turns} --seeds 0 1 2` (started {results['started']}), "
        f"{results['machine']}; wall time {wall / 60:.0f} min for the runs below.",
        "",
        f"Subset: the {n} test-split questions (8 conversations, category 5 excluded) whose evidence lies in the "
        f"first {turns} turns of their conversation; every system sees only those turns. Greedy decoding. The "
        "untrained rows are one run each, with a 95% bootstrap interval of F1 over the questions; the trained "
        "rows use the adapters of `answer_grpo.py` (F1 reward) and `manager_grpo.py` of each training seed and "
        "give mean ± std over those seeds. F1 / BLEU-1 / EM ×100 (mem0 family); latency: median seconds per "
        "call on one core; operations and rejected outputs summed over the conversations (trained rows: seed 0).",
        "",
        "| system | seeds | F1 | F1 95% CI | BLEU-1 | EM | extract s | manager s | search s | answer s | "
        "manager outputs cut | ops ADD/UPD/DEL/NONE | rejected outputs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system in SYSTEMS:
        runs = [r for k, r in sorted(rows.items()) if k == system or k.startswith(f"{system}-seed")]
        if not runs:
            lines.append(f"| {system} | not run |" + " |" * 11)
            continue
        keys = [k for k in sorted(rows) if k == system or k.startswith(f"{system}-seed")]
        cis = []
        for k in keys:
            parquet = RUNS / f"turns{turns}" / k / "records.parquet"
            cis.append(bootstrap_f1(pd.read_parquet(parquet)) if parquet.exists() else None)
        ci = f"{cis[0][0]:.1f}–{cis[0][1]:.1f}" if len(runs) == 1 and cis[0] else "–"
        first = runs[0]
        lat = {
            c: statistics.mean(r["latency_p50_s"][c] for r in runs) if first["latency_p50_s"][c] is not None else None
            for c in first["latency_p50_s"]
        }
        ops, mgr = first["operations"]["applied"], first["truncated"]["manager"]
        rejected = sum(first["operations"]["rejected_outputs"].values())
        built = "/".join(str(ops.get(k, 0)) for k in ("ADD", "UPDATE", "DELETE", "NOOP")) + f" | {rejected}"
        if system == "memory-r1-answer":  # it resumed base's banks: their operations are base's
            built = "base's banks | –"
        seeds = ", ".join(str(r.get("seed", 0)) for r in runs) if system in TRAINED else "–"
        lines.append(
            f"| {system} | {seeds} | {mean_std([r['f1'] for r in runs])} | {ci} | "
            f"{mean_std([r['bleu1'] for r in runs])} | "
            f"{mean_std([r['em'] for r in runs])} | {fmt(lat['extract'])} | {fmt(lat['manager'])} | "
            f"{fmt(lat['search'])} | {fmt(lat['answer'])} | {mgr['truncated']}/{mgr['calls']} | {built} |"
        )
    for system in TRAINED:
        per_seed = {r.get("seed", 0): r["f1"] for k, r in sorted(rows.items()) if k.startswith(f"{system}-seed")}
        if per_seed:
            lines.append(f"\n{system} F1 per seed: " + ", ".join(f"seed {s}: {f:.1f}" for s, f in per_seed.items()))
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
