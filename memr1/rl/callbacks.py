"""Trainer plumbing for ``memr1.rl.grpo``: validation EM during training and a resumable sampler.

``ValidationCallback`` runs a validation function (greedy decoding on conv-30 rows, scored by the
stage's EM reward) every ``every`` optimizer steps on the main process and hands the numbers to
``MemR1GRPOTrainer.log``, which merges them into that step's log entry: they reach
``trainer.state.log_history`` (so they survive a resume) and TensorBoard under the same key.

``EpochSeededSampler`` fixes what stopped a resumed run from repeating a straight one. TRL's
``RepeatSampler`` seeds one ``torch.Generator`` at construction and draws a new permutation from it
every epoch, so epoch ``e`` of a straight run gets the ``(e+1)``-th draw; a resumed run builds a fresh
sampler and gives the epoch it resumes in the *first* draw. The wrapper reseeds the generator with
``seed + epoch`` whenever the Trainer calls ``set_epoch`` (it does, every epoch, also when resuming),
so an epoch's prompt order depends on the epoch number only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("memr1")

Validator = Callable[[Any, Any], dict[str, float]]
"""``validator(model, tokenizer) -> {"eval/em": ..., ...}``; must not touch the global RNG state."""


class ValidationCallback(TrainerCallback):
    """Call ``validator`` every ``every`` steps (main process only); keep the result for the log.

    Args:
        validator: ``(model, tokenizer) -> dict`` of scalar metrics.
        every: steps between calls; 0 switches validation off.
        tokenizer: passed to the validator with the model the Trainer is training.
    """

    def __init__(self, validator: Validator, every: int, tokenizer: Any):
        self.validator, self.every, self.tokenizer = validator, every, tokenizer
        self.pending: dict[str, float] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.is_world_process_zero:
            metrics = {k: float(v) for k, v in self.validator(model, self.tokenizer).items()}
            log.info("step %d validation: %s", state.global_step, metrics)
            self.pending.update(metrics)
            control.should_log = True  # the step's log entry carries them
        return control

    def pop_pending(self) -> dict[str, float]:
        out, self.pending = self.pending, {}
        return out


class EpochSeededSampler:
    """Wrap TRL's ``RepeatSampler`` so that each epoch's order depends on ``seed + epoch`` only."""

    def __init__(self, inner: Any):
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        self.inner.generator.manual_seed(int(self.inner.seed or 0) + int(epoch))

    def __iter__(self) -> Iterator[int]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def _with_validation_logs(base: type) -> type:
    """``base`` (a transformers Trainer) whose log entries also carry the pending validation metrics."""

    class WithValidationLogs(base):
        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            for cb in self.callback_handler.callbacks:
                if isinstance(cb, ValidationCallback):
                    logs.update(cb.pop_pending())
            super().log(logs, start_time)

    return WithValidationLogs


def trainer_class():
    """``MemR1GRPOTrainer``: TRL's GRPOTrainer with ``EpochSeededSampler`` and validation metrics in
    its logs. Built on call, so importing this module does not import trl (Unsloth must come first)."""
    from trl import GRPOTrainer

    class MemR1GRPOTrainer(_with_validation_logs(GRPOTrainer)):
        def _get_train_sampler(self, dataset=None):
            return EpochSeededSampler(super()._get_train_sampler(dataset))

    return MemR1GRPOTrainer


def sft_trainer_class():
    """TRL's SFTTrainer with validation metrics in its logs (``memr1.rl.sft``)."""
    from trl import SFTTrainer

    return _with_validation_logs(SFTTrainer)
