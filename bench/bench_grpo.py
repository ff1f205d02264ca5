"""Per-step cost of memr1's GRPO wrapper against a hand-built TRL ``GRPOTrainer``, tiny model, CPU.

Both sides train the same tiny model on the same rows (real Answer-Agent prompts of conv-26, at most
three evidence memories each) with the same reward (``answer_em_reward``), LoRA and ``GRPOConfig``
(checked field by field before timing). "memr1" is ``memr1.rl.grpo.run_grpo`` (row lookup reward,
epoch-seeded sampler, log hook; validation off, since it is extra work by design); "plain TRL" is
``GRPOTrainer`` built by hand. A step is the wall time between two ``on_step_end`` callbacks (so it
includes the Trainer's logging); the first ``--warmup`` steps of every run are dropped, runs are
interleaved, and the median over all kept steps is shown. Target: overhead <= 10 %.

    python bench/bench_grpo.py [--steps 12] [--warmup 2] [--repeats 2] [--completion 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

GEN, BATCH, LR, R, ALPHA = 4, 4, 1e-5, 8, 16


class StepTimer(TrainerCallback):
    """Wall and CPU (this process, all threads) seconds between consecutive steps; the rewards seen."""

    def __init__(self):
        self.marks: list[tuple[float, float]] = []
        self.rewards: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [(time.perf_counter(), time.process_time())]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((time.perf_counter(), time.process_time()))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.rewards.append(round(float(logs["reward"]), 6))

    def steps(self, warmup: int) -> list[tuple[float, float]]:
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(self.marks, self.marks[1:])][warmup:]


def bench_rows(data_dir: str, n: int) -> list[dict]:
    from memr1.agents.answer import answer_messages
    from memr1.data.locomo import load_locomo

    conv = load_locomo(data_dir or None).conversation("conv-26")
    rows = []
    for qa in [q for q in conv.qa if q.category != 5][:n]:
        memories: dict[str, list[str]] = {sp: [] for sp in conv.speakers}
        for obs in conv.observations:
            if set(obs.evidence) & set(qa.evidence) and sum(map(len, memories.values())) < 3:
                memories[obs.speaker].append(f"{conv.session_time(obs.session)}: {obs.text}")
        rows.append({"prompt": answer_messages(qa.question, memories, list(conv.speakers)), "gold": qa.answer})
    return rows


def plain_args(out: str, steps: int, completion: int):
    """The GRPOConfig written out by hand, as a TRL user would."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        per_device_train_batch_size=BATCH,
        num_generations=GEN,
        max_completion_length=completion,
        temperature=1.0,
        beta=0.0,
        seed=0,
        logging_steps=1,
        save_strategy="no",
        save_steps=1,
        report_to="tensorboard",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
    )


def run_plain(rows, steps: int, completion: int) -> StepTimer:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from memr1.llm.tiny import tiny_model_path
    from memr1.rl.rewards import answer_em_reward
    from memr1.seeding import seed_everything

    seed_everything(0)
    path = tiny_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[answer_em_reward],
            args=plain_args(out, steps, completion),
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            callbacks=[timer],
            peft_config=LoraConfig(
                r=R,
                lora_alpha=ALPHA,
                lora_dropout=0.0,
                task_type="CAUSAL_LM",
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            ),
        )
        trainer.train()
    return timer


def ours_settings(steps: int, completion: int):
    from memr1.rl.grpo import GRPOSettings

    return GRPOSettings(
        model="tiny",
        backend="transformers",
        steps=steps,
        learning_rate=LR,
        num_generations=GEN,
        batch_size=BATCH,
        max_completion_length=completion,
        lora_r=R,
        lora_alpha=ALPHA,
        save_every=0,
        eval_every=0,
        verify_adapter=False,
    )


def run_ours(rows, steps: int, completion: int) -> StepTimer:
    from memr1.rl.grpo import run_grpo
    from memr1.rl.rewards import answer_em_reward

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        run_grpo(ours_settings(steps, completion), rows, [answer_em_reward], run_dir=out, seed=0, callbacks=[timer])
    return timer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of every run")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, interleaved")
    ap.add_argument("--completion", type=int, default=16, help="max_completion_length")
    args = ap.parse_args()
    os.environ.setdefault("MEMR1_CACHE_DIR", tempfile.mkdtemp(prefix="memr1-bench-"))
    import torch

    from memr1.rl.grpo import grpo_args

    rows = bench_rows(args.data_dir, args.steps * BATCH // GEN)  # one epoch: both sides see the same order
    with tempfile.TemporaryDirectory() as out:
        ours = grpo_args(ours_settings(args.steps, args.completion), run_dir=out, seed=0).to_dict()
        plain = plain_args(str(Path(out) / "checkpoints"), args.steps, args.completion).to_dict()
    diff = {k: (ours[k], plain.get(k)) for k in ours if ours[k] != plain.get(k)}
    if diff:
        raise SystemExit(f"the two GRPOConfigs differ, timing would not compare like with like: {diff}")
    runners = {"plain TRL GRPOTrainer": run_plain, "memr1 run_grpo": run_ours}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    rewards: dict[str, list[list[float]]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            timer = run(rows, args.steps, args.completion)
            times[name] += timer.steps(args.warmup)
            rewards[name].append(timer.rewards)
    same_work = all(r == rewards["plain TRL GRPOTrainer"][0] for rs in rewards.values() for r in rs)
    base = [statistics.median(t[i] for t in times["plain TRL GRPOTrainer"]) for i in (0, 1)]
    print(
        f"# GRPO step time · {time.strftime('%Y-%m-%d')} · {platform.machine()} · {os.cpu_count()} cores · "
        f"torch {torch.__version__} · load avg {os.getloadavg()[0]:.1f}\n"
    )
    print(
        f"tiny Qwen2 (~100k params), LoRA r={R} on q/k/v/o, {GEN} generations x {BATCH // GEN} prompt per step, "
        f"max_completion_length={args.completion}, real Answer-Agent prompts; identical GRPOConfig: yes; "
        f"identical per-step rewards on both sides (same samples, same work): {'yes' if same_work else 'NO'}\n"
    )
    print("| trainer | median wall step (s) | median CPU step (s) | steps timed | overhead wall | overhead CPU |")
    print("|---|---|---|---|---|---|")
    for name, ts in times.items():
        med = [statistics.median(t[i] for t in ts) for i in (0, 1)]
        over = ["—" if name.startswith("plain") else f"{100 * (m - b) / b:+.1f} %" for m, b in zip(med, base)]
        print(f"| {name} | {med[0]:.3f} | {med[1]:.3f} | {len(ts)} | {over[0]} | {over[1]} |")
    print("\nCPU time is this process's (all threads); under load from other processes it is the steadier of the two.")


if __name__ == "__main__":
    main()
