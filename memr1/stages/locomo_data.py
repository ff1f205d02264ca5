"""Stage 01: load LoCoMo, check the paper split and its category counts (docs/design.md §Split, §Categories).

>>> DataConfig.from_params({"conversation": "conv-30"}).conversation
'conv-30'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memr1.config import RunConfig
from memr1.runs import StageResult, save_result, transient


@dataclass
class DataConfig(RunConfig):
    """Stage 01: load LoCoMo, check the paper split and category counts, plot statistics."""

    STAGE: ClassVar[str] = "01_locomo_data"

    conversation: str = "conv-26"
    """Sample id of the conversation shown in the per-session figures."""


@dataclass
class DataResult(StageResult):
    """What stage 01 found in the LoCoMo file."""

    file: str
    """The file that was read."""
    sha256: str
    """Its checksum (pinned in memr1.data.locomo)."""
    conversations: int
    sessions: int
    turns: int
    questions: int
    """Questions without category 5 (adversarial), which Memory-R1 leaves out."""
    questions_with_adversarial: int
    splits: dict[str, dict[str, int]]
    """Split name -> {category id: count, total}."""
    evidence_problems: dict[str, int]
    """Evidence ids repaired or dropped, by kind."""
    data: Any = transient()
    """The loaded ``LoCoMo`` object (notebook only)."""


def run(cfg: DataConfig) -> DataResult:
    """Load LoCoMo, summarise it and write ``run_dir/metrics.json``."""
    from memr1.data.locomo import load_locomo
    from memr1.data.stats import dataset_summary
    from memr1.seeding import seed_everything

    seed_everything(cfg.seed)
    data = load_locomo(cfg.data_dir or None)
    data.conversation(cfg.conversation)  # UnknownIdError names the known ids
    result = DataResult(**dataset_summary(data), data=data)
    save_result(cfg.run_dir, result, cfg)
    return result
