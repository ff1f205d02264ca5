"""PPO for the single-turn agents (Answer Agent, Memory Manager): value head, GAE, clipped surrogate.

CleanRL's ``ppo.py`` is the model: roll out, compute advantages once, then several epochs of
minibatch updates on that fixed buffer, so from the second minibatch on the policy that is scored
differs from the one that sampled and the ratio is no longer 1. Differences from CleanRL are those
of language models: an episode is one completion, a token is an action, the reward arrives on the
last token; MEM1's PPO (arXiv 2506.15841, its training section) gives the defaults γ = λ = 1, clip 0.2,
entropy 0.001, KL to the reference taken off the reward.

**The critic** is a linear value head on the policy's last hidden state (``ValueHead``), trained
with its own learning rate (``critic_learning_rate``); its loss also reaches the shared LoRA, scaled
by ``vf_coef``. Why not a second LoRA-adapted copy of the model, as Memory-R1 and MEM1 use: on this
CPU a second 135M forward and backward per token would double the step, while the head reads the
hidden states the actor's forward computes anyway (``memr1.rl.groups.group_logprobs``,
``value_head=``). The price is a critic that shares its features with the actor.

One step (``run_ppo``):

1. rollouts: ``questions_per_step`` prompts × ``num_generations`` completions, scored by the
   rewards (``memr1.rl.grpo_shared.rollouts``; the same completions per step as GRPO);
2. buffer (no gradients): old log-probs and values; with ``beta`` > 0 the reference log-probs (the
   adapter switched off); per-token rewards: the score on the last token, minus
   ``beta · (log π − log π_ref)`` on every token when ``kl_in_reward``;
3. ``gae``: advantages and returns per completion; advantages whitened over the step's tokens;
4. ``ppo_epochs`` × ``minibatches`` updates, each over a share of the groups (shuffled per epoch):
   clipped surrogate + ``vf_coef`` × clipped value loss − ``entropy_coef`` × entropy (+ ``beta`` × k3
   KL when not in the reward), mean over the minibatch's tokens; gradient norm clipped at 1.

Everything around the steps (model, LoRA, optimizer, resume, logs, checkpoints with the value
head) is ``memr1.rl.loop.PolicyRun``, shared with GRPO.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from memr1.rl.grpo import GRPOSettings, TrainResult


class ValueHead(torch.nn.Module):
    """``hidden [.., H] -> value [.., 1]``: one linear layer on the RMS-normalised hidden state, zero at start.

    Both choices come from a measured failure. SmolLM2's last hidden state has an RMS of about 2, so a
    head initialised with weights of std 1/√H started with values of std ≈ 2 against returns of about
    0.2: explained variance −660 to −150 over the first steps, and a value loss whose gradient, through
    ``vf_coef``, swamped the policy's in the shared LoRA. A zero head predicts 0 (explained variance 0)
    until it has learned something, and the normalised input keeps the head's gradient the same size
    whatever the model's hidden scale.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6))


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over one completion's tokens; the episode ends after the last.

    ``delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)`` with ``V`` after the last token 0, and
    ``A_t = delta_t + gamma * lam * A_{t+1}`` (Schulman et al. 2016). Returns ``(advantages, returns)``,
    ``returns = advantages + values``.
    """
    adv = torch.zeros_like(values)
    last = torch.zeros(())
    for t in reversed(range(len(values))):
        next_value = values[t + 1] if t + 1 < len(values) else torch.zeros(())
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, adv + values


def token_rewards(score: float, logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float) -> torch.Tensor:
    """The score on the last token, minus ``beta * (logp - ref_logp)`` on every token when a reference is given."""
    r = torch.zeros_like(logps)
    r[-1] = score
    if ref_logps is not None and beta:
        r = r - beta * (logps - ref_logps)
    return r


def clipped_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token: the clipped surrogate, the clipped value loss and the ratio, as CleanRL's ``ppo.py``.

    ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` and ``0.5 * max((V - R)^2, (V_clip - R)^2)``
    with ``V_clip = V_old + clip(V - V_old, -eps, eps)``. Shared with MEM1's PPO (``memr1.rl.mem1_ppo``).
    """
    ratio = torch.exp(logps - old_logps)
    pg = -torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    v_clip = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    vf = 0.5 * torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2)
    return pg, vf, ratio


