"""Stage 04: train the Memory Manager with GRPO (docs/design.md §training, §rewards).

For every training turn of conv-26 that LoCoMo questions cite as evidence, the manager sees the
turn's facts and the most similar memories of the teacher bank before the turn, and writes
operations. Each sampled output is applied to a fork of that snapshot; a frozen Answer Agent
(``answer_model``) answers the linked questions from the forked bank, and the reward is their mean
exact match (a rejected output earns 0). The untrained frozen agent is the policy itself with its
LoRA switched off (``memr1.rl.frozen.FrozenBase``), so the base weights are held once. The reward
logs every sampled completion's operations; the result keeps their mix (``memr1.rl.rewards.op_mix``)
for the report.

>>> ManagerTrainConfig.from_params({"k_similar": "0"})
Traceback (most recent call last):
...
memr1.errors.ConfigError: ManagerTrainConfig.k_similar must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from memr1.config import check_choice, check_min, get_profile
from memr1.errors import ConfigError
from memr1.rl.grpo import TrainResult
from memr1.runs import save_result, transient
from memr1.stages.train_answer import GRPOStageConfig, resolved_as, teacher_data


@dataclass
class ManagerTrainConfig(GRPOStageConfig):
    """Stage 04: train the Memory Manager with GRPO; reward: EM of a frozen Answer Agent on the new bank."""

    STAGE: ClassVar[str] = "04_train_memory_manager"

    answer_model: str = ""
    """Frozen Answer Agent: "" for the base model, or an answer-agent run dir or adapter folder (LoRA)."""
    k_similar: int = 5
    """Stored memories shown to the manager per new fact (Mem0 convention: 5)."""
    answer_tokens: int = 128
    """Token cap of each frozen Answer Agent output (the answers the reward scores)."""
    reward: str = "em"
    """Score of each frozen-agent answer: em (Memory-R1) or f1 (an ablation for small models)."""
    memory_style: str = "json"
    """Manager prompt: json (the JSON object of Memory-R1) or lines (one fact per line with its operation;
    for small models)."""

    def check(self) -> None:
        from memr1.agents.manager import MANAGER_STYLES
        from memr1.rl.rewards import ANSWER_SCORES

        check_min(self, 1, "k_similar", "answer_tokens")
        check_choice(self, "memory_style", MANAGER_STYLES)
        check_choice(self, "reward", ANSWER_SCORES)
        if self.algorithm == "sft":
            raise ConfigError(
                "algorithm sft needs gold completions, and the Memory Manager has none here (Memory-R1's "
                "Memory-SFT clones a stronger model's operations); use grpo or ppo"
            )


@dataclass
class ManagerTrainResult(TrainResult):
    """The Memory Manager's GRPO run, plus the operations it sampled."""

    op_mix: list[dict[str, Any]]
    """Share of each operation kind and of rejected outputs, first vs last quarter of the steps."""
    completions_logged: int
    """Completions in the reward's op log (training and validation)."""
    op_log: Any = transient()
    """The op log (``read_op_log``: one row per scored completion) for the per-operation widget."""


def run(cfg: ManagerTrainConfig, *, callbacks: Sequence[Any] = ()) -> ManagerTrainResult:
    """Train, write ``run_dir/metrics.json`` (with the op mix) and return the result.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (the notebook's live curves).
    """
    from memr1.agents.answer import AnswerAgent
    from memr1.llm.backends import make_generator
    from memr1.llm.generate import Sampling
    from memr1.rl.datasets import manager_rows
    from memr1.rl.engines import train_policy
    from memr1.rl.frozen import FrozenBase
    from memr1.rl.grpo import main_process_first, resolve_adapter, reward_validator
    from memr1.rl.rewards import ManagerReward, op_mix, read_op_log
    from memr1.seeding import seed_everything

    cfg = resolved_as(cfg, ManagerTrainConfig)
    seed_everything(cfg.seed)
    data, embedder, store = teacher_data(cfg)
    with main_process_first():
        rows = {
            split: manager_rows(
                data, split, embedder, store_dir=store, k_similar=cfg.k_similar, style=cfg.memory_style, progress=True
            )
            for split in ("train", "validation")
        }
    train, val = rows["train"], rows["validation"]
    train = train[: cfg.train_limit] if cfg.train_limit else train
    val = val[: cfg.eval_limit] if cfg.eval_limit else val
    fallback = get_profile(cfg.profile).fallback_model
    frozen: Any
    if cfg.answer_model:  # a trained answer agent has weights of its own
        base, lora = resolve_adapter(cfg.answer_model, cfg.model)
        frozen = make_generator(base, cfg.backend, lora_path=lora, fallback=fallback)
    else:
        frozen = FrozenBase(cfg.model)
    agent = AnswerAgent(
        frozen,
        Sampling(max_new_tokens=cfg.answer_tokens),
        k_per_speaker=cfg.k_per_speaker,
        style=cfg.answer_style,
    )
    log_dir = Path(cfg.run_dir) / "reward_log"
    reward = ManagerReward(agent, embedder, log_dir=log_dir, k_per_speaker=cfg.k_per_speaker, score=cfg.reward)
    validator = reward_validator(val, reward, cfg.max_completion_length) if val else None
    trained = train_policy(
        cfg,
        train,
        [reward],
        run_dir=cfg.run_dir,
        seed=cfg.seed,
        fallback=fallback,
        validator=validator,
        callbacks=callbacks,
        on_model=frozen.bind if isinstance(frozen, FrozenBase) else None,
    )
    op_log = read_op_log(log_dir)
    result = ManagerTrainResult(
        **dataclasses.asdict(trained), op_mix=op_mix(op_log), completions_logged=len(op_log), op_log=op_log
    )
    save_result(cfg.run_dir, result, cfg)
    return result


