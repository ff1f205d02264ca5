"""Lockstep bank building (`memr1.agents.builder.build_many`, stage 05's ``lockstep``) on real LoCoMo turns.

The LLM is a deterministic `ScriptedGenerator` that reads the prompt the way a model would: the extractor
notes the turn's first words, the manager UPDATEs the best shown memory or ADDs, and answers garbage for
some facts, so a bank's contents depend on everything before it. Lockstep must give, per conversation,
exactly the banks, steps and counts of building each conversation alone, with fewer model calls; a build
killed by the generator resumes to the same banks without running a finished turn twice.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter

import pytest

from memr1.agents import FactExtractor, MemoryManager, TurnAsFactExtractor, build_banks, build_many
from memr1.errors import ConfigError
from memr1.llm.generate import GREEDY, ScriptedGenerator
from memr1.memory.embed import make_embedder

IDS = ("conv-26", "conv-30", "conv-41")
UNTIL = 40  # turns 0..40 of each: three chunks of 16 turns, the last one short


def _after(messages, header: str) -> str:
    lines = messages[-1]["content"].splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith(header)) + 1]


def policy(messages) -> str:
    """Extractor: one fact, the turn's first words. Manager: keep what is shown, UPDATE memory 0 with the
    first fact when its length is even, ADD the rest; garbage when the first fact's length is a multiple of 7."""
    last = messages[-1]["content"]
    if "Question:" in last:  # the Answer Agent
        return "**Answer:** 7 May 2023"
    if "New facts from" not in last:
        turn = re.search(r"Latest turn:\n(.*?)\n\nNotes about", last, re.DOTALL).group(1)
        return json.dumps({"facts": [" ".join(turn.split()[:6])]})
    shown = _after(messages, "Stored memories of")
    shown = json.loads(shown) if shown.startswith("[") else []
    facts = json.loads(_after(messages, "New facts from"))
    if len(facts[0]) % 7 == 0:
        return "{not json"
    ops = [{"id": m["id"], "text": m["text"], "event": "NONE"} for m in shown]
    if ops and len(facts[0]) % 2 == 0:
        ops[0] = {"id": "0", "text": facts[0], "event": "UPDATE", "old_memory": shown[0]["text"]}
        facts = facts[1:]
    ops += [{"id": str(len(shown) + i), "text": f, "event": "ADD"} for i, f in enumerate(facts)]
    return json.dumps({"memory": ops})


class Calls(ScriptedGenerator):
    """`policy` as a generator that records every call's size and raises on call number ``fail_at``."""

    def __init__(self, fail_at: int | None = None):
        super().__init__(policy)
        self.batches: list[int] = []
        self.fail_at = fail_at

    def generate(self, prompts, sampling=GREEDY):
        if self.fail_at is not None and len(self.batches) + 1 == self.fail_at:
            raise RuntimeError(f"killed at call {self.fail_at}")
        self.batches.append(len(prompts))
        return super().generate(prompts, sampling)


@pytest.fixture(scope="module")
def convs(locomo):
    return [locomo.conversation(i) for i in IDS]


def agents(gen: ScriptedGenerator, lockstep: int, manager_gen: ScriptedGenerator | None = None):
    """Stage 05's pair: the extractor sends a lockstep chunk in one call; one generator for both unless told."""
    return FactExtractor(gen, batch_size=16 * lockstep), MemoryManager(manager_gen or gen)


def snapshot(res) -> dict:
    """Everything a build leaves, per speaker: entries, committed turns; and what each turn did."""
    return {
        "banks": {sp: (b.entries(), b.committed_turns()) for sp, b in res.banks.items()},
        "steps": [(s.turn, s.speaker, s.facts, s.raw, s.result.rejections) for s in res.steps],
        "facts": [(x.turn.position, x.facts) for x in res.extractions],
        "ops": res.op_counts(),
    }


