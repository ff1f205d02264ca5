"""Stage 03: train the Answer Agent with GRPO, PPO or, as their comparator, SFT (docs/design.md §training).

GRPO samples ``num_generations`` answers per training question of conv-26 (the Answer-Agent prompt
over 30 teacher memories per speaker), rewards each by exact match of the answer span, and moves a
LoRA adapter towards the better ones; validation EM on conv-30 runs greedily every ``eval_every``
steps. ``memr1.rl.engines.train_policy`` does the training (TRL's trainer or memr1's own loop).

Also here, shared with stage 04 (``train_manager``): ``GRPOStageConfig``, the fields of a GRPO stage
on LoCoMo (the run, the GRPO settings, the teacher data), and ``teacher_data``.

>>> cfg = AnswerTrainConfig.from_params({"learning_rate": "2e-5"}).resolved()
>>> cfg.learning_rate, cfg.model, cfg.train_limit, cfg.run_dir
(2e-05, 'tiny', 20, 'runs/dev/03_train_answer_agent')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from memr1.config import RunConfig, check_choice, check_min, get_profile, profile_value
from memr1.errors import ConfigError
from memr1.rl.grpo import GRPOSettings, TrainResult
from memr1.runs import save_result


@dataclass
class GRPOStageConfig(GRPOSettings, RunConfig):
    """A GRPO stage on LoCoMo: run fields, GRPO settings, then the teacher data it trains on."""

    embedder: str = "minilm"
    """Embedding model for memory search: minilm or hash (no model, quick checks)."""
    k_per_speaker: int = 30
    """Memories retrieved per speaker for each question (Memory-R1: 30, so 60 in all)."""
    store_dir: str = ""
    """Folder of the teacher LanceDB stores, reusable by later runs; "" uses run_dir/store."""
    train_limit: int = -1
    """Training rows used, in file order (0 for all, -1 for the question cap of the profile)."""
    eval_limit: int = 4
    """Validation rows per evaluation, in file order (0 for all; 81 questions for the answer agent)."""
    answer_style: str = "distill"
    """Answer-Agent prompt: distill (list the relevant memories, then answer; Memory-R1) or direct (answer only)."""

    def check(self) -> None:
        from memr1.agents.answer import STYLES
        from memr1.memory.embed import EMBEDDERS

        check_choice(self, "embedder", EMBEDDERS)
        check_choice(self, "answer_style", STYLES)
        check_min(self, 1, "k_per_speaker")
        check_min(self, 0, "eval_limit")
        if self.train_limit < -1:
            raise ConfigError(
                f"{type(self).__name__}.train_limit must be >= -1 (-1: the cap of the profile), got {self.train_limit}"
            )

    def resolved(self):
        """A validated copy with the profile's model, backend and question cap filled in."""
        p = get_profile(self.profile)
        return self.replace(
            model=profile_value(self.model, p.policy_model, unset=""),
            backend=profile_value(self.backend, p.backend, unset=""),
            train_limit=profile_value(self.train_limit, p.max_questions, unset=-1),
        )


def resolved_as(cfg: Any, kind: type[Any]) -> Any:
    """``cfg.resolved()``, after checking that ``cfg`` is the config of the stage called."""
    if not isinstance(cfg, kind):
        raise ConfigError(f"expected an instance of {kind.__name__}, got {type(cfg).__name__}")
    return cfg.resolved()


def teacher_data(cfg: GRPOStageConfig):
    """``(LoCoMo, embedder, teacher-store folder)`` of a GRPO stage."""
    from memr1.data.locomo import load_locomo
    from memr1.memory.embed import make_embedder

    embedder = make_embedder(cfg.embedder)  # one store per embedder: a bank only reopens with its own
    store = Path(cfg.store_dir or Path(cfg.run_dir) / "store") / embedder.name
    return load_locomo(cfg.data_dir or None), embedder, store


@dataclass
class AnswerTrainConfig(GRPOStageConfig):
    """Stage 03: train the Answer Agent with GRPO on conv-26 (reward: exact match of the answer)."""

    reward: str = "em"
    """em: exact match of the answer span (Memory-R1); f1: its set F1, an ablation for small models."""

    STAGE: ClassVar[str] = "03_train_answer_agent"

    def check(self) -> None:
        from memr1.rl.rewards import ANSWER_REWARDS

        check_choice(self, "reward", ANSWER_REWARDS)
        if self.algorithm == "sft" and self.answer_style != "direct":
            raise ConfigError(
                "algorithm sft imitates the gold answer line, which is the whole output only in answer_style "
                f"direct (got {self.answer_style!r}); set answer_style=direct"
            )


