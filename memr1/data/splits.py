"""LoCoMo category names and the Memory-R1 paper split.

Category ids in ``locomo10.json`` mean (LoCoMo's own scorer): 1 multi-hop, 2 temporal, 3 open-domain,
4 single-hop, 5 adversarial. Memory-R1 (following Mem0) prints id 1 as "Single Hop", 3 as
"Multi-Hop" and 4 as "Open Domain"; its "Overall" is the count-weighted mean of the four columns.
Results are keyed by id and print both names (docs/design.md §Categories).

The paper split is by conversation in file order with category 5 left out (docs/design.md §Split):
train = conv-26 (152 questions), validation = conv-30 (81), test = the other 8 (1,307).

>>> category_name(1, "locomo"), category_name(1, "memory-r1")
('multi-hop', 'Single Hop')
"""

from __future__ import annotations

from dataclasses import dataclass

from memr1.data.locomo import QA, Conversation, LoCoMo
from memr1.errors import ConfigError


@dataclass(frozen=True)
class Category:
    id: int
    locomo_name: str
    """Name in the LoCoMo benchmark's own code."""
    memory_r1_name: str
    """Column name in Memory-R1's (and Mem0's) tables."""


CATEGORIES: dict[int, Category] = {
    1: Category(1, "multi-hop", "Single Hop"),
    2: Category(2, "temporal", "Temporal"),
    3: Category(3, "open-domain", "Multi-Hop"),
    4: Category(4, "single-hop", "Open Domain"),
    5: Category(5, "adversarial", "Adversarial"),
}
NAME_SCHEMES = ("locomo", "memory-r1")

PAPER_SPLIT: dict[str, tuple[str, ...]] = {"train": ("conv-26",), "validation": ("conv-30",)}
SPLITS = ("train", "validation", "test", "all")


def category_name(category: int, scheme: str = "locomo") -> str:
    """Name of a category id under ``scheme`` ("locomo" or "memory-r1")."""
    if scheme not in NAME_SCHEMES:
        raise ConfigError(f"unknown category naming scheme {scheme!r}; choose one of {NAME_SCHEMES}")
    try:
        cat = CATEGORIES[category]
    except KeyError:
        raise ConfigError(f"unknown LoCoMo category {category!r}; ids are {sorted(CATEGORIES)}") from None
    return cat.locomo_name if scheme == "locomo" else cat.memory_r1_name


def split_conversations(data: LoCoMo, split: str) -> list[Conversation]:
    """Conversations of a paper split: train, validation, test (the rest) or all."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {SPLITS}")
    if split == "all":
        return list(data.conversations)
    if split == "test":
        held = {s for ids in PAPER_SPLIT.values() for s in ids}
        return [c for c in data.conversations if c.sample_id not in held]
    return [data.conversation(s) for s in PAPER_SPLIT[split]]


def split_questions(data: LoCoMo, split: str, *, include_adversarial: bool = False, limit: int = 0) -> list[QA]:
    """Questions of a split in file order; category 5 only on request; ``limit`` > 0 truncates."""
    if limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    qs = [q for c in split_conversations(data, split) for q in c.qa if include_adversarial or q.category != 5]
    return qs[:limit] if limit else qs