@pytest.fixture(scope="module")
def alone(convs, tmp_path_factory):
    """Each conversation built on its own into one store, and the extractor's and manager's calls."""
    store, ext_calls, mgr_calls = tmp_path_factory.mktemp("alone"), Calls(), Calls()
    ext, mgr = agents(ext_calls, 1, mgr_calls)
    built = [
        build_banks(c, ext, mgr, make_embedder("hash"), store_dir=store, until_turn=UNTIL, progress=False)
        for c in convs
    ]
    return built, ext_calls, mgr_calls


def test_lockstep_banks_equal_one_at_a_time_entry_for_entry(convs, alone, tmp_path):
    single, *_ = alone
    gen = Calls()
    ext, mgr = agents(gen, len(convs))
    together = build_many(convs, ext, mgr, make_embedder("hash"), store_dir=tmp_path, until_turn=UNTIL, progress=False)
    assert [r.conversation.sample_id for r in together] == list(IDS)
    for a, b in zip(single, together):
        assert snapshot(a) == snapshot(b)
        assert len(a.steps) == UNTIL + 1 and a.manager_calls == b.manager_calls
        assert sum(len(bank) for bank in b.banks.values()) > 0 and sum(b.rejections().values()) > 0
        assert b.store_dir == tmp_path / b.conversation.sample_id
    reopened = build_many(convs, ext, mgr, make_embedder("hash"), store_dir=tmp_path, until_turn=UNTIL, progress=False)
    for a, b in zip(single, reopened):  # what was committed reads back the same
        assert b.steps == [] and {sp: bank.entries() for sp, bank in b.banks.items()} == {
            sp: bank.entries() for sp, bank in a.banks.items()
        }


def test_lockstep_makes_one_model_call_per_step_for_all_conversations(convs, alone):
    single, ext_alone, mgr_alone = alone
    ext_calls, mgr_calls = Calls(), Calls()
    ext, mgr = agents(ext_calls, len(convs), mgr_calls)
    together = build_many(convs, ext, mgr, make_embedder("hash"), until_turn=UNTIL, progress=False)
    chunks = math.ceil((UNTIL + 1) / 16)
    # Alone: one extraction call per chunk, one manager call per group of turns (every turn has a fact).
    assert ext_alone.batches == [16, 16, 9] * len(convs)
    assert len(mgr_alone.batches) == sum(r.manager_calls for r in single) and max(mgr_alone.batches) == 2
    # Lockstep: a manager call per step carries a group of every conversation, so there are as many as
    # the conversation with the most groups needs; extraction calls carry chunks of several conversations.
    assert len(mgr_calls.batches) == max(r.manager_calls for r in single) < len(mgr_alone.batches) / 2
    assert max(mgr_calls.batches) == 2 * len(convs)
    assert ext_calls.batches[0] == 16 * len(convs) and chunks <= len(ext_calls.batches) < len(ext_alone.batches)
    # the same prompts, in fewer and larger calls
    assert sum(ext_calls.batches) == sum(ext_alone.batches) and sum(mgr_calls.batches) == sum(mgr_alone.batches)
    assert [r.manager_calls for r in together] == [r.manager_calls for r in single]


@pytest.mark.parametrize("fail_at", [2, 6, 13, 22])
def test_a_killed_lockstep_build_resumes_to_the_same_banks_running_no_turn_twice(convs, alone, tmp_path, fail_at):
    single, *_ = alone
    ran: list[tuple[str, int]] = []

    def on_step(result, extracted, steps):
        assert [x.turn.position for x in extracted] == [s.turn for s in steps]
        ran.extend((result.conversation.sample_id, s.turn) for s in steps)

    ext, mgr = agents(Calls(fail_at=fail_at), len(convs))
    emb = make_embedder("hash")
    with pytest.raises(RuntimeError, match="killed"):
        build_many(convs, ext, mgr, emb, store_dir=tmp_path, until_turn=UNTIL, progress=False, on_step=on_step)
    before = len(ran)
    ext, mgr = agents(Calls(), len(convs))
    again = build_many(convs, ext, mgr, emb, store_dir=tmp_path, until_turn=UNTIL, progress=False, on_step=on_step)
    assert Counter(ran) == Counter((c.sample_id, t) for c in convs for t in range(UNTIL + 1))  # each turn once
    assert len(ran) - before == sum(len(r.steps) for r in again)
    for a, b in zip(single, again):
        assert {sp: (bk.entries(), bk.committed_turns()) for sp, bk in b.banks.items()} == snapshot(a)["banks"]


