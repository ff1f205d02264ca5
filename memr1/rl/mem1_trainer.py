"""MEM1 training: grouped multi-turn rollouts, an exact GRPO-style loss, checkpoints and logs.

* ``policy_loss`` / ``train_step``: our own loss. Every generated token of a trajectory carries the
  trajectory's group-normalised advantage (``packing.group_advantages``). Per token, the clipped
  surrogate ``-min(r A, clip(r, 1-eps, 1+eps) A)``, ``r = exp(logp - logp_old)``, plus ``beta``
  times the k3 KL estimate to a reference model (default beta 0: no reference). One optimiser step
  per rollout batch, so ``logp_old`` is the detached current log-prob and the ratio is 1 (plain
  policy gradient; MEM1 itself runs PPO with a critic, GRPO here is a deviation).
  Aggregation (``loss_type``): ``token`` divides the sum over all generated tokens of the step by
  their number (a long turn or trajectory weighs more, DAPO style); ``trajectory`` averages each
  trajectory's tokens first, then the trajectories. Both are defined per trajectory, so per-turn
  rows and packed rows give the same loss.
* ``rollout_group``: ``group_size`` episodes of one task with the MEM1 agent
  (``memr1.agents.mem1.build_context`` / ``parse_action``), keeping every prompt and completion as
  token ids; reward = objectives answered correctly (exact match), no format reward.
* ``train_mem1``: the loop: rollouts, a step, a JSON-lines log line, a checkpoint
  (model or adapter, optimiser, RNG, step) from which a run resumes.

Where library pieces are used: transformers for the model and ``generate``; PEFT for LoRA
(``lora_r`` > 0). TRL is *not* used: its GRPOTrainer scores single-turn completions of one prompt,
while a MEM1 trajectory is several completions, each under its own pruned context, sharing one
advantage. Unsloth is not used either: the packed variant needs an attention that takes a 4-D
additive mask (eager or sdpa), which Unsloth's kernels replace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from memr1.config import Mem1TrainConfig, get_profile
from memr1.errors import ConfigError
from memr1.rl.packing import Trajectory, Turn, group_advantages, trajectory_logprobs
from memr1.seeding import seed_everything

log = logging.getLogger("memr1")

STOP_STRINGS = ("</query>", "</answer>")  # the agent's action tags (memr1.agents.mem1)
LOG_FILE, CHECKPOINT_DIR = "train_log.jsonl", "checkpoint"


# --------------------------------------------------------------------------- loss


def loss_weights(trajectories: Sequence[Trajectory], loss_type: str) -> list[float]:
    """The factor on each token of each trajectory, so that the weights sum to 1 over all tokens."""
    if loss_type == "token":
        total = sum(t.n_generated for t in trajectories)
        return [1.0 / total] * len(trajectories)
    if loss_type == "trajectory":
        return [1.0 / (t.n_generated * len(trajectories)) for t in trajectories]
    raise ConfigError(f"loss_type must be token or trajectory, got {loss_type!r}")


def policy_loss(logps: Sequence[torch.Tensor], advantages: Sequence[float], weights: Sequence[float], *,
                old_logps: Sequence[torch.Tensor] | None = None, ref_logps: Sequence[torch.Tensor] | None = None,
                clip_eps: float = 0.2, beta: float = 0.0) -> torch.Tensor:
    """Clipped policy-gradient loss (+ beta KL) summed over tokens with the given weights.

    Args:
        logps: current log-probs of each trajectory's generated tokens (with gradients).
        advantages: one advantage per trajectory, shared by all its tokens.
        weights: per-trajectory token factor (``loss_weights``).
        old_logps: behaviour log-probs; None means on-policy (the ratio is exactly 1).
        ref_logps: reference-model log-probs, needed when ``beta`` > 0.
        clip_eps: PPO ratio clip.
        beta: weight of the k3 estimate exp(ref - logp) - (ref - logp) - 1.
    """
    total = logps[0].new_zeros(())
    for i, lp in enumerate(logps):
        old = lp.detach() if old_logps is None else old_logps[i]
        ratio = torch.exp(lp - old)
        a = float(advantages[i])
        per_token = -torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
        if beta:
            if ref_logps is None:
                raise ConfigError("policy_loss: beta > 0 needs ref_logps")
            d = ref_logps[i] - lp
            per_token = per_token + beta * (torch.exp(d) - d - 1)
        total = total + weights[i] * per_token.sum()
    return total


def train_step(model: Any, optimizer: torch.optim.Optimizer, groups: Sequence[Sequence[Trajectory]], *,
               packed: bool, loss_type: str = "token", temperature: float = 1.0, clip_eps: float = 0.2,
               beta: float = 0.0, ref_model: Any = None, micro_batch: int = 8, max_grad_norm: float = 1.0,
               pad_id: int = 0) -> dict[str, float]:
    """One optimiser step on the trajectories of several groups (one group per task).

    Gradients are accumulated over micro-batches of whole trajectories; the weights of
    ``loss_weights`` make the result independent of the micro-batch size and of the row layout.
    With LoRA and ``beta`` > 0 and no ``ref_model``, the reference is the model with its adapter
    disabled.
    """
    trajs = [t for g in groups for t in g]
    advantages = [a for g in groups for a in group_advantages([t.reward for t in g])]
    weights = loss_weights(trajs, loss_type)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, logp_sum, read = 0.0, 0.0, 0
    for start in range(0, len(trajs), micro_batch):
        part = slice(start, start + micro_batch)
        lps, n_read = trajectory_logprobs(model, trajs[part], packed=packed, temperature=temperature, pad_id=pad_id)
        refs = _reference_logprobs(model, ref_model, trajs[part], packed, temperature, pad_id) if beta else None
        loss = policy_loss(lps, advantages[part], weights[part], ref_logps=refs, clip_eps=clip_eps, beta=beta)
        if loss.requires_grad:
            loss.backward()
        loss_sum += float(loss.detach())
        logp_sum += float(sum(lp.detach().sum() for lp in lps))
        read += n_read
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float64)
    n_gen = sum(t.n_generated for t in trajs)
    return {"loss": loss_sum, "reward_mean": float(rewards.mean()), "reward_max": float(rewards.max()),
            "logp_mean": logp_sum / n_gen, "loss_tokens": n_gen, "input_tokens": read,
            "turns": sum(len(t.turns) for t in trajs), "trajectories": len(trajs), "grad_norm": grad_norm}


def _reference_logprobs(model, ref_model, trajs, packed, temperature, pad_id) -> list[torch.Tensor]:
    """Log-probs under ``ref_model``, or under ``model`` with its LoRA adapter switched off."""
    if ref_model is None and not hasattr(model, "disable_adapter"):
        raise ConfigError("beta > 0 needs a ref_model, or a PEFT model whose adapter can be disabled")
    with torch.no_grad(), (model.disable_adapter() if ref_model is None else contextlib.nullcontext()):
        return trajectory_logprobs(model if ref_model is None else ref_model, trajs, packed=packed, temperature=temperature,
                                   pad_id=pad_id)[0]


# --------------------------------------------------------------------------- rollout


def encode_messages(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a chat context as the model reads it (continuing a final assistant message)."""
    continuing = bool(messages) and messages[-1].get("role") == "assistant"
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=not continuing,
                                         continue_final_message=continuing)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def sample_completion(model: Any, tokenizer: Any, prompt_ids: Sequence[int], *, max_new_tokens: int,
                      temperature: float, stop_strings: Sequence[str] = STOP_STRINGS) -> list[int]:
    """Sample one completion from the plain softmax at ``temperature`` and return its token ids.

    top-k, top-p and repetition penalty are switched off so the behaviour policy is exactly the one
    the loss scores. Generation stops at the end-of-turn token (kept) or after a stop string.
    Uses the global torch RNG: seed it (``rollout_group`` does) for reproducible samples.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], device=device)
    eos = tokenizer.eos_token_id
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=temperature > 0,
                         temperature=temperature if temperature > 0 else None, top_k=0, top_p=1.0,
                         repetition_penalty=1.0, max_new_tokens=max_new_tokens, eos_token_id=eos,
                         pad_token_id=tokenizer.pad_token_id, stop_strings=list(stop_strings) or None,
                         tokenizer=tokenizer)
    generated = out[0, ids.shape[1]:].tolist()
    return generated[: generated.index(eos) + 1] if eos in generated else generated


def rollout_group(task: Any, policy: Any, tokenizer: Any, retriever: Any = None, *, group_size: int,
                  max_turns: int, temperature: float, seed: int, max_new_tokens: int = 128,
                  k: int = 3) -> list[Trajectory]:
    """Run ``group_size`` MEM1 episodes of one task and keep every turn as token ids.

    The loop mirrors ``memr1.agents.mem1.run_episode`` in "mem1" mode: each turn ``build_context``
    gives the pruned context (task prompt, last state and query, last info), which is tokenised with
    the chat template; a completion is sampled, decoded and parsed. A query goes to
    ``retriever.search(query, k)`` (None: BM25 over the task corpus); an answer ends the episode
    and is scored; invalid output ends it with reward 0. Samples are reproducible from ``seed`` and
    leave the caller's RNG alone.
    """
    from memr1.agents.mem1 import build_context, format_docs, parse_action
    from memr1.data.retrieval import retriever_for

    retriever = retriever or retriever_for(task.corpus)
    trajectories = []
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        for member in range(group_size):
            turns, last, answers, stop = [], ("", None, ""), None, "max_turns"
            for turn in range(max_turns):
                messages = build_context(task, turn, *last, max_turns - turn, "mem1")
                prompt = encode_messages(tokenizer, messages)
                completion = sample_completion(policy, tokenizer, prompt, max_new_tokens=max_new_tokens,
                                               temperature=temperature)
                turns.append(Turn(prompt, completion))
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

    return float(sum(k < len(answers) and any(exact_match(answers[k], a) for a in aliases)
                     for k, aliases in enumerate(gold)))


# --------------------------------------------------------------------------- the run


@dataclass
class Mem1TrainResult:
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


def train_mem1(cfg: Mem1TrainConfig, *, tasks: Sequence[Any] | None = None, retriever: Any = None,
               rollout: Callable[..., list[Trajectory]] = rollout_group) -> Mem1TrainResult:
    """Train the MEM1 policy for ``cfg.steps`` steps, resuming from ``run_dir/checkpoint`` if present.

    Step s takes ``cfg.tasks_per_step`` tasks (cycling through ``tasks``), rolls out a group per
    task with seed derived from (cfg.seed, s, task slot), takes one optimiser step, appends a line
    to ``train_log.jsonl`` and checkpoints every ``cfg.save_every`` steps and at the end.

    Args:
        cfg: the stage config.
        tasks: task objects for ``rollout``; default ``make_tasks(cfg.environment, ...)``, one per
            step and slot.
        retriever: object with ``search(query, k)``; None: BM25 over each task's own corpus.
        rollout: a function with ``rollout_group``'s signature (tests pass a synthetic one).
    """
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if tasks is None:  # make_tasks keeps the first tasks when more are asked for: runs can be extended
        from memr1.data.tasks import make_tasks

        tasks = make_tasks(cfg.environment, cfg.n_objectives, cfg.steps * cfg.tasks_per_step, cfg.seed)
    model, tokenizer = _load_model(cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.learning_rate, weight_decay=0.0)
    start = load_checkpoint(run_dir / CHECKPOINT_DIR, model, optimizer, cfg)
    ref_model = _load_model(cfg, trainable=False)[0] if cfg.beta and not cfg.lora_r else None
    _truncate_log(run_dir / LOG_FILE, start)
    history = []
    for step in range(start, cfg.steps):
        model.eval()  # no dropout anywhere: rollout and loss see the same function
        groups = []
        for slot in range(cfg.tasks_per_step):
            task = tasks[(step * cfg.tasks_per_step + slot) % len(tasks)]
            groups.append(rollout(task, model, tokenizer, retriever, group_size=cfg.group_size,
                                  max_turns=cfg.max_turns, temperature=cfg.temperature,
                                  max_new_tokens=cfg.max_new_tokens, seed=(cfg.seed * 100_003 + step) * 1_009 + slot))
        stats = train_step(model, optimizer, groups, packed=cfg.packed, loss_type=cfg.loss_type,
                           temperature=cfg.temperature, clip_eps=cfg.clip_eps, beta=cfg.beta,
                           ref_model=ref_model, micro_batch=cfg.micro_batch,
                           pad_id=tokenizer.pad_token_id or 0)
        entry = {"step": step, **stats}
        history.append(entry)
        with open(run_dir / LOG_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        log.info("mem1 step %d: reward %.3f loss %.4f tokens %d", step, stats["reward_mean"], stats["loss"],
                 stats["loss_tokens"])
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(run_dir / CHECKPOINT_DIR, model, tokenizer, optimizer, step + 1, cfg)
    return Mem1TrainResult(run_dir, max(start, cfg.steps), start, history, model, tokenizer)


def _load_model(cfg: Mem1TrainConfig, trainable: bool = True) -> tuple[Any, Any]:
    """The policy (sdpa attention, full fine-tuning or a fresh LoRA adapter) and its tokenizer."""
    from memr1.llm.load import load_policy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = load_policy(cfg.model or get_profile(cfg.profile).policy_model, backend="transformers",
                         device=device, attn_implementation="sdpa")
    model = policy.model
    if not trainable:
        return model.eval().requires_grad_(False), policy.tokenizer
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model, policy.tokenizer


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model: Any, tokenizer: Any, optimizer: torch.optim.Optimizer, step: int,
                    cfg: Mem1TrainConfig) -> Path:
    """Write model (or adapter), tokenizer, optimiser, RNG states and step; swap in atomically."""
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=path.parent))
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": cfg.to_dict()}, indent=1))
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.replace(old)
    tmp.replace(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, model: Any, optimizer: torch.optim.Optimizer, cfg: Mem1TrainConfig) -> int:
    """Restore a checkpoint into ``model`` and ``optimizer``; return its step (0 when none)."""
    if not (path / "state.json").is_file():  # a crash mid-swap leaves only the previous one
        path = path.with_name(path.name + ".old")
    if not (path / "state.json").is_file():
        return 0
    state = json.loads((path / "state.json").read_text())
    free = {"steps", "save_every", "micro_batch", "run_dir"}
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in free and state["config"].get(k) != v)
    if changed:
        raise ConfigError(f"{path} was written with different settings ({', '.join(changed)}); "
                          f"use a new run_dir or restore those settings")
    from safetensors.torch import load_file

    weights = sorted((path / "model").glob("*.safetensors"))
    loaded = {}
    for f in weights:
        loaded.update(load_file(str(f)))
    if cfg.lora_r:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, loaded)
    else:
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        missing = set(model.state_dict()) - set(loaded) - tied  # save_pretrained leaves tied copies out
        if missing:
            raise ConfigError(f"{path} lacks weights {sorted(missing)[:3]}...; the checkpoint is incomplete")
        model.load_state_dict(loaded, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)  # our own file: numpy and python states
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    log.info("resumed MEM1 training from %s at step %d", path, state["step"])
    return int(state["step"])


def _truncate_log(path: Path, start: int) -> None:
    """Drop log lines of steps at or after ``start`` (left by a run that died after logging)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < start]
    path.write_text("".join(ln + "\n" for ln in lines))
