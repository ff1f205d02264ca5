"""Grouped-query attention without the key/value copy (``memr1_sdpa``) against transformers' ``sdpa``, on CPU:
one batched greedy call of padded answer-length prompts.

SmolLM2-135M has 9 query and 3 key/value heads. On a left-padded batch transformers' ``sdpa`` copies each
layer's key/value cache three times over before attending; ``memr1_sdpa`` (`memr1.llm.attention`) hands
PyTorch the grouped heads instead. This times one greedy call of ``--answers`` padded prompts of unequal
length (a conversation's first 8, 12, 16, ... turns and a question; generator batch 8, at most 32 new
tokens, no prefix cache) once per attention, with one loaded model, and says whether the replies are
identical (they should be: the attention is the same computation). The bank build under both attentions is
`bench_lockstep.py`'s (``--attentions``). Pin it to one core:

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/bench_attention.py --out docs/results/bench_attention.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from bench_lockstep import ATTENTIONS, command_line, emit, test_conversations


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
    ap.add_argument("--answers", type=int, default=16, help="prompts in the batched call")
    ap.add_argument("--out", help="also write the report to this markdown file")
    args = ap.parse_args()

    import torch

    from memr1.llm.attention import register
    from memr1.llm.backends import make_generator

    convs = test_conversations()
    gen = make_generator("smollm2-135m", "transformers")
    gen.batch_size = 8
    model = gen.model
    heads = (model.config.num_attention_heads, model.config.num_key_value_heads)
    gen.generate([[{"role": "user", "content": "Hello"}]])  # warm-up: first-call allocations
    load = [os.getloadavg()[0]]
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    register()  # memr1_sdpa, known to transformers
    decodes = {}
    for attention in ATTENTIONS:
        model.set_attn_implementation(attention)
        decodes[attention] = batched_decode(gen, convs, args.answers)
        print(f"  decode with {attention}: {decodes[attention]['wall']:.0f} s", file=sys.stderr, flush=True)
    load.append(os.getloadavg()[0])

    first = decodes[ATTENTIONS[0]]
    lines = [
        f"# Attention without the key/value copy, SmolLM2-135M · {began} · {platform.machine()} · "
        f"{os.cpu_count()} cores · torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "",
        f"Command: `{command_line('bench_attention.py')}`",
        "",
        f"{heads[0]} query heads, {heads[1]} key/value heads, fp32. Seeds: none (greedy; a rerun gives the same "
        f"outputs). Load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f}"
        + (
            "; other processes shared the machine, so wall times are inflated and CPU seconds (this process's, one "
            "thread) are the cost that counts."
            if max(load) > 1.5
            else "."
        )
        + " The bank build under both attentions: `docs/results/bench_lockstep.md`.",
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
