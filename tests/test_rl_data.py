"""GRPO datasets, rewards and the verl export on real LoCoMo (conv-26 train, conv-30 validation).

One teacher store per module (the observation replay with a commit at every turn takes most of
this file's runtime); everything else reuses it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import datasets
import pandas as pd
import pytest

from memr1.agents.answer import AnswerAgent
from memr1.cli import main
from memr1.errors import ConfigError
from memr1.eval.metrics import exact_match
from memr1.llm.generate import ScriptedGenerator
from memr1.memory.bank import MemoryBank
from memr1.memory.embed import make_embedder
from memr1.memory.entry import Operation, OpKind, TurnContext
from memr1.memory.replay import schedule_observations
from memr1.rl.datasets import answer_agent_rows, linked_questions, manager_rows, open_teacher_bank, snapshot
from memr1.rl.export_verl import ANSWER_SOURCE, MANAGER_SOURCE, VERL_COLUMNS
from memr1.rl.rewards import ManagerReward, answer_em_reward, op_mix, read_op_log

_BLOCK = re.compile(r"^Memories of (.+):$")


@pytest.fixture(scope="module")
def emb():
    return make_embedder("hash")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("teacher")


@pytest.fixture(scope="module")
def mrows(locomo, emb, store):
    return manager_rows(locomo, "train", emb, store_dir=store)


@pytest.fixture(scope="module")
def arows(locomo, emb, store, mrows):  # after mrows: the conv-26 store then only reopens
    return {split: answer_agent_rows(locomo, split, emb, store_dir=store) for split in ("train", "validation")}


def memory_blocks(content: str) -> dict[str, list[str]]:
    """Speaker → memory lines of an Answer-Agent prompt (the context part only)."""
    context = content.split("\n\nQuestion: ")[0]
    blocks: dict[str, list[str]] = {}
    current = None
    for line in context.splitlines():
        if m := _BLOCK.match(line):
            current = blocks.setdefault(m.group(1), [])
        elif current is not None and line.startswith("- "):
            current.append(line[2:])
    return blocks


def bank_lines(bank: MemoryBank) -> set[str]:
    return {e.as_context() for e in bank.entries()}


# --------------------------------------------------------------------------- answer rows


def test_answer_rows_show_60_teacher_memories_and_the_question(arows, locomo, emb, store):
    assert len(arows["train"]) == 152 and len(arows["validation"]) == 81
    for split, sid in (("train", "conv-26"), ("validation", "conv-30")):
        conv = locomo.conversation(sid)
        final = {sp: bank_lines(open_teacher_bank(store, sid, sp, emb)) for sp in conv.speakers}
        for row in arows[split]:
            assert row["sample_id"] == sid and row["category"] in (1, 2, 3, 4)
            assert isinstance(row["gold"], str) and row["gold"]
            content = row["prompt"][0]["content"]
            assert content.rstrip().splitlines()[-3] == f"Question: {row['question'].strip()}"
            blocks = memory_blocks(content)
            assert list(blocks) == list(conv.speakers)
            for sp, lines in blocks.items():
                assert len(lines) == 30 and set(lines) <= final[sp]
    qa = {q.qid: q for q in locomo.questions()}
    assert all(qa[r["qid"]].answer == r["gold"] for r in arows["train"])
    ds = datasets.Dataset.from_list(arows["train"])
    assert ds.num_rows == 152 and ds[0]["prompt"][0]["role"] == "user"


def test_answer_rows_from_given_banks(locomo, emb):
    conv = locomo.conversation("conv-30")
    banks = {sp: MemoryBank(sp, emb) for sp in conv.speakers}
    banks["Jon"].apply(
        [Operation(OpKind.ADD, text="Jon opened a dance studio")], TurnContext(0, "D1:1", "4:04 pm on 20 January, 2023")
    )
    rows = answer_agent_rows(locomo, "validation", emb, banks_by_conv={"conv-30": banks}, limit=3)
    assert len(rows) == 3
    assert memory_blocks(rows[0]["prompt"][0]["content"]) == {
        "Jon": ["4:04 pm on 20 January, 2023: Jon opened a dance studio"],
        "Gina": [],
    }
    with pytest.raises(ConfigError, match="store_dir"):
        answer_agent_rows(locomo, "validation", emb, limit=1)
    with pytest.raises(ConfigError, match="Gina"):
        answer_agent_rows(locomo, "validation", emb, limit=1, banks_by_conv={"conv-30": {"Jon": banks["Jon"]}})


# --------------------------------------------------------------------------- manager rows


def test_manager_rows_link_questions_and_teacher_facts(mrows, locomo):
    conv = locomo.conversation("conv-26")
    schedule, _ = schedule_observations(conv)
    linked = linked_questions(conv)
    expected = [
        (t.position, sp)
        for t in conv.turns()
        if t.position in linked
        for sp in conv.speakers
        if any(o.speaker == sp for o in schedule.get(t.position, []))
    ]
    assert [(r["turn"], r["speaker"]) for r in mrows] == expected and len(mrows) == 92
    qa = {q.qid: q for q in conv.qa}
    for row in mrows:
        turn = conv.turn(row["dia_id"])
        assert turn.position == row["turn"] and row["snapshot_turn"] == row["turn"] - 1
        assert row["questions"] and len(row["questions"]) == len(row["answers"]) == len(row["qids"])
        for qid, question, answer in zip(row["qids"], row["questions"], row["answers"]):
            assert row["dia_id"] in qa[qid].evidence and qa[qid].category != 5
            assert (qa[qid].question, qa[qid].answer) == (question, answer)
        facts = list(dict.fromkeys(o.text.strip() for o in schedule[row["turn"]] if o.speaker == row["speaker"]))
        assert row["facts"] == facts
        user = row["prompt"][1]["content"]
        assert json.loads(user.split("latest turn:\n")[1].split("\n\n")[0]) == facts
        assert row["session_time"] == conv.session_time(turn.session) in user
    json.dumps(mrows)
    assert datasets.Dataset.from_list(mrows).num_rows == 92


def test_manager_snapshot_is_the_bank_before_the_turn(mrows, locomo, emb, store):
    conv = locomo.conversation("conv-26")
    schedule, _ = schedule_observations(conv)
    opened = {sp: open_teacher_bank(store, "conv-26", sp, emb) for sp in conv.speakers}
    assert mrows[0]["snapshot_turn"] >= -1 and len(snapshot(opened["Caroline"], -1)) == 0
    for row in mrows:
        snap = snapshot(opened[row["speaker"]], row["snapshot_turn"])
        earlier = [
            o.text for p in sorted(schedule) if p < row["turn"] for o in schedule[p] if o.speaker == row["speaker"]
        ]
        assert [e.text for e in snap.entries()] == earlier
        id_map = json.loads(row["id_map"])
        shown = [snap.get(real) for real in id_map.values()]
        assert all(e.created_turn < row["turn"] for e in shown)
        view = json.loads(row["prompt"][1]["content"].split("new facts:\n")[1].split("\n\n")[0]) if id_map else []
        assert [v["text"] for v in view] == [e.text for e in shown]
        for fact in row["facts"]:
            if fact in {e.text for e in shown}:
                assert fact in earlier  # a duplicate observation added it before


# --------------------------------------------------------------------------- rewards


def test_answer_em_reward_reads_the_answer_span():
    plain = ["**Memories selected as relevant:**\n- x\n**Answer:** The Paris!", "Paris", "no", ""]
    chat = [[{"role": "assistant", "content": c}] for c in plain]
    gold = ["paris", "Paris", "yes", "x"]
    assert answer_em_reward(plain, gold=gold) == answer_em_reward(chat, gold=gold) == [1, 1, 0, 0]
    with pytest.raises(ConfigError):
        answer_em_reward(plain, gold=gold[:2])


def test_f1_format_reward_is_f1_plus_the_named_bonus_for_the_answer_line():
    from memr1.rl.rewards import FORMAT_BONUS, answer_f1_format_reward, answer_f1_reward

    plain = ["**Answer:** Paris", "Paris", "**Answer:** Rome", "Rome"]
    gold = ["paris"] * 4
    f1 = answer_f1_reward(plain, gold=gold)
    assert f1 == [1.0, 1.0, 0.0, 0.0]
    assert answer_f1_format_reward(plain, gold=gold) == [1.0 + FORMAT_BONUS, 1.0, FORMAT_BONUS, 0.0]


def _gold_in_prompt_agent(golds: dict[str, str], calls: list[int]) -> AnswerAgent:
    """Answers the gold iff a memory line of its prompt contains it (case-insensitive)."""

    def answer(messages):
        content = messages[0]["content"]
        question = content.split("\n\nQuestion: ")[1].split("\n")[0]
        lines = [ln for block in memory_blocks(content).values() for ln in block]
        gold = golds[question]
        return "**Answer:** " + (gold if any(gold.lower() in ln.lower() for ln in lines) else "unknown")

    gen = ScriptedGenerator(answer)
    inner = gen.generate

    def counted(prompts, sampling=None):
        calls.append(len(prompts))
        return inner(prompts) if sampling is None else inner(prompts, sampling)

    gen.generate = counted
    return AnswerAgent(gen)


def _snapshots(row, store, emb, opened=None):
    """Fresh checkouts of both speakers' snapshots of ``row`` (``opened`` caches the open banks)."""
    opened = {} if opened is None else opened
    for sp in row["speakers"]:
        if (row["sample_id"], sp) not in opened:
            opened[row["sample_id"], sp] = open_teacher_bank(store, row["sample_id"], sp, emb)
    return {sp: snapshot(opened[row["sample_id"], sp], row["snapshot_turn"]) for sp in row["speakers"]}