def test_extract_many_equals_extract_per_conversation_in_fewer_calls(convs):
    pairs = [(c, list(c.turns())[:5]) for c in convs]
    gen = Calls()
    many = FactExtractor(gen, batch_size=8).extract_many(pairs)
    assert gen.batches == [8, 7]
    one = [FactExtractor(ScriptedGenerator(policy)).extract(c, turns) for c, turns in pairs]
    assert [[(x.turn, x.facts, x.raw) for x in xs] for xs in many] == [
        [(x.turn, x.facts, x.raw) for x in xs] for xs in one
    ]


def test_turn_as_fact_extractor_and_extract_only_doubles_still_build(convs):
    class ExtractOnly:  # a double without extract_many: the builder calls extract per conversation
        def __init__(self):
            self.calls = 0

        def extract(self, conv, turns):
            self.calls += 1
            return TurnAsFactExtractor().extract(conv, turns)

    double = ExtractOnly()
    mgr = MemoryManager(Calls())
    res = build_many(convs, double, mgr, make_embedder("hash"), until_turn=UNTIL, progress=False)
    assert double.calls == len(convs) * math.ceil((UNTIL + 1) / 16)
    assert all(len(r.steps) == UNTIL + 1 for r in res)


def test_bad_inputs_raise_config_errors_before_any_model_call(convs, tmp_path):
    emb = make_embedder("hash")
    gen = Calls()
    ext, mgr = agents(gen, len(convs))
    stranger = dataclasses.replace(convs[1].sessions[0].turns[0], speaker="Stranger")
    odd = dataclasses.replace(
        convs[1],
        sessions=[dataclasses.replace(convs[1].sessions[0], turns=(stranger, *convs[1].sessions[0].turns[1:]))],
    )
    with pytest.raises(ConfigError, match="Stranger"):
        build_many([convs[0], odd], ext, mgr, emb, store_dir=tmp_path, until_turn=UNTIL, progress=False)
    assert not (tmp_path / odd.sample_id).exists()  # refused before its store was opened
    with pytest.raises(ConfigError, match="same conversation twice"):
        build_many([convs[0], convs[0]], ext, mgr, emb, until_turn=UNTIL, progress=False)
    with pytest.raises(ConfigError, match="batch_turns"):
        build_many(convs, ext, mgr, emb, batch_turns=0, progress=False)
    assert gen.batches == []

    class Short(FactExtractor):  # drops one turn of each chunk
        def extract_many(self, pairs):
            return [xs[:-1] for xs in super().extract_many(pairs)]

    class Fewer(FactExtractor):  # forgets the last conversation
        def extract_many(self, pairs):
            return super().extract_many(pairs)[:-1]

    for bad, message in ((Short(gen), "one per turn"), (Fewer(gen), "lists for 3 conversations")):
        with pytest.raises(ConfigError, match=message):
            build_many(convs, bad, mgr, emb, until_turn=UNTIL, progress=False)


# --------------------------------------------------------------------------- stage 05


def _stage_cfg(data_dir, tmp_path, **kw):
    from memr1.stages.evaluate import EvalConfig

    params = {
        "data_dir": str(data_dir),
        "run_dir": str(tmp_path / "run"),
        "store_dir": str(tmp_path / "store"),
        "embedder": "hash",
        "system": "base",
        "split": "test",
        "limit": 0,
        "max_turns": 24,
        **kw,
    }
    return EvalConfig.from_params(params)


def _stored(cfg, locomo) -> dict:
    """Per conversation in the store: its ops.json (seconds replaced by how many) and its banks' texts."""
    from pathlib import Path

    from memr1.memory.bank import MemoryBank
    from memr1.stages.evaluate import system_key

    store, out = Path(cfg.store_dir) / system_key(cfg.resolved()), {}
    for path in sorted(store.glob("*.ops.json")):
        sample_id = path.name.removesuffix(".ops.json")
        counts = json.loads(path.read_text())
        counts["seconds"] = {role: len(s) for role, s in counts["seconds"].items()}
        speakers = locomo.conversation(sample_id).speakers
        banks = {
            sp: [e.text for e in MemoryBank.open(store / sample_id, sp, make_embedder("hash")).entries()]
            for sp in speakers
        }
        out[sample_id] = (counts, banks)
    return out


