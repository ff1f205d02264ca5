"""Fuzzed manager outputs applied to a real bank: never a crash, never a change when rejected."""

from __future__ import annotations

import json
import random

from memr1.memory.apply import apply_manager_output
from memr1.memory.bank import MemoryBank
from memr1.memory.embed import HashEmbedder
from memr1.memory.entry import Operation, OpKind, TurnContext
from memr1.memory.ops import RejectKind, remap_ids

N_OUTPUTS = 10_000
EVENTS = ["ADD", "UPDATE", "DELETE", "NONE", "NOOP", "add", "MERGE", "", None, 3]


def _bank() -> MemoryBank:
    bank = MemoryBank("Ann", HashEmbedder(dim=32))
    bank.apply(
        [Operation(OpKind.ADD, text=t) for t in ("likes tea", "has a cat", "lives in Oslo")],
        TurnContext(0, "D1:1", "1 Jan 2024"),
    )
    return bank


def _random_output(rng: random.Random, n_ids: int) -> str:
    kind = rng.random()
    if kind < 0.3:  # random bytes
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60))).decode("latin-1")
    if kind < 0.45:  # random JSON value
        return json.dumps(rng.choice([None, 1, "x", [1, 2], {"memory": "no"}, {"mem": []}, {"memory": [1, None]}]))
    items = []
    for _ in range(rng.randint(0, 4)):  # valid-shaped JSON with wrong fields
        item = {
            "id": rng.choice([str(rng.randint(-1, n_ids + 1)), rng.randint(0, n_ids), None, "x"]),
            "event": rng.choice(EVENTS),
        }
        if rng.random() < 0.8:
            item["text"] = rng.choice(["", "   ", "likes coffee", "a" * 600, 5, "has two cats"])
        if rng.random() < 0.2:
            item["old_memory"] = rng.choice(["likes tea", 7])
        items.append(item)
    text = json.dumps({"memory": items})
    return rng.choice([text, f"Sure!\n```json\n{text}\n```", text[: max(1, len(text) // 2)]])


def test_fuzzed_outputs_never_crash_and_rejected_ones_change_nothing():
    rng = random.Random(1234)
    base = _bank()
    _, id_map = remap_ids(base.entries())
    n_rejected = n_applied = 0
    for i in range(N_OUTPUTS):
        bank = base.fork()
        result, applied = apply_manager_output(
            bank, _random_output(rng, len(id_map)), id_map, TurnContext(1, "D1:2", "2 Jan 2024")
        )
        if result.ok:
            n_applied += 1
            assert applied is not None and len(applied.ops) == len(result.ops)
        else:
            n_rejected += 1
            assert applied is None and bank == base, f"output {i} was rejected but changed the bank"
    assert n_rejected + n_applied == N_OUTPUTS >= 10_000
    assert n_rejected > 1000 and n_applied > 100  # both paths were exercised


def test_bank_side_rejection_is_counted_and_changes_nothing():
    bank = _bank()
    _, id_map = remap_ids(bank.entries())
    gone = id_map["1"]
    bank.apply([Operation(OpKind.DELETE, gone)], TurnContext(1, "D1:2"))  # map is now stale
    before = bank.fork()
    result, applied = apply_manager_output(
        bank, '{"memory": [{"id": "1", "text": "has two cats", "event": "UPDATE"}]}', id_map, TurnContext(2)
    )
    assert applied is None and result.rejections[RejectKind.unknown_id] == 1 and bank == before
    assert result.messages[-1].startswith("bank:")
