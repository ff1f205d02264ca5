"""Apply one Memory-Manager output to a bank: parse in counting mode, then all or nothing.

docs/design.md §Operations: malformed JSON, unknown ids, unknown events, empty or oversized texts are counted per
kind and change nothing (the caller gives reward 0). A single rejected item therefore rejects the
whole output; the bank changes only when every item was valid.

>>> from memr1.memory.bank import MemoryBank
>>> from memr1.memory.embed import HashEmbedder
>>> from memr1.memory.entry import TurnContext
>>> bank = MemoryBank("Ann", HashEmbedder())
>>> result, applied = apply_manager_output(bank, '{"memory": [{"id": "0", "text": "Likes tea", "event": "ADD"}]}',
...                                        {}, TurnContext(0, "D1:1", "1 Jan 2024"))
>>> result.ok, len(bank), applied.ops[0].new_text
(True, 1, 'Likes tea')
>>> result, applied = apply_manager_output(bank, "not json", {}, TurnContext(1))
>>> dict(result.rejections), len(bank), applied
({<RejectKind.malformed_json: 'malformed_json'>: 1}, 1, None)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import replace

from memr1.errors import OperationError, UnknownIdError
from memr1.memory.bank import AppliedTurn, MemoryBank
from memr1.memory.entry import TurnContext
from memr1.memory.ops import ParseResult, RejectKind, parse_operations


def apply_manager_output(
    bank: MemoryBank,
    raw: str,
    id_map: Mapping[str, str],
    ctx: TurnContext,
    *,
    max_text_chars: int = 500,
    truncated: bool = False,
) -> tuple[ParseResult, AppliedTurn | None]:
    """Parse ``raw`` against ``id_map`` and apply it to ``bank`` only if nothing was rejected.

    Never raises for bad model output. If the bank itself refuses the operations (an id in the
    map that the bank no longer holds), that is counted as ``unknown_id`` and nothing changes. An
    output that hit its token cap (``truncated``) is rejected as such, whatever it parses to: the
    memories it did not get to list would read as dropped.

    Returns:
        The parse result (with any bank-side rejection added) and the applied turn, or None.
    """
    if truncated:
        return ParseResult(
            rejections=Counter({RejectKind.truncated: 1}),
            messages=("output: cut at the token cap (raise the manager's cap)",),
        ), None
    result = parse_operations(raw, id_map, max_text_chars=max_text_chars)
    if not result.ok:
        return result, None
    try:
        return result, bank.apply(result.ops, ctx)
    except (UnknownIdError, OperationError) as exc:
        kind = RejectKind(exc.kind) if isinstance(exc, OperationError) else RejectKind.unknown_id
        return replace(
            result,
            ops=(),
            rejections=result.rejections + Counter({kind: 1}),
            messages=result.messages + (f"bank: {exc}",),
        ), None
