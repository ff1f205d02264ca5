"""The trained Answer Agent through the whole validation conversation: real banks, all 81 questions, 3 seeds.

``experiments/answer_rl.py`` judges an adapter on LoCoMo's observations (replay). Here the banks are the ones
the pipeline builds: the untrained extractor and Memory Manager over all 369 turns of conv-30 (stage 05,
``memr1.stages.tables.LOCOMO_PARAMS``: ``lines`` prompts, 5 memories per speaker, ``direct`` answers of at most
32 tokens), built once into a shared store; then system ``base`` answers with the untrained model and system
``memory-r1-answer`` with the trained adapter of each recipe and seed of ``experiments/answer_rl.py``
(``--recipes``; the adapter of ``<recipe>-seed<k>/train`` under ``--trained``) from the same banks, so only the
answerer differs. Per run: F1 / BLEU-1 / EM per category and overall, and the paired bootstrap
95% interval of (trained − untrained) F1 over the questions; over seeds, mean ± std. Resumable: a finished stage-05
run is read back, a killed bank build continues after its last turn.

    MEMR1_DATA_DIR=../shared/data OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python \\
        experiments/validation_pipeline.py --recipes sft-lr5e-4 sft-grpo-lr1e-4-t0.7 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from stats import mean_std


def evaluate(runs: Path, name: str, system: str, adapter: str = "", manager_adapter: str = "") -> dict:
    """Stage 05 on all of conv-30 (run once, then read back): overall scores and F1 per question; ``adapter`` is the
    answer adapter, ``manager_adapter`` the manager's (system ``memory-r1``)."""
    import pandas as pd

    from memr1.runs import read_result
    from memr1.stages.evaluate import EvalConfig, EvalResult, run
    from memr1.stages.tables import LOCOMO_PARAMS

    run_dir = runs / name
    if not (run_dir / "metrics.json").is_file():
        params = {**LOCOMO_PARAMS, "system": system, "split": "validation", "run_dir": str(run_dir),
                  "store_dir": str(runs / "store"), **({"answer_adapter": adapter} if adapter else {}),
                  **({"manager_adapter": manager_adapter} if manager_adapter else {})}  # fmt: skip
        t0 = time.perf_counter()
        run(EvalConfig.from_params(params), progress=True)
        print(f"{name}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    saved = read_result(run_dir, EvalResult)
    records = pd.read_parquet(run_dir / "records.parquet")
    return {
        "table": saved.result.table,
        "questions": saved.result.questions,
        "operations": saved.result.operations,
        "truncated": saved.result.truncated,
        "per_question_f1": dict(zip(records["qid"], (100 * records["f1"]).round(4))),
        "adapter": adapter,
    }


def write(results: dict, out: str, seeds: list[int], command: str) -> None:
    from memr1.files import write_json_atomic, write_text_atomic
    from memr1.stages.tables import LOCOMO_PARAMS as P

    base = results["untrained"]
    qids = sorted(base["per_question_f1"])
    ref = [base["per_question_f1"][q] for q in qids]
    cats = [row.get("memory_r1_name") or str(row["category"]) for row in base["table"]]
    first = results["recipes"][0]
    lines = [
        "# The trained Answer Agent on the whole validation conversation (SmolLM2-135M, CPU)",
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, no GPU).",
        "",
        f"Banks: the untrained extractor and Memory Manager over every turn of conv-30 ({base['questions']} "
        f"questions; operations {base['operations'].get('applied')}). Answers: greedy, `{P['answer_style']}`, "
        f"≤ {P['answer_tokens']} tokens, {P['k_per_speaker']} memories per speaker; untrained = system `base`, "
        "trained = `memory-r1-answer` with the adapter of each recipe and seed of `experiments/answer_rl.py` "
        "(`docs/results/answer_rl.md`). Scores ×100; interval: paired "
        "bootstrap 95% over questions of (trained − untrained) F1.",
        "",
        "| run | " + " | ".join(f"{c} F1" for c in cats) + " | BLEU-1 | EM | Δ F1 [95% CI] "
        f"| Δ F1 vs {first} of the same seed [95% CI] |",
        "|---|" + "---|" * (len(cats) + 4),
    ]
    lines.append(_row("untrained", base, qids, None))
    summary = []
    for recipe in results["recipes"]:
        names = [f"{recipe}-seed{s}" for s in seeds if f"{recipe}-seed{s}" in results]
        for name in names:
            start = results.get(f"{first}-seed{name.rsplit('seed', 1)[1]}") if recipe != first else None
            lines.append(_row(name, results[name], qids, ref, start))
        f1s = [results[name]["table"][-1]["f1"] for name in names]
        if f1s:
            summary.append(
                f"- {recipe}: F1 {mean_std(f1s)} over seeds {', '.join(n.rsplit('seed', 1)[1] for n in names)}"
            )
    lines += ["", f"Over seeds, against {base['table'][-1]['f1']:.1f} untrained:", "", *summary]
    write_text_atomic(out + ".md", "\n".join(lines) + "\n")
    write_json_atomic(out + ".json", results)
    print("\n".join(lines))


def _row(name: str, r: dict, qids: list[str], ref: list[float] | None, start: dict | None = None) -> str:
    """One table row: F1 per category, BLEU-1, EM, the paired interval against the untrained answers (``ref``) and,
    given ``start``, against that run (the first recipe's run of the same seed)."""
    from memr1.eval.bootstrap import paired_bootstrap

    overall, mine = r["table"][-1], [r["per_question_f1"][q] for q in qids]
    delta = "–" if ref is None else str(paired_bootstrap(mine, ref))
    versus = "–" if start is None else str(paired_bootstrap(mine, [start["per_question_f1"][q] for q in qids]))
    cells = " | ".join(f"{row['f1']:.1f}" for row in r["table"])
    return f"| {name} | {cells} | {overall['bleu1']:.1f} | {overall['em']:.1f} | {delta} | {versus} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["sft-lr5e-4", "sft-grpo-lr1e-4-t0.7"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trained", default="runs/experiments/answer_rl", help="experiments/answer_rl.py's runs folder")
    ap.add_argument("--runs", default="runs/experiments/validation_pipeline")
    ap.add_argument("--out", default="docs/results/validation_pipeline")
    args = ap.parse_args()
    runs = Path(args.runs)
    results = {"recipes": args.recipes, "untrained": evaluate(runs, "untrained", "base")}
    for seed in args.seeds:
        for recipe in args.recipes:
            adapter = str(Path(args.trained) / f"{recipe}-seed{seed}" / "train")
            results[f"{recipe}-seed{seed}"] = evaluate(runs, f"{recipe}-seed{seed}", "memory-r1-answer", adapter)
    command = f"experiments/validation_pipeline.py --recipes {' '.join(args.recipes)} --seeds "
    write(results, args.out, args.seeds, command + " ".join(map(str, args.seeds)))


if __name__ == "__main__":
    main()
