"""Property tests: random operation sequences against the bank's invariants and its store."""

from __future__ import annotations

import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memr1.errors import OperationError, StoreError, UnknownIdError
from memr1.memory import HashEmbedder, MemoryBank, Operation, OpKind, TurnContext

EMB = HashEmbedder(64)
WORDS = ["dog", "cat", "tea", "paris", "nurse", "hiking", "sister", "blue"]

texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
specs = st.one_of(
    st.tuples(st.just("add"), texts),
    st.tuples(st.just("update"), st.integers(0, 30), texts),
    st.tuples(st.just("delete"), st.integers(0, 30)),
    st.tuples(st.just("noop"), st.integers(0, 30)),
)
# A "bad" turn ends with an op the bank must refuse, so the whole turn must change nothing.
turns = st.tuples(st.lists(specs, max_size=5), st.sampled_from(["ok"] * 4 + ["ghost", "twice"]))


def realize(bank: MemoryBank, turn: tuple[list, str]) -> list[Operation]:
    """Concrete operations for one drawn turn; depends only on the bank's state."""
    drawn, fault = turn
    ids = [e.id for e in bank.entries()]
    used: set[str] = set()
    ops = []
    for spec in drawn:
        if spec[0] == "add":
            ops.append(Operation(OpKind.ADD, text=spec[1]))
            continue
        if not ids:
            continue
        eid = ids[spec[1] % len(ids)]
        if spec[0] == "noop":
            ops.append(Operation(OpKind.NOOP, eid))
        elif eid not in used:
            used.add(eid)
            kind = OpKind.UPDATE if spec[0] == "update" else OpKind.DELETE
            ops.append(Operation(kind, eid, spec[2] if kind is OpKind.UPDATE else None))
    if fault == "ghost":
        ops.append(Operation(OpKind.DELETE, "ghost-999"))
    elif fault == "twice" and used:
        ops.append(Operation(OpKind.DELETE, sorted(used)[0]))
    return ops


def play(bank: MemoryBank, turn: tuple[list, str], index: int) -> bool:
    """Apply one drawn turn; True when it was accepted, False when (rightly) refused whole."""
    ops = realize(bank, turn)
    try:
        bank.apply(ops, TurnContext(index, f"D1:{index}", f"day {index}"))
    except (UnknownIdError, OperationError):
        return False
    return True


@settings(deadline=None, max_examples=60)
@given(st.lists(turns, min_size=1, max_size=10))
def test_random_turns_keep_invariants(drawn):
    bank = MemoryBank("Ann", EMB)
    issued: set[str] = set()
    deleted: set[str] = set()
    for index, turn in enumerate(drawn):
        before = bank.fork()
        ops = realize(bank, turn)
        if not play(bank, turn, index):
            assert turn[1] != "ok" and bank == before
            continue
        added = {e.id for e in bank.entries()} - {e.id for e in before.entries()}
        assert not added & issued, "an id was handed out twice"
        issued |= added
        deleted |= {op.entry_id for op in ops if op.kind is OpKind.DELETE}
        live = {e.id for e in bank.entries()}
        assert not live & deleted and len(live) == len(bank)
        for word in WORDS[:3]:
            hits = bank.search(word, k=len(bank) + 3)
            assert len(hits) == len(bank) and not {e.id for e, _ in hits} & deleted
            scores = [s for _, s in hits]
            assert scores == sorted(scores, reverse=True)


def replay(drawn: list, upto: int) -> MemoryBank:
    bank = MemoryBank("Ann", EMB)
    for index, turn in enumerate(drawn[: upto + 1]):
        play(bank, turn, index)
    return bank


@settings(deadline=None, max_examples=30)
@given(st.lists(st.tuples(turns, st.booleans()), min_size=1, max_size=7))
def test_store_checkout_diff_and_replay_agree(history):
    drawn = [turn for turn, _ in history]
    with tempfile.TemporaryDirectory() as store:
        bank = MemoryBank.open(store, "Ann", EMB)
        for index, (turn, commit) in enumerate(history):
            play(bank, turn, index)
            if commit:
                bank.commit(index)
        committed = [i for i, (_, commit) in enumerate(history) if commit]
        assert bank.committed_turns() == committed
        checkouts = {t: bank.checkout(t) for t in committed}
        for t in range(-1, len(history)):
            done = [c for c in committed if c <= t]
            if not done:
                with pytest.raises(StoreError):
                    bank.checkout(t)
            else:
                assert bank.checkout(t) == checkouts[done[-1]] == replay(drawn, done[-1])
        for a in committed:
            for b in committed:
                moved = bank.diff(a, b).apply_to(checkouts[a])
                assert moved == checkouts[b]
                ranked = [[e.id for e, _ in m.search("dog", 50)] for m in (moved, checkouts[b])]
                assert ranked[0] == ranked[1]  # same row order, so ties break the same way
        if committed:
            assert MemoryBank.open(store, "Ann", EMB) == checkouts[committed[-1]]
