"""MEM1 training: its settings, grouped multi-turn rollouts, the training loop, checkpoints and logs.

* ``Mem1TrainSettings``: the hyperparameters (``memr1.stages.mem1.Mem1TrainConfig`` adds the run
  fields and makes every one of them a ``memr1 train mem1 -p`` override).
* ``TokenSampler`` / ``rollout_groups``: ``group_size`` episodes of every task of a step, all
  advancing together through the agent's own loop (``memr1.agents.mem1.run_batch``: one batched
  model call per turn for all of them; evaluation runs the same loop with a ``Generator``). The
  sampler is the training side of ``memr1.agents.mem1.TurnPolicy``: it tokenises each pruned
  context with the chat template and samples every row together (left padding, a KV cache, the
  plain softmax at ``temperature``: no top-k, top-p or repetition penalty, so the behaviour policy
  is exactly what the loss scores), stops a row at an end-of-turn token or once its text holds
  ``</query>`` / ``</answer>``, and keeps prompt ids, sampled ids and their log-probs: nothing is
  decoded and re-tokenised. It writes its own loop rather than calling ``generate``, whose
  ``output_scores`` would hold steps × batch × vocabulary floats (gigabytes at a 150k vocabulary).
  Reward (``reward``): objectives answered correctly (exact match by position, MEM1's), or the sum
  of their F1 (a denser signal for a small model that rarely matches exactly); no format reward.
* ``train_mem1``: the loop: rollouts, a step of ``memr1.rl.mem1_loss`` (our own GRPO-style loss), a
  JSON-lines log line, a checkpoint (``memr1.rl.mem1_checkpoint``) from which a rerun resumes exactly.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memr1.agents.mem1 import PROMPT_STYLES, STOP_STRINGS, StepOutput
from memr1.config import StageConfig
from memr1.errors import ConfigError
from memr1.rl.sampling import encode_messages, ends_with_stop, eos_ids, sample_batch

if TYPE_CHECKING:
    from memr1.rl.packing import Trajectory

log = logging.getLogger("memr1")

LOG_FILE, CHECKPOINT_DIR = "train_log.jsonl", "checkpoint"
REWARDS = ("em", "f1")


@dataclass
class Mem1TrainSettings(StageConfig):
    """MEM1 training: grouped multi-turn rollouts, exact per-turn or packed rows, our own GRPO-style loss."""

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
    """PPO ratio clip (inactive with one update per rollout, where the ratio is 1)."""
    beta: float = 0.0
    """Weight of the KL estimate to the frozen base model (0 loads no reference model)."""
    micro_batch: int = 8
    """Trajectories per forward pass; gradients are accumulated, the result does not depend on it."""
    lora_r: int = 0
    """LoRA rank on every linear layer (alpha is twice the rank); 0 means full fine-tuning."""
    save_every: int = 1
    """Steps between checkpoints in run_dir/checkpoint (the last step is always saved)."""
    reward: str = "em"
    """Episode reward: em (objectives answered exactly, as MEM1) or f1 (the sum of their F1 scores)."""
    prompt_style: str = "plain"
    """plain (the instructions of MEM1) or examples (a worked episode first; memr1.agents.mem1.PROMPT_STYLES)."""

    def check(self) -> None:
        name = type(self).__name__
        if self.environment not in ("hotpotqa", "locomo"):
            raise ConfigError(f"{name}.environment must be hotpotqa or locomo, got {self.environment!r}")
        if self.reward not in REWARDS:
            raise ConfigError(f"{name}.reward must be one of {REWARDS}, got {self.reward!r}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ConfigError(f"{name}.prompt_style must be one of {PROMPT_STYLES}, got {self.prompt_style!r}")
        if self.loss_type not in ("token", "trajectory"):
            raise ConfigError(f"{name}.loss_type must be token or trajectory, got {self.loss_type!r}")
        for key in (
            "n_objectives",
            "steps",
            "tasks_per_step",
            "group_size",
            "max_new_tokens",
            "micro_batch",
            "save_every",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{name}.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_turns < 1 and self.max_turns != -1:
            raise ConfigError(f"{name}.max_turns must be >= 1, or -1 for MEM1's rule, got {self.max_turns}")
        if self.learning_rate < 0 or self.beta < 0 or self.lora_r < 0 or self.clip_eps <= 0:
            raise ConfigError(f"{name}: learning_rate, beta and lora_r must be >= 0 and clip_eps > 0")
        if self.temperature <= 0:
            raise ConfigError(f"{name}.temperature must be > 0 (rollouts sample), got {self.temperature}")


# --------------------------------------------------------------------------- rollouts


class TokenSampler:
    """The training ``TurnPolicy``: batched sampling that keeps prompt ids, sampled ids and log-probs.

    Args:
        model, tokenizer: the policy being trained (switched to eval mode while sampling).
        max_new_tokens: cap per turn.
        temperature: sampling temperature (> 0); the loss scores at the same temperature.
        seed: seeds the sampler's own ``torch.Generator``: the same seed and batch give the same
            samples, and the global RNG is left alone.
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, max_new_tokens: int, temperature: float, seed: int, name: str = ""
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.context_window: int | None = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        import torch

        self.name = name or getattr(getattr(model, "config", None), "name_or_path", "") or "policy"
        self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)

    def step(self, contexts: Sequence[Sequence[dict[str, str]]]) -> list[StepOutput]:
        start = time.perf_counter()
        prompts = [encode_messages(self.tokenizer, m) for m in contexts]
        was_training = self.model.training
        self.model.eval()
        try:
            comps, lps = sample_batch(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                generator=self.generator,
                stop_strings=STOP_STRINGS,
            )
        finally:
            self.model.train(was_training)
        each = (time.perf_counter() - start) / max(1, len(prompts))
        stops = eos_ids(self.model, self.tokenizer)
        return [
            StepOutput(
                self.tokenizer.decode(c, skip_special_tokens=True),
                each,
                "stop" if c[-1] in stops or ends_with_stop(self.tokenizer, c, STOP_STRINGS) else "length",
                tuple(p),
                tuple(c),
                tuple(lp),
            )
            for p, c, lp in zip(prompts, comps, lps)
        ]


