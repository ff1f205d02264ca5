"""MEM1 training: its settings, grouped multi-turn rollouts, the training loop, checkpoints and logs.

* ``Mem1TrainSettings``: the hyperparameters (``memr1.stages.mem1.Mem1TrainConfig`` adds the run
  fields and makes every one of them a ``memr1 train mem1 -p`` override).
* ``rollout_group``: ``group_size`` episodes of one task with the MEM1 agent
  (``memr1.agents.mem1.build_context`` / ``parse_action``), keeping every prompt and completion as
  token ids; reward = objectives answered correctly (exact match), no format reward.
* ``train_mem1``: the loop: rollouts, a step of ``memr1.rl.mem1_loss`` (our own GRPO-style loss), a
  JSON-lines log line, a checkpoint (``memr1.rl.mem1_checkpoint``) from which a rerun resumes exactly.

Where library pieces are used: transformers for the model and ``generate``; PEFT for LoRA
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

from memr1.config import StageConfig
from memr1.errors import ConfigError

if TYPE_CHECKING:
    from memr1.rl.packing import Trajectory

log = logging.getLogger("memr1")

STOP_STRINGS = ("</query>", "</answer>")  # the agent's action tags (memr1.agents.mem1)
LOG_FILE, CHECKPOINT_DIR = "train_log.jsonl", "checkpoint"


@dataclass
class Mem1TrainSettings(StageConfig):
    """MEM1 training: grouped multi-turn rollouts, exact per-turn or packed rows, our own GRPO-style loss."""

    model: str = ""
    """Policy base model: tiny, a hub id or a local folder; "" uses the model of the profile."""
    environment: str = "hotpotqa"
    """Task source for memr1.data.tasks.make_tasks: hotpotqa or locomo."""
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
    max_turns: int = 6
    """Turn cap per episode (MEM1: 6 for up to 4 objectives)."""
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

    def check(self) -> None:
        name = type(self).__name__
        if self.environment not in ("hotpotqa", "locomo"):
            raise ConfigError(f"{name}.environment must be hotpotqa or locomo, got {self.environment!r}")
        if self.loss_type not in ("token", "trajectory"):
            raise ConfigError(f"{name}.loss_type must be token or trajectory, got {self.loss_type!r}")
        for key in (
            "n_objectives",
            "steps",
            "tasks_per_step",
            "group_size",
            "max_turns",
            "max_new_tokens",
            "micro_batch",
            "save_every",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{name}.{key} must be >= 1, got {getattr(self, key)}")
        if self.learning_rate < 0 or self.beta < 0 or self.lora_r < 0 or self.clip_eps <= 0:
            raise ConfigError(f"{name}: learning_rate, beta and lora_r must be >= 0 and clip_eps > 0")
        if self.temperature <= 0:
            raise ConfigError(f"{name}.temperature must be > 0 (rollouts sample), got {self.temperature}")


# --------------------------------------------------------------------------- rollout


def encode_messages(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a chat context as the model reads it (continuing a final assistant message)."""
    continuing = bool(messages) and messages[-1].get("role") == "assistant"
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=not continuing, continue_final_message=continuing
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def sample_completion(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    stop_strings: Sequence[str] = STOP_STRINGS,
) -> list[int]:
    """Sample one completion from the plain softmax at ``temperature`` and return its token ids.

    top-k, top-p and repetition penalty are switched off so the behaviour policy is exactly the one
    the loss scores. Generation stops at the end-of-turn token (kept) or after a stop string.
    Uses the global torch RNG: seed it (``rollout_group`` does) for reproducible samples.
    """
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], device=device)
    eos = tokenizer.eos_token_id
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=list(stop_strings) or None,
        tokenizer=tokenizer,
    )
    generated = out[0, ids.shape[1] :].tolist()
    return generated[: generated.index(eos) + 1] if eos in generated else generated


