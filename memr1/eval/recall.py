"""Evidence recall of retrieval: does what the Answer Agent sees cover the turns that answer?

A question counts as covered when *every* one of its evidence turns is a source of at least one
retrieved memory (``all``), or when at least one is (``any``). ``oracle`` asks the same of the whole
bank (k = ∞): the ceiling the retriever works under. Questions without resolvable evidence are
left out (LoCoMo has 4 among the 1,540).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import pandas as pd

from memr1.data.locomo import QA
from memr1.memory.bank import MemoryBank
from memr1.memory.entry import MemoryEntry
from memr1.memory.retrieve import K_PER_SPEAKER, retrieve

SourcesOf = Callable[[MemoryEntry], Iterable[str]]


def evidence_recall(
    banks: Mapping[str, MemoryBank],
    questions: Iterable[QA],
    *,
    k_per_speaker: int = K_PER_SPEAKER,
    sources_of: SourcesOf | None = None,
) -> pd.DataFrame:
    """One row per question with evidence: qid, category, n_evidence, all, any, oracle (bools).

    Args:
        banks: the conversation's banks, one per speaker, sharing one embedder.
        questions: questions of that conversation.
        k_per_speaker: memories retrieved from each bank.
        sources_of: dialogue ids an entry stands for (default: ``entry.sources``).
    """
    sources_of = sources_of or (lambda e: e.sources)
    qs = [q for q in questions if q.evidence]
    if not qs or not banks:
        return pd.DataFrame(columns=["qid", "category", "n_evidence", "all", "any", "oracle"])
    embedder = next(iter(banks.values())).embedder
    vectors = embedder.embed([q.question for q in qs])
    in_bank = {d for b in banks.values() for e in b.entries() for d in sources_of(e)}
    rows = []
    for q, vec in zip(qs, vectors):
        seen = {d for r in retrieve(banks, vec, k_per_speaker) for d in sources_of(r.entry)}
        ev = set(q.evidence)
        rows.append(
            {
                "qid": q.qid,
                "category": q.category,
                "n_evidence": len(ev),
                "all": ev <= seen,
                "any": bool(ev & seen),
                "oracle": ev <= in_bank,
            }
        )
    return pd.DataFrame(rows)


def replay_recall(
    data,
    embedder,
    *,
    k_per_speaker: int = K_PER_SPEAKER,
    sample_ids: Iterable[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Evidence recall on the final observation-replay banks of each conversation (in memory).

    Entries stand for all evidence ids of the observation they were replayed from.
    """
    from tqdm.auto import tqdm

    from memr1.memory.replay import replay_observations

    convs = [c for c in data.conversations if sample_ids is None or c.sample_id in set(sample_ids)]
    frames = []
    for conv in tqdm(convs, desc="replay + recall", disable=not progress, unit="conv"):
        rep = replay_observations(conv, embedder)
        df = evidence_recall(
            rep.banks,
            [q for q in conv.qa if q.category != 5],
            k_per_speaker=k_per_speaker,
            sources_of=lambda e: rep.evidence.get(e.id, e.sources),  # called before the loop moves on
        )
        frames.append(df.assign(sample_id=conv.sample_id))
    return pd.concat(frames, ignore_index=True)
