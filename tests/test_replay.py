"""Observation replay on real LoCoMo data: schedule, stored versions, resume, evidence recall."""

from __future__ import annotations

import pytest

from memr1.errors import ConfigError
from memr1.eval.recall import evidence_recall, replay_recall
from memr1.memory.bank import MemoryBank
from memr1.memory.embed import make_embedder
from memr1.memory.entry import OpKind
from memr1.memory.replay import replay_observations, replay_summary, schedule_observations


@pytest.fixture(scope="module")
def conv(locomo):
    return locomo.conversation("conv-26")


@pytest.fixture(scope="module")
def stored(conv, tmp_path_factory):
    store = tmp_path_factory.mktemp("replay")
    return store, replay_observations(conv, make_embedder("hash"), store_dir=store)


def test_schedule_adds_each_fact_at_its_latest_evidence_turn(conv):
    schedule, unplaced = schedule_observations(conv)
    assert unplaced == 0 and sum(len(v) for v in schedule.values()) == len(conv.observations) == 184
    first = conv.observations[0]  # "Caroline attended an LGBTQ support group ...", evidence D1:3
    assert first in schedule[conv.turn("D1:3").position]
    for pos, obs in schedule.items():
        assert all(pos == max(conv.turn(e).position for e in o.evidence) for o in obs)


def test_banks_hold_every_fact_with_its_session_time(stored, conv):
    _, rep = stored
    assert {sp: len(b) for sp, b in rep.banks.items()} == {"Caroline": 102, "Melanie": 82}
    entry = rep.banks["Caroline"].entries()[0]
    assert entry.text.startswith("Caroline attended an LGBTQ support group")
    assert entry.session_time == conv.session_time(1) and entry.sources == ("D1:3",)
    assert entry.last_op is OpKind.ADD and entry.created_turn == conv.turn("D1:3").position
    assert set(rep.evidence) == {e.id for b in rep.banks.values() for e in b.entries()}


def test_each_committed_turn_checks_out_as_the_prefix_of_the_schedule(stored, conv):
    _, rep = stored
    schedule, _ = schedule_observations(conv)
    bank = rep.banks["Melanie"]
    turns = bank.committed_turns()
    assert turns == sorted(p for p, obs in schedule.items() if any(o.speaker == "Melanie" for o in obs))
    for t in (turns[0], turns[len(turns) // 2], turns[-1]):
        expected = [o.text for p in sorted(schedule) if p <= t for o in schedule[p] if o.speaker == "Melanie"]
        assert [e.text for e in bank.checkout(t).entries()] == expected
    d = bank.diff(turns[0], turns[1])
    assert (
        not d.updated
        and not d.deleted
        and [e.text for e in d.added] == [o.text for o in schedule[turns[1]] if o.speaker == "Melanie"]
    )


def test_rerun_resumes_after_last_commit_without_duplicates(stored, conv):
    store, rep = stored
    again = replay_observations(conv, make_embedder("hash"), store_dir=store)
    assert again.resumed_from == {sp: b.committed_turns()[-1] for sp, b in rep.banks.items()}
    assert again.applied == [] and again.banks["Caroline"] == rep.banks["Caroline"]
    assert again.evidence == rep.evidence  # provenance rebuilt for restored entries


def test_partial_replay_then_resume_equals_full_replay(conv, tmp_path):
    emb = make_embedder("hash")
    part = replay_observations(conv, emb, store_dir=tmp_path, until_turn=100)
    assert max(max(b.committed_turns()) for b in part.banks.values()) <= 100
    rest = replay_observations(conv, emb, store_dir=tmp_path)
    full = replay_observations(conv, emb)  # in memory, one go
    for sp in conv.speakers:
        assert rest.banks[sp] == full.banks[sp]
    assert replay_summary(rest)["entries"] == {"Caroline": 102, "Melanie": 82}
    assert MemoryBank.open(tmp_path / conv.sample_id, "Caroline", emb) == full.banks["Caroline"]


def test_commit_modes(conv, tmp_path):
    with pytest.raises(ConfigError, match="commit mode"):
        replay_observations(conv, make_embedder("hash"), store_dir=tmp_path, commit="always")
    rep = replay_observations(conv, make_embedder("hash"), store_dir=tmp_path, commit="every", until_turn=9)
    assert rep.banks["Caroline"].committed_turns() == list(range(10))


def test_evidence_recall_is_exact_with_k_covering_the_bank(stored, conv):
    _, rep = stored
    qs = [q for q in conv.qa if q.category != 5]
    sources = lambda e: rep.evidence[e.id]  # noqa: E731
    full = evidence_recall(rep.banks, qs, k_per_speaker=10_000, sources_of=sources)
    assert (full["all"] == full["oracle"]).all()  # retrieving everything reaches the ceiling
    small = evidence_recall(rep.banks, qs, k_per_speaker=1, sources_of=sources)
    assert small["all"].sum() < full["all"].sum() and (small["all"] <= small["any"]).all()
    assert len(full) == sum(1 for q in qs if q.evidence)


@pytest.mark.slow
def test_replay_recall_with_minilm_on_train_conversation(locomo):
    df = replay_recall(locomo, make_embedder("minilm"), sample_ids=["conv-26"], progress=False)
    with_evidence = [q for q in locomo.conversation("conv-26").qa if q.category != 5 and q.evidence]
    assert len(df) == len(with_evidence) == 150 and set(df.sample_id) == {"conv-26"}  # 2 have no evidence
    share = df["all"].mean()
    assert 0.4 < share <= df["oracle"].mean() <= 1.0  # real embeddings find most replayed evidence
