"""Unit tests of the memory bank: operations, rollback, fork, search, ids, store round trips."""

from __future__ import annotations

import numpy as np
import pytest

from memr1.errors import ConfigError, OperationError, StoreError, UnknownIdError
from memr1.memory import (
    CachedEmbedder,
    HashEmbedder,
    MemoryBank,
    MiniLMEmbedder,
    Operation,
    OpKind,
    ReadOnlyBankError,
    TurnContext,
)

EMB = HashEmbedder(64)


def add(text: str) -> Operation:
    return Operation(OpKind.ADD, text=text)


def update(eid: str, text: str) -> Operation:
    return Operation(OpKind.UPDATE, eid, text)


def delete(eid: str) -> Operation:
    return Operation(OpKind.DELETE, eid)


def ctx(turn: int) -> TurnContext:
    return TurnContext(turn, f"D1:{turn}", f"day {turn}")


@pytest.fixture
def bank() -> MemoryBank:
    b = MemoryBank("Caroline", EMB)
    b.apply([add("Caroline adopted a dog"), add("Caroline works as a nurse")], ctx(0))
    return b


@pytest.fixture
def stored(tmp_path) -> MemoryBank:
    b = MemoryBank.open(tmp_path / "store", "Caroline", EMB)
    b.apply([add("Caroline adopted a dog"), add("Caroline works as a nurse")], ctx(0))
    b.commit(0)
    return b


def test_add_stamps_a_new_entry(bank):
    entry = bank.get("caroline-0")
    assert (entry.text, entry.speaker, entry.session_time) == ("Caroline adopted a dog", "Caroline", "day 0")
    assert (entry.sources, entry.created_turn, entry.updated_turn, entry.last_op) == (("D1:0",), 0, 0, OpKind.ADD)
    assert len(bank) == 2 and bank.next_id == 2
    assert np.isclose(np.linalg.norm(bank.vector("caroline-0")), 1.0)


def test_update_keeps_id_and_creation(bank):
    record = bank.apply([update("caroline-0", "Caroline has two dogs")], ctx(3))
    entry = bank.get("caroline-0")
    assert (entry.text, entry.created_turn, entry.updated_turn) == ("Caroline has two dogs", 0, 3)
    assert entry.sources == ("D1:0", "D1:3") and entry.last_op is OpKind.UPDATE
    assert entry.session_time == "day 3"
    assert np.allclose(bank.vector("caroline-0"), EMB.embed(["Caroline has two dogs"])[0])
    assert record.ops[0].old_text == "Caroline adopted a dog"
    assert record.ops[0].new_text == "Caroline has two dogs"


def test_delete_removes_and_search_skips_it(bank):
    record = bank.apply([delete("caroline-0")], ctx(1))
    assert len(bank) == 1 and [e.id for e in bank.entries()] == ["caroline-1"]
    assert [e.id for e, _ in bank.search("Caroline adopted a dog", k=10)] == ["caroline-1"]
    assert (record.ops[0].old_text, record.ops[0].new_text) == ("Caroline adopted a dog", None)
    with pytest.raises(UnknownIdError):
        bank.get("caroline-0")


def test_noop_changes_nothing(bank):
    before = bank.fork()
    record = bank.apply([Operation(OpKind.NOOP, "caroline-1")], ctx(1))
    assert bank == before and record.counts()[OpKind.NOOP] == 1


@pytest.mark.parametrize(
    "ops, error",
    [
        ([add("new fact"), update("caroline-9", "x")], UnknownIdError),
        ([add("new fact"), delete("caroline-0"), delete("caroline-0")], OperationError),
        ([update("caroline-0", "a"), delete("caroline-0")], OperationError),
        ([add("new fact"), Operation(OpKind.ADD)], OperationError),
        ([add("new fact"), update("caroline-1", "   ")], OperationError),
        ([delete("caroline-0"), Operation(OpKind.DELETE)], UnknownIdError),
    ],
)
def test_one_bad_op_changes_nothing(stored, ops, error):
    before = stored.fork()
    with pytest.raises(error):
        stored.apply(ops, ctx(1))
    assert stored == before and stored.committed_turns() == [0]
    stored.commit(1)  # nothing half-applied may leak into the next commit either
    assert stored.checkout(1) == before == stored.checkout(0)


def test_deleted_id_is_rejected(bank):
    bank.apply([delete("caroline-0")], ctx(1))
    with pytest.raises(UnknownIdError, match="caroline-0"):
        bank.apply([update("caroline-0", "back again")], ctx(2))


