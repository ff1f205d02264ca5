"""MEM1 training: its settings and the training loop, with checkpoints and logs.

* ``Mem1TrainSettings``: the hyperparameters (``memr1.stages.mem1.Mem1TrainConfig`` adds the run
  fields and makes every one of them a ``memr1 train mem1 -p`` override).
* ``train_mem1``: the loop: rollouts (``memr1.rl.mem1_rollout.rollout_groups``: ``group_size``
  episodes of every task of the step, each turn under its own pruned context, scored by
  ``reward``), a step of the chosen ``algorithm`` (``grpo``: ``memr1.rl.mem1_loss``, our own
  GRPO-style loss; ``ppo``: ``memr1.rl.mem1_ppo``, a value head, GAE and several clipped updates), a
  JSON-lines log line, a checkpoint (``memr1.rl.mem1_checkpoint``, the value head included) from
  which a rerun resumes exactly.

Where library pieces are used: transformers for the model; PEFT for LoRA
(``lora_r`` > 0). TRL is *not* used: its GRPOTrainer scores single-turn completions of one prompt,
while a MEM1 trajectory is several completions, each under its own pruned context, sharing one
advantage. Unsloth is not used either: the packed variant needs an attention that takes a 4-D
additive mask (eager or sdpa), which Unsloth's kernels replace. torch is imported inside functions,
so that the settings (and the stage config built on them) load without it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memr1.agents.mem1 import PROMPT_STYLES
from memr1.config import StageConfig, check_choice, check_min
from memr1.errors import ConfigError
from memr1.rl.mem1_rollout import REWARDS, TokenSampler, rollout_groups

if TYPE_CHECKING:
    from memr1.rl.packing import Trajectory

log = logging.getLogger("memr1")

LOG_FILE, CHECKPOINT_DIR = "train_log.jsonl", "checkpoint"
ALGORITHMS = ("grpo", "ppo")


@dataclass
class Mem1TrainSettings(StageConfig):
    """MEM1 training: grouped multi-turn rollouts, exact per-turn or packed rows, a GRPO-style loss or PPO."""

    model: str = ""
    """Policy base model: tiny, a hub id or a local folder; "" uses the model of the profile."""
    environment: str = "hotpotqa"
    """Task source: hotpotqa or locomo; tasks come from its train pool only (memr1.data.tasks, split train)."""
    n_objectives: int = 2
    """Questions per task; the reward counts those answered correctly (MEM1 trains on 2)."""
    steps: int = 4
    """Optimizer steps; each rolls out one group per task of the step."""
    tasks_per_step: int = 2
    """Tasks per step, each with its own group of rollouts."""
    group_size: int = 4
    """Rollouts per task: the group whose rewards are normalised into advantages."""
    learning_rate: float = 1e-5
    """AdamW learning rate, constant, no weight decay (MEM1: 1e-6 for a 7B model)."""
    max_turns: int = -1
    """Turn cap per episode; -1 follows the rule of MEM1 (memr1.agents.mem1.turn_budget: 6 up to 4 objectives,
    20 beyond)."""
    max_new_tokens: int = 128
    """Token cap of each generated turn (MEM1: 1000)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; the loss scores tokens at the same temperature."""
    packed: bool = False
    """Score a whole trajectory in one row with a 4-D additive mask instead of one row per turn."""
    loss_type: str = "token"
    """token: mean over all generated tokens of the step; trajectory: mean of per-trajectory token means."""
    clip_eps: float = 0.2
    """Ratio clip of the surrogate (grpo: inactive, one update per rollout keeps the ratio 1); ppo also clips the
    value change by it (MEM1: 0.2 for the ratio, 0.5 for the value)."""
    beta: float = 0.0
    """Weight of the KL to the frozen base model (0 loads no reference model; MEM1's PPO: 0.001, in the reward)."""
    micro_batch: int = 8
    """Trajectories per forward pass; gradients are accumulated, the result does not depend on it."""
    lora_r: int = 0
    """LoRA rank on every linear layer (alpha is twice the rank); 0 means full fine-tuning."""
    save_every: int = 1
    """Steps between checkpoints in run_dir/checkpoint (the last step is always saved)."""
    reward: str = "em"
    """Episode reward: em (objectives answered exactly, as MEM1), f1 (the sum of their F1 scores), or em_format /
    f1_format (plus a format-validity shaping term of at most 0.2: memr1.rl.mem1_rollout.format_score)."""
    prompt_style: str = "plain"
    """plain (the instructions of MEM1) or examples (a worked episode first; memr1.agents.mem1.PROMPT_STYLES)."""
    algorithm: str = "grpo"
    """grpo (group-normalised trajectory rewards, no critic: memr1.rl.mem1_loss) or ppo (MEM1's algorithm: value head,
    GAE over each trajectory's generated tokens, several clipped updates per rollout: memr1.rl.mem1_ppo)."""
    critic_learning_rate: float = 1e-4
    """PPO: AdamW learning rate of the value head (MEM1: critic 1e-5, ten times the 1e-6 of the actor)."""
    ppo_epochs: int = 1
    """PPO: passes over the rollouts of each step (MEM1: 1)."""
    minibatches: int = 2
    """PPO: optimizer updates per epoch, each over a share of the step's trajectories (MEM1: 2, a batch of 128
    tasks in minibatches of 64)."""
    gae_gamma: float = 1.0
    """PPO: discount over a trajectory's generated tokens, across its turns (MEM1: 1)."""
    gae_lambda: float = 1.0
    """PPO: GAE lambda (MEM1: 1, so advantages are returns minus values)."""
    vf_coef: float = 0.5
    """PPO: weight of the value loss in the loss of the shared weights (MEM1 trains a separate critic model)."""
    entropy_coef: float = 0.001
    """PPO: weight of the entropy bonus (MEM1: 0.001)."""
    kl_in_reward: bool = True
    """PPO: beta times log(pi / pi_ref) is taken off the reward of each generated token (MEM1); False adds beta times
    the k3 estimate to the loss, as grpo does."""

    def check(self) -> None:
        name = type(self).__name__
        check_choice(self, "environment", ("hotpotqa", "locomo"))
        check_choice(self, "reward", REWARDS)
        check_choice(self, "prompt_style", PROMPT_STYLES)
        check_choice(self, "loss_type", ("token", "trajectory"))
        check_choice(self, "algorithm", ALGORITHMS)
        check_min(self, 1, "n_objectives", "steps", "tasks_per_step", "group_size", "max_new_tokens", "micro_batch")
        check_min(self, 1, "save_every", "ppo_epochs", "minibatches")
        check_min(self, 0, "learning_rate", "beta", "lora_r", "critic_learning_rate", "vf_coef", "entropy_coef")
        if self.max_turns < 1 and self.max_turns != -1:
            raise ConfigError(f"{name}.max_turns must be >= 1, or -1 for MEM1's rule, got {self.max_turns}")
        if self.clip_eps <= 0:
            raise ConfigError(f"{name}.clip_eps must be > 0, got {self.clip_eps}")
        if self.temperature <= 0:
            raise ConfigError(f"{name}.temperature must be > 0 (rollouts sample), got {self.temperature}")
        for key in ("gae_gamma", "gae_lambda"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{name}.{key} must lie in [0, 1], got {getattr(self, key)}")


# --------------------------------------------------------------------------- the run


@dataclass
class TrainedMem1:
    """What ``train_mem1`` returns."""

    run_dir: Path
    """Folder holding train_log.jsonl and checkpoint/."""
    steps_done: int
    """Steps completed in total, earlier runs of this folder included."""
    resumed_from: int
    """Step the run started at (0 for a fresh run)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The log entries written by this call."""
    model: Any = None
    """The trained model (a PEFT model when lora_r > 0)."""
    tokenizer: Any = None
    """Its tokenizer."""
    value_head: Any = None
    """PPO's value head (``memr1.rl.ppo.ValueHead``); None under grpo."""


def train_mem1(
    settings: Mem1TrainSettings,
    *,
    run_dir: str | Path,
    seed: int,
    tasks: Sequence[Any] | None = None,
    data_dir: str | None = None,
    retriever: Any = None,
    rollout: Callable[..., list[list[Trajectory]]] | None = None,
) -> TrainedMem1:
    """Train the MEM1 policy for ``settings.steps`` steps, resuming from ``run_dir/checkpoint`` if present.

    Step s takes ``settings.tasks_per_step`` tasks (cycling through ``tasks``), rolls out a group per
    task, all groups together, with a seed derived from (seed, s), takes one optimiser step (grpo) or
    ``ppo_epochs`` × ``minibatches`` of them (ppo), appends a line to ``train_log.jsonl`` and
    checkpoints every ``settings.save_every`` steps and at the end.

    Args:
        settings: the hyperparameters; ``settings.model`` must be set (a stage config resolves "").
        run_dir: folder for the log and the checkpoint a rerun resumes from.
        seed: seeds random, numpy, torch and every step's rollouts.
        tasks: task objects for ``rollout``; default ``make_tasks(settings.environment, ...,
            split="train")``, one per step and slot: training never sees a test question.
        data_dir: where ``make_tasks`` reads its data (None searches the usual places).
        retriever: object with ``search(query, k)``; None: BM25 over each task's own corpus.
        rollout: a function with ``rollout_groups``'s signature, returning one
            group per task (None: that function; tests pass a synthetic one).
    """
    import torch

    from memr1.rl.mem1_checkpoint import load_checkpoint, save_checkpoint, truncate_log
    from memr1.rl.mem1_loss import train_step
    from memr1.rl.mem1_ppo import ppo_step
    from memr1.rl.ppo import ValueHead
    from memr1.seeding import seed_everything

    settings.validate()
    if not settings.model:
        raise ConfigError("train_mem1 needs settings.model (tiny, a hub id or a folder); resolve the config first")
    s = settings
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    if tasks is None:  # make_tasks keeps the first tasks when more are asked for: runs can be extended
        from memr1.data.tasks import make_tasks

        n = s.steps * s.tasks_per_step
        tasks = make_tasks(s.environment, s.n_objectives, n, seed, data_dir=data_dir, split="train")
    rollout = rollout or rollout_groups
    model, tokenizer = _load_model(s.model, s.lora_r)
    # PPO's critic is a value head on the policy's last hidden state, with its own learning rate.
    heads = {"value_head": ValueHead(model.config.hidden_size).to(model.device)} if s.algorithm == "ppo" else {}
    param_groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": s.learning_rate}]
    param_groups += [{"params": list(h.parameters()), "lr": s.critic_learning_rate} for h in heads.values()]
    optimizer = torch.optim.AdamW(param_groups, lr=s.learning_rate, weight_decay=0.0)
    # What a checkpoint must agree on to be resumed: the settings (only those of this class, so a
    # stage config's extra fields do not count) and the seed. A setting newer than the checkpoint
    # matches at its default, which is how the older code behaved.
    fields = dataclasses.fields(Mem1TrainSettings)
    fingerprint = {f.name: getattr(s, f.name) for f in fields} | {"seed": seed}
    start = load_checkpoint(
        run_dir / CHECKPOINT_DIR,
        model,
        optimizer,
        fingerprint,
        extra=heads,
        defaults={f.name: f.default for f in fields},
    )
    ref_model = _load_model(s.model, 0, trainable=False)[0] if s.beta and not s.lora_r else None
    truncate_log(run_dir / LOG_FILE, start)
    history = []
    for step in range(start, s.steps):
        model.eval()  # no dropout anywhere: rollout and loss see the same function
        step_tasks = [tasks[(step * s.tasks_per_step + slot) % len(tasks)] for slot in range(s.tasks_per_step)]
        step_seed = seed * 100_003 + step
        groups = rollout(
            step_tasks,
            model,
            tokenizer,
            retriever,
            group_size=s.group_size,
            max_turns=s.max_turns,
            temperature=s.temperature,
            max_new_tokens=s.max_new_tokens,
            seed=step_seed,
            reward=s.reward,
            prompt_style=s.prompt_style,
        )
        pad_id = tokenizer.pad_token_id or 0
        if s.algorithm == "ppo":
            stats = ppo_step(
                model, optimizer, heads["value_head"], groups, s, ref_model=ref_model, pad_id=pad_id, seed=step_seed
            )
        else:
            stats = train_step(
                model, optimizer, groups, packed=s.packed, loss_type=s.loss_type, temperature=s.temperature,
                clip_eps=s.clip_eps, beta=s.beta, ref_model=ref_model, micro_batch=s.micro_batch, pad_id=pad_id,
            )  # fmt: skip
        entry = {"step": step, **stats, "tasks": [getattr(t, "id", str(t)) for t in step_tasks]}
        history.append(entry)
        with open(run_dir / LOG_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        log.info(
            "mem1 %s step %d: reward %.3f loss %.4f tokens %d",
            s.algorithm, step, stats["reward_mean"], stats["loss"], stats["loss_tokens"],
        )  # fmt: skip
        if (step + 1) % s.save_every == 0 or step + 1 == s.steps:
            save_checkpoint(
                run_dir / CHECKPOINT_DIR, model, tokenizer, optimizer, step + 1, fingerprint,
                extra={k: h.state_dict() for k, h in heads.items()} or None,
            )  # fmt: skip
    return TrainedMem1(run_dir, max(start, s.steps), start, history, model, tokenizer, heads.get("value_head"))


def _load_model(name: str, lora_r: int, trainable: bool = True) -> tuple[Any, Any]:
    """The policy (sdpa attention, full fine-tuning or a fresh LoRA adapter) and its tokenizer."""
    import torch

    from memr1.llm.load import load_policy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = load_policy(name, backend="transformers", device=device, attn_implementation="sdpa")
    model = policy.model
    if not trainable:
        return model.eval().requires_grad_(False), policy.tokenizer
    if lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        model = get_peft_model(model, lora)
    return model, policy.tokenizer


# The rollouts moved to memr1.rl.mem1_rollout; their names stay importable from here.
__all__ = [
    "ALGORITHMS", "CHECKPOINT_DIR", "LOG_FILE", "REWARDS", "Mem1TrainSettings", "TokenSampler", "TrainedMem1",
    "rollout_groups", "train_mem1",
]  # fmt: skip
