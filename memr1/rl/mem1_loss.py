"""The MEM1 training loss: a clipped, GRPO-style policy gradient over whole multi-turn trajectories.

Every generated token of a trajectory carries the trajectory's group-normalised advantage
(``packing.group_advantages``). Per token, the clipped surrogate ``-min(r A, clip(r, 1-eps, 1+eps) A)``,
``r = exp(logp - logp_old)``, plus ``beta`` times the k3 KL estimate to a reference model (default
beta 0: no reference). One optimiser step per rollout batch, so ``logp_old`` is the detached current
log-prob and the ratio is 1 (plain policy gradient; MEM1 itself runs PPO with a critic, GRPO here
is a deviation: docs/design.md §training).

Aggregation (``loss_type``): ``token`` divides the sum over all generated tokens of the step by
their number (a long turn or trajectory weighs more, DAPO style); ``trajectory`` averages each
trajectory's tokens first, then the trajectories. Both are defined per trajectory, so per-turn rows
and packed rows give the same loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from memr1.errors import ConfigError
from memr1.rl.packing import LOGPROB_CHUNK, Trajectory, group_advantages, trajectory_logprobs


def loss_weights(trajectories: Sequence[Trajectory], loss_type: str) -> list[float]:
    """The factor on each token of each trajectory, so that the weights sum to 1 over all tokens."""
    if loss_type == "token":
        total = sum(t.n_generated for t in trajectories)
        return [1.0 / total] * len(trajectories)
    if loss_type == "trajectory":
        return [1.0 / (t.n_generated * len(trajectories)) for t in trajectories]
    raise ConfigError(f"loss_type must be token or trajectory, got {loss_type!r}")


def policy_loss(
    logps: Sequence[torch.Tensor],
    advantages: Sequence[float],
    weights: Sequence[float],
    *,
    old_logps: Sequence[torch.Tensor] | None = None,
    ref_logps: Sequence[torch.Tensor] | None = None,
    clip_eps: float = 0.2,
    beta: float = 0.0,
) -> torch.Tensor:
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


def train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    groups: Sequence[Sequence[Trajectory]],
    *,
    packed: bool,
    loss_type: str = "token",
    temperature: float = 1.0,
    clip_eps: float = 0.2,
    beta: float = 0.0,
    ref_model: Any = None,
    micro_batch: int = 8,
    max_grad_norm: float = 1.0,
    pad_id: int = 0,
    chunk_tokens: int = LOGPROB_CHUNK,
) -> dict[str, float]:
    """One optimiser step on the trajectories of several groups (one group per task).

    Gradients are accumulated over micro-batches of whole trajectories; the weights of
    ``loss_weights`` make the result independent of the micro-batch size and of the row layout.
    With LoRA and ``beta`` > 0 and no ``ref_model``, the reference is the model with its adapter
    disabled. ``chunk_tokens``: scored tokens per chunk of the output layer (0: every position's
    logits at once; ``memr1.rl.packing.token_logprobs``).
    """
    trajs = [t for g in groups for t in g]
    advantages = [a for g in groups for a in group_advantages([t.reward for t in g])]
    weights = loss_weights(trajs, loss_type)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, logp_sum, read = 0.0, 0.0, 0
    for start in range(0, len(trajs), micro_batch):
        part = slice(start, start + micro_batch)
        lps, n_read = trajectory_logprobs(
            model, trajs[part], packed=packed, temperature=temperature, pad_id=pad_id, chunk_tokens=chunk_tokens
        )
        refs = (
            reference_logprobs(model, ref_model, trajs[part], packed, temperature, pad_id, chunk_tokens)
            if beta
            else None
        )
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
    return {
        "loss": loss_sum,
        "reward_mean": float(rewards.mean()),
        "reward_max": float(rewards.max()),
        "logp_mean": logp_sum / n_gen,
        "loss_tokens": n_gen,
        "input_tokens": read,
        "turns": sum(len(t.turns) for t in trajs),
        "trajectories": len(trajs),
        "groups_flat": sum(len({t.reward for t in g}) == 1 for g in groups),
        "grad_norm": grad_norm,
    }


def reference_logprobs(model, ref_model, trajs, packed, temperature, pad_id, chunk_tokens) -> list[torch.Tensor]:
    """Log-probs under ``ref_model``, or under ``model`` with its LoRA adapter switched off."""
    if ref_model is None and not hasattr(model, "disable_adapter"):
        raise ConfigError("beta > 0 needs a ref_model, or a PEFT model whose adapter can be disabled")
    with torch.no_grad(), model.disable_adapter() if ref_model is None else contextlib.nullcontext():
        return trajectory_logprobs(
            model if ref_model is None else ref_model,
            trajs,
            packed=packed,
            temperature=temperature,
            pad_id=pad_id,
            chunk_tokens=chunk_tokens,
        )[0]
