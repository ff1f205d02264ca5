"""Is there a learning signal in MEM1's rollouts on SmolLM2-135M, and under which reward?

GRPO's advantage is zero in a group whose rollouts all score the same, and PPO's critic has nothing
to tell apart when every trajectory scores 0. This script samples MEM1 rollouts exactly as training
does (``memr1.rl.mem1_rollout.rollout_groups``: HotpotQA tasks of the *train* pool at N objectives,
``--group-size`` episodes per task, MEM1 pruning and turn budget, the plain softmax at each
temperature, generation stopped at ``</query>`` / ``</answer>``) and scores every episode under each
reward of ``REWARDS`` (``em``, ``f1`` and the format-shaped ``em_format`` / ``f1_format``). It reports,
per temperature and reward, the share of groups whose rewards are not all equal (the groups that give
GRPO a gradient), with the episode measures behind them: answers, format score, valid turns.

No training runs here. One cell (temperature, prompt style) is one batched rollout; each cell is
written to ``<out>.json`` as it ends and skipped on rerun; ``--table-only`` re-renders ``<out>.md``.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python experiments/mem1_signal.py --tasks 8 --group-size 4 \\
        --temperatures 1.0 0.7 --out docs/results/mem1_signal
    .venv/bin/python experiments/mem1_signal.py --model tiny --tasks 2 --group-size 2 --max-new-tokens 8 \\
        --out /tmp/mem1_signal   # the plumbing, in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any


def run_cell(args: argparse.Namespace, model: Any, tok: Any, tasks: list, temperature: float, style: str) -> dict:
    """One batched rollout of every task's group at ``temperature``; its numbers under every reward."""
    from memr1.rl.mem1_rollout import REWARDS, episode_reward, format_score, rollout_groups

    start, cpu = time.perf_counter(), time.process_time()
    groups = rollout_groups(
        tasks, model, tok, group_size=args.group_size, max_turns=-1, temperature=temperature, seed=args.seed,
        max_new_tokens=args.max_new_tokens, prompt_style=style,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    episodes = [[t.info["episode"] for t in g] for g in groups]
    flat = [e for g in episodes for e in g]
    rewards = {r: [[episode_reward(e, r) for e in g] for g in episodes] for r in REWARDS}
    return {
        "temperature": temperature,
        "prompt_style": style,
        "groups": len(groups),
        "episodes": len(flat),
        "with_variance": {r: sum(len(set(g)) > 1 for g in v) / len(v) for r, v in rewards.items()},
        "mean_reward": {r: sum(map(sum, v)) / len(flat) for r, v in rewards.items()},
        "rewards": rewards,
        "format_score": sum(format_score(e) for e in flat) / len(flat),
        "answered": sum(e.stop == "answer" for e in flat) / len(flat),
        "answer_count_ok": sum(e.stop == "answer" and e.answer_count_ok for e in flat) / len(flat),
        "valid_turns": sum(t.ok and bool(t.state) for e in flat for t in e.turns) / sum(len(e.turns) for e in flat),
        "turns": sum(len(e.turns) for e in flat) / len(flat),
        "stops": {s: sum(e.stop == s for e in flat) for s in sorted({e.stop for e in flat})},
        "s_per_episode": wall / len(flat),
        "wall_s": wall,
        "cpu_s": cpu,
    }


def machine() -> str:
    import torch

    cores = sorted(os.sched_getaffinity(0))
    return (
        f"{platform.machine()}, {os.cpu_count()} cores ({len(cores)} used: {cores}), {torch.get_num_threads()} torch "
        f"thread(s), CUDA {'used' if torch.cuda.is_available() else 'absent'}, python {platform.python_version()}"
    )


def command() -> str:
    """This invocation as a shell line, with the thread and core pinning it ran under."""
    prefix = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < (os.cpu_count() or 0):
        prefix += f"taskset -c {','.join(map(str, cores))} "
    return prefix + ".venv/bin/python " + shlex.join(["experiments/mem1_signal.py", *sys.argv[1:]])


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=2, help="objectives per task (MEM1 trains on 2)")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7])
    ap.add_argument("--prompt-styles", nargs="+", default=["examples"], help="plain is MEM1's; examples the cpu's")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="docs/results/mem1_signal", help="writes <out>.json and <out>.md")
    ap.add_argument("--table-only", action="store_true", help="re-render <out>.md from <out>.json")
    return ap


