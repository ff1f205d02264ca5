"""LanceDB persistence for one speaker's memory bank: one table, one tagged version per turn.

Layout (docs/design.md §Bank). A store directory is a LanceDB database; speaker ``Caroline`` lives in table
``bank_caroline`` with one row per live entry::

    id str | text str | speaker str | session_time str | sources list<str>
    created_turn int64 | updated_turn int64 | last_op str | vector fixed_size_list<float32>[dim]

plus one bookkeeping row ``id = "__meta__"`` whose ``text`` is JSON (format, speaker, embedder,
dim, next_id, turn). Keeping the id counter in the same table means it is written by the same
transaction as the entries, so the two can never disagree.

A commit is one ``merge_insert`` (one table version) followed by the tag ``turn-<n>``; it counts
only once the tag exists. Readers always go through tags, so a version written by a process that
died before tagging is invisible, and the next commit rewrites the whole state over it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from memr1.errors import ConfigError, StoreError
from memr1.memory.entry import MemoryEntry, OpKind

META_ID = "__meta__"
FORMAT = 1
_TAG = re.compile(r"^turn-(-?\d+)$")


def speaker_slug(speaker: str) -> str:
    """Lower-case ASCII form of a speaker name, safe in table names and entry ids.

    >>> speaker_slug("Melanie O'Neil")
    'melanie_o_neil'
    """
    return re.sub(r"[^a-z0-9]+", "_", speaker.lower()).strip("_") or "speaker"


def id_number(entry_id: str) -> int:
    """The counter part of an entry id (``"caroline-12"`` → 12); -1 for foreign ids."""
    tail = entry_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _sql(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def bank_schema(dim: int) -> pa.Schema:
    """Arrow schema of a bank table whose vectors have ``dim`` components."""
    return pa.schema(
        [
            ("id", pa.string()),
            ("text", pa.string()),
            ("speaker", pa.string()),
            ("session_time", pa.string()),
            ("sources", pa.list_(pa.string())),
            ("created_turn", pa.int64()),
            ("updated_turn", pa.int64()),
            ("last_op", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )


@dataclass(frozen=True)
class StoredState:
    """A bank as read from one tagged version (entries in creation order, one vector row each)."""

    turn: int | None
    entries: list[MemoryEntry]
    vectors: np.ndarray
    next_id: int


class BankStore:
    """One speaker's table in a LanceDB directory: tagged commits, checkouts, history.

    Single writer: one process at a time may commit to a given speaker's table.

    Args:
        path: Database directory (created if missing).
        speaker: Whose bank; the table is ``bank_<slug>``.
        embedder_name: Name of the embedder that made the vectors; reopening needs the same.
        dim: Vector length.
    """

    def __init__(self, path: str | Path, speaker: str, embedder_name: str, dim: int):
        import lancedb  # ~2 s to import: only banks that persist pay for it

        self.path, self.speaker = Path(path), speaker
        self.embedder_name, self.dim = embedder_name, dim
        self.table_name = f"bank_{speaker_slug(speaker)}"
        self.path.mkdir(parents=True, exist_ok=True)
        db = lancedb.connect(str(self.path))
        try:
            try:
                self._table = db.open_table(self.table_name)
            except ValueError:  # "Table ... was not found"
                self._table = db.create_table(self.table_name, schema=bank_schema(dim))
            self._reader = db.open_table(self.table_name)
        except Exception as err:  # lance raises plain RuntimeError/ValueError on corrupt tables
            raise StoreError(f"cannot open table {self.table_name} in {self.path}: {err}") from err
        stored_dim = self._table.schema.field("vector").type.list_size
        if stored_dim != dim:
            raise ConfigError(
                f"{self.path}/{self.table_name} holds {stored_dim}-d vectors but the "
                f"embedder makes {dim}-d ones; use the embedder the store was made "
                "with or a new store directory"
            )
        self._turns = self._read_tags()
        head = self._table.version
        tagged: int | None
        if self._turns:
            tagged = self._turns[max(self._turns)]
        else:
            tagged = head if self._table.count_rows() == 0 else None
        self._synced: int | None = tagged if tagged == head else None
        """Head version known to equal the last commit: the next commit may send only changes."""

    def _read_tags(self) -> dict[int, int]:
        turns = {}
        for name, tag in self._table.tags.list().items():
            match = _TAG.match(name)
            if match:
                turns[int(match.group(1))] = int(tag["version"])
        return dict(sorted(turns.items()))

    def committed_turns(self) -> list[int]:
        """Turns with a finished commit, ascending."""
        return list(self._turns)

    def resolve(self, turn: int) -> int:
        """The latest committed turn at or before ``turn``.

        Raises:
            StoreError: Nothing was committed at or before ``turn``.
        """
        done = [t for t in self._turns if t <= turn]
        if not done:
            first = f"the first commit is turn {min(self._turns)}" if self._turns else "none yet"
            raise StoreError(
                f"speaker {self.speaker!r} has no commit at or before turn {turn} "
                f"({first}); commit a turn first or ask for a later one"
            )
        return max(done)

    def _read(self, version: int, where: str | None = None) -> pa.Table:
        self._reader.checkout(version)
        if where is None:
            return self._reader.to_arrow()
        return self._reader.search().where(where).limit(None).to_arrow()

    def load(self, turn: int | None = None) -> StoredState:
        """The bank as committed at ``turn`` (latest commit ≤ turn; None: the last commit)."""
        if turn is None and not self._turns:
            return StoredState(None, [], np.zeros((0, self.dim), np.float32), 0)
        turn = self.resolve(max(self._turns) if turn is None else turn)
        table = self._read(self._turns[turn])
        ids = table.column("id").to_pylist()
        if META_ID not in ids:
            raise StoreError(
                f"{self.path}/{self.table_name} turn {turn}: no {META_ID} row; "
                "the table was not written by memr1 or is corrupt"
            )
        meta = self._check_meta(json.loads(table.column("text")[ids.index(META_ID)].as_py()))
        entries, vectors = _from_arrow(table, self.dim)
        return StoredState(turn, entries, vectors, int(meta["next_id"]))

    def _check_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        where = f"{self.path}/{self.table_name}"
        if meta.get("speaker") != self.speaker:
            raise StoreError(
                f"{where} belongs to speaker {meta.get('speaker')!r}, not "
                f"{self.speaker!r} (their names share a slug); use another store dir"
            )
        if meta.get("embedder") != self.embedder_name:
            raise ConfigError(
                f"{where} was embedded with {meta.get('embedder')!r}, not "
                f"{self.embedder_name!r}; reopen it with that embedder"
            )
        return meta

    def write(
        self, turn: int, entries: Sequence[MemoryEntry], vectors: np.ndarray, changed: set[str], next_id: int
    ) -> None:
        """Commit the working set as turn ``turn``: one table version, then its tag.

        Args:
            turn: Turn index; must exceed every committed turn.
            entries: All live entries, in working-set row order.
            vectors: Their vectors, one row per entry.
            changed: Ids added, updated or deleted since the last commit.
            next_id: The bank's id counter.

        Raises:
            StoreError: ``turn`` is not newer than the last commit, or LanceDB failed.
        """
        if self._turns and turn <= max(self._turns):
            raise StoreError(
                f"speaker {self.speaker!r}: cannot commit turn {turn}, turn "
                f"{max(self._turns)} is already committed; turns must increase"
            )
        meta = {
            "format": FORMAT,
            "speaker": self.speaker,
            "embedder": self.embedder_name,
            "dim": self.dim,
            "next_id": next_id,
            "turn": turn,
        }
        full = self._synced is None or self._synced != self._table.version
        rows = [i for i, e in enumerate(entries) if full or e.id in changed]
        data = _to_arrow([entries[i] for i in rows], vectors[rows], meta, self.dim)
        merge = self._table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        gone = sorted(changed - {e.id for e in entries})
        if full:
            merge = merge.when_not_matched_by_source_delete()
        elif gone:
            merge = merge.when_not_matched_by_source_delete("id IN (" + ", ".join(_sql(i) for i in gone) + ")")
        self._synced = None
        try:
            version = merge.execute(data).version
            self._table.tags.create(f"turn-{turn}", version)
        except Exception as err:
            raise StoreError(f"commit of turn {turn} to {self.path}/{self.table_name} failed: {err}") from err
        self._turns[turn] = version
        self._synced = version

    def history(self, entry_id: str) -> list[tuple[int, MemoryEntry | None]]:
        """Each committed turn at which ``entry_id`` appeared, changed or vanished (None)."""
        out: list[tuple[int, MemoryEntry | None]] = []
        last: MemoryEntry | None = None
        for turn, version in self._turns.items():
            entries, _ = _from_arrow(self._read(version, f"id = {_sql(entry_id)}"), self.dim)
            now = entries[0] if entries else None
            if now != last:
                out.append((turn, now))
            last = now
        return out

    def optimize(self) -> None:
        """Compact the table's fragments; every tagged version stays readable.

        Old versions are not pruned: LanceDB 0.40 refuses to clean up while tagged versions are
        older than the cut-off and offers no switch for that, and every commit is tagged.
        """
        synced = self._synced is not None and self._synced == self._table.version
        try:
            self._table.optimize(cleanup_older_than=timedelta(days=365_000))
        except Exception as err:
            raise StoreError(f"optimize of {self.path}/{self.table_name} failed: {err}") from err
        if synced:
            self._synced = self._table.version


def _to_arrow(entries: Sequence[MemoryEntry], vectors: np.ndarray, meta: dict[str, Any], dim: int) -> pa.Table:
    meta_row = MemoryEntry(META_ID, json.dumps(meta), meta["speaker"], "", (), -1, int(meta["turn"]), OpKind.NOOP)
    rows = [*entries, meta_row]
    flat = np.concatenate([np.asarray(vectors, np.float32).reshape(-1, dim), np.zeros((1, dim), np.float32)]).ravel()
    return pa.table(
        {
            "id": [e.id for e in rows],
            "text": [e.text for e in rows],
            "speaker": [e.speaker for e in rows],
            "session_time": [e.session_time for e in rows],
            "sources": [list(e.sources) for e in rows],
            "created_turn": [e.created_turn for e in rows],
            "updated_turn": [e.updated_turn for e in rows],
            "last_op": [e.last_op.value for e in rows],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim),
        },
        schema=bank_schema(dim),
    )


def _from_arrow(table: pa.Table, dim: int) -> tuple[list[MemoryEntry], np.ndarray]:
    """Entries (creation order, meta row left out) and their vectors from a bank table."""
    cols = table.drop_columns(["vector"]).to_pydict()
    flat = table.column("vector").combine_chunks().flatten()
    vectors = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    keep = sorted(
        (i for i, eid in enumerate(cols["id"]) if eid != META_ID),
        key=lambda i: (id_number(cols["id"][i]), cols["id"][i]),
    )
    entries = [
        MemoryEntry(
            cols["id"][i],
            cols["text"][i],
            cols["speaker"][i],
            cols["session_time"][i],
            tuple(cols["sources"][i] or ()),
            cols["created_turn"][i],
            cols["updated_turn"][i],
            OpKind(cols["last_op"][i]),
        )
        for i in keep
    ]
    return entries, vectors[keep]