def _trl_columns(rows):
    """Columns as TRL's _calculate_rewards passes them: every key but prompt, one entry per row."""
    return {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}


def test_manager_reward_on_hand_made_completions(mrows, store, emb, tmp_path):
    def lines_of(banks):
        return [ln for b in banks.values() for ln in bank_lines(b)]

    opened: dict = {}

    def small(row):
        return all(len(b) < 30 for b in _snapshots(row, store, emb, opened).values())

    def em_by_hand(row):  # banks of < 30 entries are shown whole to the answer agent
        shown = lines_of(_snapshots(row, store, emb, opened))
        return sum(any(g.lower() in ln.lower() for ln in shown) for g in row["answers"]) / len(row["answers"])

    fresh = next(
        r
        for r in mrows
        if json.loads(r["id_map"]) and small(r) and em_by_hand(r) == 0 and all(exact_match(g, g) for g in r["answers"])
    )
    known = next(r for r in mrows if small(r) and em_by_hand(r) > 0)
    before = {id(r): _snapshots(r, store, emb) for r in (fresh, known)}
    view = json.loads(fresh["prompt"][1]["content"].split("new facts:\n")[1].split("\n\n")[0])
    said = "; ".join(fresh["answers"])
    add = {
        "memory": [
            {"id": "0", "text": view[0]["text"], "event": "NONE"},
            {"id": str(len(view)), "text": f"{fresh['speaker']} said: {said}", "event": "ADD"},
        ]
    }
    update = {
        "memory": [{"id": "0", "text": f"{view[0]['text']} ({said})", "event": "UPDATE", "old_memory": view[0]["text"]}]
    }
    noop = {"memory": [{"id": "0", "text": view[0]["text"], "event": "NONE"}]}
    completions = [
        [{"role": "assistant", "content": json.dumps(add)}],
        json.dumps(update),
        "Sure! {memory: [oops",
        json.dumps(noop),
        json.dumps({"memory": []}),
    ]
    rows = [fresh] * 4 + [known]
    calls: list[int] = []
    golds = {q: a for r in rows for q, a in zip(r["questions"], r["answers"])}
    reward = ManagerReward(_gold_in_prompt_agent(golds, calls), emb, log_dir=str(tmp_path))
    metrics: dict[str, float] = {}
    got = reward(
        completions, **_trl_columns(rows), trainer_state=SimpleNamespace(global_step=7), log_metric=metrics.__setitem__
    )
    assert getattr(reward, "__name__") == "manager_em"
    assert got == [1.0, 1.0, 0.0, 0.0, em_by_hand(known)] and got[4] > 0
    assert len(calls) == 1  # one batched generate (duplicate greedy prompts asked once)
    for r in (fresh, known):  # the stored snapshots and the reward's cached ones are untouched
        again = _snapshots(r, store, emb)
        assert again == before[id(r)]
        assert all(
            reward.snapshot(r["store"], r["sample_id"], sp, r["snapshot_turn"]) == again[sp] for sp in r["speakers"]
        )
    log = read_op_log(tmp_path)
    assert len(log) == 5 and set(log["step"]) == {8}  # sampled at global_step 7: trains step 8
    assert log[["n_add", "n_update", "n_delete", "n_noop"]].values.tolist() == [
        [1, 0, 0, 1],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 1],
        [0, 0, 0, 0],
    ]
    assert log["valid"].tolist() == [True, True, False, True, True]
    assert "malformed_json" in log["rejections"][2] and log["rejections"][0] == ""
    assert log["reward"].tolist() == got and log["turn"].tolist() == [r["turn"] for r in rows]
    assert metrics == {
        "ops/add_frac": 0.25,
        "ops/update_frac": 0.25,
        "ops/delete_frac": 0.0,
        "ops/noop_frac": 0.5,
        "ops/rejected_frac": 0.2,
    }
    reward([json.dumps(noop)], **_trl_columns([fresh]))  # no trainer_state: the call counter
    log = read_op_log(tmp_path)  # ordered by step, then call
    assert log[["step", "call", "from_trainer"]].values.tolist() == [[1, 1, False]] + [[8, 0, True]] * 5
    shares = {"add": 0.25, "update": 0.25, "delete": 0.0, "noop": 0.5, "rejected": 0.2, "completions": 5}
    assert op_mix(log) == [
        {"phase": "first steps (8–8)", **shares},  # the same shares as logged to TRL;
        {"phase": "last steps (8–8)", **shares},
    ]  # the validation call left out


