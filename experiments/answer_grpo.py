"""Answer-Agent GRPO on SmolLM2-135M (CPU): does RL move validation scores at this scale?

For each seed, trains the Answer Agent on conv-26 (stage 03) and scores the adapter on the first
``--val`` validation questions of conv-30 (stage 05, system ``replay`` so only the answerer varies),
next to the same run with learning rate 0 (the control: its greedy validation equals the untrained
model's, and its training-reward curve shows what sampling noise alone looks like). Before any
training it measures how often a GRPO group's rewards differ at all (a group with one reward value
teaches nothing), for exact match (the paper's reward) and for F1 (the ablation), on the untrained
model's own samples.

Budgets sized from ``docs/results/answer_format.md``: the ``direct`` prompt style (answer line only),
5 memories per speaker, completions of at most 32 tokens. Resumable: a finished run (its metrics.json)
is not redone. Results: ``docs/results/answer_grpo.{json,md}``.

    .venv/bin/python experiments/answer_grpo.py --seeds 0 1 2 --steps 16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from stats import mean_std

RUNS = Path("runs/experiments/answer_grpo")
COMMON = {"profile": "cpu", "model": "smollm2-135m", "k_per_speaker": 5, "answer_style": "direct"}


def train_config(seed: int, lr: float, reward: str, steps: int):
    from memr1.stages.train_answer import AnswerTrainConfig

    return AnswerTrainConfig.from_params(
        {
            **COMMON,
            "seed": seed,
            "learning_rate": lr,
            "reward": reward,
            "steps": steps,
            "num_generations": 4,
            "batch_size": 8,
            "max_completion_length": 32,
            "temperature": 1.0,
            "lora_r": 16,
            "lora_alpha": 32,
            "train_limit": 0,
            "eval_every": 0,
            "save_every": 0,
            "store_dir": str(RUNS / "store"),
            "run_dir": str(RUNS / f"{reward}-lr{lr:g}-seed{seed}" / "train"),
        }
    )


def validate(run_dir: Path, adapter: str, n: int) -> dict:
    """F1 / BLEU-1 / EM (×100) of the greedy answerer on the first ``n`` validation questions."""
    from memr1.runs import read_result
    from memr1.stages.evaluate import EvalConfig, EvalResult, run

    if (run_dir / "metrics.json").is_file():
        res = read_result(run_dir, EvalResult).result
    else:
        res = run(
            EvalConfig.from_params(
                {
                    **COMMON,
                    "system": "replay",
                    "split": "validation",
                    "limit": n,
                    "max_turns": 0,
                    "answer_tokens": 32,
                    "answer_adapter": adapter,
                    "run_dir": str(run_dir),
                }
            ),
            progress=False,
        )
    overall = res.table[-1]
    return {k: overall[k] for k in ("f1", "bleu1", "em")}


def group_signal(n_questions: int, group: int, seed: int) -> dict:
    """Share of GRPO groups (``group`` samples at temperature 1 per training question) whose EM or F1
    rewards are not all equal, for the untrained model."""
    from memr1.llm.backends import make_generator
    from memr1.llm.generate import Sampling
    from memr1.rl.datasets import answer_agent_rows
    from memr1.rl.rewards import ANSWER_REWARDS
    from memr1.stages.train_answer import teacher_data

    cfg = train_config(seed, 0.0, "em", 1)
    data, embedder, store = teacher_data(cfg)
    rows = answer_agent_rows(
        data, "train", embedder, store_dir=store, k_per_speaker=5, limit=n_questions, style="direct"
    )
    gen = make_generator("smollm2-135m", "transformers")
    prompts = [r["prompt"] for r in rows for _ in range(group)]
    texts = [
        [{"role": "assistant", "content": g.text}]
        for g in gen.generate(prompts, Sampling(max_new_tokens=32, temperature=1.0, seed=seed))
    ]
    out = {"questions": len(rows), "group": group}
    for name, reward in ANSWER_REWARDS.items():
        scores = reward(texts, gold=[r["gold"] for r in rows for _ in range(group)])
        groups = [scores[i : i + group] for i in range(0, len(scores), group)]
        out[f"{name}_groups_with_signal_pct"] = 100 * sum(len(set(g)) > 1 for g in groups) / len(groups)
        out[f"{name}_mean_reward"] = sum(scores) / len(scores)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--rewards", nargs="+", default=["f1"], help="em (the paper's) and/or f1 (the ablation)")
    ap.add_argument("--val", type=int, default=24, help="validation questions (conv-30, file order)")
    ap.add_argument("--out", default="docs/results/answer_grpo")
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json; run nothing")
    args = ap.parse_args()
    if args.table_only:
        return write_table(json.loads(Path(args.out + ".json").read_text()), args)
    from memr1.runs import read_result
    from memr1.stages.train_answer import AnswerTrainResult, run

    results_file = Path(args.out + ".json")
    results = json.loads(results_file.read_text()) if results_file.exists() else {"runs": {}}
    started = time.perf_counter()
    if "group_signal" not in results:
        results["group_signal"] = group_signal(16, 4, seed=0)
        print("group signal before training:", results["group_signal"], flush=True)
    results["before"] = validate(RUNS / "before", "", args.val)
    print("validation before training:", results["before"], flush=True)
    for seed in args.seeds:
        for reward in args.rewards:
            for lr in (args.lr, 0.0):
                key = f"{reward}-lr{lr:g}-seed{seed}"
                if key in results["runs"]:
                    continue
                cfg = train_config(seed, lr, reward, args.steps)
                t0 = time.perf_counter()
                if (Path(cfg.run_dir) / "metrics.json").is_file():
                    trained = read_result(cfg.run_dir, AnswerTrainResult).result
                else:
                    trained = run(cfg)
                train_s = time.perf_counter() - t0
                steps = [e for e in trained.log_history if "reward" in e]
                after = validate(RUNS / key / "validate", str(Path(cfg.run_dir) / "adapter"), args.val)
                results["runs"][key] = {
                    "seed": seed,
                    "reward": reward,
                    "learning_rate": lr,
                    "steps": trained.steps,
                    "train_s": train_s,
                    "reward_curve": [e["reward"] for e in steps],
                    "zero_std_frac": [e.get("frac_reward_zero_std") for e in steps],
                    "validation": after,
                }
                results_file.parent.mkdir(parents=True, exist_ok=True)
                results_file.write_text(json.dumps(results, indent=1))
                print(key, results["runs"][key]["validation"], f"{train_s:.0f} s", flush=True)
    results["wall_s_this_invocation"] = time.perf_counter() - started
    results["date"] = time.strftime("%Y-%m-%d")
    results_file.write_text(json.dumps(results, indent=1))
    write_table(results, args)


def write_table(results: dict, args: argparse.Namespace) -> None:
    rows = []
    for reward in args.rewards:
        for lr in (args.lr, 0.0):
            runs = [r for r in results["runs"].values() if r["reward"] == reward and r["learning_rate"] == lr]
            if not runs:
                continue
            first = [statistics.mean(r["reward_curve"][:4]) for r in runs]
            last = [statistics.mean(r["reward_curve"][-4:]) for r in runs]
            rows.append(
                f"| {reward} | {lr:g} | {len(runs)} ({', '.join(str(r['seed']) for r in runs)}) | "
                f"{mean_std([100 * x for x in first])} → {mean_std([100 * x for x in last])} | "
                + " | ".join(mean_std([r["validation"][m] for r in runs]) for m in ("f1", "bleu1", "em"))
                + f" | {statistics.mean(r['train_s'] for r in runs) / 60:.1f} |"
            )
    b, g = results["before"], results["group_signal"]
    command = (
        f"experiments/answer_grpo.py --seeds {' '.join(map(str, args.seeds))} --steps {args.steps} "
        f"--lr {args.lr:g} --rewards {' '.join(args.rewards)} --val {args.val}"
    )
    header = (
        "| reward | learning rate | seeds | training reward, first 4 → last 4 steps | val F1 | val BLEU-1 | val EM |"
    )
    date = results.get("date", time.strftime("%Y-%m-%d"))
    text = f"""# Answer-Agent GRPO on SmolLM2-135M (CPU)

