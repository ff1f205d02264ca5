"""Which loop trains a policy: ``train_policy`` reads ``settings.algorithm`` and ``settings.engine``.

* ``ppo``: memr1's PPO (``memr1.rl.ppo.run_ppo``; TRL 1.x ships no PPO trainer).
* ``sft``: TRL's SFTTrainer on the rows' gold ``completion`` (``memr1.rl.sft.run_sft``), RL's comparator.

* ``trl``: TRL's ``GRPOTrainer`` (``memr1.rl.grpo.run_grpo``); the path for Unsloth on CUDA.
* ``memr1``: memr1's own GRPO loop (``memr1.rl.grpo_shared.run_grpo_shared``), each prompt encoded
  once per group; exact, and the cheaper one on a CPU (``bench/bench_grpo.py``).

Both take the same arguments and return the same ``TrainResult``; the stages call this function.
"""

from __future__ import annotations

from typing import Any

from memr1.rl.grpo import GRPOSettings, TrainResult


def train_policy(settings: GRPOSettings, train_rows, reward_funcs, **kwargs: Any) -> TrainResult:
    """Train with the algorithm and engine the settings name; keyword arguments as ``run_grpo``."""
    settings.validate()
    if settings.algorithm == "ppo":  # validate() made sure the engine is memr1
        from memr1.rl.ppo import run_ppo

        return run_ppo(settings, train_rows, reward_funcs, **kwargs)
    if settings.algorithm == "sft":
        from memr1.rl.sft import run_sft

        return run_sft(settings, train_rows, reward_funcs, **kwargs)
    if settings.engine == "memr1":
        from memr1.rl.grpo_shared import run_grpo_shared

        return run_grpo_shared(settings, train_rows, reward_funcs, **kwargs)
    from memr1.rl.grpo import run_grpo

    return run_grpo(settings, train_rows, reward_funcs, **kwargs)


__all__ = ["train_policy"]
