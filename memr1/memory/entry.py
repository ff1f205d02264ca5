"""The two value types every memory component shares: a stored entry and an operation on it.

Entries follow docs/design.md §Entries (one bank per speaker); operations follow
docs/design.md §Operations (the Memory Manager's ADD / UPDATE / DELETE / NOOP, spelled ``NONE`` in
the model's JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class OpKind(str, Enum):
    """What an operation does to the bank."""

    ADD = "ADD"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    NOOP = "NOOP"


@dataclass(frozen=True)
class MemoryEntry:
    """One remembered fact of one speaker.

    >>> e = MemoryEntry("m1", "Caroline went to a support group", "Caroline", "1:56 pm on 8 May, 2023")
    >>> e.as_context()
    '1:56 pm on 8 May, 2023: Caroline went to a support group'
    """

    id: str
    """Stable id, unique within its bank (never reused after a DELETE)."""
    text: str
    """The fact in natural language."""
    speaker: str
    """Whose bank the entry lives in."""
    session_time: str
    """LoCoMo session date-time string of the turn that last wrote the entry."""
    sources: tuple[str, ...] = ()
    """Dialogue ids (``D5:3``) of the turns that wrote the entry, oldest first."""
    created_turn: int = -1
    """Conversation-wide turn index at which the entry was added."""
    updated_turn: int = -1
    """Turn index of the last ADD or UPDATE."""
    last_op: OpKind = OpKind.ADD
    """The operation that last touched the entry (ADD or UPDATE)."""

    def as_context(self) -> str:
        """How the Answer Agent sees the entry: ``"{session date-time}: {text}"``."""
        return f"{self.session_time}: {self.text}"


@dataclass(frozen=True)
class Operation:
    """One validated operation, with real entry ids (never the prompt's small integers).

    ``entry_id`` is None for ADD (the bank assigns the id); ``text`` is required for ADD and UPDATE;
    ``old_text`` is what the model claimed the entry said before an UPDATE (kept for audit only).
    """

    kind: OpKind
    entry_id: str | None = None
    text: str | None = None
    old_text: str | None = None


@dataclass(frozen=True)
class TurnContext:
    """Where a batch of operations comes from: stamped onto the entries it writes."""

    turn: int
    """Conversation-wide turn index (0-based position of the dialogue turn)."""
    dia_id: str = ""
    """LoCoMo dialogue id of the turn, e.g. ``D5:3``."""
    session_time: str = ""
    """Session date-time string of the turn."""
    extra: dict = field(default_factory=dict, compare=False)
    """Free-form metadata (not persisted)."""
