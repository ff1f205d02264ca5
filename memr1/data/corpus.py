"""Passages and corpora: what MEM1's environments search (retrievers: ``memr1.memory.passages``).

MEM1 (Zhou et al., arXiv 2506.15841) searches wiki-18 with E5 + FAISS and returns the top 3
passages per query. A one-machine workbench searches a *reduced* corpus instead (the paragraphs of
the HotpotQA sample, or one LoCoMo conversation's turns), which docs/design.md lists as a
deviation: absolute EM is not comparable with the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memr1.errors import ConfigError, UnknownIdError


@dataclass(frozen=True)
class Passage:
    """One retrievable unit: a Wikipedia paragraph, or one dialogue turn."""

    id: str
    """Stable id: the paragraph title for HotpotQA (suffixed on a clash), the dialogue id (``D5:3``) for LoCoMo."""
    title: str
    """Shown as ``Doc k (Title: ...)``; for LoCoMo the session date-time and the speaker."""
    text: str

    def indexed_text(self) -> str:
        return f"{self.title}\n{self.text}"


@dataclass(frozen=True, eq=False)
class Corpus:
    """An immutable list of passages with an id; compared and hashed by identity (cheap cache key)."""

    id: str
    passages: tuple[Passage, ...]
    _by_id: dict[str, Passage] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update({p.id: p for p in self.passages})
        if len(self._by_id) != len(self.passages):
            raise ConfigError(f"corpus {self.id!r} has duplicate passage ids")

    def __len__(self) -> int:
        return len(self.passages)

    def get(self, pid: str) -> Passage:
        try:
            return self._by_id[pid]
        except KeyError:
            raise UnknownIdError(f"corpus {self.id!r} has no passage {pid!r}") from None