def answer_probe(rows: Sequence[dict[str, Any]], max_new_tokens: int):
    """``(model, tokenizer) -> metrics`` of greedy answers to ``rows`` (the fixed probe subset of conv-30):
    ``eval/em`` and ``eval/f1`` (×1), ``eval/format`` (share writing the ``**Answer:**`` line),
    ``eval/length`` (mean completion tokens), ``eval/n``. Called every ``eval_every`` training steps."""
    from memr1.agents.answer import ANSWER_MARKER
    from memr1.rl.grpo import as_chat, greedy_completions
    from memr1.rl.rewards import answer_em_reward, answer_f1_reward

    def probe(model: Any, tokenizer: Any) -> dict[str, float]:
        texts = greedy_completions(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens)
        chat, gold, n = as_chat(texts), [r["gold"] for r in rows], len(rows)
        return {
            "eval/em": sum(answer_em_reward(chat, gold)) / n,
            "eval/f1": sum(answer_f1_reward(chat, gold)) / n,
            "eval/format": sum(ANSWER_MARKER in t for t in texts) / n,
            "eval/length": sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) / n,
            "eval/n": n,
        }

    return probe


def sft_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with ``completion``: the gold answer in the Answer Agent's output line (what SFT imitates)."""
    from memr1.agents.answer import ANSWER_MARKER

    return [{**r, "completion": f"{ANSWER_MARKER} {r['gold']}"} for r in rows]


def trained_vs_untrained(cfg: AnswerTrainConfig, adapter: str):
    """``(per-question frame, paired interval)``: the probe questions (the first ``eval_limit`` of conv-30; 0 for
    all 81) answered greedily by the untrained model and with ``adapter``, F1 ×100 of each answer, and the paired
    bootstrap 95% interval of (trained − untrained) F1 over those questions. What notebook 03 shows after training;
    on a handful of probe questions the interval is wide, which is the point of showing it."""
    import json

    import pandas as pd

    from memr1.agents.answer import ANSWER_MARKER, extract_answer
    from memr1.eval.bootstrap import paired_bootstrap
    from memr1.eval.metrics import f1_mem0
    from memr1.llm.backends import make_generator
    from memr1.llm.generate import Sampling
    from memr1.rl.datasets import answer_agent_rows

    cfg = resolved_as(cfg, AnswerTrainConfig)
    run_config = Path(cfg.run_dir) / "train_config.json"
    base = json.loads(run_config.read_text())["base_model"] if run_config.is_file() else cfg.model
    data, embedder, store = teacher_data(cfg)
    rows = answer_agent_rows(data, "validation", embedder, store_dir=store, k_per_speaker=cfg.k_per_speaker,
                             limit=cfg.eval_limit, progress=False, style=cfg.answer_style)  # fmt: skip
    prompts, sampling = [r["prompt"] for r in rows], Sampling(max_new_tokens=cfg.max_completion_length)
    out = pd.DataFrame({"question": [r["question"] for r in rows], "gold": [r["gold"] for r in rows]})
    for name, lora in (("untrained", ""), ("trained", adapter)):
        texts = [g.text for g in make_generator(base, cfg.backend, lora_path=lora).generate(prompts, sampling)]
        out[name] = [extract_answer(t) for t in texts]
        out[f"f1_{name}"] = [100 * f1_mem0(extract_answer(t), g) for t, g in zip(texts, out["gold"])]
        out[f"answer_line_{name}"] = [ANSWER_MARKER in t for t in texts]
    return out, paired_bootstrap(out["f1_trained"].tolist(), out["f1_untrained"].tolist())


@dataclass
class AnswerTrainResult(TrainResult):
    """The Answer Agent's GRPO run: steps, adapter folder, per-step log and validation EM."""


def run(cfg: AnswerTrainConfig, *, callbacks: Sequence[Any] = ()) -> AnswerTrainResult:
    """Train, write ``run_dir/metrics.json`` and return the result.

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (the notebook's live curves).
    """
    from memr1.rl.datasets import answer_agent_rows
    from memr1.rl.engines import train_policy
    from memr1.rl.grpo import main_process_first
    from memr1.rl.rewards import ANSWER_REWARDS
    from memr1.seeding import seed_everything

    cfg = resolved_as(cfg, AnswerTrainConfig)
    seed_everything(cfg.seed)
    data, embedder, store = teacher_data(cfg)
    shared = {"store_dir": store, "k_per_speaker": cfg.k_per_speaker, "progress": True, "style": cfg.answer_style}
    with main_process_first():
        train = answer_agent_rows(data, "train", embedder, limit=cfg.train_limit, **shared)
        val = answer_agent_rows(data, "validation", embedder, limit=cfg.eval_limit, **shared)
    validator = answer_probe(val, cfg.max_completion_length) if val else None
    if cfg.algorithm == "sft":
        train = sft_rows(train)
    trained = train_policy(
        cfg,
        train,
        [ANSWER_REWARDS[cfg.reward]],
        run_dir=cfg.run_dir,
        seed=cfg.seed,
        fallback=get_profile(cfg.profile).fallback_model,
        validator=validator,
        callbacks=callbacks,
    )
    result = AnswerTrainResult(**dataclasses.asdict(trained))
    save_result(cfg.run_dir, result, cfg)
    return result
