"""Benchmark: the full-context baseline's answering cost per question at several batch sizes.

Every question of a conversation gets the same long prompt head (instructions and the transcript cut at
the model's window, about 8k tokens on SmolLM2-135M), which the prefix cache (``memr1.llm.prefix_cache``)
encodes once. A batch of B questions then carries B copies of that key/value cache through decoding, so
rows are not free as they are for short prompts. For each batch size this prints the first call (the
transcript encoded, one question) and the seconds per question of the next questions, with the prefix
cache's hits and misses, measured in one run, and each size's ratio to batch 1. Greedy; one run per size.

    OMP_NUM_THREADS=1 taskset -c 0 python bench/bench_full_context.py [--conversation conv-41] [--batch-sizes 1 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from memr1.agents.baselines import FullContextAnswerer
from memr1.data.locomo import load_locomo
from memr1.llm.backends import make_generator
from memr1.llm.generate import Sampling
from memr1.stages.evaluate_answers import context_budget


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--conversation", default="conv-41")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--questions", type=int, default=8, help="questions timed after the first call")
    ap.add_argument("--answer-tokens", type=int, default=32)
    args = ap.parse_args()

    data = load_locomo()
    conv = data.conversation(args.conversation)
    qs = [q for q in data.questions() if q.sample_id == conv.sample_id][: args.questions + 1]
    print(f"# full-context answering · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {platform.machine()}, "
          f"{os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} · {args.model}, "
          f"{conv.sample_id}, greedy, <= {args.answer_tokens} answer tokens, prefix cache >= 64 tokens\n")  # fmt: skip
    print("Seeds: none; decoding is greedy and nothing is drawn at random, so a rerun gives the same answers (one "
          "run per batch size; only the timings vary).\n")  # fmt: skip
    print("| batch | first call s (transcript + 1 question) | s / question after | vs batch " +
          f"{args.batch_sizes[0]} | prefix hits / misses | transcript kept |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    base = None
    for bs in args.batch_sizes:
        gen = make_generator(args.model, "transformers", prefix_cache=64)
        sampling = Sampling(max_new_tokens=args.answer_tokens)
        answerer = FullContextAnswerer(gen, count_tokens=gen.count_tokens, sampling=sampling,
                                       max_context_tokens=context_budget(gen.context_window, args.answer_tokens),
                                       batch_size=bs, style="direct")  # fmt: skip
        t0 = time.perf_counter()
        answerer.answer(qs[:1], conv)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        answerer.answer(qs[1:], conv)
        per_q = (time.perf_counter() - t0) / len(qs[1:])
        base = base or per_q
        pc = gen.prefix_cache
        print(f"| {bs} | {first:.0f} | {per_q:.1f} | {per_q / base:.2f}x | {pc.hits} / {pc.misses} | "
              f"{answerer.context(conv)[1]} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