def trained_vs_untrained(cfg: ManagerTrainConfig, adapter: str):
    """``(per-turn frame, paired interval)``: the probe turns (the first ``eval_limit`` manager turns of conv-30;
    0 for all) written greedily by the untrained manager and with ``adapter``, each applied to its snapshot bank
    and scored by the frozen Answer Agent on the turn's linked questions (the training reward, ×100), with
    whether the bank accepted the output and its operations; and the paired bootstrap 95% interval of
    (trained − untrained) score over the turns. What notebook 04 shows after training."""
    import json

    import pandas as pd

    from memr1.agents.answer import AnswerAgent
    from memr1.eval.bootstrap import paired_bootstrap
    from memr1.llm.backends import make_generator
    from memr1.llm.generate import Sampling
    from memr1.rl.datasets import manager_rows
    from memr1.rl.grpo import as_chat, resolve_adapter
    from memr1.rl.rewards import ManagerReward

    cfg = resolved_as(cfg, ManagerTrainConfig)
    run_config = Path(cfg.run_dir) / "train_config.json"
    base = json.loads(run_config.read_text())["base_model"] if run_config.is_file() else cfg.model
    data, embedder, store = teacher_data(cfg)
    rows = manager_rows(data, "validation", embedder, store_dir=store, k_similar=cfg.k_similar,
                        style=cfg.memory_style, progress=False)  # fmt: skip
    rows = rows[: cfg.eval_limit] if cfg.eval_limit else rows
    untrained = make_generator(base, cfg.backend)
    frozen = untrained
    if cfg.answer_model:  # a trained answer agent has weights of its own
        answer_base, lora = resolve_adapter(cfg.answer_model, base)
        frozen = make_generator(answer_base, cfg.backend, lora_path=lora)
    agent = AnswerAgent(frozen, Sampling(max_new_tokens=cfg.answer_tokens), k_per_speaker=cfg.k_per_speaker,
                        style=cfg.answer_style)  # fmt: skip
    reward = ManagerReward(agent, embedder, k_per_speaker=cfg.k_per_speaker, score=cfg.reward)
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    out = pd.DataFrame({"turn": columns["dia_id"], "speaker": columns["speaker"]})
    sampling = Sampling(max_new_tokens=cfg.max_completion_length)
    for name, gen in (("untrained", untrained), ("trained", make_generator(base, cfg.backend, lora_path=adapter))):
        texts = [g.text for g in gen.generate([r["prompt"] for r in rows], sampling)]
        start = len(reward.log)
        out[f"score_{name}"] = [100 * s for s in reward(completions=as_chat(texts), **columns)]
        logged = reward.log[start:]
        out[f"valid_{name}"] = [r["valid"] for r in logged]
        out[f"ops_{name}"] = [_ops(r) for r in logged]
        out[f"output_{name}"] = texts
    return out, paired_bootstrap(out["score_trained"].tolist(), out["score_untrained"].tolist())


def _ops(logged: dict[str, Any]) -> str:
    """The operation counts of one op-log row, e.g. ``ADD 2 UPDATE 1`` (``–`` for none)."""
    kinds = [k for k in logged if k.startswith("n_") and k != "n_questions" and logged[k]]
    return " ".join(f"{k[2:].upper()} {logged[k]}" for k in kinds) or "–"