def test_fork_is_independent(stored):
    fork = stored.fork()
    fork.apply([add("fork only"), delete("caroline-0")], ctx(1))
    assert len(stored) == 2 and stored.get("caroline-0").text == "Caroline adopted a dog"
    stored.apply([update("caroline-1", "original only")], ctx(1))
    assert fork.get("caroline-1").text == "Caroline works as a nurse"
    assert [e.id for e, _ in fork.search("fork only", 1)] == ["caroline-2"]
    with pytest.raises(StoreError):
        fork.commit(1)
    assert stored.checkout(0) == stored.checkout(5) and len(stored.checkout(0)) == 2


def test_ids_are_never_reused(tmp_path):
    b = MemoryBank.open(tmp_path, "Ann", EMB)
    b.apply([add("one")], ctx(0))
    b.apply([delete("ann-0")], ctx(1))
    b.commit(1)
    b.apply([add("two")], ctx(2))
    assert [e.id for e in b.entries()] == ["ann-1"]
    again = MemoryBank.open(tmp_path, "Ann", EMB)
    again.apply([add("three")], ctx(2))
    assert [e.id for e in again.entries()] == ["ann-1"]  # ann-1 was never committed
    again.commit(2)
    again.apply([add("four")], ctx(3))
    assert [e.id for e in again.entries()] == ["ann-1", "ann-2"]


def test_get_unknown_names_id_and_speaker(bank):
    with pytest.raises(UnknownIdError) as info:
        bank.get("caroline-42")
    assert "caroline-42" in str(info.value) and "Caroline" in str(info.value)


def test_search_ranks_and_caps(bank):
    bank.apply([add("tax forms are due in April")], ctx(1))
    hits = bank.search("Caroline adopted a dog", k=2)
    assert [e.id for e, _ in hits] == ["caroline-0", "caroline-1"]
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5) and hits[0][1] >= hits[1][1]
    assert len(bank.search("dog", k=100)) == 3 and bank.search("dog", k=0) == []
    by_vector = bank.search(EMB.embed(["tax forms"])[0] * 5, k=1)
    assert by_vector[0][0].id == "caroline-2"
    assert MemoryBank("Nobody", EMB).search("dog", 5) == []


def test_commit_same_or_older_turn_fails(stored):
    with pytest.raises(StoreError, match="turn 0"):
        stored.commit(0)
    stored.commit(4)
    with pytest.raises(StoreError):
        stored.commit(2)
    assert stored.committed_turns() == [0, 4]


def test_checkout_before_first_commit_fails(tmp_path):
    b = MemoryBank.open(tmp_path, "Ann", EMB)
    with pytest.raises(StoreError):
        b.checkout(10)
    b.commit(3)  # an empty bank is committable
    with pytest.raises(StoreError, match="turn 2"):
        b.checkout(2)
    assert len(b.checkout(3)) == 0


def test_checkout_is_read_only_and_versioned(stored):
    stored.apply([update("caroline-0", "Caroline has two dogs")], ctx(2))
    stored.commit(2)
    old = stored.checkout(1)
    assert old.turn == 0 and old.get("caroline-0").text == "Caroline adopted a dog"
    with pytest.raises(ReadOnlyBankError):
        old.apply([add("nope")], ctx(3))
    assert old.fork().apply([add("yes")], ctx(3)).ops[0].entry_id == "caroline-2"


def test_reopen_restores_entries_vectors_counter(tmp_path):
    class Counting(HashEmbedder):
        calls = 0

        def embed(self, texts):
            Counting.calls += 1
            return super().embed(texts)

    b = MemoryBank.open(tmp_path, "Ann", Counting(64))
    b.apply([add("likes tea"), add("lives in Paris"), add("has a cat")], ctx(0))
    b.apply([delete("ann-2"), update("ann-0", "likes green tea")], ctx(1))
    b.commit(1)
    committed = b.fork()
    b.apply([add("uncommitted")], ctx(2))
    Counting.calls = 0
    again = MemoryBank.open(tmp_path, "Ann", Counting(64))
    assert Counting.calls == 0 and again == committed and again.turn == 1 and again.next_id == 3
    assert all(np.array_equal(again.vector(e.id), committed.vector(e.id)) for e in again.entries())


