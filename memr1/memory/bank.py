"""One speaker's memory bank: an in-memory working set, optionally backed by a LanceDB store.

The hot path (`MemoryBank.apply`, `MemoryBank.search`, `MemoryBank.fork`) touches only a dict of
entries and a matrix of unit vectors, so a reward function can fork and search thousands of
times a second. Persistence, time travel and diffs go through `memr1.memory.store.BankStore`:
`commit` writes one tagged table version per turn, `checkout` reads one back (docs/design.md §Bank).

>>> from memr1.memory.embed import HashEmbedder
>>> bank = MemoryBank("Caroline", HashEmbedder())
>>> ops = [Operation(OpKind.ADD, text="Caroline adopted a dog")]
>>> turn = bank.apply(ops, TurnContext(0, "D1:1"))
>>> [(op.kind.value, op.entry_id) for op in turn.ops]
[('ADD', 'caroline-0')]
>>> [(e.id, round(s, 2)) for e, s in bank.search("Caroline adopted a dog", k=5)]
[('caroline-0', 1.0)]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from memr1.errors import OperationError, StoreError, UnknownIdError
from memr1.memory.embed import Embedder, normalize_rows
from memr1.memory.entry import MemoryEntry, Operation, OpKind, TurnContext
from memr1.memory.store import BankStore, StoredState, id_number, speaker_slug


class ReadOnlyBankError(StoreError):
    """A checked-out bank was asked to change; fork it to get a writable copy."""


@dataclass(frozen=True)
class AppliedOp:
    """What one operation did: its kind, the entry it touched and the text before and after."""

    kind: OpKind
    entry_id: str | None
    old_text: str | None
    new_text: str | None


@dataclass(frozen=True)
class AppliedTurn:
    """The record of one `MemoryBank.apply` call, in the order the operations were given."""

    speaker: str
    turn: int
    ops: tuple[AppliedOp, ...]

    def counts(self) -> dict[OpKind, int]:
        """Operations per kind, every kind present."""
        return dict.fromkeys(OpKind, 0) | Counter(op.kind for op in self.ops)


@dataclass(frozen=True)
class BankDiff:
    """How the bank changed between two committed turns ``a`` and ``b``.

    ``vectors`` holds the turn-``b`` vector of every added and updated entry, so `apply_to` never
    re-embeds; ``next_id`` is the id counter at ``b``.
    """

    a: int
    b: int
    added: tuple[MemoryEntry, ...]
    updated: tuple[tuple[MemoryEntry, MemoryEntry], ...]
    deleted: tuple[MemoryEntry, ...]
    vectors: dict[str, np.ndarray] = field(repr=False, compare=False)
    next_id: int = 0

    def apply_to(self, bank: MemoryBank) -> MemoryBank:
        """A writable copy of ``bank`` (the bank at turn ``a``) turned into the bank at turn ``b``.

        Raises:
            StoreError: ``bank`` does not hold the entries this diff starts from.
        """
        out = bank.fork()
        for old in (*self.deleted, *(old for old, _ in self.updated)):
            if out._entries.get(old.id) != old:
                raise StoreError(
                    f"diff {self.a}→{self.b} expects entry {old.id!r} as "
                    f"{old.text!r}; apply it to the bank checked out at turn {self.a}"
                )
        clash = [e.id for e in self.added if e.id in out._entries]
        if clash:
            raise StoreError(f"diff {self.a}→{self.b} adds {clash}, which the bank already has")
        out._remove({e.id for e in self.deleted})
        for entry in (*(new for _, new in self.updated), *self.added):
            out._put(entry, self.vectors[entry.id])
        out._next_id = self.next_id
        if self.a > self.b:  # re-added older entries went to the end: restore creation order
            ordered = out.entries()
            out._reset(ordered, np.array([out.vector(e.id) for e in ordered], np.float32))
        return out


def _text(op: Operation) -> str:
    """The text of an ADD or UPDATE that passed `MemoryBank._validate` (which rejects one without)."""
    assert op.text is not None, f"{op.kind.value} without text got past validation"
    return op.text


class MemoryBank:
    """The memories of one speaker, searchable by cosine similarity.

    Create an unsaved bank with ``MemoryBank(speaker, embedder)`` or a persistent one with
    `MemoryBank.open`. Entry ids are ``"<speaker-slug>-<n>"`` with a counter that never goes
    back, so a deleted id is never handed out again.

    Args:
        speaker: Whose memories these are.
        embedder: Turns entry texts and string queries into unit vectors.
    """

    def __init__(self, speaker: str, embedder: Embedder):
        self.speaker, self.embedder = speaker, embedder
        self._slug = speaker_slug(speaker)
        self._entries: dict[str, MemoryEntry] = {}
        self._ids: list[str] = []  # row order of the matrix: creation order
        self._row: dict[str, int] = {}
        self._mat = np.zeros((16, embedder.dim), np.float32)
        self._next_id = 0
        self._dirty: set[str] = set()  # ids touched since the last commit
        self._store: BankStore | None = None
        self._read_only = False
        self.turn: int | None = None
        """Last committed turn (open/commit) or the turn checked out; None otherwise."""

    # ---- persistence -----------------------------------------------------------------------

    @classmethod
    def open(cls, store_dir: str | Path, speaker: str, embedder: Embedder) -> MemoryBank:
        """Open (or create) ``speaker``'s bank in ``store_dir``, as of its last commit.

        A version written after the last tag (a process that died mid-commit) is ignored.

        Raises:
            ConfigError: The store was written with another embedder.
            StoreError: The table is corrupt or belongs to another speaker.
        """
        bank = cls(speaker, embedder)
        bank._store = BankStore(store_dir, speaker, embedder.name, embedder.dim)
        bank._load(bank._store.load())
        return bank

    def _load(self, state: StoredState) -> None:
        self._reset(state.entries, state.vectors)
        self._next_id, self.turn = state.next_id, state.turn

    def _reset(self, entries: Sequence[MemoryEntry], vectors: np.ndarray) -> None:
        """Replace the working set by ``entries`` (in this row order) and their vectors."""
        self._entries = {e.id: e for e in entries}
        self._ids = [e.id for e in entries]
        self._row = {eid: r for r, eid in enumerate(self._ids)}
        self._mat = np.zeros((max(16, 2 * len(entries)), self.embedder.dim), np.float32)
        self._mat[: len(entries)] = np.reshape(vectors, (len(entries), self.embedder.dim))

    def _need_store(self) -> BankStore:
        if self._store is None:
            raise StoreError(
                f"the bank of {self.speaker!r} has no store (a fork, checkout or "
                "plain MemoryBank); use MemoryBank.open(store_dir, ...) to persist"
            )
        return self._store

    def commit(self, turn: int) -> None:
        """Write the current state as committed turn ``turn`` (one version, tagged ``turn-<n>``).

        Raises:
            StoreError: No store, ``turn`` not newer than the last commit, or the write failed.
        """
        self._check_writable()
        n = len(self._ids)
        entries = [self._entries[i] for i in self._ids]
        self._need_store().write(turn, entries, self._mat[:n], self._dirty, self._next_id)
        self._dirty = set()
        self.turn = turn

    def committed_turns(self) -> list[int]:
        """Turns committed to the store, ascending."""
        return self._need_store().committed_turns()

    def checkout(self, turn: int) -> MemoryBank:
        """Read-only bank as it was after the latest committed turn ≤ ``turn``.

        Raises:
            StoreError: No store, or nothing committed at or before ``turn``.
        """
        bank = MemoryBank(self.speaker, self.embedder)
        bank._load(self._need_store().load(turn))
        bank._read_only = True
        return bank

    def diff(self, a: int, b: int) -> BankDiff:
        """Changes from the bank at committed turn ``a`` to the bank at committed turn ``b``."""
        old, new = self.checkout(a), self.checkout(b)
        assert old.turn is not None and new.turn is not None, "a checkout is always at a committed turn"
        added = tuple(e for e in new.entries() if e.id not in old._entries)
        updated = tuple(
            (old._entries[e.id], e) for e in new.entries() if e.id in old._entries and old._entries[e.id] != e
        )
        deleted = tuple(e for e in old.entries() if e.id not in new._entries)
        vectors = {e.id: new.vector(e.id) for e in (*added, *(n for _, n in updated))}
        return BankDiff(old.turn, new.turn, added, updated, deleted, vectors, new._next_id)

    def history(self, entry_id: str) -> list[tuple[int, MemoryEntry | None]]:
        """Committed turns at which ``entry_id`` was added, changed or deleted (None).

        Raises:
            UnknownIdError: No committed version ever held ``entry_id``.
        """
        out = self._need_store().history(entry_id)
        if not out:
            raise UnknownIdError(f"entry {entry_id!r} was never committed to the bank of {self.speaker!r}")
        return out

    def optimize(self) -> None:
        """Compact the store after a conversation; checkouts of every turn keep working."""
        self._need_store().optimize()

    # ---- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __eq__(self, other: object) -> bool:
        """Same speaker, entries, id counter and (to 1e-6) vectors; stores are not compared."""
        if not isinstance(other, MemoryBank):
            return NotImplemented
        return (
            self.speaker == other.speaker
            and self._next_id == other._next_id
            and self._entries == other._entries
            and all(np.allclose(self.vector(i), other.vector(i), atol=1e-6) for i in self._entries)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    @property
    def next_id(self) -> int:
        """The counter the next ADD will use."""
        return self._next_id

    @property
    def read_only(self) -> bool:
        """True for banks returned by `checkout`."""
        return self._read_only

    def entries(self) -> list[MemoryEntry]:
        """Live entries in creation order."""
        return sorted(self._entries.values(), key=lambda e: (id_number(e.id), e.id))

    def get(self, entry_id: str) -> MemoryEntry:
        """The live entry ``entry_id``.

        Raises:
            UnknownIdError: No such live entry (never added, or deleted).
        """
        try:
            return self._entries[entry_id]
        except KeyError:
            raise UnknownIdError(
                f"no memory entry {entry_id!r} in the bank of speaker "
                f"{self.speaker!r} ({len(self)} live entries); it was never "
                "added or has been deleted"
            ) from None

    def vector(self, entry_id: str) -> np.ndarray:
        """A copy of the unit vector of live entry ``entry_id``."""
        self.get(entry_id)
        return self._mat[self._row[entry_id]].copy()

    def search(self, query: str | np.ndarray, k: int) -> list[tuple[MemoryEntry, float]]:
        """The ``k`` live entries most cosine-similar to ``query``, best first (all if k ≥ len).

        Ties are broken by creation order. ``query`` is a text (embedded here) or a vector.
        """
        n = len(self._ids)
        if k <= 0 or n == 0:
            return []
        if isinstance(query, str):
            q = self.embedder.embed([query])[0]
        else:
            q = normalize_rows(np.asarray(query, np.float32).reshape(1, -1))[0]
            if q.shape[0] != self.embedder.dim:
                raise ValueError(f"query vector has {q.shape[0]} components, the bank {self.embedder.dim}")
        scores = self._mat[:n] @ q
        top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.lexsort((top, -scores[top]))]
        return [(self._entries[self._ids[i]], float(scores[i])) for i in top]

    # ---- writing ---------------------------------------------------------------------------

    def fork(self) -> MemoryBank:
        """An independent, writable, unsaved copy (for reward scratch work); O(n) copy."""
        bank = MemoryBank(self.speaker, self.embedder)
        n = len(self._ids)
        bank._entries, bank._ids, bank._row = dict(self._entries), list(self._ids), dict(self._row)
        bank._mat = self._mat[: max(n, 16)].copy()
        bank._next_id, bank.turn = self._next_id, self.turn
        return bank

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyBankError(
                f"bank of {self.speaker!r} checked out at turn {self.turn} is "
                "read-only; call .fork() for a writable copy"
            )

    def _validate(self, ops: Sequence[Operation]) -> None:
        seen: set[str] = set()
        for i, op in enumerate(ops):
            if op.kind is OpKind.NOOP:
                continue
            if op.kind in (OpKind.ADD, OpKind.UPDATE):
                if op.text is None:
                    raise OperationError("missing_text", f"op {i}: {op.kind.value} without text")
                if not op.text.strip():
                    raise OperationError("empty_text", f"op {i}: {op.kind.value} with blank text")
            if op.kind is OpKind.ADD:
                continue
            if op.entry_id is None or op.entry_id not in self._entries:
                raise UnknownIdError(
                    f"op {i}: {op.kind.value} of unknown or deleted entry "
                    f"{op.entry_id!r} in the bank of speaker {self.speaker!r}"
                )
            if op.entry_id in seen:
                raise OperationError("duplicate_id", f"op {i}: a second operation on {op.entry_id!r} in one turn")
            seen.add(op.entry_id)

    def apply(self, ops: Sequence[Operation], ctx: TurnContext) -> AppliedTurn:
        """Apply one turn's operations, all or nothing.

        ADD ignores ``entry_id`` and gets a fresh id; UPDATE replaces the text and keeps the id
        and ``created_turn``; DELETE removes; NOOP changes nothing. ``ctx.dia_id`` (when not
        empty) is appended to the entry's sources.

        Raises:
            UnknownIdError: An UPDATE or DELETE names an unknown or deleted id.
            OperationError: An ADD or UPDATE has no text, or two operations name one id.
            ReadOnlyBankError: The bank is a checkout.
        """
        self._check_writable()
        self._validate(ops)
        writes = [op for op in ops if op.kind in (OpKind.ADD, OpKind.UPDATE)]
        vecs = iter(self.embedder.embed([_text(op) for op in writes]) if writes else ())
        done: list[AppliedOp] = []
        gone: set[str] = set()
        src = (ctx.dia_id,) if ctx.dia_id else ()
        for op in ops:
            if op.kind is OpKind.NOOP:
                done.append(AppliedOp(op.kind, op.entry_id, None, None))
                continue
            if op.kind is OpKind.ADD:
                old = None
                entry = MemoryEntry(
                    f"{self._slug}-{self._next_id}",
                    _text(op),
                    self.speaker,
                    ctx.session_time,
                    src,
                    ctx.turn,
                    ctx.turn,
                    OpKind.ADD,
                )
                self._next_id += 1
            else:
                assert op.entry_id is not None, "_validate: UPDATE and DELETE name a known entry"
                old = entry = self._entries[op.entry_id]
            if op.kind is OpKind.UPDATE:
                assert old is not None, "an UPDATE took the else branch above"
                entry = replace(
                    old,
                    text=_text(op),
                    session_time=ctx.session_time,
                    sources=old.sources + src,
                    updated_turn=ctx.turn,
                    last_op=OpKind.UPDATE,
                )
            if op.kind is OpKind.DELETE:
                gone.add(entry.id)
            else:
                self._put(entry, next(vecs))
            self._dirty.add(entry.id)
            done.append(
                AppliedOp(
                    op.kind, entry.id, old.text if old else None, None if op.kind is OpKind.DELETE else entry.text
                )
            )
        self._remove(gone)
        return AppliedTurn(self.speaker, ctx.turn, tuple(done))

    def _put(self, entry: MemoryEntry, vec: np.ndarray) -> None:
        """Insert or replace ``entry`` with its unit vector (new ids go to the end)."""
        row = self._row.get(entry.id)
        if row is None:
            row = len(self._ids)
            if row == len(self._mat):
                self._mat = np.concatenate([self._mat, np.zeros_like(self._mat)])
            self._ids.append(entry.id)
            self._row[entry.id] = row
        self._entries[entry.id] = entry
        self._mat[row] = vec

    def _remove(self, ids: set[str]) -> None:
        """Drop ``ids`` and close the gaps in one O(n) pass, keeping the other rows in order."""
        if not ids:
            return
        n = len(self._ids)
        keep = np.array([i not in ids for i in self._ids], bool)
        self._mat[: int(keep.sum())] = self._mat[:n][keep]
        self._ids = [i for i in self._ids if i not in ids]
        self._row = {eid: r for r, eid in enumerate(self._ids)}
        for eid in ids:
            del self._entries[eid]
