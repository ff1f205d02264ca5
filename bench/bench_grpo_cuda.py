"""GRPO step time and peak GPU memory: Unsloth against plain TRL, Qwen2.5-1.5B-shaped model (CUDA only).

No download: the model is a ``Qwen2ForCausalLM`` with Qwen2.5-1.5B's shape (28 layers, hidden 1536,
MLP 8960, 12 heads / 2 KV heads, vocabulary 151,936, tied embeddings) and random bf16 weights,
saved once to a temp folder with the tiny model's tokenizer (its ids are a subset of the vocabulary).
Random weights rarely sample the end token, so nearly every completion runs to
``--completion`` tokens: the work per step is the same on every side.

Each variant runs in its own process (Unsloth patches transformers/trl/peft at import, so it must be
imported first and must not leak into the other runs):

- ``trl``: ``GRPOTrainer`` + PEFT LoRA (r 8, q/k/v/o) on the bf16 model, gradient checkpointing on;
- ``unsloth-16bit``: ``FastLanguageModel`` bf16 + ``get_peft_model`` (Unsloth checkpointing), same trainer;
- ``memr1-unsloth-4bit``: ``memr1.rl.grpo.run_grpo`` with backend unsloth (the paper profile's
  4-bit QLoRA path; needs bitsandbytes).

Same rows (Answer-Agent prompts of conv-26 when LoCoMo is found, else synthetic ones), reward, steps
and GRPO settings everywhere. Step = wall time between ``on_step_end`` callbacks, first ``--warmup``
dropped; peak = ``torch.cuda.max_memory_allocated`` from the start of training (weights included).

    python bench/bench_grpo_cuda.py [--steps 6] [--warmup 2] [--completion 128] [--variants trl,unsloth-16bit]

UNTESTED on a GPU when written (the machine had none); on a machine without CUDA it prints why
and exits with status 0 without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("trl", "unsloth-16bit", "memr1-unsloth-4bit")
GEN, BATCH, R, ALPHA, LR = 4, 8, 8, 16, 1e-5
QWEN15B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
)


def build_model(out: Path) -> None:
    """Random bf16 Qwen2.5-1.5B-shaped model + the tiny tokenizer, saved to ``out``."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from memr1.llm.tiny import tiny_model_path

    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    cfg = Qwen2Config(**QWEN15B, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    torch.cuda.empty_cache()


def rows(n: int) -> list[dict]:
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_grpo import bench_rows

        return bench_rows("", n)
    except Exception:  # noqa: BLE001 - no LoCoMo here: synthetic prompts of similar length
        text = "Caroline went to the LGBTQ support group on 7 May 2023 and felt accepted. " * 40
        return [
            {"prompt": [{"role": "user", "content": f"{text}\nQuestion {i}: when did she go?"}], "gold": "7 May 2023"}
            for i in range(n)
        ]


def child(variant: str, model_dir: str, steps: int, warmup: int, completion: int) -> dict:
    """Run one variant in this process; returns step times and peak memory."""
    if variant.startswith(("unsloth", "memr1")):
        __import__("unsloth")  # first, before trl, transformers and peft
    import torch
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        marks: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.marks = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

    probe, data, out = Probe(), rows(steps * BATCH // GEN), tempfile.mkdtemp(prefix="bench-grpo-cuda-")
    from memr1.rl.rewards import answer_em_reward

    if variant == "memr1-unsloth-4bit":
        from memr1.rl.grpo import GRPOSettings, run_grpo

        settings = GRPOSettings(
            model=model_dir,
            backend="unsloth",
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
        run_grpo(settings, data, [answer_em_reward], run_dir=out, seed=0, callbacks=[probe])
    else:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
        peft_config = None
        if variant == "unsloth-16bit":
            from unsloth import FastLanguageModel

            model, tok = FastLanguageModel.from_pretrained(
                model_name=model_dir, max_seq_length=2048, load_in_4bit=False, dtype=torch.bfloat16
            )
            model = FastLanguageModel.get_peft_model(
                model,
                r=R,
                lora_alpha=ALPHA,
                target_modules=targets,
                use_gradient_checkpointing="unsloth",
                random_state=0,
            )
        else:
            from peft import LoraConfig
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda")
            peft_config = LoraConfig(
                r=R, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM"
            )
        tok.padding_side = "left"
        args = GRPOConfig(
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
            report_to="none",
            bf16=True,
            gradient_checkpointing=variant == "trl",
        )
        GRPOTrainer(
            model=model,
            reward_funcs=[answer_em_reward],
            args=args,
            train_dataset=Dataset.from_list(data),
            processing_class=tok,
            peft_config=peft_config,
            callbacks=[probe],
        ).train()
    shutil.rmtree(out, ignore_errors=True)
    times = [b - a for a, b in zip(probe.marks, probe.marks[1:])][warmup:]
    return {
        "variant": variant,
        "step_s": statistics.median(times),
        "steps": len(times),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--completion", type=int, default=128, help="max_completion_length")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model_dir, args.steps, args.warmup, args.completion)))
        return
    import torch

    if not torch.cuda.is_available():
        print(
            "bench_grpo_cuda.py measures GPU step time and memory and needs CUDA; torch.cuda.is_available() is "
            "False on this machine, so nothing was measured. Run it on a GPU machine with `pip install .[gpu]`."
        )
        return
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    results = []
    with tempfile.TemporaryDirectory(prefix="qwen15b-random-") as model_dir:
        build_model(Path(model_dir))
        for variant in args.variants.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--model-dir",
                model_dir,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--completion",
                str(args.completion),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not found:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
                results.append({"variant": variant, "error": tail})
            else:
                results.append(json.loads(found[-1][7:]))
    name = torch.cuda.get_device_name(0)
    print(f"# GRPO on CUDA · {time.strftime('%Y-%m-%d')} · {name} · torch {torch.__version__}\n")
    print(
        f"Qwen2.5-1.5B shape, random bf16 weights, LoRA r={R} q/k/v/o, {GEN} generations x {BATCH // GEN} prompts "
        f"per step, max_completion_length={args.completion}, {args.steps} steps ({args.warmup} warm-up dropped)\n"
    )
    print("| variant | median step (s) | peak GPU memory (GiB) | note |")
    print("|---|---|---|---|")
    base = next((r["step_s"] for r in results if r["variant"] == "trl" and "step_s" in r), None)
    for r in results:
        if "error" in r:
            print(f"| {r['variant']} | — | — | failed: {r['error']} |")
            continue
        note = "" if base is None or r["variant"] == "trl" else f"{base / r['step_s']:.2f}x the speed of trl"
        print(f"| {r['variant']} | {r['step_s']:.2f} | {r['peak_gib']:.1f} | {note} |")


if __name__ == "__main__":
    main()
