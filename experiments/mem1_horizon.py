"""MEM1 horizon generalisation on SmolLM2-135M (CPU): trained at N = 2, scored on held-out N = 1…16.

MEM1 (arXiv 2506.15841) trains on 2-objective tasks and reports EM, F1, peak tokens, dependency and
time per task on 1- to 16-objective tasks it never saw. For each seed this script scores the
untrained model, trains it with MEM1 RL on tasks of the *train* pool at N = 2
(``memr1.rl.mem1_trainer.train_mem1``; checkpoint per seed, resumed on rerun), and scores the trained
model, each at every N on tasks of the *test* pool (``memr1.data.tasks``, ``split``), under MEM1
pruning (``mem1``) and with the full context (``full``). Every turn is greedy, stopped at
``</query>`` / ``</answer>``, with MEM1's turn budget (6 turns up to 4 objectives, 20 beyond).
Measures in both countings (``memr1.eval.mem1_metrics``): this project's (prompt included) and
MEM1's (prompt excluded, each internal state twice, peak over tasks with EM > 0), same tokenizer.

Resumable: each finished cell (mode, N, seed, trained?) is written to ``<out>.json`` as soon as it
ends and skipped on rerun; ``--table-only`` re-renders ``<out>.md`` from the JSON. Budgets are
options with small defaults sized for a 2-core CPU (SmolLM2-135M fp32: ~1.5 s per short answer, a
MEM1 turn of up to 256 tokens several seconds).

    .venv/bin/python experiments/mem1_horizon.py --seeds 0 1 2 --tasks 3 --steps 4 --packed --max-new-tokens 128
    .venv/bin/python experiments/mem1_horizon.py --model tiny --seeds 0 --ns 1 2 --tasks 1 \\
        --steps 1 --max-new-tokens 8 --group-size 2 --tasks-per-step 1 --out /tmp/h/mem1_horizon --runs /tmp/h/runs

The prompt style (``--prompt-style``, default "examples") and the training reward (``--reward``,
default "f1") are the ``cpu`` profile's; ``plain`` and ``em`` are MEM1's (their run on SmolLM2:
docs/results/mem1_horizon_plain.md: almost every episode ended at an invalid first turn).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from stats import mean_std

MODES = ("mem1", "full")
MEASURES = (  # result key, column label, number format
    ("answered", "answered", ".2f"),
    ("past_window", "past window", ".2f"),
    ("em", "EM", ".2f"),
    ("em_strict", "EM strict", ".2f"),
    ("f1", "F1", ".2f"),
    ("peak_tokens", "peak (ours)", ".0f"),
    ("peak_mem1", "peak (MEM1, EM>0)", ".0f"),
    ("peak_mem1_all_tasks", "peak (MEM1, all)", ".0f"),
    ("dependency", "dependency (ours)", ".0f"),
    ("dependency_mem1", "dependency (MEM1)", ".0f"),
    ("turns", "turns", ".1f"),
    ("wall_s", "s / task", ".1f"),
)


BUDGET_KEYS = (
    "tasks",
    "max_new_tokens",
    "steps",
    "tasks_per_step",
    "group_size",
    "lr",
    "lora_r",
    "packed",
    "micro_batch",
    "model",
    "environment",
    "reward",
    "prompt_style",
)


def cell_key(mode: str, n: int, seed: int, trained: bool) -> str:
    return f"{mode}|N{n}|seed{seed}|{'trained' if trained else 'untrained'}"


def train_settings(args: argparse.Namespace) -> Any:
    from memr1.rl.mem1_trainer import Mem1TrainSettings

    return Mem1TrainSettings(
        model=args.model,
        environment=args.environment,
        n_objectives=2,
        steps=args.steps,
        tasks_per_step=args.tasks_per_step,
        group_size=args.group_size,
        learning_rate=args.lr,
        max_new_tokens=args.max_new_tokens,
        lora_r=args.lora_r,
        packed=args.packed,
        micro_batch=args.micro_batch,
        reward=args.reward,
        prompt_style=args.prompt_style,
    )


def policy(args: argparse.Namespace, seed: int, trained: bool, results: dict[str, Any]) -> Any:
    """The untrained generator, or (trained) the generator over the model trained for ``seed``, whose
    training log goes into ``results["training"]`` and whether its weights still equal the base
    model's into ``results["unchanged"]`` (no step had a gradient: its rows are the untrained rows)."""
    from memr1.llm.backends import TransformersGenerator, make_generator
    from memr1.rl.mem1_trainer import train_mem1

    if not trained:
        return make_generator(args.model, "transformers")
    t0 = time.perf_counter()
    run = train_mem1(
        train_settings(args), run_dir=Path(args.runs) / f"seed{seed}", seed=seed, data_dir=args.data_dir or None
    )
    rewards = [round(e["reward_mean"], 3) for e in run.history]
    print(f"seed {seed}: trained {run.steps_done} steps in {time.perf_counter() - t0:.0f} s; rewards {rewards}")
    results.setdefault("training", {})[str(seed)] = read_log(Path(args.runs) / f"seed{seed}")
    same = same_weights(run.model, args.model)
    results.setdefault("unchanged", {})[str(seed)] = same
    print(f"seed {seed}: trained weights {'equal' if same else 'differ from'} the base model's", flush=True)
    run.tokenizer.padding_side = "left"  # batched generation pads on the left
    return TransformersGenerator.from_model(run.model, run.tokenizer, name=f"{args.model}+mem1-rl")


