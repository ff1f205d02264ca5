"""Stage 02: replay LoCoMo's observations into per-speaker LanceDB banks; timeline and evidence recall.

The banks are filled by observation replay (docs/design.md §Manager states): LoCoMo's own per-session
facts, each added at the turn of its latest evidence id. A rerun on the same ``run_dir`` resumes after
the last committed turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memr1.config import RunConfig, check_choice, check_min
from memr1.runs import StageResult, save_result, transient

RECALL_SCOPES = ("conversation", "all")


@dataclass
class BankConfig(RunConfig):
    """Stage 02: replay LoCoMo's observations into per-speaker LanceDB banks; timeline and recall."""

    STAGE: ClassVar[str] = "02_build_memory_bank"

    conversation: str = "conv-26"
    """Sample id of the conversation whose banks are built, stored and shown."""
    embedder: str = "minilm"
    """Embedding model: minilm (all-MiniLM-L6-v2, offline) or hash (no model, for quick checks)."""
    k_per_speaker: int = 30
    """Memories retrieved from each speaker's bank per question (Memory-R1: 30, i.e. 60 in all)."""
    recall_scope: str = "conversation"
    """Questions for the recall table: conversation (the one above) or all (1,540 questions, ~1 min)."""
    focus_turn: int = -1
    """Turn the timeline opens at (-1: the last committed turn)."""

    def check(self) -> None:
        from memr1.memory.embed import EMBEDDERS

        check_choice(self, "embedder", EMBEDDERS)
        check_choice(self, "recall_scope", RECALL_SCOPES)
        check_min(self, 1, "k_per_speaker")


@dataclass
class BankResult(StageResult):
    """The replayed banks of one conversation and how well retrieval finds the evidence."""

    replay: dict[str, Any]
    """``memr1.memory.replay.replay_summary``: entries per speaker, committed turns, resume point."""
    embedder: str
    recall_scope: str
    recall: list[dict[str, Any]]
    """Per category id (and overall): percent of questions whose evidence is retrieved (all / any / oracle)."""
    replayed: Any = transient()
    """The ``ReplayedConversation`` (open banks) for the timeline widget."""


def run(cfg: BankConfig) -> BankResult:
    """Replay, measure recall and write ``run_dir/metrics.json`` (the store is ``run_dir/store``)."""
    from pathlib import Path

    from memr1.data.locomo import load_locomo
    from memr1.eval.recall import replay_recall
    from memr1.eval.tables import category_table
    from memr1.memory.embed import make_embedder
    from memr1.memory.replay import replay_observations, replay_summary
    from memr1.seeding import seed_everything

    seed_everything(cfg.seed)
    data = load_locomo(cfg.data_dir or None)
    embedder = make_embedder(cfg.embedder)
    rep = replay_observations(
        data.conversation(cfg.conversation), embedder, store_dir=Path(cfg.run_dir) / "store", progress=True
    )
    per_question = replay_recall(
        data,
        embedder,
        k_per_speaker=cfg.k_per_speaker,
        sample_ids=None if cfg.recall_scope == "all" else [cfg.conversation],
    )
    recall = category_table(per_question, ["all", "any", "oracle"])
    result = BankResult(replay_summary(rep), embedder.name, cfg.recall_scope, recall.to_dict("records"), replayed=rep)
    save_result(cfg.run_dir, result, cfg)
    return result