def test_manager_reward_needs_the_speakers_column(mrows, emb):
    reward = ManagerReward(_gold_in_prompt_agent({}, []), emb)
    cols = _trl_columns(mrows[:1])
    del cols["speakers"]
    with pytest.raises(ConfigError, match="speakers"):
        reward(['{"memory": []}'], **cols)


# --------------------------------------------------------------------------- verl export


def _load_reward(path: Path):
    tree = ast.parse(path.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"re", "string"}, imported  # self-contained: standard library only
    spec = importlib.util.spec_from_file_location("verl_reward", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_verl_answer_round_trip(arows, store, data_dir, tmp_path, locomo):
    out = tmp_path / "verl"
    code = main(
        [
            "export-verl",
            "--out",
            str(out),
            "--store",
            str(store),
            "--embedder",
            "hash",
            "--data",
            str(data_dir),
            "--offline",
        ]
    )
    assert code == 0
    for split, filename in (("train", "train.parquet"), ("validation", "validation.parquet")):
        frame = pd.read_parquet(out / filename)
        assert tuple(frame.columns) == VERL_COLUMNS and len(frame) == len(arows[split])
        first = frame.iloc[0]
        assert first["data_source"] == ANSWER_SOURCE and first["ability"] == "memory-qa"
        assert [dict(m) for m in first["prompt"]] == arows[split][0]["prompt"]
        assert dict(first["reward_model"]) == {"style": "rule", "ground_truth": arows[split][0]["gold"]}
        assert frame["extra_info"].map(lambda e: e["qid"]).tolist() == [r["qid"] for r in arows[split]]
    module = _load_reward(out / "reward.py")
    rng = random.Random(0)
    golds = [q.answer for q in locomo.questions()]
    forms = [
        "**Answer:** {}",
        "**answer**: {}",
        "** Answer : ** {}\nmore",
        "{}",
        "**Answer:**\n{}",
        "- x\n**Answer:** nope\n**Answer:** {}",
        "**Answer:**  The {}!",
        "**ANSWER:** {}, right",
    ]
    completions, targets = [], []
    for _ in range(200):
        gold = rng.choice(golds)
        said = rng.choice([gold, gold.upper(), rng.choice(golds), f"{gold}."])
        completions.append(rng.choice(forms).format(said))
        targets.append(gold)
    ours = answer_em_reward(completions, gold=targets)
    theirs = [module.compute_score(ANSWER_SOURCE, c, g, extra_info={}) for c, g in zip(completions, targets)]
    assert ours == theirs and 40 < sum(ours) < 160
    with pytest.raises(ValueError, match="ManagerReward"):
        module.compute_score(MANAGER_SOURCE, "{}", ["x"])


def test_export_verl_manager_task(mrows, store, data_dir, tmp_path):
    out = tmp_path / "verl-manager"
    assert (
        main(
            [
                "export-verl",
                "--out",
                str(out),
                "--task",
                "manager",
                "--store",
                str(store),
                "--embedder",
                "hash",
                "--data",
                str(data_dir),
                "--offline",
            ]
        )
        == 0
    )
    frame = pd.read_parquet(out / "train.parquet")
    assert tuple(frame.columns) == VERL_COLUMNS and len(frame) == len(mrows) == 92
    extra = frame.iloc[0]["extra_info"]
    assert (extra["turn"], extra["id_map"], extra["store"]) == (mrows[0]["turn"], mrows[0]["id_map"], mrows[0]["store"])
    assert list(frame.iloc[0]["reward_model"]["ground_truth"]) == mrows[0]["answers"]
    assert len(pd.read_parquet(out / "validation.parquet")) > 0
