"""Memory-Manager RL on SmolLM2-135M (CPU), judged downstream through the whole validation conversation.

Each run trains the Memory Manager on conv-26 (stage 04, memr1's engine) with one named recipe and seed. The
reward is the F1 of a frozen Answer Agent on the turn's linked questions after the sampled operations are applied
to a fork of the teacher bank; the frozen agent is the SFT Answer Agent of the same seed
(``experiments/answer_rl.py --recipe sft-lr5e-4``), whose answers score F1 26 on real banks where the untrained
model's score 15, so more groups see rewards that differ. Then the trained manager builds the banks of conv-30
(stage 05, system ``memory-r1``: the untrained extractor, the trained manager, over all 369 turns) and the same
frozen SFT agent answers all 81 questions from them. Its reference is the run of
``experiments/validation_pipeline.py`` where that agent answers from the untrained manager's banks
(``sft-lr5e-4-seed<k>``), so only the manager differs; the paired bootstrap interval is over questions. The
learning-rate-0 control is not run through the conversation: a LoRA whose B matrices stay 0 writes exactly the
untrained manager's greedy outputs, which the reference already is.

Resumable: training checkpoints every 10 steps and a rerun continues it; a finished stage-05 run is read back, a
killed bank build continues after its last turn. Results: ``<out>.json`` and ``<out>.md``.

    MEMR1_DATA_DIR=../shared/data OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python \\
        experiments/manager_rl.py --recipe grpo-lr1e-4-t0.7 --seeds 0 1 2 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

from stats import mean_std
from validation_pipeline import evaluate

RUNS = Path("runs/experiments/manager_rl")
SCORERS = Path("runs/experiments/answer_rl")
PIPELINE = Path("runs/experiments/validation_pipeline")
SCORER = "sft-lr5e-4"
FULL_AGENT = "sft-grpo-lr1e-4-t0.7"
"""The Answer Agent of Memory-R1's whole row (RL after SFT, experiments/answer_rl.py), with the trained manager."""
BASE = {
    "profile": "cpu",
    "model": "smollm2-135m",
    "engine": "memr1",
    "reward": "f1",
    "memory_style": "lines",
    "learning_rate": 1e-4,
    "temperature": 0.7,
    "num_generations": 4,
    "questions_per_step": 2,
    "batch_size": 4,
    "max_completion_length": 128,
    "answer_tokens": 32,
    "answer_style": "direct",
    "k_per_speaker": 5,
    "k_similar": 5,
    "lora_r": 16,
    "lora_alpha": 32,
    "beta": 0.0,
}
RECIPES = {
    "grpo-lr1e-4-t0.7": {},
    "ppo-lr1e-4-t0.7": {"algorithm": "ppo", "critic_learning_rate": 1e-3},
}
"""The recipes this script knows (BASE with these overrides); the results name the ones that ran."""


def train(name: str, seed: int, steps: int) -> dict:
    from memr1.runs import read_result
    from memr1.stages.train_manager import ManagerTrainConfig, ManagerTrainResult, run

    scorer = SCORERS / f"{SCORER}-seed{seed}" / "train"
    if not (scorer / "adapter" / "adapter_config.json").is_file():
        raise SystemExit(f"the frozen agent {scorer} has no adapter: run experiments/answer_rl.py --recipe {SCORER}")
    run_dir = RUNS / f"{name}-seed{seed}" / "train"
    cfg = ManagerTrainConfig.from_params(
        {**BASE, **RECIPES[name], "seed": seed, "steps": steps, "answer_model": str(scorer), "train_limit": 0,
         "eval_limit": 0, "eval_every": 0, "save_every": 10, "resume": True, "store_dir": str(RUNS / "store"),
         "run_dir": str(run_dir)}
    )  # fmt: skip
    t0 = time.perf_counter()
    result = read_result(run_dir, ManagerTrainResult).result if (run_dir / "metrics.json").is_file() else None
    if result is None or result.steps < steps:
        result = run(cfg)  # new, unfinished or shorter: resumes from its last checkpoint
    log = result.step_logs()
    return {
        "adapter": result.adapter,
        "scorer": str(scorer),
        **curves(log),
        "op_mix": result.op_mix,
        "train_s": round(time.perf_counter() - t0, 1),
    }


def curves(log: list[dict]) -> dict[str, list]:
    """The per-step columns the tables read from a training log: reward (F1 ×100), flat-group share, seconds,
    gradient norm, entropy and completion length."""
    return {
        "reward": [round(100 * e.get("reward", 0.0), 2) for e in log],
        "zero_std": [e.get("frac_reward_zero_std") for e in log],
        "step_s": [round(e.get("step_s", 0.0), 1) for e in log],
        "grad_norm": [round(e.get("grad_norm", 0.0), 3) for e in log],
        "entropy": [round(e.get("entropy", 0.0), 3) for e in log],
        "length": [round(e.get("completions/mean_length", 0.0), 1) for e in log],
    }


