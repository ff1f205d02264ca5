"""Answer-Agent retrieval: the top-k memories of every speaker's bank for one query.

Memory-R1 (after Mem0's LoCoMo harness) gives the Answer Agent 30 memories per speaker, 60 in all,
retrieved with the question as the query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from memr1.memory.bank import MemoryBank
from memr1.memory.entry import MemoryEntry

K_PER_SPEAKER = 30


@dataclass(frozen=True)
class Retrieved:
    speaker: str
    entry: MemoryEntry
    score: float


def retrieve(
    banks: Mapping[str, MemoryBank], query: str | np.ndarray, k_per_speaker: int = K_PER_SPEAKER
) -> list[Retrieved]:
    """Top ``k_per_speaker`` entries of each bank (banks in the mapping's order, best first within).

    The query text is embedded once with the first bank's embedder (all banks must share it).
    """
    if not banks:
        return []
    if isinstance(query, str):
        query = next(iter(banks.values())).embedder.embed([query])[0]
    return [
        Retrieved(sp, entry, score) for sp, bank in banks.items() for entry, score in bank.search(query, k_per_speaker)
    ]
