"""Supervised fine-tuning on gold completions: the comparator RL is measured against (``algorithm=sft``).

Memory-R1's Memory-SFT baseline clones a stronger model's trajectories. Here, with no stronger model
on the machine, the Answer Agent clones the gold answers written in its own output format
(``**Answer:** <gold>``, built by stage 03), on the same training questions, LoRA, steps, questions per
step and learning-rate schedule as an RL run, so "RL vs SFT" is read on the same validation questions.

TRL's ``SFTTrainer`` on conversational prompt-completion rows: the tokenizer's chat template renders
the prompt exactly as at answer time, and the loss covers the completion tokens only
(``completion_only_loss``). Checkpoints, exact resume (the Trainer skips the batches already seen),
the validation probe, ``train_config.json`` and the adapter check are the GRPO run's
(``memr1.rl.grpo.start_trl_run`` / ``train_trl``); the result is a ``TrainResult`` like theirs, whose
log carries ``loss`` per step instead of rewards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from memr1.errors import ConfigError
from memr1.rl.grpo import (
    GRPOSettings,
    Rows,
    TrainResult,
    lora_config,
    sequence_cap,
    start_trl_run,
    train_trl,
    trainer_args,
)


def sft_args(settings: GRPOSettings, *, run_dir: str | os.PathLike, seed: int):
    """The ``SFTConfig`` of a run: the budget of the RL run it stands beside (steps, questions per step)."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_args(settings, run_dir=run_dir, seed=seed),
        per_device_train_batch_size=settings.questions_per_step or settings.batch_size // settings.num_generations,
        max_length=None,  # sequence_cap already refused a prompt over the window
        completion_only_loss=True,
    )


def run_sft(
    settings: GRPOSettings,
    train_rows: Rows,
    reward_funcs: Sequence[Callable] = (),
    *,
    run_dir: str | os.PathLike,
    seed: int,
    fallback: str = "",
    validator: Callable[[Any, Any], dict[str, float]] | None = None,
    callbacks: Sequence[Any] = (),
    on_model: Callable[[Any, Any], None] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA on ``settings.model`` to write each row's ``completion`` after its ``prompt``.

    Arguments as ``memr1.rl.grpo.run_grpo``; ``reward_funcs`` are not used (the run imitates, it is not
    rewarded), and each row needs ``completion``, the assistant's reply as a string. There are no rollouts,
    so there is no ``generation_kwargs``.
    """
    from datasets import Dataset

    from memr1.rl.callbacks import ValidationCallback, sft_trainer_class

    if settings.backend == "unsloth":
        raise ConfigError("algorithm sft runs on transformers models; Unsloth is wired for GRPO only")
    bad = [i for i, r in enumerate(train_rows) if not isinstance(r.get("completion"), str) or not r["completion"]]
    if bad:
        raise ConfigError(f"algorithm sft needs a non-empty 'completion' string in every row; rows {bad[:5]} lack it")
    run_dir = Path(run_dir)
    resume_from, policy = start_trl_run(settings, train_rows, run_dir, seed, fallback, "run_sft")
    seq_cap = sequence_cap(settings, train_rows, policy)
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}]} for r in train_rows]
    )
    extra = [ValidationCallback(validator, settings.eval_every, policy.tokenizer)] if validator else []
    trainer = sft_trainer_class()(
        model=policy.model,
        args=sft_args(settings, run_dir=run_dir, seed=seed),
        train_dataset=dataset,
        processing_class=policy.tokenizer,
        peft_config=lora_config(settings),
        callbacks=[*extra, *callbacks],
    )
    if on_model is not None:
        on_model(trainer.model, policy.tokenizer)
    return train_trl(trainer, settings, policy, run_dir, seed, fallback, resume_from, {"sequence_cap": seq_cap})


__all__ = ["run_sft", "sft_args"]