def rollout_group(
    task: Any,
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
) -> list[Trajectory]:
    """Run ``group_size`` MEM1 episodes of one task and keep every turn as token ids.

    The loop mirrors ``memr1.agents.mem1.run_episode`` in "mem1" mode: each turn ``build_context``
    gives the pruned context (task prompt, last state and query, last info), which is tokenised with
    the chat template; a completion is sampled, decoded and parsed. A query goes to
    ``retriever.search(query, k)`` (None: BM25 over the task corpus); an answer ends the episode
    and is scored; invalid output ends it with reward 0. Samples are reproducible from ``seed`` and
    leave the caller's RNG alone.
    """
    import torch

    from memr1.agents.mem1 import build_context, format_docs, parse_action
    from memr1.memory.passages import retriever_for
    from memr1.rl.packing import Trajectory, TrajectoryTurn

    retriever = retriever or retriever_for(task.corpus)
    trajectories = []
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        for member in range(group_size):
            turns, answers, stop = [], None, "max_turns"
            last: tuple[str, str | None, str] = ("", None, "")
            for turn in range(max_turns):
                messages = build_context(task, turn, *last, max_turns - turn, "mem1")
                prompt = encode_messages(tokenizer, messages)
                completion = sample_completion(
                    policy, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=temperature
                )
                turns.append(TrajectoryTurn(tuple(prompt), tuple(completion)))
                action = parse_action(tokenizer.decode(completion, skip_special_tokens=True), task.n_objectives)
                if action.kind != "query":
                    answers, stop = action.answers, action.kind
                    break
                last = (action.state, action.query, format_docs(retriever.search(action.query, k)))
            reward = score_answers(answers or (), [o.answers for o in task.objectives])
            trajectories.append(Trajectory(turns, reward, {"member": member, "answers": answers, "stop": stop}))
    return trajectories


def score_answers(answers: Sequence[str], gold: Sequence[Sequence[str]]) -> float:
    """Objectives answered correctly: answer k exact-matches an alias of objective k (by position).

    >>> score_answers(("Paris", "1969"), [("Paris",), ("1968", "1969")])
    2.0
    """
    from memr1.eval.metrics import exact_match

    return float(
        sum(k < len(answers) and any(exact_match(answers[k], a) for a in aliases) for k, aliases in enumerate(gold))
    )


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
    rollout: Callable[..., list[Trajectory]] = rollout_group,
) -> TrainedMem1:
    """Train the MEM1 policy for ``settings.steps`` steps, resuming from ``run_dir/checkpoint`` if present.

    Step s takes ``settings.tasks_per_step`` tasks (cycling through ``tasks``), rolls out a group per
    task with seed derived from (seed, s, task slot), takes one optimiser step, appends a line
    to ``train_log.jsonl`` and checkpoints every ``settings.save_every`` steps and at the end.

    Args:
        settings: the hyperparameters; ``settings.model`` must be set (a stage config resolves "").
        run_dir: folder for the log and the checkpoint a rerun resumes from.
        seed: seeds random, numpy, torch and every step's rollouts.
        tasks: task objects for ``rollout``; default ``make_tasks(settings.environment, ...)``, one per
            step and slot.
        data_dir: where ``make_tasks`` reads its data (None searches the usual places).
        retriever: object with ``search(query, k)``; None: BM25 over each task's own corpus.
        rollout: a function with ``rollout_group``'s signature (tests pass a synthetic one).
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

        tasks = make_tasks(s.environment, s.n_objectives, s.steps * s.tasks_per_step, seed, data_dir=data_dir)
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
        groups = []
        for slot in range(s.tasks_per_step):
            task = tasks[(step * s.tasks_per_step + slot) % len(tasks)]
            groups.append(
                rollout(
                    task,
                    model,
                    tokenizer,
                    retriever,
                    group_size=s.group_size,
                    max_turns=s.max_turns,
                    temperature=s.temperature,
                    max_new_tokens=s.max_new_tokens,
                    seed=(seed * 100_003 + step) * 1_009 + slot,
                )
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
        entry = {"step": step, **stats}
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