def run_ppo(
    settings: GRPOSettings,
    train_rows: Sequence[dict[str, Any]],
    reward_funcs: Sequence[Callable],
    *,
    run_dir: Any,
    seed: int,
    fallback: str = "",
    validator: Callable[[Any, Any], dict[str, float]] | None = None,
    callbacks: Sequence[Any] = (),
    on_model: Callable[[Any, Any], None] | None = None,
) -> TrainResult:
    """Train a LoRA (and value head) with PPO over ``train_rows``; arguments as ``memr1.rl.grpo.run_grpo``."""
    from memr1.rl.groups import group_logprobs
    from memr1.rl.grpo_shared import rollout_stats, rollouts
    from memr1.rl.loop import PolicyRun

    s = settings
    run = PolicyRun(
        s, train_rows, run_dir=run_dir, seed=seed, name="ppo", fallback=fallback, callbacks=callbacks,
        on_model=on_model, heads=lambda h: {"value_head": (ValueHead(h), s.critic_learning_rate)},
    )  # fmt: skip
    model, head = run.model, run.heads["value_head"][0]

    def forward(i: int, comps: list, **kw):
        return group_logprobs(model, run.prompts[i], comps, temperature=s.temperature, pad_id=run.pad, **kw)

    for step in run.steps():
        t0 = run.begin_step(step)
        groups, per_func = rollouts(run, reward_funcs, step)  # 1.
        buffer = []  # 2-3. per group: old log-probs, old values, refs, advantages, returns
        with torch.no_grad():
            for i, comps, scores in groups:
                old = forward(i, comps, value_head=head)
                refs = None
                if s.beta:
                    with model.disable_adapter():
                        refs = forward(i, comps).logps
                adv, ret, kls = [], [], []
                for j, score in enumerate(scores):
                    ref = refs[j] if refs is not None and s.kl_in_reward else None
                    a, r = gae(
                        token_rewards(score, old.logps[j], ref, s.beta), old.values[j], s.gae_gamma, s.gae_lambda
                    )
                    adv.append(a)
                    ret.append(r)
                    if refs is not None:
                        kls.append(old.logps[j] - refs[j])
                buffer.append({"i": i, "comps": comps, "old": old, "refs": refs, "adv": adv, "ret": ret, "kl": kls})
        flat = torch.cat([a for b in buffer for a in b["adv"]])
        mean, std = flat.mean(), flat.std() if flat.numel() > 1 else torch.tensor(1.0)
        for b in buffer:
            b["adv"] = [(a - mean) / (std + 1e-8) for a in b["adv"]]

        model.train()  # 4.
        stats: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "ent", "clipfrac", "approx_kl", "grad_norm")}
        ratio_dev: list[float] = []  # max |ratio - 1| per update, in update order
        order_gen = torch.Generator().manual_seed(run.seed * 100_003 + step)
        n_mb = min(s.minibatches, len(buffer))
        for _epoch in range(s.ppo_epochs):
            order = torch.randperm(len(buffer), generator=order_gen).tolist()
            for mb in range(n_mb):
                part = [buffer[k] for k in order[mb::n_mb]]
                n_tok = sum(len(c) for b in part for c in b["comps"])
                run.optimizer.zero_grad(set_to_none=True)
                dev = 0.0
                for b in part:
                    new = forward(b["i"], b["comps"], with_entropy=True, value_head=head)
                    loss = new.logps[0].new_zeros(())
                    for j in range(len(b["comps"])):
                        pg, vf, ratio = clipped_losses(
                            new.logps[j], b["old"].logps[j], b["adv"][j],
                            new.values[j], b["old"].values[j], b["ret"][j], s.clip_eps,
                        )  # fmt: skip
                        per_token = pg + s.vf_coef * vf - s.entropy_coef * new.entropies[j]
                        if s.beta and not s.kl_in_reward:
                            d = b["refs"][j] - new.logps[j]
                            per_token = per_token + s.beta * (torch.exp(d) - d - 1)
                        loss = loss + per_token.sum() / n_tok
                        with torch.no_grad():
                            log_ratio = new.logps[j] - b["old"].logps[j]
                            dev = max(dev, float((ratio - 1).abs().max()))
                            stats["pg"].append(float(pg.mean()))
                            stats["vf"].append(float(vf.mean()))
                            stats["ent"].append(float(new.entropies[j].mean()))
                            stats["clipfrac"].append(float(((ratio - 1).abs() > s.clip_eps).float().mean()))
                            stats["approx_kl"].append(float(((ratio - 1) - log_ratio).mean()))
                    loss.backward()
                ratio_dev.append(dev)
                stats["grad_norm"].append(run.clip_and_step())
        returns = torch.cat([r for b in buffer for r in b["ret"]])
        values = torch.cat([v for b in buffer for v in b["old"].values])
        kl = [float(k.mean()) for b in buffer for k in b["kl"]]
        entry = {
            "step": step + 1,
            "loss": sum(stats["pg"]) / len(stats["pg"]) + s.vf_coef * sum(stats["vf"]) / len(stats["vf"]),
            **rollout_stats(run, groups, per_func),
            **{f"ppo/{k}": sum(v) / len(v) for k, v in stats.items()},
            "ppo/ratio_dev_first": ratio_dev[0],
            "ppo/ratio_dev_later": max(ratio_dev[1:], default=0.0),
            "ppo/explained_variance": float(1 - (returns - values).var() / returns.var().clamp_min(1e-8)),
            "kl": sum(kl) / len(kl) if kl else 0.0,
            "entropy": sum(stats["ent"]) / len(stats["ent"]),
            "grad_norm": max(stats["grad_norm"]),
            "learning_rate": run.optimizer.param_groups[0]["lr"],
            "step_s": time.perf_counter() - t0,
        }
        run.end_step(step, entry, validator)
    return run.finish()


__all__ = ["ValueHead", "gae", "token_rewards", "clipped_losses", "run_ppo"]
