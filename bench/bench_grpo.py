"""GRPO step on SmolLM2-135M: TRL's GRPOTrainer (engine ``trl``) vs memr1's shared-prompt loop (``memr1``).

Both engines train the same model (SmolLM2-135M-Instruct, fp32, CPU) with the same LoRA (r 16 on
q/k/v/o), reward (answer F1), learning rate and rows: real Answer-Agent prompts of conv-26 with 10
memories (5 per speaker from the teacher store, prompt style ``direct``), completions of at most
32 tokens at temperature 1. TRL encodes every completion's prompt again (sampling, log-probs,
backward); memr1 encodes each prompt once per group (``memr1.rl.groups``). Each case runs in a fresh
subprocess (so its peak RSS is its own) for ``--steps`` optimizer steps; the first is dropped as
warm-up and the median of the rest is shown, as wall seconds per step. The sampled completions
differ between engines (different samplers), so their lengths are printed beside the times.

    python bench/bench_grpo.py [--steps 3] [--threads 1] [--cases 2x4 4x8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

LR, R, ALPHA, CAP, SEED = 1e-4, 16, 32, 32, 0


def rows(n: int) -> list[dict]:
    from memr1.data.locomo import load_locomo
    from memr1.memory.embed import make_embedder
    from memr1.rl.datasets import answer_agent_rows

    emb = make_embedder("minilm")
    store = os.path.join("runs", "bench", "store", emb.name)
    data = load_locomo(os.environ.get("MEMR1_DATA_DIR") or None)
    return answer_agent_rows(data, "train", emb, store_dir=store, k_per_speaker=5, limit=n, style="direct")


def case(engine: str, questions: int, group: int, steps: int) -> dict:
    """One run in this process: step times, completion lengths, peak RSS."""
    from memr1.rl.engines import train_policy
    from memr1.rl.grpo import GRPOSettings
    from memr1.rl.rewards import answer_f1_reward

    data = rows(questions * steps)
    settings = GRPOSettings(
        model="smollm2-135m", backend="transformers", engine=engine, steps=steps, learning_rate=LR,
        num_generations=group, batch_size=group, questions_per_step=questions, max_completion_length=CAP,
        temperature=1.0, lora_r=R, lora_alpha=ALPHA, save_every=0, eval_every=0, verify_adapter=False,
    )  # fmt: skip
    marks: list[float] = []
    lengths: list[float] = []

    class Timer:  # a TrainerCallback for TRL; the memr1 engine calls on_log only
        def __getattr__(self, name):
            return lambda *a, **k: None

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])
                if "step_s" in logs:
                    marks.append(logs["step_s"])

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = train_policy(settings, data, [answer_f1_reward], run_dir=out, seed=SEED, callbacks=[Timer()])
    if engine == "memr1":
        step_s = marks
    else:
        step_s = [b - a for a, b in zip([start, *marks], marks)]
    return {
        "engine": engine, "questions": questions, "group": group, "steps": result.steps, "step_s": step_s,
        "mean_length": lengths, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per case (OMP_NUM_THREADS)")
    ap.add_argument("--cases", nargs="+", default=["2x4", "4x8"], help="questions x completions per step")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = ap.parse_args()
    if args.case:
        engine, q, g = args.case.split(":")
        print("RESULT " + json.dumps(case(engine, int(q), int(g), args.steps)), flush=True)
        return
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    got = []
    for spec in args.cases:
        q, g = spec.split("x")
        for engine in ("trl", "memr1"):
            proc = subprocess.run(
                [sys.executable, __file__, "--steps", str(args.steps), "--case", f"{engine}:{q}:{g}"],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"case {engine} {spec} failed:\n{proc.stderr[-3000:]}")
            got.append(json.loads(line[7:]))
            print(f"  done: {engine} {spec}", file=sys.stderr, flush=True)
    print(
        f"# GRPO step, TRL vs memr1 engine · {time.strftime('%Y-%m-%d')} · {platform.machine()} · "
        f"{os.cpu_count()} cores · {args.threads} thread(s) per case · torch {torch.__version__}\n"
    )
    print(f"SmolLM2-135M fp32, LoRA r {R} on q/k/v/o, 10 memories per prompt, ≤ {CAP} tokens, {args.steps} steps "
          f"per case (first dropped); seed {SEED} for both engines (LoRA init, rows; each engine samples with its own "
          "sampler, so the completions differ)\n")  # fmt: skip
    print("| questions × completions | engine | median s / step | steps timed | mean completion tokens | peak RSS GB "
          "| step time vs TRL |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for spec in args.cases:
        q, g = (int(x) for x in spec.split("x"))
        pair = {r["engine"]: r for r in got if r["questions"] == q and r["group"] == g}
        med = {e: statistics.median(r["step_s"][1:] or r["step_s"]) for e, r in pair.items()}
        for e, r in pair.items():
            ratio = "—" if e == "trl" else f"{med[e] / med['trl']:.2f}×"
            print(f"| {q} × {g} | {e} | {med[e]:.1f} | {len(r['step_s'][1:]) or 1} | "
                  f"{statistics.mean(r['mean_length']):.1f} | {r['peak_rss_gb']:.1f} | {ratio} |")  # fmt: skip


if __name__ == "__main__":
    main()
