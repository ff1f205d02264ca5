"""Grouped-query attention without the key/value copy (``memr1_sdpa``) against transformers' ``sdpa``, on CPU.

SmolLM2-135M has 9 query and 3 key/value heads. On a left-padded batch transformers' ``sdpa`` copies each
layer's key/value cache three times over before attending; ``memr1_sdpa`` (`memr1.llm.attention`) hands
PyTorch the grouped heads instead. This builds, in memory, the banks of the first ``--turns`` turns of all
8 LoCoMo test conversations in lockstep with stage 05's settings (``lines`` prompts, extractor ≤ 64 and
manager ≤ 160 tokens, greedy, generator batch 16, prefix cache of 64 tokens; `bench_lockstep.build`),
once per attention, with one loaded model. It prints turns per wall and per CPU second, their ratio, the
hours one system's banks would take over the 5,094 test turns, and the share of turns whose applied
operations are identical (the outputs should be: the attention is the same computation). Then the same
on one greedy call of ``--answers`` padded prompts of unequal length (a conversation's first 8, 12, 16, ...
turns and a question; batch 8, at most 32 new tokens), replies identical or not.
Pin it to one core:

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/bench_attention.py --out docs/results/bench_attention.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from bench_lockstep import ATTENTIONS, SPLIT_TURNS, agreement, build, command_line, emit, test_conversations


def batched_decode(gen, convs, n: int) -> dict:
    """One greedy call of ``n`` padded prompts of unequal length (each conversation's opening turns as text)."""
    from memr1.llm.generate import Sampling

    prompts = []
    for i in range(n):
        conv = convs[i % len(convs)]
        turns = list(conv.turns())[: 8 + 4 * i]
        text = "\n".join(f"{t.speaker}: {t.text}" for t in turns)
        prompts.append([{"role": "user", "content": f"{text}\n\nIn one sentence, what did they talk about?"}])
    start, cpu = time.perf_counter(), time.process_time()
    outs = gen.generate(prompts, Sampling(max_new_tokens=32))
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu, "texts": [o.text for o in outs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=8, help="first turns of each conversation")
    ap.add_argument("--answers", type=int, default=16, help="prompts of the batched-decode row")
    ap.add_argument("--out", help="also write the report to this markdown file")
    args = ap.parse_args()

    import torch

    from memr1.llm.backends import make_generator
    from memr1.llm.prefix_cache import PrefixCache
    from memr1.memory.embed import make_embedder

    convs = test_conversations()
    gen = make_generator("smollm2-135m", "transformers", prefix_cache=64)
    gen.batch_size = 16
    embedder = make_embedder("minilm")
    model = gen.model
    heads = (model.config.num_attention_heads, model.config.num_key_value_heads)
    gen.generate([[{"role": "user", "content": "Hello"}]])  # warm-up: first-call allocations
    load = [os.getloadavg()[0]]
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    builds, decodes = {}, {}
    for attention in ATTENTIONS:
        model.set_attn_implementation(attention)
        gen.prefix_cache = PrefixCache(64)  # a fresh cache: the cached key/values came from the other attention
        builds[attention] = build(gen, embedder, convs, args.turns, lockstep=True)
        print(f"  build with {attention}: {builds[attention]['wall']:.0f} s", file=sys.stderr, flush=True)
        gen.batch_size, gen.prefix_cache = 8, None
        decodes[attention] = batched_decode(gen, convs, args.answers)
        gen.batch_size = 16
        print(f"  decode with {attention}: {decodes[attention]['wall']:.0f} s", file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])

    command = command_line("bench_attention.py")
    base = builds[ATTENTIONS[0]]
    lines = [
        f"# Attention without the key/value copy, SmolLM2-135M · {began} · {platform.machine()} · "
        f"{os.cpu_count()} cores · torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "",
        f"Command: `{command}`",
        "",
        f"{heads[0]} query heads, {heads[1]} key/value heads, fp32. Seeds: none (greedy; a rerun gives the same "
        f"outputs). Load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f}"
        + (
            "; other processes shared the machine, so wall times are inflated and CPU seconds (this process's, one "
            "thread) are the cost that counts."
            if max(load) > 1.5
            else "."
        )  # fmt: skip
        + "",
        "",
        f"Bank building: the first {args.turns} turns of all {len(convs)} LoCoMo test conversations in lockstep "
        "(stage 05's settings: generator batch 16, prefix cache of 64 tokens).",
        "",
        "| attention | turns | wall s | turns / s (wall) | CPU s | turns / CPU s | vs sdpa (CPU) "
        "| hours for 5,094 turns (CPU) | turns with identical operations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for attention, r in builds.items():
        same, n = agreement(base["results"], r["results"])
        lines.append(
            f"| {attention} | {r['turns']} | {r['wall']:.0f} | {r['turns'] / r['wall']:.3f} | {r['cpu']:.0f} | "
            f"{r['turns'] / r['cpu']:.3f} | {(r['turns'] / r['cpu']) / (base['turns'] / base['cpu']):.2f}× | "
            f"{SPLIT_TURNS * r['cpu'] / r['turns'] / 3600:.2f} | {same} / {n} |"
        )
    first = decodes[ATTENTIONS[0]]
    lines += [
        "",
        f"One greedy call of {args.answers} padded prompts (the conversations' opening turns, 8 to "
        f"{8 + 4 * (args.answers - 1)} of them), at most 32 new tokens, generator batch 8, no prefix cache:",
        "",
        "| attention | wall s | CPU s | vs sdpa (CPU) | replies identical to sdpa's |",
        "|---|---|---|---|---|",
    ]
    for attention, d in decodes.items():
        same = sum(a == b for a, b in zip(first["texts"], d["texts"]))
        lines.append(
            f"| {attention} | {d['wall']:.1f} | {d['cpu']:.1f} | {first['cpu'] / d['cpu']:.2f}× | "
            f"{same} / {len(d['texts'])} |"
        )
    emit(lines, args.out)


if __name__ == "__main__":
    main()
