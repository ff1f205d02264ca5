"""Build a conversation's memory banks turn by turn: extract facts, let the manager act, commit.

Algorithm 3 of Memory-R1: for every turn, extract its facts, retrieve the related memories of
the speaker's bank, have the Memory Manager emit operations and apply them. Extraction does not
depend on the banks, so it runs ``batch_turns`` turns ahead in one batch; the manager then goes
through the turns in order. Two consecutive turns of different speakers touch different banks, so
they share one `step` call (one batched model call) without changing any result.

With a ``store_dir`` the banks live in ``store_dir/<sample_id>`` (one LanceDB table per speaker),
every turn that changed a bank is committed (tag ``turn-<position>``), the last turn run per speaker
is written beside the tables (``PROCESSED_FILE``, after each chunk's commits), a rerun resumes after
the later of the two (so a turn that changed nothing is not run, nor counted, twice), and the tables
are compacted at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from memr1.agents.extractor import ExtractedFacts
from memr1.agents.manager import ManagerStep
from memr1.data.locomo import Conversation, Turn
from memr1.errors import ConfigError
from memr1.files import write_json_atomic
from memr1.memory.bank import MemoryBank
from memr1.memory.embed import Embedder
from memr1.memory.entry import OpKind, TurnContext


class Extractor(Protocol):
    def extract(self, conv: Conversation, turns: Sequence[Turn]) -> list[ExtractedFacts]: ...


class Manager(Protocol):
    def step(self, items: Sequence[tuple[MemoryBank, Sequence[str], TurnContext]]) -> list[ManagerStep]: ...


@dataclass
class BuildResult:
    """The banks of one conversation and the record of how this call built them."""

    conversation: Conversation
    banks: dict[str, MemoryBank]
    """Speaker → bank (persistent when a store_dir was given)."""
    extractions: list[ExtractedFacts] = field(default_factory=list)
    """One per turn run in this call, in turn order."""
    steps: list[ManagerStep] = field(default_factory=list)
    """One per turn run in this call, in turn order."""
    manager_calls: int = 0
    """`step` calls that had facts to decide (for `MemoryManager`: its `generate` calls)."""
    resumed_from: dict[str, int | None] = field(default_factory=dict)
    """Per speaker, the turn this call resumed after, committed or run (None: started from scratch)."""
    store_dir: Path | None = None
    """Where this conversation's tables live (None: in memory only)."""

    def op_counts(self) -> dict[OpKind, int]:
        """Applied operations per kind (ADD / UPDATE / DELETE / NOOP), every kind present."""
        total = Counter(dict.fromkeys(OpKind, 0))
        for s in self.steps:
            if s.applied is not None:
                total.update(s.applied.counts())
        return {kind: total[kind] for kind in OpKind}

    def rejections(self) -> Counter:
        """Rejections by `RejectKind` over all steps (a rejected output changed nothing)."""
        total: Counter = Counter()
        for s in self.steps:
            total.update(s.result.rejections)
        return total


PROCESSED_FILE = "processed.json"
"""Speaker → position of the last turn a build ran for that speaker's bank, in the conversation's store."""


def _processed(root: Path) -> dict[str, int]:
    import json

    path = root / PROCESSED_FILE
    try:
        done = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as e:
        done = e
    if not isinstance(done, dict) or not all(isinstance(v, int) for v in done.values()):
        raise ConfigError(
            f"{path} is not a speaker -> turn JSON object ({done}); delete it to resume after the last commit"
        )
    return done


def _changed(step: ManagerStep) -> bool:
    return step.applied is not None and any(op.kind is not OpKind.NOOP for op in step.applied.ops)


def build_banks(
    conv: Conversation,
    extractor: Extractor,
    manager: Manager,
    embedder: Embedder,
    *,
    store_dir: str | Path | None = None,
    until_turn: int | None = None,
    batch_turns: int = 16,
    progress: bool = True,
) -> BuildResult:
    """Build (or resume) the per-speaker banks of ``conv``.

    Args:
        conv: the conversation.
        extractor: `FactExtractor`, `TurnAsFactExtractor` or anything with ``.extract(conv, turns)``.
        manager: `MemoryManager`, `HeuristicManager` or anything with ``.step(items)``.
        embedder: shared by both banks.
        store_dir: folder of the LanceDB store; None keeps the banks in memory only.
        until_turn: stop after this turn position (inclusive); None runs the whole conversation.
        batch_turns: turns extracted per batch.
        progress: show a progress bar over turns.
    """
    if batch_turns < 1:
        raise ConfigError(f"batch_turns must be at least 1, got {batch_turns}")
    root = None if store_dir is None else Path(store_dir) / conv.sample_id
    resumed: dict[str, int | None]
    done = _processed(root) if root is not None else {}
    if root is not None:
        banks = {sp: MemoryBank.open(root, sp, embedder) for sp in conv.speakers}
        commits = {sp: next(reversed(b.committed_turns()), None) for sp, b in banks.items()}
        resumed = {sp: max((t for t in (c, done.get(sp)) if t is not None), default=None) for sp, c in commits.items()}
    else:
        banks = {sp: MemoryBank(sp, embedder) for sp in conv.speakers}
        resumed = dict.fromkeys(conv.speakers)
    unknown = {t.speaker for t in conv.turns()} - set(banks)
    if unknown:
        raise ConfigError(
            f"{conv.sample_id}: turns by {sorted(unknown)}, who is not one of the speakers {conv.speakers}"
        )
    todo = [
        t
        for t in conv.turns()
        if (until_turn is None or t.position <= until_turn)
        and ((last := resumed[t.speaker]) is None or t.position > last)
    ]
    out = BuildResult(conv, banks, resumed_from=resumed, store_dir=root)
    bar = tqdm(total=len(todo), desc=f"memory {conv.sample_id}", disable=not progress, unit="turn")
    for start in range(0, len(todo), batch_turns):
        chunk = todo[start : start + batch_turns]
        extracted = extractor.extract(conv, chunk)
        if [x.turn for x in extracted] != chunk:
            raise ConfigError(
                f"{type(extractor).__name__}.extract returned {len(extracted)} results "
                f"for {len(chunk)} turns, or not in turn order; it must return one per turn"
            )
        out.extractions.extend(extracted)
        for group in _groups(extracted):
            items = [
                (
                    banks[x.speaker],
                    x.facts,
                    TurnContext(x.turn.position, x.turn.dia_id, conv.session_time(x.turn.session)),
                )
                for x in group
            ]
            steps = manager.step(items)
            out.manager_calls += any(x.facts for x in group)
            out.steps.extend(steps)
            for step in steps:
                if root is not None and _changed(step):
                    banks[step.speaker].commit(step.turn)
            bar.update(len(group))
        if root is not None:  # after the chunk's commits; a crash re-runs at most one chunk's idle turns
            done.update({t.speaker: t.position for t in chunk})
            write_json_atomic(root / PROCESSED_FILE, done)
    bar.close()
    if root is not None:
        for bank in banks.values():
            bank.optimize()
    return out


def _groups(extracted: Sequence[ExtractedFacts]) -> list[list[ExtractedFacts]]:
    """Runs of consecutive turns by distinct speakers (each run can be one `step` call)."""
    groups: list[list[ExtractedFacts]] = []
    for x in extracted:
        if groups and all(y.speaker != x.speaker for y in groups[-1]):
            groups[-1].append(x)
        else:
            groups.append([x])
    return groups
