"""Memory-Manager GRPO on SmolLM2-135M (CPU): valid outputs, operation mix and the frozen agent's scores.

For each seed, trains the Memory Manager on conv-26 (stage 04: each sampled operation list is applied
to a fork of the teacher bank, a frozen Answer Agent answers the turn's linked questions from it)
and scores the greedy manager before and after training on the first ``--val`` manager turns of
conv-30: the share of outputs the bank accepted, the operations they applied, and the frozen
agent's EM and F1 on the linked questions. The frozen agent is the untrained model (the policy with
its LoRA switched off). The same run with learning rate 0 is the control. Before training it also
measures how often a GRPO group's rewards differ at all, under EM (the paper's score) and F1.

Budgets: the ``lines`` manager prompt (what a 135M model can write; docs/results/demo_cpu.md),
5 related memories per fact, completions of at most 128 tokens, the frozen agent's ``direct``
answers of at most 32 tokens from 5 memories per speaker. Resumable: a finished cell is not redone.
Results: ``docs/results/manager_grpo.{json,md}``.

    .venv/bin/python experiments/manager_grpo.py --seeds 0 1 2 --steps 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from stats import mean_std

RUNS = Path("runs/experiments/manager_grpo")
MODEL, K, MAX_TOKENS, ANSWER_TOKENS = "smollm2-135m", 5, 128, 32


def train_config(seed: int, lr: float, steps: int):
    from memr1.stages.train_manager import ManagerTrainConfig

    return ManagerTrainConfig.from_params(
        {
            "profile": "cpu",
            "model": MODEL,
            "seed": seed,
            "learning_rate": lr,
            "reward": "f1",
            "memory_style": "lines",
            "steps": steps,
            "num_generations": 4,
            "batch_size": 4,
            "max_completion_length": MAX_TOKENS,
            "answer_tokens": ANSWER_TOKENS,
            "answer_style": "direct",
            "k_per_speaker": K,
            "k_similar": 5,
            "lora_r": 16,
            "lora_alpha": 32,
            "train_limit": 0,
            "eval_limit": 0,
            "eval_every": 0,
            "save_every": 0,
            "store_dir": str(RUNS / "store"),
            "run_dir": str(RUNS / f"lr{lr:g}-seed{seed}" / "train"),
        }
    )


def _setup(n_val: int):
    """Training rows (conv-26), validation rows (conv-30), EM / F1 rewards around the plain frozen agent."""
    from memr1.agents.answer import AnswerAgent
    from memr1.llm.backends import make_generator
    from memr1.llm.generate import Sampling
    from memr1.rl.datasets import manager_rows
    from memr1.rl.rewards import ManagerReward
    from memr1.stages.train_answer import teacher_data

    data, embedder, store = teacher_data(train_config(0, 0.0, 1).resolved())
    rows = {
        split: manager_rows(data, split, embedder, store_dir=store, k_similar=5, style="lines")
        for split in ("train", "validation")
    }
    frozen = make_generator(MODEL, "transformers")
    agent = AnswerAgent(frozen, Sampling(max_new_tokens=ANSWER_TOKENS), k_per_speaker=K, style="direct")
    rewards = {s: ManagerReward(agent, embedder, k_per_speaker=K, score=s) for s in ("em", "f1")}
    return rows["train"], rows["validation"][:n_val], rewards, frozen


def score_manager(generator, rows, rewards, sampling) -> tuple[dict, list[list[float]]]:
    """Greedy (or sampled) manager outputs for ``rows``, scored: valid share, op mix, EM, F1 (×100)."""
    gens = generator.generate([r["prompt"] for r in rows], sampling)
    texts = [g.text for g in gens]
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    out: dict = {}
    per_row: list[list[float]] = []
    for name, reward in rewards.items():
        reward.log.clear()
        per_row.append(reward(chat, **columns))
        out[name] = 100 * statistics.mean(per_row[-1])
    log = rewards["f1"].log
    out["valid"] = 100 * statistics.mean(float(r["valid"]) for r in log)
    ops = {k: sum(int(r[f"n_{k}"]) for r in log) for k in ("add", "update", "delete", "noop")}
    out["ops"] = ops
    out["truncated"] = 100 * statistics.mean(g.finish_reason == "length" for g in gens)
    return out, per_row


def group_signal(rows, rewards, generator, group: int, seed: int) -> dict:
    """Share of training rows whose ``group`` sampled outputs get rewards that are not all equal."""
    from memr1.llm.generate import Sampling

    found = {"em": [], "f1": []}
    for i, row in enumerate(rows):
        sampling = Sampling(max_new_tokens=MAX_TOKENS, temperature=1.0, seed=seed + i)
        _, per_row = score_manager(generator, [row] * group, rewards, sampling)
        for name, scores in zip(("em", "f1"), per_row):
            found[name].append(len(set(scores)) > 1)
    return {name: 100 * statistics.mean(v) for name, v in found.items()} | {"rows": len(rows), "group": group}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--val", type=int, default=12, help="validation manager turns (conv-30, in order)")
    ap.add_argument("--signal-rows", type=int, default=6, help="training turns sampled for the group signal")
    ap.add_argument("--out", default="docs/results/manager_grpo")
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json; run nothing")
    args = ap.parse_args()
    out = Path(args.out).with_suffix(".json")
    results = json.loads(out.read_text()) if out.exists() else {}
    if not args.table_only:
        from memr1.files import write_json_atomic
        from memr1.llm.backends import make_generator
        from memr1.llm.generate import Sampling
        from memr1.stages.train_manager import run

        started = time.time()
        results.setdefault("started", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        results["machine"] = f"{platform.machine()}, {__import__('os').cpu_count()} cores, torch threads 1"
        train_rows, rows, rewards, frozen = _setup(args.val)
        greedy = Sampling(max_new_tokens=MAX_TOKENS)

        before_s = results.get("wall_s", 0.0)  # earlier invocations of a resumed run

        def save() -> None:
            results["wall_s"] = before_s + time.time() - started
            write_json_atomic(out, results)

        if "before" not in results:
            results["before"], _ = score_manager(frozen, rows, rewards, greedy)
            print("before", results["before"], flush=True)
            save()
        if "signal" not in results:
            step = max(1, len(train_rows) // args.signal_rows)
            results["signal"] = group_signal(train_rows[::step][: args.signal_rows], rewards, frozen, 4, 0)
            print("signal", results["signal"], flush=True)
            save()
        for lr in (args.lr, 0.0):
            for seed in args.seeds:
                key = f"lr{lr:g}-seed{seed}"
                if key in results.get("runs", {}):
                    continue
                t0 = time.time()
                cfg = train_config(seed, lr, args.steps)
                trained = run(cfg)
                policy = make_generator(MODEL, "transformers", lora_path=trained.adapter)
                after, _ = score_manager(policy, rows, rewards, greedy)
                logs = trained.step_logs()
                curve = [round(100 * e.get("reward", 0.0), 2) for e in logs]
                results.setdefault("runs", {})[key] = {
                    "lr": lr,
                    "seed": seed,
                    "after": after,
                    "train_reward": curve,
                    "frac_reward_zero_std": [e.get("frac_reward_zero_std") for e in logs],
                    "op_mix": trained.op_mix if hasattr(trained, "op_mix") else None,
                    "train_s": round(time.time() - t0, 1),
                }
                print(key, after, curve, flush=True)
                save()
                del policy
        results["config"] = {
            "model": MODEL,
            "steps": args.steps,
            "lr": args.lr,
            "seeds": args.seeds,
            "val": args.val,
            "group": 4,
            "questions_per_step": 1,
            "max_completion_length": MAX_TOKENS,
            "answer_tokens": ANSWER_TOKENS,
            "k_per_speaker": K,
            "reward": "f1",
            "memory_style": "lines",
        }
        save()
    write_table(results, args)


def write_table(results: dict, args: argparse.Namespace) -> None:
    cfg, before, runs = results["config"], results["before"], results.get("runs", {})
    lines = [
        "# Memory-Manager GRPO on SmolLM2-135M (CPU)",
        "",
        f"Made by `experiments/manager_grpo.py --seeds {' '.join(map(str, cfg['seeds']))} --steps {cfg['steps']}` "
        f"on {results['started']}, {results['machine']}; wall time {results['wall_s'] / 60:.0f} min.",
        "",
        f"Training: conv-26 manager turns, {cfg['steps']} steps × {cfg['questions_per_step']} turn × "
        f"{cfg['group']} completions of ≤ {cfg['max_completion_length']} tokens (`lines` prompt), lr "
        f"{cfg['lr']:g} vs 0, LoRA r 16; reward: mean F1 of the frozen agent (untrained SmolLM2, `direct`, "
        f"≤ {cfg['answer_tokens']} tokens, {cfg['k_per_speaker']} memories per speaker) on the turn's linked "
        "questions (EM, the paper's score, gives no signal; see below). Validation: the greedy manager on the "
        f"first {cfg['val']} manager turns of conv-30; valid = outputs the bank accepted whole; EM / F1 ×100.",
        "",
    ]
    if "signal" in results:
        sig = results["signal"]
        lines += [
            f"**GRPO signal before training** ({sig['rows']} conv-26 turns × {sig['group']} samples): groups whose "
            f"rewards differ: EM {sig['em']:.0f}%, F1 {sig['f1']:.0f}%.",
            "",
        ]

    def ops(o: dict) -> str:
        return " / ".join(
            f"{o[k]:g}" if isinstance(o[k], int) else f"{o[k]:.1f}" for k in ("add", "update", "delete", "noop")
        )

    lines += [
        "| run | seeds | valid % | EM | F1 | ops ADD / UPDATE / DELETE / NONE per run |",
        "|---|---|---|---|---|---|",
        f"| untrained | – | {before['valid']:.1f} | {before['em']:.1f} | {before['f1']:.1f} | {ops(before['ops'])} |",
    ]
    for lr in (cfg["lr"], 0.0):
        got = [r for r in runs.values() if r["lr"] == lr]
        if not got:
            continue
        seeds = ",".join(str(r["seed"]) for r in got)
        per_run = {k: statistics.mean(r["after"]["ops"][k] for r in got) for k in before["ops"]}
        lines.append(
            f"| GRPO lr {lr:g} | {seeds} | {mean_std([r['after']['valid'] for r in got])} | "
            f"{mean_std([r['after']['em'] for r in got])} | {mean_std([r['after']['f1'] for r in got])} | "
            f"{ops(per_run)} |"
        )
    lines += ["", "Training reward (F1 ×100) per step:", ""]
    for key, r in sorted(runs.items()):
        lines.append(f"- {key}: {r['train_reward']} ({r['train_s'] / 60:.1f} min)")
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
