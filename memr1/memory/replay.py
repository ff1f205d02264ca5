"""Observation replay: per-turn memory banks built from LoCoMo's own fact annotations.

LoCoMo annotates every session with ``observation`` facts per speaker, each citing the dialogue
turn(s) it comes from. Replaying them turn by turn (each fact ADDed, to its speaker's bank, at the
turn of its latest evidence id, stamped with that session's date-time) gives the offline teacher
banks of docs/design.md §Manager states: the bank *before* turn t is the snapshot a Memory Manager acts on during
training, and the final bank is an oracle memory for the Answer Agent.

A fact whose evidence ids cannot be resolved is added at the last turn of its session (counted in
``unplaced``). With a ``store_dir`` every turn that changed a bank is committed to LanceDB (tag
``turn-<position>``), a rerun resumes after the last committed turn, and the tables are compacted at
the end.

>>> from memr1.memory.embed import HashEmbedder        # doctest: +SKIP
>>> rep = replay_observations(conv, HashEmbedder())    # doctest: +SKIP
>>> len(rep.banks["Caroline"])                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from memr1.data.locomo import Conversation, Observation
from memr1.errors import ConfigError
from memr1.memory.bank import AppliedTurn, MemoryBank
from memr1.memory.embed import CachedEmbedder, Embedder
from memr1.memory.entry import Operation, OpKind, TurnContext

COMMIT_MODES = ("changed", "every", "none")


@dataclass
class ReplayedConversation:
    conversation: Conversation
    banks: dict[str, MemoryBank]
    """Final bank per speaker (persistent when a store_dir was given)."""
    evidence: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Entry id → all evidence ids of the observation it came from."""
    applied: list[AppliedTurn] = field(default_factory=list)
    """Every non-empty turn applied in this call, in order (for the timeline widget)."""
    unplaced: int = 0
    """Observations without a resolvable evidence id (added at the end of their session)."""
    resumed_from: dict[str, int | None] = field(default_factory=dict)
    """Per speaker, the committed turn this call resumed after (None: started from scratch)."""
    store_dir: Path | None = None
    """Where this conversation's LanceDB tables live (None: in memory only)."""


def schedule_observations(conv: Conversation) -> tuple[dict[int, list[Observation]], int]:
    """Map turn position → observations to ADD at that turn, and count the unplaced ones."""
    last_of_session = {s.index: s.turns[-1].position for s in conv.sessions if s.turns}
    schedule: dict[int, list[Observation]] = {}
    unplaced = 0
    for obs in conv.observations:
        if obs.evidence:
            at = max(conv.turn(e).position for e in obs.evidence)
        else:
            unplaced += 1
            at = last_of_session.get(obs.session, conv.num_turns() - 1)
        schedule.setdefault(at, []).append(obs)
    return schedule, unplaced


def replay_observations(
    conv: Conversation,
    embedder: Embedder,
    *,
    store_dir: str | Path | None = None,
    commit: str = "changed",
    until_turn: int | None = None,
    progress: bool = False,
) -> ReplayedConversation:
    """Build (or resume) the replayed banks of ``conv``.

    Args:
        conv: the conversation.
        embedder: shared by both speakers' banks (wrap it in CachedEmbedder to embed each fact once).
        store_dir: folder of the LanceDB store; None keeps the banks in memory only.
        commit: "changed" commits the turns that changed a bank, "every" commits every turn,
            "none" never commits (only meaningful with a store_dir).
        until_turn: stop after this turn position (inclusive); None replays the whole conversation.
        progress: show a progress bar over turns.
    """
    if commit not in COMMIT_MODES:
        raise ConfigError(f"unknown commit mode {commit!r}; choose one of {COMMIT_MODES}")
    schedule, unplaced = schedule_observations(conv)
    if isinstance(embedder, CachedEmbedder):  # one large batch instead of one small batch per turn
        embedder.embed([o.text for o in conv.observations])
    root = None if store_dir is None else Path(store_dir) / conv.sample_id
    if root is not None:
        banks = {sp: MemoryBank.open(root, sp, embedder) for sp in conv.speakers}
    else:
        banks = {sp: MemoryBank(sp, embedder) for sp in conv.speakers}
    resumed = {
        sp: (b.committed_turns()[-1] if root is not None and b.committed_turns() else None) for sp, b in banks.items()
    }
    rep = ReplayedConversation(conv, banks, unplaced=unplaced, resumed_from=resumed, store_dir=root)
    # provenance of entries restored from the store: same schedule, same order → same ids
    _replay_ids(conv, schedule, rep, until=resumed)
    turns = [t for t in conv.turns() if until_turn is None or t.position <= until_turn]
    for turn in tqdm(turns, desc=f"replay {conv.sample_id}", disable=not progress, unit="turn"):
        ctx = TurnContext(turn.position, turn.dia_id, conv.session_time(turn.session))
        todo = schedule.get(turn.position, [])
        for sp, bank in banks.items():
            if resumed[sp] is not None and turn.position <= resumed[sp]:
                continue
            obs = [o for o in todo if o.speaker == sp]
            if obs:
                applied = bank.apply([Operation(OpKind.ADD, text=o.text) for o in obs], ctx)
                rep.applied.append(applied)
                for o, op in zip(obs, applied.ops):
                    assert op.entry_id is not None, "an applied ADD names the entry it made"
                    rep.evidence[op.entry_id] = o.evidence
            if store_dir is not None and (commit == "every" or (commit == "changed" and obs)):
                bank.commit(turn.position)
    if store_dir is not None:
        for bank in banks.values():
            bank.optimize()
    return rep


def _replay_ids(
    conv: Conversation, schedule: dict[int, list[Observation]], rep: ReplayedConversation, until: dict[str, int | None]
) -> None:
    """Recompute entry id → evidence for the entries a resumed store already holds."""
    for sp, bank in rep.banks.items():
        last = until[sp]
        if last is None:
            continue
        by_turn_text: dict[tuple[int, str], list[tuple[str, ...]]] = {}
        for pos in sorted(p for p in schedule if p <= last):
            for o in schedule[pos]:
                if o.speaker == sp:
                    by_turn_text.setdefault((pos, o.text), []).append(o.evidence)
        for entry in bank.entries():
            ev = by_turn_text.get((entry.created_turn, entry.text))
            if ev:
                rep.evidence[entry.id] = ev.pop(0)


def replay_summary(rep: ReplayedConversation) -> dict:
    """Plain numbers about a replay, for metrics.json."""
    return {
        "sample_id": rep.conversation.sample_id,
        "entries": {sp: len(b) for sp, b in rep.banks.items()},
        "observations": len(rep.conversation.observations),
        "unplaced_observations": rep.unplaced,
        "turns_applied": len({a.turn for a in rep.applied}),
        "committed_turns": (
            {sp: len(b.committed_turns()) for sp, b in rep.banks.items()} if rep.store_dir is not None else {}
        ),
        "resumed_from": rep.resumed_from,
    }
