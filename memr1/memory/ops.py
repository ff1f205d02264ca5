"""The Memory Manager's output: parse its JSON into validated operations, and render them back.

The manager sees the retrieved memories under small ids ("0", "1", ...) made by `remap_ids` and
answers ``{"memory": [{"id", "text", "event", "old_memory"}, ...]}`` (docs/design.md §Operations).
`parse_operations` maps the ids back to real ones, keeps the valid operations in output order and
counts every rejected item by `RejectKind`. Counting mode never raises (a bad item changes nothing
and the caller gives reward 0); strict mode raises `OperationError` at the first rejection.

An output with no JSON object is read as operation lines, a form small models can write (the
``lines`` prompt style, docs/design.md §Operations): ``ADD <text>``, ``UPDATE <id> <text>``,
``DELETE <id>``, ``NONE <id>``, or the arrow form ``<fact> => NEW`` / ``CHANGE <id>`` /
``REMOVE <id>`` / ``SAME <id>``, where the fact is the text; other lines are ignored.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from memr1.errors import OperationError
from memr1.jsontext import json_values
from memr1.memory.entry import MemoryEntry, Operation, OpKind


def remap_ids(entries: Sequence[MemoryEntry]) -> tuple[list[dict], dict[str, str]]:
    """The prompt view of ``entries`` under small ids, and the map small id → real id.

    An entry retrieved twice (same real id) is shown once.

    >>> view, id_map = remap_ids([MemoryEntry("m7", "Likes tea", "Ann", ""),
    ...                           MemoryEntry("m9", "Has a cat", "Ann", "")])
    >>> view
    [{'id': '0', 'text': 'Likes tea'}, {'id': '1', 'text': 'Has a cat'}]
    >>> id_map
    {'0': 'm7', '1': 'm9'}
    """
    first: dict[str, MemoryEntry] = {}
    for entry in entries:
        first.setdefault(entry.id, entry)
    shown = list(first.values())
    view = [{"id": str(i), "text": entry.text} for i, entry in enumerate(shown)]
    return view, {str(i): entry.id for i, entry in enumerate(shown)}


class RejectKind(str, Enum):
    """Why an output or one of its items was rejected (it then changes nothing)."""

    malformed_json = "malformed_json"  # no JSON object (and no operation line) could be read from the output
    bad_schema = "bad_schema"  # no `memory` list, an item not an object, a field of the wrong type
    unknown_id = "unknown_id"  # UPDATE / DELETE / NONE names an id that is not in the id map
    unknown_event = "unknown_event"  # event not one of ADD, UPDATE, DELETE, NONE (or NOOP)
    missing_text = "missing_text"  # ADD / UPDATE without a `text`
    empty_text = "empty_text"  # `text` blank after strip
    text_too_long = "text_too_long"  # `text` longer than `max_text_chars` after strip
    duplicate_id = "duplicate_id"  # two or more UPDATE / DELETE on one id: all of them rejected
    truncated = "truncated"  # the output hit the token cap: the list of operations may be cut short

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ParseResult:
    """Valid operations (real ids, output order) and what was rejected.

    ``rejections`` is a `collections.Counter` keyed by `RejectKind` (a missing kind reads 0);
    ``messages`` holds one line per rejection, ordered by item (output-level problems first).
    """

    ops: tuple[Operation, ...] = ()
    rejections: Counter = field(default_factory=Counter, hash=False)
    messages: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing was rejected."""
        return self.n_rejected == 0

    @property
    def n_rejected(self) -> int:
        """How many rejections in all."""
        return sum(self.rejections.values())

    def counts_by_kind(self) -> dict[OpKind, int]:
        """Valid operations per kind, every kind present (zeros included)."""
        counts = Counter(op.kind for op in self.ops)
        return {kind: counts[kind] for kind in OpKind}


_EVENTS = {
    "ADD": OpKind.ADD,
    "UPDATE": OpKind.UPDATE,
    "DELETE": OpKind.DELETE,
    "NONE": OpKind.NOOP,
    "NOOP": OpKind.NOOP,
}
_EVENT_NAMES = {kind: name for name, kind in _EVENTS.items() if name != "NOOP"}  # NOOP is spelled NONE
_EVENT_HINT = "use ADD, UPDATE, DELETE or NONE"
_Reject = tuple[RejectKind, str]


def _find_object(text: str) -> dict | None:
    """The first decoded dict with a ``memory`` key, else the first dict, else None."""
    first = None
    for obj in json_values(text):
        if isinstance(obj, dict):
            if "memory" in obj:
                return obj
            if first is None:
                first = obj
    return first


