"""MEM1 context growth: peak tokens and dependency per number of objectives N and context mode.

A scripted policy that reads the gold passages (``memr1.eval.mem1_metrics.gold_policy``: it queries
each question's supporting-paragraph titles in turn, keeps ``Q1=answer; Q2=...`` as its internal
state and answers when all are found) runs N = 1, 2, 4, 8, 16 HotpotQA objectives per task under
MEM1 pruning, the full context and truncation to a token budget. The policy is perfect, so every
mode answers everything; only the context sizes differ. Targets (MEM1, arXiv 2506.15841):
peak(16)/peak(2) <= 1.5 with pruning and >= 4 with the full context.

Token counts use the smoke profile's tiny model tokenizer by default (a byte-level BPE with 1,024
ids trained on LoCoMo, so it splits words more finely than a production tokenizer);
``--tokenizer whitespace`` counts words, ``--tokenizer PATH`` loads any transformers tokenizer.

    python bench/bench_mem1.py [--tasks 10] [--tokenizer tiny|whitespace|PATH] [--budget 0] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
import time

from memr1.agents.mem1 import WHITESPACE
from memr1.data.tasks import make_tasks
from memr1.eval.mem1_metrics import (
    GOLD,
    aggregate,
    gold_max_turns,
    hf_token_counter,
    peak_ratio,
    run_episodes,
    tiny_token_counter,
)
from memr1.eval.tables import to_markdown

NS = (1, 2, 4, 8, 16)
TARGETS = {"mem1": ("<=", 1.5), "full": (">=", 4.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--tasks", type=int, default=10, help="tasks per N")
    ap.add_argument("--tokenizer", default="tiny", help="tiny, whitespace or a tokenizer path / hub id")
    ap.add_argument("--budget", type=int, default=0, help="truncation budget in tokens (0: 2048 tiny, 1024 words)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counter = {"tiny": tiny_token_counter, "whitespace": lambda: WHITESPACE}.get(
        args.tokenizer, lambda: hf_token_counter(args.tokenizer)
    )()
    budget = args.budget or (1024 if counter is WHITESPACE else 2048)
    start = time.perf_counter()
    episodes = []
    for n in NS:
        tasks = make_tasks("hotpotqa", n, args.tasks, args.seed, data_dir=args.data_dir or None)
        episodes += run_episodes(
            tasks,
            GOLD,
            ("mem1", "full", "truncate"),
            max_turns=gold_max_turns(n),
            count_tokens=counter,
            budget_tokens=budget,
        )
    table = aggregate(episodes)
    seconds = time.perf_counter() - start
    print(
        f"# MEM1 context growth · {time.strftime('%Y-%m-%d')} · {platform.machine()} · python "
        f"{platform.python_version()} · tokens: {counter.name} · {args.tasks} HotpotQA tasks per N · "
        f"gold-scripted policy · truncate budget {budget} · {seconds:.1f} s\n"
    )
    cols = ["mode", "n_objectives", "tasks", "em", "turns", "peak_tokens", "peak_mem1", "dependency"]
    print(to_markdown(table[cols].sort_values(["mode", "n_objectives"], ignore_index=True), floatfmt=".1f"))
    print(
        "\npeak_tokens: longest context, task prompt included. peak_mem1: MEM1's counting (prompt left out, "
        "the turn's output added, each internal state twice; tasks with EM > 0). dependency: sum over "
        "generated tokens of the tokens each attends to.\n"
    )
    print("| mode | peak_tokens(16)/(2) | peak_mem1(16)/(2) | dependency(16)/(2) | target |")
    print("|---|---|---|---|---|")
    for mode in ("mem1", "full", "truncate"):
        ratios = [peak_ratio(table, mode, 16, 2, col) for col in ("peak_tokens", "peak_mem1", "dependency")]
        op, bound = TARGETS.get(mode, ("", None))
        verdict = (
            "-"
            if bound is None
            else " / ".join(("met" if (r <= bound if op == "<=" else r >= bound) else "missed") for r in ratios[:2])
        )
        print(
            f"| {mode} | {ratios[0]:.2f} | {ratios[1]:.2f} | {ratios[2]:.1f} | "
            f"{f'{op} {bound} ({verdict})' if bound else '-'} |"
        )


if __name__ == "__main__":
    main()