def render(state: dict) -> str:
    from memr1.rl.mem1_rollout import FORMAT_BONUS, REWARDS

    cells, b = state["cells"], state["budgets"]
    head = ["temperature", "prompt style", "groups"]
    head += [f"{r}: groups with variance" for r in REWARDS] + [f"mean {r}" for r in REWARDS]
    head += ["format score", "answered", "answers = N", "valid turns", "turns", "wall s / episode", "CPU min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        row = [f"{c['temperature']:g}", c["prompt_style"], str(c["groups"])]
        row += [f"{c['with_variance'][r]:.0%}" for r in REWARDS] + [f"{c['mean_reward'][r]:.3f}" for r in REWARDS]
        row += [f"{c[k]:.2f}" for k in ("format_score", "answered", "answer_count_ok", "valid_turns", "turns")]
        row += [f"{c['s_per_episode']:.1f}", f"{c['cpu_s'] / 60:.1f}" if "cpu_s" in c else "not recorded"]
        lines.append("| " + " | ".join(row) + " |")
    stops = [f"T = {c['temperature']:g} ({c['prompt_style']}): {c['stops']}" for c in cells]
    argv = shlex.split(state["command"])
    asked = parser().parse_args(argv[argv.index("experiments/mem1_signal.py") + 1 :])
    done = {(c["temperature"], c["prompt_style"]) for c in cells}
    missing = [f"T = {t:g} ({st})" for st in asked.prompt_styles for t in asked.temperatures if (t, st) not in done]
    return (
        f"# MEM1 reward signal on {b['model']} (HotpotQA, N = {b['n']}, train pool)\n\n"
        f"Command: `{state['command']}`\n\n"
        f"{state['date']}, {state['machine']}. Rollout wall time: {sum(c['wall_s'] for c in cells) / 60:.1f} min "
        f"in all (wall time includes any wait for the core; the CPU minutes per cell are the cost of the rollouts).\n"
        f"Budgets: {json.dumps(b)}.\n"
        + (
            f"Cells the command asks for that have not run (rerun it to add them): {', '.join(missing)}.\n"
            if missing
            else ""
        )
        + f"\nRollouts as training samples them (`memr1.rl.mem1_rollout.rollout_groups`): {b['tasks']} tasks × "
        f"{b['group_size']} episodes per cell, MEM1 pruning, MEM1's turn budget, the plain softmax at the "
        f"temperature, at most {b['max_new_tokens']} tokens per turn, seed {b['seed']}. Every episode is scored "
        f"under each reward: `em` and `f1` summed over the N objectives (MEM1's training reward is `em`), "
        f"`em_format` / `f1_format` add {FORMAT_BONUS} × the format score "
        f"(`memr1.rl.mem1_rollout.format_score`: half the share of turns with an `<IS>` state and a readable "
        f'action, half for ending with an `<answer>` that holds N answers). "Groups with variance": the share '
        f"of groups whose rewards are not all equal, the groups in which GRPO's advantage is not zero. "
        f'"Answered": episodes that ended with an `<answer>`; "answers = N": with N answers in it; '
        f'"valid turns": the share of all turns with a state and a readable action.\n\n'
        + "\n".join(lines)
        + "\n\nHow episodes ended: "
        + "; ".join(stops)
        + ".\n"
    )


def main() -> None:
    args = parser().parse_args()
    from memr1.files import write_json_atomic, write_text_atomic

    out_json, out_md = Path(args.out + ".json"), Path(args.out + ".md")
    budgets = {k: getattr(args, k) for k in ("model", "n", "tasks", "group_size", "max_new_tokens", "seed")}
    state = json.loads(out_json.read_text()) if out_json.is_file() else {"cells": []}
    if not args.table_only:
        if state.get("budgets", budgets) != budgets:
            sys.exit(f"{out_json} holds runs with other budgets {state['budgets']}; choose another --out")
        from memr1.data.tasks import make_tasks
        from memr1.llm.load import load_policy
        from memr1.seeding import seed_everything

        seed_everything(args.seed)
        tasks = make_tasks("hotpotqa", args.n, args.tasks, args.seed, data_dir=args.data_dir, split="train")
        policy = load_policy(args.model, "transformers", device="cpu", attn_implementation="sdpa")
        model = policy.model.eval()
        done = {(c["temperature"], c["prompt_style"]) for c in state["cells"]}
        for style in args.prompt_styles:
            for temperature in args.temperatures:
                if (temperature, style) in done:
                    continue
                cell = run_cell(args, model, policy.tokenizer, tasks, temperature, style)
                print({k: v for k, v in cell.items() if k != "rewards"}, flush=True)
                state = {
                    "budgets": budgets,
                    "cells": [*state["cells"], cell],
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "machine": machine(),
                    "command": command(),
                }
                write_json_atomic(out_json, state)
    write_text_atomic(out_md, render(state))
    print(render(state))


if __name__ == "__main__":
    main()
