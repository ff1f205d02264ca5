"""MEM1 at N = 2 on SmolLM2-135M (CPU): PPO against GRPO on the same rollout budget, scored on held-out tasks.

MEM1 trains with PPO; memr1 also has a GRPO-style loss. Both train here from the same model on the same tasks of
the HotpotQA *train* pool at N = 2 (``memr1.rl.mem1_trainer.train_mem1``, MEM1 pruning, MEM1's turn budget), with
the same number of sampled trajectories per step (``--tasks-per-step`` × ``--group-size``), temperature and reward.
The reward is ``f1_format`` by default: the summed F1 of the N answers plus a named format-shaping term of at most
0.2 (``memr1.rl.mem1_rollout.format_score``), because MEM1's own EM reward is 0 for every SmolLM2 rollout
(``docs/results/mem1_signal.md``: 0% of groups with variance under EM or F1, 88% under the shaped rewards).

Every policy (the untrained model, and each algorithm and seed after training) then plays the same
``--eval-tasks`` held-out tasks of the *test* pool at N = 2, greedily, under MEM1 pruning. Per episode: the
training reward, F1, EM and the format score; per policy the mean, and the paired bootstrap 95% interval over
tasks of (trained − untrained) reward and F1; per algorithm the mean ± std over seeds. The training log per step
(reward, groups with variance, PPO's ratio and clip statistics) goes beside.

Resumable: training checkpoints every step (a rerun continues), each evaluated policy is written to
``<out>.json`` as it ends and skipped on rerun; ``--table-only`` re-renders ``<out>.md``.

    MEMR1_DATA_DIR=../shared/data OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python experiments/mem1_algorithms.py \\
        --seeds 0 1 2 --steps 6
    .venv/bin/python experiments/mem1_algorithms.py --model tiny --seeds 0 --steps 1 --eval-tasks 2 \\
        --max-new-tokens 8 --group-size 2 --out /tmp/m1/mem1_algorithms --runs /tmp/m1/runs   # plumbing, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from mem1_horizon import read_log
from stats import mean_std

ALGORITHMS = ("grpo", "ppo")
SCORES = ("reward", "f1", "em", "format")


def settings(args: argparse.Namespace, algorithm: str) -> Any:
    from memr1.rl.mem1_trainer import Mem1TrainSettings

    return Mem1TrainSettings(
        model=args.model, n_objectives=2, steps=args.steps, tasks_per_step=args.tasks_per_step,
        group_size=args.group_size, learning_rate=args.lr, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, reward=args.reward, prompt_style=args.prompt_style, packed=True,
        micro_batch=args.micro_batch,
        algorithm=algorithm, critic_learning_rate=args.critic_lr, ppo_epochs=args.ppo_epochs,
    )  # fmt: skip


def trained_policy(args: argparse.Namespace, algorithm: str, seed: int) -> tuple[Any, list[dict]]:
    """The generator over the model trained with ``algorithm`` for ``seed`` (resumed if checkpointed), its log."""
    from memr1.llm.backends import TransformersGenerator
    from memr1.rl.mem1_trainer import train_mem1

    run_dir = Path(args.runs) / f"{algorithm}-seed{seed}"
    run = train_mem1(settings(args, algorithm), run_dir=run_dir, seed=seed, data_dir=args.data_dir or None)
    run.tokenizer.padding_side = "left"  # batched generation pads on the left
    return TransformersGenerator.from_model(run.model, run.tokenizer, name=f"{args.model}+{algorithm}"), read_log(
        run_dir
    )


def play(args: argparse.Namespace, policy: Any) -> dict[str, Any]:
    """The held-out tasks (the same for every policy), greedy, MEM1 pruning: per-episode scores."""
    from memr1.agents.mem1 import STOP_STRINGS
    from memr1.data.tasks import make_tasks
    from memr1.eval.mem1_metrics import run_episodes, token_counter_for
    from memr1.llm.generate import Sampling
    from memr1.rl.mem1_rollout import episode_reward, format_score

    tasks = make_tasks("hotpotqa", 2, args.eval_tasks, 0, data_dir=args.data_dir or None, split="test")
    start = time.perf_counter()
    eps = run_episodes(
        tasks, policy, ("mem1",), max_turns=-1, count_tokens=token_counter_for(policy),
        sampling=Sampling(max_new_tokens=args.max_new_tokens, stop=STOP_STRINGS), prompt_style=args.prompt_style,
    )  # fmt: skip
    return {
        "tasks": [t.id for t in tasks],
        "reward": [episode_reward(e, args.reward) for e in eps],
        "f1": [float(sum(e.f1)) for e in eps],
        "em": [float(sum(e.em)) for e in eps],
        "format": [format_score(e) for e in eps],
        "stops": [e.stop for e in eps],
        "wall_s": round(time.perf_counter() - start, 1),
    }


def write(results: dict[str, Any], out: Path) -> None:
    from memr1.eval.bootstrap import paired_bootstrap
    from memr1.files import write_json_atomic, write_text_atomic

    cfg, base = results["config"], results.get("untrained")
    lines = [
        "# MEM1 at N = 2: PPO against GRPO on SmolLM2-135M (CPU)",
        "",
        f"Command: `{results['command']}` ({results['started']}, {results['machine']}).",
        "",
        f"Training: HotpotQA train pool, N = 2, {cfg['steps']} steps × {cfg['tasks_per_step']} task(s) × "
        f"{cfg['group_size']} trajectories, temperature {cfg['temperature']}, ≤ {cfg['max_new_tokens']} tokens per "
        f"turn, full fine-tuning at lr {cfg['lr']:g} (PPO: critic lr {cfg['critic_lr']:g}, {cfg['ppo_epochs']} "
        f"epoch(s) × 2 minibatches), reward `{cfg['reward']}`, `{cfg['prompt_style']}` prompt. Evaluation: "
        f"{cfg['eval_tasks']} held-out test-pool tasks at N = 2, greedy, MEM1 pruning; reward / F1 / EM summed over "
        "the 2 objectives; format: `format_score` (0 to 1). Interval: paired bootstrap 95% over tasks of "
        "(trained − untrained).",
        "",
        "| policy | " + " | ".join(SCORES) + " | answered | Δ reward [95% CI] | Δ F1 [95% CI] | eval s |",
        "|---|" + "---|" * (len(SCORES) + 4),
    ]
    for key, got in [("untrained", base)] + sorted((k, v) for k, v in results["runs"].items()):
        if got is None:
            continue
        cells = " | ".join(f"{statistics.mean(got[s]):.3f}" for s in SCORES)
        answered = statistics.mean(s == "answer" for s in got["stops"])
        deltas = ["–", "–"]
        if key != "untrained" and base is not None:
            deltas = [f"{paired_bootstrap(got[s], base[s]):.3f}" for s in ("reward", "f1")]
        lines.append(f"| {key} | {cells} | {answered:.2f} | {' | '.join(deltas)} | {got['wall_s']:.0f} |")
    lines += ["", "Over seeds (held-out reward / F1):", ""]
    for algo in ALGORITHMS:
        runs = [v for k, v in sorted(results["runs"].items()) if k.startswith(algo)]
        if runs:
            reward = [statistics.mean(r["reward"]) for r in runs]
            f1 = [statistics.mean(r["f1"]) for r in runs]
            lines.append(f"- {algo} ({len(runs)} seeds): reward {mean_std(reward, '.3f')}, F1 {mean_std(f1, '.3f')}")
    lines += ["", "Training, per step: mean reward, share of groups with reward variance, and for PPO the largest "
              "ratio deviation after the first minibatch and the clipped share of tokens.", ""]  # fmt: skip
    for key, r in sorted(results["runs"].items()):
        log = r["log"]
        varied = [round(1 - e["groups_flat"] / len(e["tasks"]), 2) for e in log]
        lines.append(f"- {key}: reward {[round(e['reward_mean'], 3) for e in log]}, varied {varied}, ratio dev "
                     f"{_col(log, 'ppo/ratio_dev_later')}, clipped {_col(log, 'ppo/clipfrac')}, train "
                     f"{r['train_s'] / 60:.0f} min")  # fmt: skip
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_json_atomic(out.with_suffix(".json"), results)
    print("\n".join(lines), flush=True)


def _col(log: list[dict], key: str) -> list | str:
    """A rounded column of the training log, or "–" when the algorithm does not log it."""
    got = [round(e[key], 3) for e in log if isinstance(e.get(key), float)]
    return got or "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--tasks-per-step", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--reward", default="f1_format")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--critic-lr", type=float, default=1e-4)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--prompt-style", default="examples", choices=["plain", "examples"])
    ap.add_argument("--eval-tasks", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=1, help="trajectories per forward (memory, not result)")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--out", default="docs/results/mem1_algorithms")
    ap.add_argument("--runs", default="runs/experiments/mem1_algorithms")
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json; run nothing")
    args = ap.parse_args()
    out = Path(args.out).with_suffix(".json")
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    if not args.table_only:
        from memr1.files import write_json_atomic
        from memr1.llm.backends import make_generator

        keys = ("steps", "tasks_per_step", "group_size", "temperature", "reward", "lr", "critic_lr", "ppo_epochs")
        keys += ("max_new_tokens", "prompt_style", "eval_tasks")
        results["config"] = {k: getattr(args, k) for k in keys}
        results["command"] = shlex.join(["experiments/mem1_algorithms.py", *sys.argv[1:]])
        results.setdefault("started", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch threads 1, no GPU"
        if "untrained" not in results:
            results["untrained"] = play(args, make_generator(args.model, "transformers"))
            write_json_atomic(out, results)
        for seed in args.seeds:
            for algo in args.algorithms:
                key = f"{algo}-seed{seed}"
                if key in results["runs"]:
                    continue
                t0 = time.perf_counter()
                policy, log = trained_policy(args, algo, seed)
                train_s = time.perf_counter() - t0
                results["runs"][key] = {**play(args, policy), "log": log, "train_s": round(train_s, 1)}
                write(results, out)
    write(results, out)


if __name__ == "__main__":
    main()
