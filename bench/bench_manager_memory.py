"""Peak memory of one Memory-Manager GRPO step: frozen Answer Agent on the policy's weights vs a second copy.

Stage 04 scores each sampled operation list with a frozen Answer Agent. Before, that agent was a
second copy of the base model; now (``memr1.rl.frozen.FrozenBase``) it is the policy with its LoRA
switched off. Each variant runs one ``memr1.stages.train_manager`` step in a fresh subprocess and
reports the weights the frozen agent holds besides the policy's (parameter bytes whose storage the
policy does not share), the peak resident memory (``ru_maxrss``; torch's CPU allocations are not
visible to tracemalloc), the peak CUDA allocation when there is a GPU, and the wall time.

On CPU the RSS difference is small: the converted fp32 safetensors are memory-mapped, so a second
copy's untouched weights sit in the shared page cache. On a GPU every copy is a real allocation.

    .venv/bin/python bench/bench_manager_memory.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time
import torch
import memr1.rl.frozen as frozen_mod
from memr1.stages.train_manager import ManagerTrainConfig, run

variant, model, run_dir = sys.argv[1], sys.argv[2], sys.argv[3]
if variant == "copy":  # the old way: the frozen agent loads its own copy of the base model
    from memr1.llm.backends import make_generator

    class SecondCopy:
        def __init__(self, name, **kw):
            self.gen = make_generator(name, "transformers")
            self.name, self.note, self.backend = self.gen.name, "", "transformers"

        def bind(self, model, tokenizer):
            held.append((self.gen.model, model))

        def generate(self, prompts, sampling):
            return self.gen.generate(prompts, sampling)

    frozen_mod.FrozenBase = SecondCopy
else:
    class Shared(frozen_mod.FrozenBase):
        def bind(self, model, tokenizer):
            super().bind(model, tokenizer)
            held.append((self._gen.model, model))

    frozen_mod.FrozenBase = Shared
held = []
cfg = ManagerTrainConfig.from_params({
    "profile": "cpu", "model": model, "steps": 1, "train_limit": 1, "eval_every": 0, "save_every": 0,
    "num_generations": 2, "batch_size": 2, "max_completion_length": 64, "answer_tokens": 16,
    "memory_style": "lines", "answer_style": "direct", "k_per_speaker": 5, "reward": "f1",
    "verify_adapter": False, "run_dir": run_dir, "store_dir": run_dir + "/store",
})
start = time.perf_counter()
run(cfg)
frozen, policy = held[0]
own = {p.data_ptr() for p in policy.parameters()}
extra = sum(p.numel() * p.element_size() for p in frozen.parameters() if p.data_ptr() not in own)
cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "extra_mb": extra / 2**20,
                  "cuda_mb": cuda, "seconds": time.perf_counter() - start}))
"""


def measure(variant: str, model: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, variant, model, tmp], capture_output=True, text=True, check=False
        )
    if out.returncode:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, model {args.model}")
    print(
        "| frozen Answer Agent | weights held besides the policy's (MB) | peak RSS (MB) | peak CUDA (MB) "
        "| step incl. load (s) |"
    )
    print("|---|---|---|---|---|")
    for variant, label in (("copy", "second copy of the base (before)"), ("shared", "policy, adapter disabled (now)")):
        got = measure(variant, args.model)
        cuda = "–" if got["cuda_mb"] is None else f"{got['cuda_mb']:.0f}"
        print(f"| {label} | {got['extra_mb']:.0f} | {got['peak_mb']:.0f} | {cuda} | {got['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
