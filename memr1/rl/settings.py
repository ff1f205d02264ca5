"""The settings and result of every memr1 training run: GRPO, PPO and SFT, on TRL or memr1's own engine.

``GRPOSettings`` holds the hyperparameters (TRL ``GRPOConfig`` names; the training stages' configs derive
from it and add their data fields), ``TrainResult`` what a run leaves behind, ``lora_config`` the PEFT
adapter both engines put on the policy. The loops that read them: ``memr1.rl.grpo`` (TRL),
``memr1.rl.grpo_shared`` and ``memr1.rl.ppo`` (memr1's engine), ``memr1.rl.sft``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memr1.config import StageConfig, check_choice, check_min
from memr1.errors import ConfigError, Memr1Error
from memr1.runs import StageResult

LORA_MODULES = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
"""Modules a LoRA adapter is put on, by the name of ``GRPOSettings.lora_targets``."""
GRPO_BACKENDS = ("", "auto", "transformers", "unsloth")
"""Backends GRPO training accepts ("" means the backend of the profile, filled in by a stage)."""
ENGINES = ("trl", "memr1")
"""Who runs the GRPO loop: TRL's GRPOTrainer (this module) or memr1's own (``memr1.rl.grpo_shared``)."""
ALGORITHMS = ("grpo", "ppo", "sft")
"""grpo and ppo learn from rewards; sft imitates gold completions (the Answer Agent's comparator, ``memr1.rl.sft``)."""
Rows = Sequence[dict[str, Any]]


class TrainingError(Memr1Error):
    """Training could not start or finish (no rows, a run folder in the way, an adapter that will not load)."""


@dataclass
class GRPOSettings(StageConfig):
    """The GRPO and LoRA hyperparameters of a run (TRL ``GRPOConfig`` fields, Memory-R1's values noted).

    A stage config derives from this and from ``RunConfig``; ``run_grpo`` reads only these fields.
    """

    model: str = ""
    """Policy base model: tiny, a hub id or a local folder; "" uses the model of the profile."""
    backend: str = ""
    """auto, transformers or unsloth (CUDA only); "" uses the backend of the profile."""
    engine: str = "trl"
    """trl: the GRPOTrainer of TRL (every completion re-encodes its prompt; Unsloth on CUDA); memr1: our own
    loop, each prompt encoded once per group, exact and 3 to 5 times cheaper on a CPU (memr1.rl.grpo_shared)."""
    steps: int = 4
    """Optimizer steps to run (GRPOConfig max_steps)."""
    learning_rate: float = 1e-5
    """AdamW learning rate of the LoRA weights, held constant (Memory-R1 uses a constant schedule)."""
    num_generations: int = 4
    """Completions sampled per prompt: the GRPO group size."""
    batch_size: int = 4
    """Completions per forward/backward pass (per_device_train_batch_size); a multiple of num_generations."""
    questions_per_step: int = 0
    """Prompts per optimizer step, each with its group of num_generations completions (Memory-R1: 128);
    reached by gradient accumulation over passes of batch_size completions (per process under accelerate).
    0: batch_size / num_generations."""
    max_completion_length: int = 32
    """Token cap of each sampled completion (Memory-R1: 2048)."""
    temperature: float = 1.0
    """Sampling temperature of the training rollouts (Memory-R1: 1.0; validation is greedy)."""
    beta: float = 0.0
    """KL coefficient against the frozen base model (0 loads no reference model, as in TRL)."""
    warmup_steps: int = 0
    """Optimizer steps of linear learning-rate warm-up before the constant rate (0 for none)."""
    max_seq_length: int = 0
    """Prompt + completion tokens the run must fit (the max_seq_length of Unsloth); 0: derived from the data,
    the longest training prompt plus max_completion_length. A prompt that does not fit is an error."""
    lora_r: int = 8
    """LoRA rank of the adapter matrices (their inner dimension)."""
    lora_targets: str = "attention"
    """Layers the LoRA adapts: attention (q, k, v, o projections) or all (also gate, up and down of the MLP)."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by lora_alpha over lora_r)."""
    init_adapter: str = ""
    """Engine memr1: start the LoRA from this trained adapter (or a training run dir holding adapter/) instead
    of zero, e.g. an SFT run, so RL refines a supervised start (the cold start of DeepSeek-R1); its rank, alpha and
    targets must equal lora_r, lora_alpha and lora_targets. The KL reference stays the base model. "": none."""
    save_every: int = 2
    """Steps between checkpoints in run_dir/checkpoints (0 for none, which rules out resume)."""
    eval_every: int = 2
    """Steps between validation EM runs on conv-30 under greedy decoding (0 for none)."""
    resume: bool = False
    """Continue from the last checkpoint in run_dir/checkpoints when there is one."""
    verify_adapter: bool = True
    """After training, load the saved adapter with make_generator to prove it loads."""
    algorithm: str = "grpo"
    """grpo (group-normalised rewards, no critic), ppo (value head, GAE, clipped surrogate; engine memr1 only) or sft
    (supervised fine-tuning on gold answers; the Answer Agent only)."""
    critic_learning_rate: float = 1e-4
    """PPO: AdamW learning rate of the value head (Memory-R1: critic 1e-5, ten times the 1e-6 of the actor)."""
    ppo_epochs: int = 2
    """PPO: passes over the rollouts of each step (MEM1: 1; CleanRL: 4)."""
    minibatches: int = 2
    """PPO: optimizer updates per epoch, each over a share of the groups of the step (at most questions_per_step)."""
    gae_gamma: float = 1.0
    """PPO: discount over generated tokens (MEM1: 1)."""
    gae_lambda: float = 1.0
    """PPO: GAE lambda (MEM1: 1, so advantages are returns minus values)."""
    clip_eps: float = 0.2
    """PPO: ratio clip of the policy surrogate and clip of the value change (MEM1: 0.2)."""
    vf_coef: float = 0.5
    """PPO: weight of the value loss in the loss of the shared LoRA."""
    entropy_coef: float = 0.001
    """PPO: weight of the entropy bonus (MEM1: 0.001)."""
    kl_in_reward: bool = True
    """PPO: beta times log(pi / pi_ref) is taken off the reward of each token (MEM1); False adds beta times the k3
    estimate to the loss, as GRPO does."""

    def check(self) -> None:
        name = type(self).__name__
        check_choice(self, "backend", GRPO_BACKENDS)
        check_choice(self, "engine", ENGINES)
        check_choice(self, "lora_targets", tuple(LORA_MODULES))
        check_choice(self, "algorithm", ALGORITHMS)
        if self.algorithm == "ppo" and self.engine != "memr1":
            raise ConfigError(
                f"{name}: algorithm ppo runs on engine memr1 (TRL ships no PPO trainer); set engine=memr1"
            )
        check_min(self, 1, "ppo_epochs", "minibatches")
        check_min(self, 0, "critic_learning_rate", "vf_coef", "entropy_coef")
        for key in ("gae_gamma", "gae_lambda"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{name}.{key} must lie in [0, 1], got {getattr(self, key)}")
        if self.clip_eps <= 0:
            raise ConfigError(f"{name}.clip_eps must be > 0, got {self.clip_eps}")
        if self.init_adapter and (self.engine != "memr1" or self.algorithm == "sft"):
            raise ConfigError(
                f"{name}.init_adapter starts GRPO or PPO on engine memr1 from a trained adapter; "
                f"got engine={self.engine}, algorithm={self.algorithm}"
            )
        if self.num_generations < 2:
            raise ConfigError(
                f"{name}.num_generations must be >= 2 (GRPO compares completions within a "
                f"group), got {self.num_generations}"
            )
        if self.batch_size < 1 or self.batch_size % self.num_generations:
            fix = self.num_generations * max(1, self.batch_size // self.num_generations)
            raise ConfigError(
                f"{name}.batch_size ({self.batch_size}) must be a positive multiple of "
                f"num_generations ({self.num_generations}): every prompt needs its whole group "
                f"in one step; try batch_size={fix}"
            )
        check_min(self, 1, "steps", "max_completion_length", "lora_r", "lora_alpha")
        check_min(self, 0, "learning_rate", "beta", "save_every", "eval_every", "questions_per_step")
        check_min(self, 0, "warmup_steps", "max_seq_length")
        completions = self.questions_per_step * self.num_generations
        if completions % self.batch_size:
            raise ConfigError(
                f"{name}.questions_per_step ({self.questions_per_step}) x num_generations ({self.num_generations}) "
                f"= {completions} completions must be a multiple of batch_size ({self.batch_size}), which is "
                f"accumulated {completions / self.batch_size:.2f} times"
            )
        if self.temperature <= 0:
            raise ConfigError(
                f"{name}.temperature must be > 0 (training samples; validation is greedy), got {self.temperature}"
            )

    @property
    def accumulation_steps(self) -> int:
        """Forward/backward passes per optimizer step (gradient accumulation)."""
        return max(1, self.questions_per_step * self.num_generations // self.batch_size)


@dataclass
class TrainResult(StageResult):
    """What a GRPO run leaves behind (the training stages' results extend it)."""

    steps: int
    """Optimizer steps done in total (a resumed run counts the steps before the resume)."""
    adapter: str
    """Final LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    resumed_from: str | None
    """Checkpoint folder the run continued from, if any."""
    log_history: list[dict]
    """``trainer.state.log_history``: one dict per step (loss, reward, ...) plus the final summary."""
    eval_history: list[dict]
    """``{"step", "eval/em", ...}`` per validation run (greedy, conv-30)."""

    @property
    def adapter_path(self) -> Path:
        return Path(self.adapter)

    def step_logs(self) -> list[dict]:
        """The per-step training entries of ``log_history`` (those with a ``loss``)."""
        return [e for e in self.log_history if "loss" in e]


def lora_config(settings: GRPOSettings):
    """The PEFT ``LoraConfig`` of ``settings`` (rank, alpha, ``lora_targets``, no dropout): both engines use it."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        target_modules=list(LORA_MODULES[settings.lora_targets]),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


__all__ = [
    "GRPOSettings",
    "TrainResult",
    "TrainingError",
    "lora_config",
    "LORA_MODULES",
    "GRPO_BACKENDS",
    "ENGINES",
    "ALGORITHMS",
    "Rows",
]
