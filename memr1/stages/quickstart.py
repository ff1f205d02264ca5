"""Notebook 00, the quickstart tour: one conversation from replayed memory to two GRPO steps.

Not a pipeline stage, but built like one: a config, a result and ``run``. The tour's notebook calls
the steps one cell at a time (``replay``, ``answer``, ``train``, then ``finish``) so a reader sees
each part; ``run`` chains them for tests and scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from memr1.config import RunConfig, check_choice, check_min, get_profile
from memr1.runs import StageResult, save_result


@dataclass
class QuickstartConfig(RunConfig):
    """Notebook 00: a ten-minute tour on one conversation (not a pipeline stage)."""

    STAGE: ClassVar[str] = "00_quickstart"

    conversation: str = "conv-26"
    """Sample id of the conversation toured."""
    embedder: str = "minilm"
    """Embedding model for memory search: minilm or hash."""
    until_turn: int = 120
    """Last dialogue turn (position) replayed into the banks, to keep the tour short."""
    questions: int = 5
    """Questions answered from the banks (those whose evidence lies within the replayed turns)."""
    answer_tokens: int = 48
    """Token cap of each answer in the tour."""
    grpo_steps: int = 2
    """GRPO steps of the Memory-Manager demo (0 skips it)."""

    def check(self) -> None:
        from memr1.memory.embed import EMBEDDERS

        check_choice(self, "embedder", EMBEDDERS)
        check_min(self, 1, "until_turn", "questions", "answer_tokens")
        check_min(self, 0, "grpo_steps")

    def manager_config(self) -> Any:
        """The small Memory-Manager GRPO run of the tour (8 training turns, short prompts, no checkpoints)."""
        from memr1.stages.train_manager import ManagerTrainConfig

        return ManagerTrainConfig.from_params(
            dict(
                profile=self.profile,
                data_dir=self.data_dir,
                embedder=self.embedder,
                steps=max(1, self.grpo_steps),
                train_limit=8,
                k_per_speaker=5,
                eval_every=0,
                eval_limit=2,
                save_every=0,
                run_dir=str(Path(self.run_dir) / "manager"),
                seed=self.seed,
            )
        )


@dataclass
class QuickstartResult(StageResult):
    """What the tour did."""

    replay: dict[str, Any]
    """``replay_summary`` of the toured conversation's banks."""
    answers: int
    """Questions answered from the banks."""
    f1: float
    """Mean F1 (mem0 family) of those answers."""
    grpo_steps: int
    """GRPO steps run (0 when skipped)."""
    completions_logged: int
    """Manager completions in the reward log (one row per sampled output)."""


@dataclass
class Tour:
    """The tour's objects, filled step by step for the notebook to draw."""

    cfg: QuickstartConfig
    data: Any = None
    conversation: Any = None
    replayed: Any = None
    answers: Any = None
    """Scored answer rows (``memr1.eval.records.records_frame``)."""
    training: Any = None
    """``ManagerTrainResult`` of the GRPO demo (with its per-operation reward log), or None."""


def replay(cfg: QuickstartConfig) -> Tour:
    """Load the conversation and replay its observations into the banks up to ``until_turn``."""
    from memr1.data.locomo import load_locomo
    from memr1.memory.embed import make_embedder
    from memr1.memory.replay import replay_observations
    from memr1.seeding import seed_everything

    seed_everything(cfg.seed)
    tour = Tour(cfg, data=load_locomo(cfg.data_dir or None))
    tour.conversation = tour.data.conversation(cfg.conversation)
    tour.replayed = replay_observations(
        tour.conversation, make_embedder(cfg.embedder), store_dir=Path(cfg.run_dir) / "store", until_turn=cfg.until_turn
    )
    return tour


def answer(tour: Tour) -> Tour:
    """Answer the first questions whose evidence lies in the replayed turns, with the profile's model."""
    from memr1.agents.answer import AnswerAgent
    from memr1.eval.records import records_frame
    from memr1.llm.backends import make_generator
    from memr1.llm.generate import Sampling

    cfg, profile = tour.cfg, get_profile(tour.cfg.profile)
    generator = make_generator(profile.policy_model, profile.backend, fallback=profile.fallback_model)
    questions = tour.conversation.questions_up_to(cfg.until_turn)[: cfg.questions]
    records = AnswerAgent(generator, Sampling(max_new_tokens=cfg.answer_tokens)).answer(questions, tour.replayed.banks)
    tour.answers = records_frame(records, tour.conversation, "replay", generator.name)
    return tour


def train(tour: Tour, callbacks: Any = ()) -> Tour:
    """``grpo_steps`` GRPO steps of the Memory Manager (skipped at 0)."""
    from memr1.stages.train_manager import run as train_manager

    if tour.cfg.grpo_steps:
        tour.training = train_manager(tour.cfg.manager_config(), callbacks=list(callbacks))
    return tour


def finish(tour: Tour) -> QuickstartResult:
    """Write the tour's metrics.json."""
    from memr1.memory.replay import replay_summary

    result = QuickstartResult(
        replay_summary(tour.replayed),
        len(tour.answers),
        float(tour.answers.f1.mean()),
        tour.training.steps if tour.training else 0,
        tour.training.completions_logged if tour.training else 0,
    )
    save_result(tour.cfg.run_dir, result, tour.cfg)
    return result


def run(cfg: QuickstartConfig) -> QuickstartResult:
    """The whole tour without the notebook."""
    return finish(train(answer(replay(cfg))))