def test_optimize_keeps_checkouts(stored):
    snapshots = {0: stored.fork()}
    for turn in range(1, 6):
        stored.apply([add(f"fact {turn}"), update("caroline-1", f"nurse year {turn}")], ctx(turn))
        if turn % 2:
            stored.apply([delete(f"caroline-{turn + 1}")], ctx(turn))
        stored.commit(turn)
        snapshots[turn] = stored.fork()
    stored.optimize()
    assert all(stored.checkout(t) == snap for t, snap in snapshots.items())
    stored.apply([add("after optimize")], ctx(6))
    stored.commit(6)
    assert MemoryBank.open(stored._store.path, "Caroline", EMB) == stored
    assert stored.checkout(3) == snapshots[3]


def test_untagged_head_is_ignored(stored, monkeypatch):
    """A write whose tag never landed (the process died in between) is not a commit."""
    import lancedb.table

    snapshot = stored.fork()
    stored.apply([add("lost"), delete("caroline-0")], ctx(1))

    def die(*args, **kwargs):
        raise OSError("simulated crash before tagging")

    with monkeypatch.context() as patch:
        patch.setattr(lancedb.table.Tags, "create", die)
        with pytest.raises(StoreError):
            stored.commit(1)
    again = MemoryBank.open(stored._store.path, "Caroline", EMB)
    assert again == snapshot and again.committed_turns() == [0]
    again.apply([add("kept")], ctx(1))
    again.commit(1)
    assert again.checkout(1) == again and "lost" not in {e.text for e in again.entries()}
    assert MemoryBank.open(stored._store.path, "Caroline", EMB) == again


def test_diff_and_history(stored):
    stored.apply([update("caroline-0", "Caroline has two dogs"), add("likes hiking")], ctx(1))
    stored.commit(1)
    stored.apply([delete("caroline-1")], ctx(2))
    stored.commit(2)
    d = stored.diff(0, 2)
    assert [e.id for e in d.added] == ["caroline-2"] and [e.id for e in d.deleted] == ["caroline-1"]
    assert [(o.text, n.text) for o, n in d.updated] == [("Caroline adopted a dog", "Caroline has two dogs")]
    assert d.apply_to(stored.checkout(0)) == stored
    with pytest.raises(StoreError):
        d.apply_to(stored.checkout(2))
    hist = stored.history("caroline-1")
    assert [(t, e and e.text) for t, e in hist] == [(0, "Caroline works as a nurse"), (2, None)]
    assert [t for t, _ in stored.history("caroline-0")] == [0, 1]
    with pytest.raises(UnknownIdError):
        stored.history("caroline-77")


def test_reopen_checks_embedder_and_speaker(stored):
    path = stored._store.path
    with pytest.raises(ConfigError):
        MemoryBank.open(path, "Caroline", HashEmbedder(16))
    with pytest.raises(ConfigError):
        MemoryBank.open(path, "Caroline", MiniLMEmbedder())
    with pytest.raises(StoreError, match="speaker"):
        MemoryBank.open(path, "caroline", EMB)  # same table name, other speaker
    assert len(MemoryBank.open(path, "Melanie", EMB)) == 0


def test_hash_embedder_is_normalised_and_deterministic():
    vecs = EMB.embed(["my dog barks", "My dog barks!", "my dogs bark", "quarterly tax forms", ""])
    assert vecs.shape == (5, 64) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0)
    assert np.array_equal(vecs[0], vecs[1]) and vecs[0] @ vecs[2] > vecs[0] @ vecs[3]
    assert np.array_equal(HashEmbedder(64).embed(["my dog barks"])[0], vecs[0])
    assert EMB.embed([]).shape == (0, 64)


def test_cached_embedder_sends_only_misses():
    seen: list[list[str]] = []

    class Spy(HashEmbedder):
        def embed(self, texts):
            seen.append(list(texts))
            return super().embed(texts)

    cached = CachedEmbedder(Spy(64), max_items=3)
    first = cached.embed(["a", "b", "a"])
    second = cached.embed(["b", "c", "a"])
    assert seen == [["a", "b"], ["c"]]
    assert np.array_equal(first[0], second[2]) and np.array_equal(first, EMB.embed(["a", "b", "a"]))
    cached.embed(["d"])  # evicts the least recently used ("b")
    cached.embed(["b"])
    assert seen[-1] == ["b"] and cached.embed([]).shape == (0, 64)


@pytest.mark.slow
def test_minilm_puts_puppy_near_dog():
    emb = MiniLMEmbedder()
    assert emb.embed([]).shape == (0, 384)
    dog, puppy, tax = emb.embed(["I adopted a dog", "my new puppy", "tax forms"])
    assert np.isclose(np.linalg.norm(dog), 1.0, atol=1e-5)
    assert dog @ puppy > dog @ tax
