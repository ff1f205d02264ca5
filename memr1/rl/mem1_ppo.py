"""PPO for the MEM1 policy: a value head, GAE over each trajectory's generated tokens, several clipped updates.

MEM1 (Zhou, Qu et al., arXiv 2506.15841) trains with PPO: a critic, GAE with γ = λ = 1, ratio clip
0.2, entropy bonus 0.001, one epoch in two minibatches, the KL to the reference (0.001) taken off
the reward, and the same masked forward for actor, critic and reference. This module follows
CleanRL's ``ppo.py`` (roll out, fix a buffer, then ``ppo_epochs`` × ``minibatches`` updates on it,
so from the second update on the policy scored is not the one that sampled and the ratio moves) on
MEM1's trajectories, whose turns each ran under their own pruned context. One step (``ppo_step``):

1. buffer, no gradients (``collect``): per trajectory the old log-probs and values of its generated
   tokens, and with ``beta`` > 0 the reference log-probs (the adapter switched off, or the frozen
   base model), all from ``memr1.rl.packing.trajectory_scores``: per-turn rows or the packed row,
   the same numbers either way within 1e-5 (tested), as for the GRPO-style loss;
2. per-token rewards (``memr1.rl.ppo.token_rewards``): the trajectory's reward on its last generated
   token, minus ``beta · (log π − log π_ref)`` on every generated token when ``kl_in_reward``;
3. ``memr1.rl.ppo.gae`` over the trajectory's generated tokens in order *across its turns*: the state
   after turn t's last token is the context of turn t + 1, whose value is read at the position that
   predicts that turn's first token, the new observation included. Observation and prompt tokens
   are not actions: they get no advantage, no value loss and no entropy (MEM1's info mask).
   Advantages are whitened over the step's generated tokens;
4. ``ppo_epochs`` × ``minibatches`` updates, each over a share of the trajectories (shuffled per epoch
   with the step's seed): clipped surrogate + ``vf_coef`` × clipped value loss − ``entropy_coef`` ×
   entropy (+ ``beta`` × k3 KL when the KL is not in the reward), each token weighted as
   ``loss_type`` says (``memr1.rl.mem1_loss.loss_weights``), gradient norm clipped at 1, one AdamW
   with the actor's and the critic's learning rates.

Deviations from MEM1, each a choice of this CPU workbench:

* the critic is ``memr1.rl.ppo.ValueHead`` on the policy's last hidden state, not a second 7B model
  (a second 135M forward and backward per token would double the CPU step; ``memr1.rl.ppo`` says
  more); its loss reaches the shared weights through ``vf_coef``;
* the value change is clipped by ``clip_eps`` (0.2), MEM1's code uses 0.5; the KL in the reward is
  not clamped at 0 (MEM1's code clamps it); its advantages are whitened over all response tokens,
  observations included, ours over generated tokens only;
* rollouts come in groups (``group_size``, kept from GRPO so both algorithms see the same
  trajectories); PPO scores each trajectory on its own (MEM1: one rollout per task).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from memr1.rl.loop import MAX_GRAD_NORM
from memr1.rl.mem1_loss import loss_weights, reference_logprobs
from memr1.rl.packing import LOGPROB_CHUNK, Trajectory, trajectory_scores
from memr1.rl.ppo import clipped_losses, gae, token_rewards


@dataclass
class Buffer:
    """One step's fixed rollout data: per trajectory, flat tensors over its generated tokens (turn order)."""

    trajectories: list[Trajectory]
    old_logps: list[torch.Tensor]
    old_values: list[torch.Tensor]
    ref_logps: list[torch.Tensor] | None
    """Reference log-probs (None when ``beta`` is 0)."""
    advantages: list[torch.Tensor]
    """Whitened over the step's generated tokens."""
    returns: list[torch.Tensor]
    """GAE returns, the value targets (``advantages + values`` before whitening)."""
    input_tokens: int = 0
    """Real tokens the buffer's forward read."""