_LINE_EVENTS = {"NEW": "ADD", "CHANGE": "UPDATE", "REMOVE": "DELETE", "SAME": "NONE"}
"""The plain words of the arrow form, and the events they stand for."""
_WORDS = "ADD|UPDATE|DELETE|NONE|NOOP|" + "|".join(_LINE_EVENTS)
_OP_LINE = re.compile(r"^\W{0,3}(ADD|UPDATE|DELETE|NONE|NOOP)\b[\s:]*(.*)$", re.IGNORECASE)
_ARROW_LINE = re.compile(rf"^[-*\s]*(.*?)\s*=>\s*({_WORDS})\b\W*(\w*)", re.IGNORECASE)
_ID_TEXT = re.compile(r"^(?:id\s*)?#?(\d+)\b[\s:.,)-]*(.*)$", re.IGNORECASE)


def _line_item(line: str) -> dict | None:
    """One operation line as a JSON-form item (None: not an operation line)."""
    if m := _ARROW_LINE.match(line):  # "<fact> => CHANGE 0": the fact is the new text
        text, word, small = m.group(1).strip(), m.group(2).upper(), m.group(3)
    elif m := _OP_LINE.match(line):  # "UPDATE 0 <text>"
        word, rest = m.group(1).upper(), m.group(2).strip()
        found = _ID_TEXT.match(rest)
        small, text = (found.group(1), found.group(2).strip()) if found else (rest.split(" ")[0], "")
        if word == "ADD":
            small, text = "", rest
    else:
        return None
    event = _LINE_EVENTS.get(word, word)
    item: dict = {"event": event}
    if event != "ADD":
        item["id"] = small
    if event in ("ADD", "UPDATE"):
        item["text"] = text
    return item


def _line_items(text: str) -> list[dict] | None:
    """The operation lines of ``text`` as JSON-form items, or None when no line is one.

    >>> _line_items("Sure.\\nADD Ann likes tea\\nupdate 1: Ann has two cats\\n- Ann left Rome. => REMOVE 0")
    [{'event': 'ADD', 'text': 'Ann likes tea'}, {'event': 'UPDATE', 'id': '1', 'text': 'Ann has two cats'}, \
{'event': 'DELETE', 'id': '0'}]
    """
    items = [item for line in text.splitlines() if (item := _line_item(line.strip())) is not None]
    return items or None


def _small_id(raw: object) -> str | None:
    """``1`` and ``"1"`` (and ``" 1 "``) name the same small id; other types name none."""
    if isinstance(raw, str):
        return raw.strip()
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return None


def _known(id_map: Mapping[str, str]) -> str:
    """The map's small ids for a message: ``0..3`` when they are the usual run."""
    keys = sorted(id_map, key=lambda k: (not (k.isascii() and k.isdigit()), len(k), k))  # 2 before 10
    if not keys:
        return "none"
    if keys == [str(i) for i in range(len(keys))]:
        return "0" if len(keys) == 1 else f"0..{len(keys) - 1}"
    return ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_item(i: int, item: object, id_map: Mapping[str, str], cap: int) -> Operation | _Reject:
    """One item → a valid `Operation`, or the first reason to reject it (checked in this order)."""
    at = f"item {i}"
    if not isinstance(item, dict):
        return RejectKind.bad_schema, f"{at}: expected an object, got {type(item).__name__}"
    for key in ("event", "text", "old_memory"):  # event is required, the other two optional
        value = item.get(key)
        if not isinstance(value, str) and (key == "event" or value is not None):
            return RejectKind.bad_schema, f"{at}: '{key}' must be a string, got {type(value).__name__}"
    event = item["event"]
    kind = _EVENTS.get(event.strip().upper())
    if kind is None:
        return RejectKind.unknown_event, f"{at}: unknown event {_short(event)} ({_EVENT_HINT})"
    real = None
    if kind is not OpKind.ADD:  # an ADD's id is ignored: the bank assigns one
        small = _small_id(item.get("id"))
        if small is None:
            got = type(item.get("id")).__name__
            return RejectKind.bad_schema, f"{at}: 'id' must be a string or integer, got {got}"
        if small not in id_map:
            return RejectKind.unknown_id, f"{at}: unknown id {_short(small)} (known: {_known(id_map)})"
        real = id_map[small]
    if kind in (OpKind.DELETE, OpKind.NOOP):
        return Operation(kind, real)
    text = item.get("text")
    if text is None:
        return RejectKind.missing_text, f"{at}: {kind.value} needs a 'text'"
    text = text.strip()
    if not text:
        return RejectKind.empty_text, f"{at}: {kind.value} text is blank"
    if len(text) > cap:
        return RejectKind.text_too_long, f"{at}: text too long ({len(text)} > {cap} chars)"
    return Operation(kind, real, text, item.get("old_memory") if kind is OpKind.UPDATE else None)