def valid_share(run: dict) -> float:
    """Share (×100) of the manager's outputs over the conversation that the bank accepted whole."""
    calls = run["truncated"]["manager"]["calls"]
    return 100 * (1 - sum(run["operations"]["rejected_outputs"].values()) / calls) if calls else float("nan")


def validate(name: str, seed: int, adapter: str) -> dict:
    """The SFT agent on the untrained manager's banks (reference) and on this manager's (trained); and Memory-R1's
    whole row: the RL-after-SFT agent (``FULL_AGENT``) on this manager's banks, with the same agent on the untrained
    manager's banks beside it."""
    sft, rl = (str(SCORERS / f"{recipe}-seed{seed}" / "train") for recipe in (SCORER, FULL_AGENT))
    runs = {
        "reference": evaluate(PIPELINE, f"{SCORER}-seed{seed}", "memory-r1-answer", sft),
        "trained": evaluate(PIPELINE, f"manager-{name}-seed{seed}", "memory-r1", sft, manager_adapter=adapter),
    }
    if (Path(rl) / "adapter").is_dir():
        runs["rl_reference"] = evaluate(PIPELINE, f"{FULL_AGENT}-seed{seed}", "memory-r1-answer", rl)
        runs["memory_r1"] = evaluate(
            PIPELINE, f"memory-r1-{name}-{FULL_AGENT}-seed{seed}", "memory-r1", rl, manager_adapter=adapter
        )
    return runs