def trajectory_advantages(
    reward: float,
    logps: torch.Tensor,
    values: torch.Tensor,
    ref_logps: torch.Tensor | None,
    *,
    beta: float,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns of one trajectory's generated tokens (all turns, in order).

    ``ref_logps`` None keeps the KL out of the reward.
    """
    return gae(token_rewards(reward, logps, ref_logps, beta), values, gamma, lam)


def collect(
    model: Any,
    head: Any,
    trajectories: Sequence[Trajectory],
    s: Any,
    *,
    ref_model: Any = None,
    pad_id: int = 0,
    chunk_tokens: int = LOGPROB_CHUNK,
) -> Buffer:
    """Steps 1-3 of the module docstring for ``trajectories`` under settings ``s`` (``Mem1TrainSettings``)."""
    trajs = list(trajectories)
    logps: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    refs: list[torch.Tensor] = []
    read = 0
    with torch.no_grad():
        for start in range(0, len(trajs), s.micro_batch):
            part = trajs[start : start + s.micro_batch]
            scored, n = trajectory_scores(
                model, part, packed=s.packed, temperature=s.temperature, pad_id=pad_id, chunk_tokens=chunk_tokens,
                value_head=head,
            )  # fmt: skip
            assert scored.values is not None, "trajectory_scores gives values when given a value head"
            logps += scored.logps
            values += scored.values
            read += n
            if s.beta:
                refs += reference_logprobs(model, ref_model, part, s.packed, s.temperature, pad_id, chunk_tokens)
    advantages, returns = [], []
    for i, traj in enumerate(trajs):
        in_reward = refs[i] if s.beta and s.kl_in_reward else None
        adv, ret = trajectory_advantages(
            traj.reward, logps[i], values[i], in_reward, beta=s.beta, gamma=s.gae_gamma, lam=s.gae_lambda
        )
        advantages.append(adv)
        returns.append(ret)
    flat = torch.cat(advantages)
    mean, std = flat.mean(), flat.std() if flat.numel() > 1 else torch.tensor(1.0)
    advantages = [(a - mean) / (std + 1e-8) for a in advantages]
    return Buffer(trajs, logps, values, refs if s.beta else None, advantages, returns, read)


def minibatch_backward(
    model: Any,
    head: Any,
    buffer: Buffer,
    indices: Sequence[int],
    s: Any,
    *,
    pad_id: int = 0,
    chunk_tokens: int = LOGPROB_CHUNK,
) -> dict[str, float]:
    """Accumulate the gradient of one minibatch's PPO loss (the trajectories ``indices`` of ``buffer``).

    Micro-batches of ``s.micro_batch`` trajectories; the per-token weights of ``loss_weights`` make
    the loss, and so the gradient, independent of the micro-batch size and of the row layout.
    Returns the loss and token means of its terms, the largest ``|ratio - 1|`` among them.
    """
    trajs = [buffer.trajectories[i] for i in indices]
    weights = loss_weights(trajs, s.loss_type)
    n_tok = sum(t.n_generated for t in trajs)
    sums = dict.fromkeys(("loss", "pg", "vf", "entropy", "clipfrac", "approx_kl"), 0.0)
    ratio_dev = 0.0
    for start in range(0, len(indices), s.micro_batch):
        part = list(indices[start : start + s.micro_batch])
        new, _ = trajectory_scores(
            model, [buffer.trajectories[i] for i in part], packed=s.packed, temperature=s.temperature, pad_id=pad_id,
            chunk_tokens=chunk_tokens, with_entropy=True, value_head=head,
        )  # fmt: skip
        assert new.values is not None and new.entropies is not None, "asked for with value_head and with_entropy"
        loss = new.logps[0].new_zeros(())
        for j, i in enumerate(part):
            lp, old = new.logps[j], buffer.old_logps[i]
            pg, vf, ratio = clipped_losses(
                lp, old, buffer.advantages[i], new.values[j], buffer.old_values[i], buffer.returns[i], s.clip_eps
            )
            per_token = pg + s.vf_coef * vf - s.entropy_coef * new.entropies[j]
            if s.beta and not s.kl_in_reward:
                assert buffer.ref_logps is not None, "collect() keeps the reference log-probs when beta > 0"
                d = buffer.ref_logps[i] - lp
                per_token = per_token + s.beta * (torch.exp(d) - d - 1)
            loss = loss + weights[start + j] * per_token.sum()
            with torch.no_grad():
                sums["pg"] += float(pg.sum())
                sums["vf"] += float(vf.sum())
                sums["entropy"] += float(new.entropies[j].sum())
                sums["clipfrac"] += float(((ratio - 1).abs() > s.clip_eps).sum())
                sums["approx_kl"] += float(((ratio - 1) - (lp - old)).sum())
                ratio_dev = max(ratio_dev, float((ratio - 1).abs().max()))
        loss.backward()
        sums["loss"] += float(loss.detach())
    return {"loss": sums.pop("loss"), **{k: v / n_tok for k, v in sums.items()}, "ratio_dev": ratio_dev}


def ppo_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    head: Any,
    groups: Sequence[Sequence[Trajectory]],
    s: Any,
    *,
    ref_model: Any = None,
    pad_id: int = 0,
    seed: int = 0,
    chunk_tokens: int = LOGPROB_CHUNK,
) -> dict[str, Any]:
    """One PPO step on the trajectories of ``groups`` under settings ``s`` (``Mem1TrainSettings``).

    ``optimizer`` holds the policy's trainable weights and ``head``'s (each group at its own
    learning rate). ``seed`` orders the minibatches. Returns the log entry: the keys of
    ``memr1.rl.mem1_loss.train_step`` and ``ppo/*`` (``ratio_dev_first``: largest ``|ratio - 1|`` of
    the first update, 0 up to fp32 since the buffer was scored by the sampling policy;
    ``ratio_dev_later``: of the later ones), ``kl`` (mean log π_old − log π_ref) and ``entropy``.
    """
    trajs = [t for g in groups for t in g]
    buffer = collect(model, head, trajs, s, ref_model=ref_model, pad_id=pad_id, chunk_tokens=chunk_tokens)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    order_gen = torch.Generator().manual_seed(seed)
    n_mb = min(s.minibatches, len(trajs))
    updates, grad_norms = [], []
    for _epoch in range(s.ppo_epochs):
        order = torch.randperm(len(trajs), generator=order_gen).tolist()
        for mb in range(n_mb):
            optimizer.zero_grad(set_to_none=True)
            part = order[mb::n_mb]
            updates.append(minibatch_backward(model, head, buffer, part, s, pad_id=pad_id, chunk_tokens=chunk_tokens))
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)))
            optimizer.step()
    returns, values = torch.cat(buffer.returns), torch.cat(buffer.old_values)
    rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float64)
    n_gen = sum(t.n_generated for t in trajs)

    def mean(key: str) -> float:
        return sum(u[key] for u in updates) / len(updates)

    kl = float(torch.cat(buffer.old_logps).sub(torch.cat(buffer.ref_logps)).mean()) if buffer.ref_logps else 0.0
    return {
        "loss": mean("loss"),
        "reward_mean": float(rewards.mean()),
        "reward_max": float(rewards.max()),
        "logp_mean": float(torch.cat(buffer.old_logps).sum()) / n_gen,
        "loss_tokens": n_gen,
        "input_tokens": buffer.input_tokens,
        "turns": sum(len(t.turns) for t in trajs),
        "trajectories": len(trajs),
        "groups_flat": sum(len({t.reward for t in g}) == 1 for g in groups),
        "grad_norm": max(grad_norms),
        **{f"ppo/{k}": mean(k) for k in ("pg", "vf", "clipfrac", "approx_kl")},
        "ppo/ratio_dev_first": updates[0]["ratio_dev"],
        "ppo/ratio_dev_later": max((u["ratio_dev"] for u in updates[1:]), default=0.0),
        "ppo/explained_variance": explained_variance(returns, values),
        "ppo/updates": len(updates),
        "kl": kl,
        "entropy": mean("entropy"),
    }


def explained_variance(returns: torch.Tensor, values: torch.Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)``: 1 for a perfect critic, 0 for one that predicts a constant."""
    if returns.numel() < 2:
        return 0.0
    return float(1 - (returns - values).var() / returns.var().clamp_min(1e-8))


__all__ = ["Buffer", "trajectory_advantages", "collect", "minibatch_backward", "ppo_step", "explained_variance"]