def _reject_duplicates(results: list[Operation | _Reject], items: list) -> None:
    """Replace every UPDATE / DELETE that shares its real id with another one by a rejection."""
    acting: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        if isinstance(r, Operation) and r.kind in (OpKind.UPDATE, OpKind.DELETE):
            acting.setdefault(str(r.entry_id), []).append(i)
    for idx in (idx for idx in acting.values() if len(idx) > 1):
        where = ", ".join(map(str, idx))
        for i in idx:
            small = _small_id(items[i].get("id")) or ""
            results[i] = RejectKind.duplicate_id, f"item {i}: duplicate id {_short(small)} (items {where})"


def parse_operations(
    raw: str, id_map: Mapping[str, str], *, max_text_chars: int = 500, strict: bool = False
) -> ParseResult:
    """Parse a manager output into valid operations with real ids, counting the rejections.

    The JSON object may sit in a code fence or in prose; events are case-insensitive, ``NOOP``
    is an alias of ``NONE``; ids may be ints or strings; texts are stripped. Items are numbered
    from 0 in the messages. Bytes are decoded as utf-8; any other non-str is malformed_json. A
    text with no JSON object is read as operation lines (module docstring); with none of those
    either it is malformed_json.

    >>> out = '''Here you go: ```json
    ... {"memory": [{"id": 0, "text": " Loves tea ", "event": "update", "old_memory": "Likes tea"},
    ...             {"id": "7", "event": "DELETE"}, {"id": "1", "text": "x", "event": "NONE"}]}
    ... ```'''
    >>> r = parse_operations(out, {"0": "m7", "1": "m9"})
    >>> [(op.kind.value, op.entry_id, op.text) for op in r.ops]
    [('UPDATE', 'm7', 'Loves tea'), ('NOOP', 'm9', None)]
    >>> dict(r.rejections), r.messages, r.ok
    ({<RejectKind.unknown_id: 'unknown_id'>: 1}, ("item 1: unknown id '7' (known: 0..1)",), False)
    >>> parse_operations("no json here", {}).rejections
    Counter({<RejectKind.malformed_json: 'malformed_json'>: 1})
    """
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8", errors="replace")
    obj = _find_object(raw) if isinstance(raw, str) else None
    lines = _line_items(raw) if obj is None and isinstance(raw, str) else None
    items = lines if obj is None else obj.get("memory")
    results: list[Operation | _Reject]
    if not isinstance(raw, str):
        results = [(RejectKind.malformed_json, f"output: expected a str, got {type(raw).__name__}")]
    elif obj is None and lines is None:
        results = [(RejectKind.malformed_json, f"output: no JSON object or operation line in {len(raw)} chars")]
    elif not isinstance(items, list):
        got = type(items).__name__ if obj is not None and "memory" in obj else "no 'memory' key"
        results = [(RejectKind.bad_schema, f"output: expected a 'memory' list, got {got}")]
    else:
        results = [_check_item(i, item, id_map, max_text_chars) for i, item in enumerate(items)]
        _reject_duplicates(results, items)
    rejects = [r for r in results if not isinstance(r, Operation)]
    if strict and rejects:
        raise OperationError(*rejects[0])
    return ParseResult(
        ops=tuple(r for r in results if isinstance(r, Operation)),
        rejections=Counter(kind for kind, _ in rejects),
        messages=tuple(msg for _, msg in rejects),
    )


def render_operations(ops: Sequence[Operation], id_map: Mapping[str, str]) -> str:
    """The JSON the manager would emit for ``ops`` (real ids → small ids); inverse of the parser.

    ADDs get fresh small ids after the map's. Raises `OperationError` (unknown_id) for an
    UPDATE / DELETE / NOOP whose real id is not in ``id_map``.

    >>> m = {"0": "m7"}
    >>> ops = (Operation(OpKind.ADD, None, "Has a cat"), Operation(OpKind.DELETE, "m7"))
    >>> render_operations(ops, m)
    '{"memory": [{"id": "1", "text": "Has a cat", "event": "ADD"}, {"id": "0", "event": "DELETE"}]}'
    >>> parse_operations(render_operations(ops, m), m).ops == ops
    True
    """
    small_of = {real: small for small, real in id_map.items()}
    next_new = len(id_map)
    items = []
    for op in ops:
        kind = OpKind(op.kind)
        if kind is OpKind.ADD:
            small, next_new = str(next_new), next_new + 1
        elif op.entry_id in small_of:
            small = small_of[op.entry_id]
        else:
            detail = f"cannot render {kind.value} of {op.entry_id!r}: not in the id map"
            raise OperationError(RejectKind.unknown_id, detail)
        item: dict[str, str] = {"id": small}
        if op.text is not None:
            item["text"] = op.text
        item["event"] = _EVENT_NAMES[kind]
        if kind is OpKind.UPDATE and op.old_text is not None:
            item["old_memory"] = op.old_text
        items.append(item)
    return json.dumps({"memory": items}, ensure_ascii=False)