def rollout_groups(
    tasks: Sequence[Any],
    policy: Any,
    tokenizer: Any,
    retriever: Any = None,
    *,
    group_size: int,
    max_turns: int,
    temperature: float,
    seed: int,
    max_new_tokens: int = 128,
    k: int = 3,
    reward: str = "em",
    prompt_style: str = "plain",
) -> list[list[Trajectory]]:
    """``group_size`` MEM1 episodes of every task, all advancing together; one group per task.

    The episodes are ``memr1.agents.mem1.run_batch`` in "mem1" mode with a ``TokenSampler``
    (seeded with ``seed``); a query goes to ``retriever.search(query, k)`` (None: BM25 over each
    task's corpus). ``max_turns`` -1 follows MEM1's turn budget for the task's N. A trajectory's
    reward is the sum over objectives of EM (``reward`` "em") or F1 ("f1").
    """
    from memr1.agents.mem1 import run_batch
    from memr1.eval.mem1_metrics import score_answer
    from memr1.rl.packing import Trajectory, TrajectoryTurn

    if reward not in REWARDS:
        raise ConfigError(f"reward must be one of {REWARDS}, got {reward!r}")
    if group_size < 1 or not tasks:
        raise ConfigError(f"rollout_groups needs tasks and group_size >= 1, got {len(tasks)} tasks, {group_size}")
    sampler = TokenSampler(policy, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    members = [t for t in tasks for _ in range(group_size)]
    episodes = run_batch(
        members,
        sampler,
        [retriever] * len(members),
        "mem1",
        max_turns,
        score=score_answer,
        k=k,
        prompt_style=prompt_style,
    )
    groups: list[list[Trajectory]] = []
    for g in range(len(tasks)):
        group = []
        for member, ep in enumerate(episodes[g * group_size : (g + 1) * group_size]):
            turns = [TrajectoryTurn(t.prompt_ids, t.completion_ids) for t in ep.turns]
            info = {
                "member": member,
                "answers": ep.answers,
                "stop": ep.stop,
                "logprobs": [t.logprobs for t in ep.turns],
            }
            group.append(Trajectory(turns, float(sum(ep.em if reward == "em" else ep.f1)), info))
        groups.append(group)
    return groups


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
    task, all groups together, with a seed derived from (seed, s), takes one optimiser step, appends
    a line to ``train_log.jsonl`` and checkpoints every ``settings.save_every`` steps and at the end.

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
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=s.learning_rate, weight_decay=0.0
    )
    # What a checkpoint must agree on to be resumed: the settings (only those of this class, so a
    # stage config's extra fields do not count) and the seed.
    fingerprint = {f.name: getattr(s, f.name) for f in dataclasses.fields(Mem1TrainSettings)} | {"seed": seed}
    start = load_checkpoint(run_dir / CHECKPOINT_DIR, model, optimizer, fingerprint)
    ref_model = _load_model(s.model, 0, trainable=False)[0] if s.beta and not s.lora_r else None
    truncate_log(run_dir / LOG_FILE, start)
    history = []
    for step in range(start, s.steps):
        model.eval()  # no dropout anywhere: rollout and loss see the same function
        step_tasks = [tasks[(step * s.tasks_per_step + slot) % len(tasks)] for slot in range(s.tasks_per_step)]
        groups = rollout(
            step_tasks,
            model,
            tokenizer,
            retriever,
            group_size=s.group_size,
            max_turns=s.max_turns,
            temperature=s.temperature,
            max_new_tokens=s.max_new_tokens,
            seed=seed * 100_003 + step,
            reward=s.reward,
            prompt_style=s.prompt_style,
        )
        stats = train_step(
            model,
            optimizer,
            groups,
            packed=s.packed,
            loss_type=s.loss_type,
            temperature=s.temperature,
            clip_eps=s.clip_eps,
            beta=s.beta,
            ref_model=ref_model,
            micro_batch=s.micro_batch,
            pad_id=tokenizer.pad_token_id or 0,
        )
        entry = {"step": step, **stats, "tasks": [getattr(t, "id", str(t)) for t in step_tasks]}
        history.append(entry)
        with open(run_dir / LOG_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        log.info(
            "mem1 step %d: reward %.3f loss %.4f tokens %d",
            step,
            stats["reward_mean"],
            stats["loss"],
            stats["loss_tokens"],
        )
        if (step + 1) % s.save_every == 0 or step + 1 == s.steps:
            save_checkpoint(run_dir / CHECKPOINT_DIR, model, tokenizer, optimizer, step + 1, fingerprint)
    return TrainedMem1(run_dir, max(start, s.steps), start, history, model, tokenizer)


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