{date}, {platform.machine()} CPU, 2 cores, no GPU. Command: `.venv/bin/python {command}`.
Budgets: {args.steps} GRPO steps of 2 conv-26 questions × 4 completions (≤ 32 tokens, temperature 1), LoRA r 16 on
q/k/v/o, constant learning rate, prompt style `direct`, 5 memories per speaker (LoCoMo's observations as memory).
Validation: first {args.val} conv-30 questions, greedy, same prompt; scores ×100.

**Before training.** Validation F1 {b["f1"]:.1f}, BLEU-1 {b["bleu1"]:.1f}, EM {b["em"]:.1f}. Of {g["questions"]}
training questions sampled 4 times each, the rewards within a group differ in {g["em_groups_with_signal_pct"]:.0f}%
of groups under exact match (mean reward {g["em_mean_reward"]:.3f}) and {g["f1_groups_with_signal_pct"]:.0f}% under
F1 (mean {g["f1_mean_reward"]:.3f}): a group whose rewards are all equal has zero advantage and teaches nothing.
The paper's reward is EM; F1 is a named ablation here (`-p train_answer.reward=f1`).

{header} minutes per run |
|---|---|---|---|---|---|---|---|
"""
    text += "\n".join(rows) + "\n"
    rises = {}
    for lr in (args.lr, 0.0):
        runs = [r for r in results["runs"].values() if r["learning_rate"] == lr]
        if runs:
            rises[lr] = [
                100 * (statistics.mean(r["reward_curve"][-4:]) - statistics.mean(r["reward_curve"][:4])) for r in runs
            ]
    if len(rises) == 2:  # numbers only: the reader compares them (the lr-0 run's rise is question draw, not learning)
        text += (
            f"\nTraining reward, last 4 minus first 4 steps (×100): {mean_std(rises[args.lr])} at learning rate "
            f"{args.lr:g}, {mean_std(rises[0.0])} at learning rate 0 (the control, same question draws). "
        )
    text += (
        "Minutes per run are wall time; some runs shared the 2 cores with other jobs (per-run seconds in the .json).\n"
    )
    Path(args.out + ".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