def write(results: dict, out: Path) -> None:
    from memr1.files import write_json_atomic, write_text_atomic

    lines = [
        "# Memory-Manager RL on SmolLM2-135M (CPU), judged through the whole validation conversation",
        "",
        f"Command: `{results['command']}` ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} "
        "cores, no GPU).",
        "",
        f"Training: conv-26 manager turns, {BASE['questions_per_step']} turns × {BASE['num_generations']} "
        f"completions of ≤ {BASE['max_completion_length']} tokens per step (`lines` prompt), reward: F1 of the "
        f"frozen SFT Answer Agent of the same seed (`{SCORER}`) on the turn's linked questions. Validation: the "
        "manager builds the banks of all 369 turns of conv-30 (greedy, untrained extractor); the same frozen agent "
        "answers all 81 questions; reference: the untrained manager's banks, same agent. Valid = manager outputs "
        "the bank accepted whole. Scores ×100; interval: paired bootstrap 95% over questions of (trained − "
        "reference) F1.",
        "",
        "| run | steps | valid % | ops ADD / UPDATE / DELETE / NOOP | F1 | BLEU-1 | Δ F1 vs untrained manager [95% CI] "
        "| groups with reward variance % | sampled in training, first → last quarter of steps: ADD / UPDATE / "
        "rejected % | minutes in steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    shown: set[str] = set()
    for key, r in sorted(results["runs"].items()):
        if r["reference"]["adapter"] not in shown:  # one reference row per frozen agent
            shown.add(r["reference"]["adapter"])
            lines.append(_row(f"untrained manager ({Path(r['scorer']).parent.name} answers)", r["reference"]))
        lines.append(_row(key, r["trained"], r))
    lines += ["", "Over seeds:", ""]
    for name in RECIPES:
        got = [r for k, r in sorted(results["runs"].items()) if re.sub(r"-s\d+-seed\d+$", "", k) == name]
        if got:
            f1 = [r["trained"]["table"][-1]["f1"] for r in got]
            ref = [r["reference"]["table"][-1]["f1"] for r in got]
            deltas = [_delta(r["trained"], r["reference"]) for r in got]
            above = sum(d.lo > 0 for d in deltas)
            low = statistics.mean(f1) - 2 * statistics.stdev(f1) if len(f1) > 1 else float("nan")
            valid = [valid_share(r["trained"]) for r in got]
            ref_valid = [valid_share(r["reference"]) for r in got]
            lines.append(
                f"- {name} ({len(got)} seeds): F1 {mean_std(f1)} against {mean_std(ref)} from the untrained manager's "
                f"banks (same agents); per seed Δ {', '.join(f'{d.mean:+.1f}' for d in deltas)}, {above} of "
                f"{len(got)} intervals above 0; mean − 2σ {low:.1f}; valid {mean_std(valid)}% against "
                f"{mean_std(ref_valid)}%"
            )
    lines += _whole_row(results)
    lines += ["", "Training, first → last quarter of the steps (means): reward (F1 ×100), gradient norm, entropy per "
              "token, completion length; then the reward per step.", ""]  # fmt: skip
    for k, r in sorted(results["runs"].items()):
        drift = ", ".join(
            f"{name} {_quarters(r.get(name, []))}" for name in ("reward", "grad_norm", "entropy", "length")
        )
        lines.append(f"- {k}: {drift}; reward per step {r['reward']}")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json_atomic(out.with_suffix(".json"), results)
    print("\n".join(lines), flush=True)


def _whole_row(results: dict) -> list[str]:
    """Memory-R1's whole row against ``base`` (untrained extractor, manager and agent) on the same conversation:
    ``memory-r1-answer`` (the RL-after-SFT agent on the untrained manager's banks) and ``memory-r1`` (the same agent
    on the trained manager's banks), per seed, with paired intervals."""
    from memr1.eval.bootstrap import paired_bootstrap

    base, runs = results.get("base"), sorted((k, r) for k, r in results["runs"].items() if "memory_r1" in r)
    if base is None or not runs:
        return []
    qids = sorted(base["per_question_f1"])

    def f1s(run: dict) -> list[float]:
        return [run["per_question_f1"][q] for q in qids]

    lines = [
        "",
        f"**Memory-R1's whole row** against `base` (everything untrained, F1 {base['table'][-1]['f1']:.1f}): the "
        f"Answer Agent trained by RL after SFT (`{FULL_AGENT}`, same seed) alone (`memory-r1-answer`, untrained "
        "manager) and with the trained manager (`memory-r1`).",
        "",
        "| seed | memory-r1-answer F1 | memory-r1 F1 | memory-r1-answer − base [95% CI] | memory-r1 − base [95% CI] "
        "| memory-r1 − memory-r1-answer [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in runs:
        answer, full = r["rl_reference"], r["memory_r1"]
        lines.append(
            f"| {key} | {answer['table'][-1]['f1']:.1f} | {full['table'][-1]['f1']:.1f} | "
            f"{paired_bootstrap(f1s(answer), f1s(base))} | {paired_bootstrap(f1s(full), f1s(base))} | "
            f"{paired_bootstrap(f1s(full), f1s(answer))} |"
        )
    answer = [r["rl_reference"]["table"][-1]["f1"] for _, r in runs]
    full = [r["memory_r1"]["table"][-1]["f1"] for _, r in runs]
    return [*lines, "", f"Over {len(runs)} seed(s): memory-r1-answer {mean_std(answer)}, memory-r1 {mean_std(full)}."]


def _delta(run: dict, ref: dict):
    """Paired bootstrap 95% interval over questions of (``run`` − ``ref``) F1."""
    from memr1.eval.bootstrap import paired_bootstrap

    qids = sorted(run["per_question_f1"])
    return paired_bootstrap([run["per_question_f1"][q] for q in qids], [ref["per_question_f1"][q] for q in qids])


def _quarters(values: list[float]) -> str:
    """``a → b``: the mean of the first and of the last quarter of ``values`` ("–" for none)."""
    if not values:
        return "–"
    q = max(1, len(values) // 4)
    return f"{statistics.mean(values[:q]):.3g} → {statistics.mean(values[-q:]):.3g}"


def _drift(mix: list[dict]) -> str:
    """``ADD a → b / UPDATE c → d / rejected e → f`` (%) from stage 04's op mix (first and last quarter of steps)."""
    if len(mix) != 2:
        return "–"
    first, last = mix
    return " / ".join(f"{100 * first[k]:.0f} → {100 * last[k]:.0f}" for k in ("add", "update", "rejected"))


def _row(label: str, run: dict, trained: dict | None = None) -> str:
    """One table row; ``trained`` (the run's entry) adds its steps, interval against its reference and signal."""

    ops = " / ".join(str(run["operations"]["applied"].get(k, 0)) for k in ("ADD", "UPDATE", "DELETE", "NOOP"))
    overall, steps, tail = run["table"][-1], 0, "– | – | – | – |"
    if trained is not None:
        delta = _delta(run, trained["reference"])
        varied = [100 * (1 - z) for z in trained["zero_std"] if z is not None]
        steps = len(trained["reward"])
        minutes = sum(trained["step_s"]) / 60
        tail = f"{delta} | {statistics.mean(varied):.0f} | {_drift(trained['op_mix'])} | {minutes:.0f} |"
    return (f"| {label} | {steps} | {valid_share(run):.1f} | {ops} | {overall['f1']:.1f} | {overall['bleu1']:.1f} | "
            f"{tail}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", nargs="+", default=["grpo-lr1e-4-t0.7"], help=f"from RECIPES ({', '.join(RECIPES)})")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="docs/results/manager_rl")
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json; run nothing")
    args = ap.parse_args()
    out = Path(args.out).with_suffix(".json")
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    if not args.table_only:
        results["command"] = shlex.join(["experiments/manager_rl.py", *sys.argv[1:]])
        results["base"] = evaluate(PIPELINE, "untrained", "base")  # read back: validation_pipeline.py made it
        for seed in args.seeds:
            for name in args.recipe:
                key = f"{name}-s{args.steps}-seed{seed}"
                if key not in results["runs"]:
                    results["runs"][key] = train(name, seed, args.steps)
                    print(key, "trained", results["runs"][key]["reward"], flush=True)
                if "memory_r1" not in results["runs"][key]:  # validation runs are read back once finished
                    results["runs"][key] |= validate(f"{name}-s{args.steps}", seed, results["runs"][key]["adapter"])
                    write(results, out)
    write(results, out)


if __name__ == "__main__":
    main()