def test_stage_lockstep_keeps_each_conversations_counts_across_a_kill(locomo, data_dir, tmp_path):
    from memr1.stages.evaluate import prepare_banks

    one = _stage_cfg(data_dir, tmp_path / "one", lockstep=1)
    prepare_banks(one, generator=ScriptedGenerator(policy), progress=False)
    expected = _stored(one, locomo)
    assert len(expected) == 8 and all(c["seconds"] == {"extract": 24, "manager": 24} for c, _ in expected.values())
    assert sum(c["rejected"].get("malformed_json", 0) for c, _ in expected.values()) > 0

    cfg = _stage_cfg(data_dir, tmp_path / "lock", lockstep=3)
    with pytest.raises(RuntimeError, match="killed"):
        prepare_banks(cfg, generator=Calls(fail_at=12), progress=False)
    assert 0 < len(_stored(cfg, locomo)) < 8  # the kill hit the build midway
    tallies = prepare_banks(cfg, generator=ScriptedGenerator(policy), progress=False)
    assert _stored(cfg, locomo) == expected  # counts and banks, per conversation: none lost, none twice
    assert {sample_id: len(t.seconds["manager"]) for sample_id, t in tallies.items()} == dict.fromkeys(expected, 24)

    # a later stage-05 run of the system finds the banks done: it only answers, and reports what building cost
    from memr1.stages.evaluate import run

    seen = []
    answers = ScriptedGenerator(lambda m: seen.append(m[-1]["content"]) or policy(m))
    res = run(cfg.replace(per_category=1, run_dir=str(tmp_path / "answer")), generator=answers, progress=False)
    assert len(seen) == res.questions > 8 and all("Question:" in text for text in seen)
    calls = {row["component"]: row["calls"] for row in res.latency}
    assert calls["extract"] == calls["manager"] == 8 * 24 and calls["answer"] == res.questions
    applied = sum((Counter(c["applied"]) for c, _ in expected.values()), Counter())
    assert res.operations["applied"] == dict(applied) and res.truncated["manager"] == {"calls": 192, "truncated": 0}


def test_lockstep_must_be_at_least_one():
    from memr1.stages.evaluate import EvalConfig

    with pytest.raises(ConfigError, match="lockstep must be >= 1"):
        EvalConfig.from_params({"lockstep": 0})


def test_a_second_build_over_the_same_turns_takes_every_extraction_from_the_cache(locomo, data_dir, tmp_path):
    """What lets the memory-r1 seeds share base's extractions: remove the banks, keep the store's
    completions.jsonl, and a rebuild sends the model manager prompts only, giving the same banks and counts."""
    import shutil
    from pathlib import Path

    from memr1.stages.evaluate import prepare_banks, system_key
    from memr1.stages.evaluate_banks import COMPLETIONS_FILE

    def build(cfg) -> list[str]:
        sent: list[str] = []
        prepare_banks(cfg, generator=ScriptedGenerator(lambda m: sent.append(m[-1]["content"]) or policy(m)),
                      progress=False)  # fmt: skip
        return ["New facts from" in text for text in sent]

    cfg = _stage_cfg(data_dir, tmp_path, lockstep=3, max_turns=12)
    assert sum(not manager for manager in build(cfg)) == 8 * 12  # every turn extracted once
    built = _stored(cfg, locomo)
    assert (Path(cfg.store_dir) / COMPLETIONS_FILE).is_file()
    shutil.rmtree(Path(cfg.store_dir) / system_key(cfg.resolved()))
    assert all(build(cfg)) and _stored(cfg, locomo) == built  # no extractor prompt reached the model

    shutil.rmtree(Path(cfg.store_dir) / system_key(cfg.resolved()))
    assert sum(not manager for manager in build(cfg.replace(extract_cache=False))) == 8 * 12
