"""Answer-Agent RL on SmolLM2-135M (CPU): a recipe search judged on all 81 validation questions.

Each run trains the Answer Agent on conv-26 (stage 03: GRPO or PPO on memr1's engine, or SFT) with one
named recipe and seed, probing a fixed subset of conv-30 (``--probe`` questions, greedy) every
``--probe-every`` steps (F1, answer-line format rate, completion length), then answers all 81
validation questions of conv-30 greedily (stage 05, system ``replay``: only the answerer varies).
The untrained model answers the same 81 once. For every run the table gives validation F1, the
paired bootstrap 95% interval of (trained − untrained) F1 over questions, and per recipe the mean ±
std over seeds; the learning-rate-0 control of a recipe is the recipe with ``learning_rate=0``.

Resumable at two levels: a finished run (its entry in the results JSON, keyed by recipe, steps and
seed) is skipped; an unfinished training run continues from its last checkpoint (every 10 steps),
and a run asked for more steps than it has continues the shorter one (a 40-step screen extends to
100). Results: ``<out>.json`` (every run, its curves, per-question F1) and ``<out>.md`` (the table,
every recipe tried, and the curves).

    .venv/bin/python experiments/answer_rl.py --recipe lr5e-4 --seeds 0 --steps 100
    .venv/bin/python experiments/answer_rl.py --table-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from stats import mean_std

RUNS = Path("runs/experiments/answer_rl")
COMMON = {"profile": "cpu", "model": "smollm2-135m", "k_per_speaker": 5, "answer_style": "direct"}
BASE = {
    "engine": "memr1",
    "learning_rate": 1e-4,
    "reward": "f1",
    "num_generations": 4,
    "questions_per_step": 2,
    "batch_size": 4,
    "max_completion_length": 32,
    "temperature": 1.0,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_targets": "attention",
    "beta": 0.0,
}
RECIPES = {
    "lr1e-4": {},
    "lr5e-4": {"learning_rate": 5e-4},
    "lr2e-3": {"learning_rate": 2e-3},
    "lr5e-4-t0.7": {"learning_rate": 5e-4, "temperature": 0.7},
    "lr5e-4-t0.7-format": {"learning_rate": 5e-4, "temperature": 0.7, "reward": "f1_format"},
    "lr5e-4-t0.7-all": {"learning_rate": 5e-4, "temperature": 0.7, "lora_targets": "all"},
    "lr5e-4-t0.7-g8": {"learning_rate": 5e-4, "temperature": 0.7, "num_generations": 8, "batch_size": 8},
    "lr5e-4-t0.7-kl": {"learning_rate": 5e-4, "temperature": 0.7, "beta": 0.04},
    "lr5e-4-em": {"learning_rate": 5e-4, "reward": "em"},
    "ppo-lr5e-4": {"algorithm": "ppo", "learning_rate": 5e-4, "critic_learning_rate": 5e-3},
    "ppo-lr5e-4-t0.7-format": {
        "algorithm": "ppo",
        "learning_rate": 5e-4,
        "temperature": 0.7,
        "reward": "f1_format",
        "critic_learning_rate": 5e-3,
    },
    "sft-lr5e-4": {"algorithm": "sft", "learning_rate": 5e-4},
    "sft-grpo-lr1e-4-t0.7": {"init_adapter": "sft-lr5e-4", "temperature": 0.7},
    "sft-ppo-lr1e-4-t0.7": {
        "algorithm": "ppo",
        "init_adapter": "sft-lr5e-4",
        "temperature": 0.7,
        "critic_learning_rate": 1e-3,
    },
}
"""Every recipe tried; a recipe is BASE with these overrides. ``<name>-lr0`` is its learning-rate-0 control.
``init_adapter`` names another recipe: the run starts from that recipe's adapter of the same seed (RL after SFT),
and the table adds the paired interval against that start."""


def recipe(name: str) -> dict:
    control = name.endswith("-lr0")
    over = RECIPES[name[: -len("-lr0")] if control else name]
    return {**BASE, **over, **({"learning_rate": 0.0} if control else {})}


def train(name: str, seed: int, args) -> tuple[dict, float]:
    from memr1.runs import read_result
    from memr1.stages.train_answer import AnswerTrainConfig, AnswerTrainResult, run

    run_dir = RUNS / f"{name}-seed{seed}" / "train"
    settings = recipe(name)
    if settings.get("init_adapter"):
        start = RUNS / f"{settings['init_adapter']}-seed{seed}" / "train"
        if not (start / "adapter" / "adapter_config.json").is_file():
            raise SystemExit(f"{name} starts from {start}, which has no adapter: run its --recipe first")
        settings["init_adapter"] = str(start)
    cfg = AnswerTrainConfig.from_params(
        {
            **COMMON,
            **settings,
            "seed": seed,
            "steps": args.steps,
            "train_limit": 0,
            "eval_limit": args.probe,
            "eval_every": args.probe_every,
            "save_every": 10,
            "resume": True,
            "store_dir": str(RUNS / "store"),
            "run_dir": str(run_dir),
        }
    )
    t0 = time.perf_counter()
    result = read_result(run_dir, AnswerTrainResult).result if (run_dir / "metrics.json").is_file() else None
    if result is None or result.steps < args.steps:
        result = run(cfg)  # new, unfinished or shorter: resumes from its last checkpoint
    return {"adapter": result.adapter, "log": result.step_logs()}, time.perf_counter() - t0


def validate(run_dir: Path, adapter: str) -> dict:
    """F1 / BLEU-1 / EM (×100) of the greedy answerer on all validation questions, and F1 per question."""
    import pandas as pd

    from memr1.runs import read_result
    from memr1.stages.evaluate import EvalConfig, EvalResult, run

    if not (run_dir / "metrics.json").is_file():
        run(
            EvalConfig.from_params(
                {**COMMON, "system": "replay", "split": "validation", "limit": 0, "max_turns": 0,
                 "answer_tokens": 32, "answer_adapter": adapter, "run_dir": str(run_dir)}
            ),
            progress=False,
        )  # fmt: skip
    res = read_result(run_dir, EvalResult).result
    records = pd.read_parquet(run_dir / "records.parquet")
    overall = res.table[-1]
    return {
        **{k: overall[k] for k in ("f1", "bleu1", "em")},
        "per_question_f1": dict(zip(records["qid"], (100 * records["f1"]).round(4))),
        "per_question_format": answer_lines(records),
    }


def answer_lines(records) -> dict[str, float]:
    """Per question, 100 when the raw output writes the ``**Answer:**`` line, else 0."""
    from memr1.agents.answer import ANSWER_MARKER

    return {q: 100.0 * (ANSWER_MARKER in (raw or "")) for q, raw in zip(records["qid"], records["raw_output"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--recipe", nargs="+", default=["lr5e-4"], help=f"names from RECIPES ({', '.join(RECIPES)}), or <name>-lr0"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--probe", type=int, default=16, help="probe questions (first of conv-30)")
    ap.add_argument("--probe-every", type=int, default=20)
    ap.add_argument("--out", default="docs/results/answer_rl")
    ap.add_argument("--runs", default="runs/experiments/answer_rl", help="folder of the training and validation runs")
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json; run nothing")
    args = ap.parse_args()
    global RUNS
    RUNS = Path(args.runs)
    results_file = Path(args.out + ".json")
    if not args.table_only:
        for name in args.recipe:
            recipe(name)  # an unknown name fails before anything runs
        for seed in args.seeds:
            for name in args.recipe:
                key = f"{name}-s{args.steps}-seed{seed}"
                results = _load(results_file)
                if "before" not in results:
                    results["before"] = validate(RUNS / "before", "")
                    _save(results_file, results)
                if key in results["runs"]:
                    continue
                trained, train_s = train(name, seed, args)
                after = validate(RUNS / key / "validate", trained["adapter"])
                results = _load(results_file)  # another process may have added runs meanwhile
                results["runs"][key] = {
                    "recipe": name, "seed": seed, "settings": recipe(name), "steps": len(trained["log"]),
                    "train_s": train_s, "log": trained["log"], "validation": after,
                    "command": f"experiments/answer_rl.py --recipe {name} --seeds {seed} --steps {args.steps} "
                               f"--probe {args.probe} --probe-every {args.probe_every}",
                    "date": time.strftime("%Y-%m-%d"),
                }  # fmt: skip
                _save(results_file, results)
                print(key, {k: after[k] for k in ("f1", "bleu1", "em")}, f"{train_s / 60:.1f} min", flush=True)
    results = _load(results_file)
    if _backfill_formats(results):  # runs validated before the answer-line column existed
        _save(results_file, results)
    write_table(results, args.out)


def _backfill_formats(results: dict) -> bool:
    """Add ``per_question_format`` from the stored records.parquet of runs that lack it; True if any changed."""
    import pandas as pd

    changed = False
    for key, entry in [("before", results.get("before")), *((k, r["validation"]) for k, r in results["runs"].items())]:
        path = RUNS / key / "records.parquet" if key == "before" else RUNS / key / "validate" / "records.parquet"
        if entry is not None and "per_question_format" not in entry and path.is_file():
            entry["per_question_format"] = answer_lines(pd.read_parquet(path))
            changed = True
    return changed


def _trend(log: list[dict]) -> str:
    """Training signal, mean of the first 10 → last 10 steps, and the flat-group share: the reward of an RL run,
    the loss of an SFT run (which has no groups)."""
    key = "reward" if "reward" in log[0] else "loss"
    first, last = (statistics.mean(e[key] for e in part) for part in (log[:10], log[-10:]))
    flat = f"{statistics.mean(e['frac_reward_zero_std'] for e in log):.2f}" if key == "reward" else "–"
    return f"{'' if key == 'reward' else 'loss '}{first:.3f} → {last:.3f} | {flat}"


def vs_start_interval(results: dict, run: dict, qids: list[str]):
    """Paired interval of (run − its start) F1 for a run with ``init_adapter`` (the start: the longest run of that
    recipe and seed), else None."""
    from memr1.eval.bootstrap import paired_bootstrap

    init = run["settings"].get("init_adapter")
    starts = [r for r in results["runs"].values() if r["recipe"] == init and r["seed"] == run["seed"]]
    if not init or not starts:
        return None
    start = max(starts, key=lambda r: r["steps"])["validation"]["per_question_f1"]
    return paired_bootstrap([run["validation"]["per_question_f1"][q] for q in qids], [start[q] for q in qids])


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def _save(path: Path, results: dict) -> None:
    from memr1.files import write_json_atomic

    write_json_atomic(path, results)


def write_table(results: dict, out: str) -> None:
    from memr1.eval.bootstrap import paired_bootstrap

    before = results["before"]
    qids = sorted(before["per_question_f1"])
    base = [before["per_question_f1"][q] for q in qids]
    algorithms = sorted({r["settings"].get("algorithm", "grpo") for r in results["runs"].values()})
    lines = [
        "# Answer-Agent RL on SmolLM2-135M (CPU): recipes on all validation questions",
        "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, no GPU. Training: conv-26 questions, "
        "prompt style `direct`, 5 memories per speaker (LoCoMo's observations), completions ≤ 32 tokens; "
        f"algorithms run: {', '.join(algorithms)}"
        " (GRPO and PPO on memr1's shared-prompt engine, SFT on TRL's SFTTrainer). Validation: all "
        f"{len(qids)} conv-30 questions, greedy, scores ×100. Interval: paired bootstrap 95% over questions of "
        "(trained − untrained) F1 (10,000 resamples). Each run's command is in the .json.",
        "",
        f"Untrained: F1 {before['f1']:.1f}, BLEU-1 {before['bleu1']:.1f}, EM {before['em']:.1f}"
        + (
            f", answer line written in {statistics.mean(before['per_question_format'].values()):.0f}% of outputs."
            if "per_question_format" in before
            else "."
        ),
        "",
        "| run | settings (beside the base) | steps | val F1 | Δ F1 [95% CI] | val BLEU-1 | val EM "
        "| answer line, % of val | Δ answer line [95% CI] | Δ F1 vs its start [95% CI] "
        "| train reward (SFT: loss), first 10 → last 10 steps | flat groups | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_recipe: dict[tuple[str, int], list[dict]] = {}
    for key, r in sorted(results["runs"].items()):
        by_recipe.setdefault((r["recipe"], r["steps"]), []).append(r)
        v = r["validation"]
        d = paired_bootstrap([v["per_question_f1"][q] for q in qids], base)
        over = {k: x for k, x in r["settings"].items() if BASE.get(k) != x} or "—"
        fmt, dfmt = "–", "–"
        if "per_question_format" in v and "per_question_format" in before:
            fmt = f"{statistics.mean(v['per_question_format'].values()):.0f}"
            dfmt = str(paired_bootstrap([v["per_question_format"][q] for q in qids],
                                        [before["per_question_format"][q] for q in qids]))  # fmt: skip
        vs_start = vs_start_interval(results, r, qids)
        lines.append(
            f"| {key} | {over} | {r['steps']} | {v['f1']:.1f} | {d} | {v['bleu1']:.1f} | {v['em']:.1f} | {fmt} | "
            f"{dfmt} | {vs_start or '–'} | {_trend(r['log'])} | {r['train_s'] / 60:.0f} |"
        )
    lines += [
        "",
        "Per recipe and training length, over seeds (the goal: mean − 2σ above the untrained F1 and the paired "
        "interval above 0):",
        "",
    ]
    lines += [
        "| recipe | steps | seeds | val F1 | mean − 2σ | intervals above 0 | intervals below 0 | above its start |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, steps), runs in sorted(by_recipe.items()):
        f1s = [r["validation"]["f1"] for r in runs]
        ds = [paired_bootstrap([r["validation"]["per_question_f1"][q] for q in qids], base) for r in runs]
        low = f"{statistics.mean(f1s) - 2 * statistics.stdev(f1s):.1f}" if len(f1s) > 1 else "–"
        starts = [i for i in (vs_start_interval(results, r, qids) for r in runs) if i is not None]
        above = f"{sum(i.lo > 0 for i in starts)} of {len(starts)}" if starts else "–"
        lines.append(
            f"| {name} | {steps} | {', '.join(str(r['seed']) for r in runs)} | {mean_std(f1s)} | {low} | "
            f"{sum(d.lo > 0 for d in ds)} of {len(ds)} | {sum(d.hi < 0 for d in ds)} of {len(ds)} | {above} |"
        )
    lines += ["", "Curves per run (every step: reward, flat-group share, entropy, completion tokens, cut at the cap; "
              "probe rows: greedy F1 ×100, format rate, tokens):", ""]  # fmt: skip
    for key, r in sorted(results["runs"].items()):
        log = r["log"]
        every = max(1, len(log) // 10)
        cells = [
            f"{e['step']}: r {e['reward']:.2f} flat {e['frac_reward_zero_std']:.1f} H {e['entropy']:.2f} "
            f"len {e['completions/mean_length']:.0f} cut {e['completions/clipped_ratio']:.2f}"
            if "reward" in e
            else f"{e['step']}: loss {e['loss']:.3f} H {e['entropy']:.2f} token acc {e['mean_token_accuracy']:.2f}"
            for e in log[every - 1 :: every]
        ]
        probes = [
            f"{e['step']}: F1 {100 * e['eval/f1']:.1f} fmt {e['eval/format']:.2f} len {e['eval/length']:.0f}"
            for e in log if "eval/f1" in e
        ]  # fmt: skip
        lines += [f"- **{key}**: " + "; ".join(cells), "  - probe: " + ("; ".join(probes) or "none")]
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
