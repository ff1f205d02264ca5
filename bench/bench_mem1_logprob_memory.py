"""Peak memory of one MEM1 training step at Qwen's 151,936-id vocabulary: full logits vs chunked.

One training step (``memr1.rl.mem1_loss.train_step``: log-probs, loss, backward, AdamW) on a small
randomly initialised Qwen2-shaped model built with transformers (no download) whose vocabulary is
Qwen2.5's, over synthetic MEM1 trajectories (random ids; per-turn rows or packed rows). Two ways to
get the log-probs:

- ``full logits`` (``chunk_tokens=0``, what memr1 did before): the model's ``[rows, length,
  vocabulary]`` logits for every position at once, kept for the backward pass;
- ``chunked`` (the default, ``LOGPROB_CHUNK`` scored tokens at a time): the output layer only on
  hidden states that predict a generated token, a chunk at a time, recomputed in the backward pass.

torch's CPU allocations bypass Python's allocator, so ``tracemalloc`` does not see them: each
variant runs in a fresh subprocess and reports its peak resident set size (``ru_maxrss``) and the
rise over the RSS measured just before the step (model, optimizer and batch already built).

    python bench/bench_mem1_logprob_memory.py [--trajectories 2] [--turns 3] [--prompt 256] [--completion 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

VOCAB = 151_936  # Qwen2 / Qwen2.5


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from memr1.rl.mem1_loss import train_step
    from memr1.rl.packing import Trajectory, TrajectoryTurn

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).float()
    model.config._attn_implementation = "sdpa"
    g = torch.Generator().manual_seed(1)

    def ids(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(10, VOCAB, (n,), generator=g).tolist())

    task = ids(args.prompt // 2)  # the task prompt every turn shares; the rest is the turn's own window
    trajs = [
        Trajectory(
            [TrajectoryTurn(task + ids(args.prompt - len(task)), ids(args.completion)) for _ in range(args.turns)],
            reward=float(r % 2),
        )
        for r in range(args.trajectories)
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = rss_mb()
    start = time.perf_counter()
    stats = train_step(
        model, optimizer, [trajs], packed=args.layout == "packed", micro_batch=len(trajs), chunk_tokens=args.chunk
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"before_mb": before, "peak_mb": peak, "seconds": seconds, "tokens": stats["input_tokens"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectories", type=int, default=2)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=256, help="tokens of each turn's pruned context")
    ap.add_argument("--completion", type=int, default=64, help="generated tokens per turn")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--layout", default="per_turn", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=1024, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    from memr1.rl.packing import LOGPROB_CHUNK

    print(
        f"# MEM1 training step, peak memory · {time.strftime('%Y-%m-%d')} · {platform.machine()} · python "
        f"{platform.python_version()} · Qwen2-shaped, hidden 64, 2 layers, vocabulary {VOCAB:,}, fp32, CPU · "
        f"{args.trajectories} trajectories × {args.turns} turns × ({args.prompt} context + {args.completion} "
        "generated) tokens\n"
    )
    print("| layout | log-probs | input tokens | RSS before step (MB) | peak RSS (MB) | rise (MB) | step (s) |")
    print("|---|---|---|---|---|---|---|")
    for layout in ("per_turn", "packed"):
        for label, chunk in (("full logits (before)", 0), (f"chunked, {LOGPROB_CHUNK} tokens (after)", LOGPROB_CHUNK)):
            cmd = [sys.executable, __file__, "--child", "--layout", layout, "--chunk", str(chunk)]
            cmd += ["--trajectories", str(args.trajectories), "--turns", str(args.turns)]
            cmd += ["--prompt", str(args.prompt), "--completion", str(args.completion)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(
                f"| {layout} | {label} | {r['tokens']} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | "
                f"{r['peak_mb'] - r['before_mb']:.0f} | {r['seconds']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
