"""Build conversations' memory banks turn by turn: extract facts, let the manager act, commit.

Algorithm 3 of Memory-R1: for every turn, extract its facts, retrieve the related memories of
the speaker's bank, have the Memory Manager emit operations and apply them. Extraction does not
depend on the banks, so it runs ``batch_turns`` turns ahead in one batch; the manager then goes
through the turns in order. Two consecutive turns of different speakers touch different banks, so
they share one `step` call (one batched model call) without changing any result.

**Lockstep.** `build_many` builds several conversations together: each `step` call carries the next
group of turns of every unfinished conversation, and when one of them runs out of extracted turns,
one extractor call (`FactExtractor.extract_many`: one `generate` call) brings the next chunk of every
conversation with less than a chunk queued. Conversations never share a bank, so every conversation
gets the same turns, chunks, groups and prompts as when built alone (`build_banks` is `build_many`
with one conversation); only the model's batches are larger (what that buys on a CPU:
``bench/bench_lockstep.py``). A batched fp32 forward pass may round differently from a smaller
batch, so a real model's greedy outputs can differ at near-ties; scripted policies give identical banks.

**Store and resume.** With a ``store_dir`` the banks live in ``store_dir/<sample_id>`` (one LanceDB
table per speaker). After every `step` call, each conversation in it commits the turns that changed
a bank (tag ``turn-<position>``), then ``on_step`` sees the turns (stage 05 keeps its counts there),
then the last turn run per speaker is written beside the tables (``PROCESSED_FILE``). A rerun resumes
each conversation after the later of the two, so a killed build loses no commit and runs no finished
turn again; only the extractions of turns not yet managed are redone. The tables are compacted at
the end.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
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
    """``extract(conv, turns)``; an extractor may also have ``extract_many(pairs)``, which `build_many`
    then uses to extract the chunks of several conversations in one call (else it calls ``extract`` per
    conversation)."""

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
    """`step` calls in which this conversation had facts to decide (for `MemoryManager`: its `generate`
    calls; in lockstep, other conversations' turns ride in the same calls)."""
    resumed_from: dict[str, int | None] = field(default_factory=dict)
    """Per speaker, the turn this call resumed after, committed or run (None: started from scratch)."""
    store_dir: Path | None = None
    """Where this conversation's tables live (None: in memory only)."""

    def op_counts(self) -> dict[OpKind, int]:
        """Applied operations per kind (ADD / UPDATE / DELETE / NOOP), every kind present."""
        return op_counts(self.steps)

    def rejections(self) -> Counter:
        """Rejections by `RejectKind` over all steps (a rejected output changed nothing)."""
        total: Counter = Counter()
        for s in self.steps:
            total.update(s.result.rejections)
        return total


def op_counts(steps: Sequence[ManagerStep]) -> dict[OpKind, int]:
    """Applied operations per kind over ``steps``, every kind present."""
    total = Counter(dict.fromkeys(OpKind, 0))
    for s in steps:
        if s.applied is not None:
            total.update(s.applied.counts())
    return {kind: total[kind] for kind in OpKind}


PROCESSED_FILE = "processed.json"
"""Speaker → position of the last turn a build ran for that speaker's bank, in the conversation's store."""

OnStep = Callable[[BuildResult, Sequence[ExtractedFacts], Sequence[ManagerStep]], None]
"""Called with a conversation's result so far and the turns one `step` call just ran for it (their
extractions and steps), after their commits and before ``processed.json`` records them."""


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


@dataclass
class _Pending:
    """One conversation's build in progress: what is done, the turns left to extract, and the groups
    extracted but not yet given to the manager."""

    out: BuildResult
    done: dict[str, int]
    """What ``processed.json`` holds (speaker → last turn run)."""
    todo: deque[Turn]
    groups: deque[list[ExtractedFacts]] = field(default_factory=deque)

    def items(self, group: Sequence[ExtractedFacts]) -> list[tuple[MemoryBank, Sequence[str], TurnContext]]:
        conv = self.out.conversation
        return [
            (
                self.out.banks[x.speaker],
                x.facts,
                TurnContext(x.turn.position, x.turn.dia_id, conv.session_time(x.turn.session)),
            )
            for x in group
        ]

    def record(self, group: Sequence[ExtractedFacts], steps: Sequence[ManagerStep], on_step: OnStep | None) -> None:
        """Keep one step call's turns: commit what changed, tell ``on_step``, then mark them run."""
        out, root = self.out, self.out.store_dir
        out.extractions.extend(group)
        out.steps.extend(steps)
        out.manager_calls += any(x.facts for x in group)
        for step in steps:
            if root is not None and _changed(step):
                out.banks[step.speaker].commit(step.turn)
        if on_step is not None:
            on_step(out, group, steps)
        if root is not None:
            self.done.update({x.speaker: x.turn.position for x in group})
            write_json_atomic(root / PROCESSED_FILE, self.done)


def _open(conv: Conversation, embedder: Embedder, store_dir: Path | None, until_turn: int | None) -> _Pending:
    """The banks of ``conv`` (opened from the store, or empty) and the turns still to run."""
    unknown = {t.speaker for t in conv.turns()} - set(conv.speakers)
    if unknown:
        raise ConfigError(
            f"{conv.sample_id}: turns by {sorted(unknown)}, who is not one of the speakers {conv.speakers}"
        )
    root = None if store_dir is None else store_dir / conv.sample_id
    resumed: dict[str, int | None]
    done = _processed(root) if root is not None else {}
    if root is not None:
        banks = {sp: MemoryBank.open(root, sp, embedder) for sp in conv.speakers}
        commits = {sp: next(reversed(b.committed_turns()), None) for sp, b in banks.items()}
        resumed = {sp: max((t for t in (c, done.get(sp)) if t is not None), default=None) for sp, c in commits.items()}
    else:
        banks = {sp: MemoryBank(sp, embedder) for sp in conv.speakers}
        resumed = dict.fromkeys(conv.speakers)
    todo = deque(
        t
        for t in conv.turns()
        if (until_turn is None or t.position <= until_turn)
        and ((last := resumed[t.speaker]) is None or t.position > last)
    )
    return _Pending(BuildResult(conv, banks, resumed_from=resumed, store_dir=root), done, todo)


def _extract(extractor: Extractor, pairs: list[tuple[Conversation, list[Turn]]]) -> list[list[ExtractedFacts]]:
    """The facts of each (conversation, turns) pair: one ``extract_many`` call when the extractor has it."""
    many = getattr(extractor, "extract_many", None)
    results = list(many(pairs)) if many is not None else [extractor.extract(c, turns) for c, turns in pairs]
    if len(results) != len(pairs):
        raise ConfigError(
            f"{type(extractor).__name__}.extract_many returned {len(results)} lists for {len(pairs)} conversations"
        )
    for (conv, turns), got in zip(pairs, results):
        if [x.turn for x in got] != turns:
            raise ConfigError(
                f"{type(extractor).__name__} returned {len(got)} results for {len(turns)} turns of "
                f"{conv.sample_id}, or not in turn order; it must return one per turn"
            )
    return results


def build_many(
    convs: Sequence[Conversation],
    extractor: Extractor,
    manager: Manager,
    embedder: Embedder,
    *,
    store_dir: str | Path | None = None,
    until_turn: int | None = None,
    batch_turns: int = 16,
    progress: bool = True,
    on_step: OnStep | None = None,
) -> list[BuildResult]:
    """Build (or resume) the per-speaker banks of ``convs`` in lockstep; one result per conversation, in order.

    Args:
        convs: the conversations (distinct sample ids).
        extractor: `FactExtractor`, `TurnAsFactExtractor` or anything with ``.extract(conv, turns)``.
        manager: `MemoryManager`, `HeuristicManager` or anything with ``.step(items)``.
        embedder: shared by all banks.
        store_dir: folder of the LanceDB stores (one subfolder per conversation); None keeps the banks
            in memory only.
        until_turn: stop after this turn position (inclusive) in every conversation; None runs them whole.
        batch_turns: turns per conversation extracted per batch.
        progress: show a progress bar (with an ETA) over all turns to run.
        on_step: see `OnStep` (stage 05 persists its operation counts there).
    """
    if batch_turns < 1:
        raise ConfigError(f"batch_turns must be at least 1, got {batch_turns}")
    ids = [c.sample_id for c in convs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"build_many got the same conversation twice: {ids}")
    root = None if store_dir is None else Path(store_dir)
    pending = [_open(conv, embedder, root, until_turn) for conv in convs]  # every check before any model call
    desc = f"memory {ids[0]}" if len(ids) == 1 else f"memory ×{len(ids)}"
    bar = tqdm(total=sum(len(p.todo) for p in pending), desc=desc, disable=not progress, unit="turn")
    while True:
        if any(p.todo and not p.groups for p in pending):
            # Extract ahead for every conversation with less than a chunk queued, not only the starved one:
            # conversations' chunks split into different numbers of groups, and one call should serve all.
            hungry = [p for p in pending if p.todo and sum(map(len, p.groups)) < batch_turns]
            chunks = [[p.todo.popleft() for _ in range(min(batch_turns, len(p.todo)))] for p in hungry]
            pairs = [(p.out.conversation, chunk) for p, chunk in zip(hungry, chunks)]
            for p, extracted in zip(hungry, _extract(extractor, pairs)):
                p.groups.extend(_groups(extracted))
        active = [p for p in pending if p.groups]
        if not active:
            break
        heads = [p.groups.popleft() for p in active]
        items = [item for p, group in zip(active, heads) for item in p.items(group)]
        steps = manager.step(items)
        if len(steps) != len(items):
            raise ConfigError(f"{type(manager).__name__}.step returned {len(steps)} steps for {len(items)} items")
        at = 0
        for p, group in zip(active, heads):
            p.record(group, steps[at : at + len(group)], on_step)
            at += len(group)
        bar.update(len(items))
    bar.close()
    for p in pending:
        if p.out.store_dir is not None:
            for bank in p.out.banks.values():
                bank.optimize()
    return [p.out for p in pending]


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
    on_step: OnStep | None = None,
) -> BuildResult:
    """Build (or resume) the per-speaker banks of one conversation: `build_many` with ``[conv]``."""
    return build_many(
        [conv],
        extractor,
        manager,
        embedder,
        store_dir=store_dir,
        until_turn=until_turn,
        batch_turns=batch_turns,
        progress=progress,
        on_step=on_step,
    )[0]


def _groups(extracted: Sequence[ExtractedFacts]) -> list[list[ExtractedFacts]]:
    """Runs of consecutive turns by distinct speakers (each run can be one `step` call)."""
    groups: list[list[ExtractedFacts]] = []
    for x in extracted:
        if groups and all(y.speaker != x.speaker for y in groups[-1]):
            groups[-1].append(x)
        else:
            groups.append([x])
    return groups
