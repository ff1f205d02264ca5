"""GRPO, memr1's own loop, with each prompt encoded once per group (engine ``memr1``).

TRL's ``GRPOTrainer`` (``memr1.rl.grpo.run_grpo``, engine ``trl``) runs every completion as a row of
``prompt + completion``: a group of ``G`` completions of a 500-token prompt encodes that prompt ``G``
times when sampling, ``G`` times for the log-probs and ``G`` times backwards. Here the prompt goes
through the model once per group in each of those (``memr1.rl.sampling.sample_group``,
``memr1.rl.groups.group_logprobs``), which is exact and several times cheaper on a CPU
(``bench/bench_grpo.py``). ``memr1.rl.loop.PolicyRun`` does the rest (model, optimizer, resume, logs).

One step, top to bottom (TRL's ``GRPOConfig`` defaults where it has one):

1. take ``questions_per_step`` rows from a permutation of the rows seeded by ``seed + epoch``;
2. sample ``num_generations`` completions of each at ``temperature`` (plain softmax), with a
   ``torch.Generator`` seeded by ``(seed, step)``, so a resumed run samples what a straight run would;
3. score them with the reward functions (TRL's calling convention, rewards summed; None counts 0);
4. advantage ``(r - mean) / (std + 1e-4)`` within each group (TRL's ``scale_rewards="group"``);
5. loss: per generated token the clipped surrogate with the ratio to the sampling policy (1: one
   update per batch, TRL's ``num_iterations=1``) plus ``beta`` times the k3 KL to the base model
   (the adapter switched off), summed over the step's tokens and divided by their number (TRL's
   ``loss_type="dapo"``); gradients are accumulated group by group, so one group's graph lives at once;
6. clip the gradient norm at 1; AdamW (betas 0.9 / 0.999, eps 1e-8, no weight decay).

Log lines use TRL's metric names (``reward``, ``frac_reward_zero_std``, ``completions/mean_length``,
``rewards/<name>/mean``) plus ``entropy``, ``grad_norm`` and ``step_s``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from memr1.errors import ConfigError
from memr1.rl.grpo import GRPOSettings, TrainResult, as_chat


def score(
    reward_funcs: Sequence[Callable], row: dict, texts: Sequence[str], step: int | None = None
) -> tuple[list[float], dict]:
    """Summed rewards of ``texts`` (completions of ``row``), called as TRL calls reward functions, and
    each function's scores by its name (None counts 0). ``step``: the 0-based optimizer step the
    completions were sampled for, handed over as TRL's ``trainer_state`` (its ``global_step``), so a
    reward that logs (``ManagerReward``'s op log) numbers training rows as under TRL."""
    n = len(texts)
    columns: dict[str, Any] = {k: [v] * n for k, v in row.items() if k != "prompt"}
    if step is not None:
        columns["trainer_state"] = SimpleNamespace(global_step=step)
    total, each = [0.0] * n, {}
    for func in reward_funcs:
        name = getattr(func, "__name__", type(func).__name__)
        got = func(completions=as_chat(texts), prompts=[row["prompt"]] * n, **columns)
        if len(got) != n:
            raise ConfigError(f"reward {name} returned {len(got)} scores for {n} completions")
        got = [0.0 if g is None else float(g) for g in got]
        total, each[name] = [t + g for t, g in zip(total, got)], got
    return total, each


def rollouts(run: Any, reward_funcs: Sequence[Callable], step: int) -> tuple[list, dict]:
    """Steps 1-3: ``[(row index, completions, rewards)]`` of this step's groups, and rewards per function."""
    import torch

    from memr1.rl.loop import step_rows
    from memr1.rl.sampling import sample_group

    s, tok = run.settings, run.tok
    run.model.eval()
    gen = torch.Generator().manual_seed(run.seed * 100_003 + step)
    groups: list = []
    per_func: dict[str, list[float]] = {}
    for i in step_rows(len(run.rows), run.questions_per_step, step, run.seed):
        comps, _ = sample_group(
            run.model, tok, run.prompts[i], s.num_generations,
            max_new_tokens=s.max_completion_length, temperature=s.temperature, generator=gen,
        )  # fmt: skip
        total, each = score(reward_funcs, run.rows[i], [tok.decode(c, skip_special_tokens=True) for c in comps], step)
        groups.append((i, comps, total))
        for name, got in each.items():
            per_func.setdefault(name, []).extend(got)
    return groups, per_func


def rollout_stats(run: Any, groups: list, per_func: dict) -> dict[str, Any]:
    """The log fields every algorithm shares: rewards, flat groups, completion lengths, rows."""
    import torch

    all_r = torch.tensor([r for _, _, rs in groups for r in rs], dtype=torch.float64)
    lengths = [len(c) for _, comps, _ in groups for c in comps]
    return {
        "reward": float(all_r.mean()),
        "reward_std": float(all_r.std()) if len(all_r) > 1 else 0.0,
        "frac_reward_zero_std": sum(len(set(rs)) == 1 for _, _, rs in groups) / len(groups),
        **{f"rewards/{k}/mean": sum(v) / len(v) for k, v in per_func.items()},
        "completions/mean_length": sum(lengths) / len(lengths),
        "completions/clipped_ratio": sum(c[-1] not in run.stops for _, cs, _ in groups for c in cs) / len(lengths),
        "rows": [i for i, _, _ in groups],
    }


def run_grpo_shared(
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
    """Train a LoRA with GRPO over ``train_rows``; arguments as ``memr1.rl.grpo.run_grpo``.

    ``callbacks``: objects with a TrainerCallback-style ``on_log(args, state, control, logs=...)``
    (``state.global_step`` is set); each step's log line is handed to them.
    """
    import time

    import torch

    from memr1.rl.groups import group_logprobs
    from memr1.rl.loop import PolicyRun
    from memr1.rl.mem1_loss import policy_loss
    from memr1.rl.packing import group_advantages

    run = PolicyRun(settings, train_rows, run_dir=run_dir, seed=seed, name="grpo", fallback=fallback,
                    callbacks=callbacks, on_model=on_model)  # fmt: skip
    s, model = settings, run.model
    for step in run.steps():
        t0 = run.begin_step(step)
        groups, per_func = rollouts(run, reward_funcs, step)
        model.train()
        run.optimizer.zero_grad(set_to_none=True)
        n_tokens = sum(len(c) for _, comps, _ in groups for c in comps)
        loss_sum, kl_sum, ent_sum = 0.0, 0.0, 0.0
        for i, comps, rewards in groups:
            scored = group_logprobs(model, run.prompts[i], comps, temperature=s.temperature, pad_id=run.pad,
                                    with_entropy=True)  # fmt: skip
            refs = None
            if s.beta:
                with torch.no_grad(), model.disable_adapter():
                    refs = group_logprobs(model, run.prompts[i], comps, temperature=s.temperature, pad_id=run.pad).logps
                kl_sum += float(sum((torch.exp(r - lp) - (r - lp) - 1).sum() for r, lp in zip(refs, scored.logps)))
            weights = [1.0 / n_tokens] * len(comps)
            loss = policy_loss(
                scored.logps, group_advantages(rewards), weights, ref_logps=refs, clip_eps=s.clip_eps, beta=s.beta
            )
            loss.backward()
            loss_sum += float(loss.detach())
            ent_sum += sum(float(e.detach().sum()) for e in scored.entropies or [])
        grad_norm = run.clip_and_step()
        entry = {
            "step": step + 1,
            "loss": loss_sum,
            **rollout_stats(run, groups, per_func),
            "kl": kl_sum / n_tokens,
            "entropy": ent_sum / n_tokens,
            "grad_norm": grad_norm,
            "learning_rate": run.optimizer.param_groups[0]["lr"],
            "step_s": time.perf_counter() - t0,
        }
        run.end_step(step, entry, validator)
    return run.finish()


__all__ = ["run_grpo_shared", "score", "rollouts", "rollout_stats"]