def same_weights(model: Any, base_name: str) -> bool:
    """Whether ``model``'s weights equal those of the base model ``base_name``, tensor by tensor."""
    from memr1.llm.backends import make_generator

    base = make_generator(base_name, "transformers").model
    return all(a.equal(b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The training log of one seed (every step, earlier invocations included)."""
    from memr1.rl.mem1_trainer import LOG_FILE

    path = run_dir / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_cell(args: argparse.Namespace, policy: Any, mode: str, n: int, seed: int) -> dict[str, Any]:
    """One (mode, N, seed, policy) cell: ``args.tasks`` held-out tasks, the aggregate row as a dict."""
    from memr1.agents.mem1 import STOP_STRINGS, STOPS
    from memr1.data.tasks import make_tasks
    from memr1.eval.mem1_metrics import aggregate, run_episodes, token_counter_for
    from memr1.llm.generate import Sampling

    tasks = make_tasks(args.environment, n, args.tasks, seed, data_dir=args.data_dir or None, split="test")
    sampling = Sampling(max_new_tokens=args.max_new_tokens, stop=STOP_STRINGS)
    start = time.perf_counter()
    eps = run_episodes(
        tasks,
        policy,
        (mode,),
        max_turns=-1,
        count_tokens=token_counter_for(policy),
        sampling=sampling,
        prompt_style=args.prompt_style,
        progress=True,
    )
    row = aggregate(eps).iloc[0].to_dict()
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    row["cell_s"] = time.perf_counter() - start
    row["stops"] = {s: sum(e.stop == s for e in eps) for s in STOPS}
    row["answered"] = row["stops"]["answer"] / len(eps)
    row["task_ids"] = [t.id for t in tasks]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--environment", default="hotpotqa", choices=["hotpotqa", "locomo"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="objectives of the held-out tasks")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--tasks", type=int, default=4, help="held-out tasks per cell")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="tokens per generated turn (MEM1: 1024)")
    ap.add_argument("--steps", type=int, default=8, help="RL steps at N = 2 (0: untrained only)")
    ap.add_argument("--tasks-per-step", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--lora-r", type=int, default=0, help="0: full fine-tuning")
    ap.add_argument("--packed", action="store_true", help="one row per trajectory, prompt prefix stored once")
    ap.add_argument("--micro-batch", type=int, default=1, help="trajectories per forward pass (memory, not result)")
    ap.add_argument("--reward", default="f1", choices=["em", "f1"], help="training reward (MEM1: em)")
    ap.add_argument("--prompt-style", default="examples", choices=["plain", "examples"])
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--out", default="docs/results/mem1_horizon")
    ap.add_argument("--runs", default="runs/experiments/mem1_examples/train", help="training checkpoints, one per seed")
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md from the .json; run nothing")
    ap.add_argument(
        "--merge",
        nargs="+",
        default=[],
        help="result files of runs made in parallel (one per seed) to merge into --out",
    )
    args = ap.parse_args()
    results_file = Path(args.out + ".json")
    if args.merge:
        from memr1.files import write_json_atomic

        merged: dict = {"cells": {}, "runs": [], "training": {}}
        for part in args.merge:
            got = json.loads(Path(part).read_text())
            merged["cells"].update(got["cells"])
            merged["runs"] += got["runs"]
            merged["training"].update(got.get("training", {}))
            merged.setdefault("unchanged", {}).update(got.get("unchanged", {}))
        write_json_atomic(results_file, merged)
        return write_table(merged, args)
    if args.table_only:
        return write_table(json.loads(results_file.read_text()), args)
    from memr1.files import write_json_atomic

    results = json.loads(results_file.read_text()) if results_file.exists() else {"cells": {}, "runs": []}
    started = time.perf_counter()
    run = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_s": 0.0,
        "command": shlex.join([".venv/bin/python", "experiments/mem1_horizon.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
        "budgets": {k: getattr(args, k) for k in BUDGET_KEYS},
    }
    results["runs"].append(run)  # on record from the start, its wall time updated after every cell
    trained_options = (False, True) if args.steps > 0 else (False,)
    for seed in args.seeds:
        # N-major: every N is scored before and after training before the next, larger (slower) N,
        # so a run cut short has both rows of the Ns it reached.
        todo = [
            (trained, mode, n)
            for n in args.ns
            for trained in trained_options
            for mode in args.modes
            if cell_key(mode, n, seed, trained) not in results["cells"]
        ]
        if not todo:
            continue
        gens: dict[bool, Any] = {}  # a policy is made (the trained one: trained) at its first cell
        for i, (trained, mode, n) in enumerate(todo, 1):
            if trained not in gens:
                gens[trained] = policy(args, seed, trained, results)
                write_json_atomic(results_file, results)
            key, twin = cell_key(mode, n, seed, trained), cell_key(mode, n, seed, False)
            print(f"[{i}/{len(todo)}] {key} ...", flush=True)
            if trained and results.get("unchanged", {}).get(str(seed)) and twin in results["cells"]:
                # bit-identical weights, greedy decoding: the same episodes; not rerun
                row = {**results["cells"][twin], "same_weights_as_untrained": True}
            else:
                row = run_cell(args, gens[trained], mode, n, seed)
            results["cells"][key] = {**row, "mode": mode, "n": n, "seed": seed, "trained": trained}
            run["wall_s"] = time.perf_counter() - started
            write_json_atomic(results_file, results)
            print(
                f"    EM {row['em']:.2f} (strict {row['em_strict']:.2f}) peak {row['peak_tokens']:.0f} "
                f"turns {row['turns']:.1f} stops {row['stops']} {row['cell_s']:.0f} s",
                flush=True,
            )
    write_json_atomic(results_file, results)
    write_table(results, args)


def write_table(results: dict, args: argparse.Namespace) -> None:
    cells = list(results["cells"].values())
    groups: dict[tuple[bool, str, int], list[dict]] = {}
    for c in cells:
        c = {**c, "past_window": c["stops"].get("context_window", 0) / c["tasks"]}  # cells before the stop: 0
        groups.setdefault((c["trained"], c["mode"], c["n"]), []).append(c)
    header = "| model | mode | N | turns allowed | seeds | " + " | ".join(label for _, label, _ in MEASURES) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for (trained, mode, n), rows in sorted(groups.items()):
        vals = [mean_std([r.get(m) for r in rows], fmt) for m, _, fmt in MEASURES]
        reused = sorted(r["seed"] for r in rows if r.get("same_weights_as_untrained"))
        label = "RL at N=2" + (f" (seeds {', '.join(map(str, reused))}: = untrained)" if reused else "")
        lines.append(
            f"| {label if trained else 'untrained'} | {mode} | {n} | {rows[0].get('max_turns', '')} | "
            f"{len(rows)} ({', '.join(str(r['seed']) for r in sorted(rows, key=lambda r: r['seed']))}) | "
            + " | ".join(vals)
            + " |"
        )
    runs = results.get("runs", [])
    last = runs[-1] if runs else {}
    tokenizer = cells[0].get("tokenizer", "?") if cells else "?"
    commands = "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in runs)) or "?"
    budgets = last.get("budgets", {})
    notes = "".join(" " + r["note"] for r in runs if r.get("note"))
    rows = "packed (prompt prefix once)" if budgets.get("packed") else "per-turn"
    text = f"""# MEM1 horizon generalisation ({last.get("budgets", {}).get("model", "?")}, CPU)

{last.get("date", "?")}, {last.get("machine", "?")}. Command(s): {commands}.
Wall time: {sum(r["wall_s"] for r in runs) / 60:.1f} min over {len(runs)} invocation(s) (some in parallel).{notes}
Budgets: {json.dumps(last.get("budgets", {}))}.

Prompt style: {budgets.get("prompt_style", "plain")} (`memr1.agents.mem1.PROMPT_STYLES`). Training: MEM1 RL
(`memr1.rl.mem1_trainer`, GRPO-style groups, {budgets.get("reward", "em").upper()} reward, {rows} rows) on
2-objective tasks of the train pool only; evaluation on held-out tasks of the test pool (HotpotQA:
the second half of the 100-question sample; LoCoMo: the 8 test conversations), greedy, stopped at
`</query>` / `</answer>`, turn budget 6 up to 4 objectives and 20 beyond. Mean ± std over seeds
(each seed draws its own tasks and trains its own model). EM and F1 are summed over a task's
objectives (0 to N); "EM strict" is 0 when the answer count differs from N. "Peak (ours)": the
longest context, prompt included; "peak (MEM1, …)": prompt excluded, each internal state counted
twice, averaged over tasks with EM > 0 (MEM1's rule; "–" when no task scored) or over all tasks.
"= untrained": seeds whose RL steps never had a gradient (every group had one reward value), so
their weights equal the base model's bit for bit (checked) and, decoding being greedy, their
episodes are the untrained ones, reused rather than rerun.
"Answered": the share of episodes that ended in an `<answer>` (the others wrote an invalid turn, ran
out of turns or reached the model's window). "Past window": the share whose next context would not
fit the model's window with the turn's new tokens, ended there rather than generated past it.
Tokens counted with: {tokenizer} (MEM1 used tiktoken o200k).

"""
    text += "\n".join(lines) + "\n"
    training = results.get("training", {})
    if training:
        text += "\nTraining reward per step (mean over the step's rollouts; a group with one reward value gives "
        text += "no gradient):\n\n"
        for seed, log in sorted(training.items()):
            rewards = ", ".join(f"{e['reward_mean']:.2f}" for e in log)
            flat = sum(e.get("groups_flat", 0) for e in log)
            text += f"- seed {seed}: {rewards}" + (f" ({flat} flat groups)" if flat else "") + "\n"
    out = Path(args.out + ".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
