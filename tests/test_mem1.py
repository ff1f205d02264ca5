"""MEM1 agent: context pruning, tasks, retrieval, the gold policy, measures and the parser."""

from __future__ import annotations

import dataclasses
import json
import random
import re

import pandas as pd
import pytest

from memr1.agents.mem1 import (
    WHITESPACE,
    Action,
    Episode,
    TurnRecord,
    build_context,
    example_messages,
    format_docs,
    parse_action,
    render_turn,
    run_batch,
    run_episode,
    task_prompt,
    turns_hint,
)
from memr1.data.corpus import Corpus, Passage
from memr1.data.tasks import Objective, Task, make_tasks
from memr1.errors import ConfigError, DataFormatError, DataNotFoundError
from memr1.eval.mem1_metrics import (
    GOLD,
    aggregate,
    dependency,
    episode_metrics,
    gold_max_turns,
    peak_ratio,
    run_episodes,
    score_answer,
)
from memr1.llm.generate import ScriptedGenerator
from memr1.memory.passages import make_retriever

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hotpot(data_dir):
    from memr1.data.hotpotqa import load_hotpotqa

    if not (data_dir / "hotpotqa" / "hotpot_dev_distractor_sample100.json").is_file():
        pytest.skip("HotpotQA sample not in the data folder")
    return load_hotpotqa(data_dir)


def _toy_task(n: int = 2) -> Task:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    corpus = Corpus(
        "toy", tuple(Passage(f"p{i}", w.title(), f"{w} fact number {i} about {w}s") for i, w in enumerate(words))
    )
    objs = tuple(Objective(f"q{k}", f"What is {words[k]}?", (f"ans{k}",), (f"p{k}",)) for k in range(n))
    return Task("toy-task", "toy", objs, corpus)


def _counting_policy(answer_turn: int) -> ScriptedGenerator:
    """Writes state and query numbered by turn (read back from its own last state), junk around them."""

    def act(messages):
        prev = parse_action(messages[-2]["content"]) if len(messages) >= 3 else Action("")
        t = int(prev.state.split()[-1]) + 1 if prev.state else 0
        if t == answer_turn:
            return f"<IS>state {t}</IS><answer>ans0 ; wrong</answer>"
        word = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"][t % 6]
        return f"thinking aloud {t} <IS>state {t}</IS>\n<query>{word}</query> trailing junk <info>fake</info>"

    return ScriptedGenerator(act, name="counting")


# --------------------------------------------------------------------------- context modes


def test_mem1_context_holds_only_prompt_last_state_query_info():
    task = _toy_task()
    ep = run_episode(task, _counting_policy(5), make_retriever(task.corpus), "mem1", max_turns=6, score=score_answer)
    assert len(ep.turns) == 6 and ep.stop == "answer"
    prompt = task_prompt(task)
    assert ep.turns[0].context == [{"role": "user", "content": f"{prompt}\n\n[6 turns left]"}]
    for t in range(1, 6):
        prev = ep.turns[t - 1]
        expected = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": f"<IS>state {t - 1}</IS>\n<query>{prev.query}</query>"},
            {"role": "user", "content": f"<info>\n{prev.info}\n</info>\n{turns_hint(6 - t)}"},
        ]
        assert ep.turns[t].context == expected
        assert prev.info == format_docs(make_retriever(task.corpus).search(prev.query, 3))
        text = "".join(m["content"] for m in ep.turns[t].context)
        assert "thinking aloud" not in text and "trailing junk" not in text and "fake" not in text
        assert all(f"state {s}" not in text for s in range(t - 1))  # older states are gone
        bound = sum(WHITESPACE(x) for x in (prompt, prev.state, prev.query, prev.info, turns_hint(6 - t)))
        assert ep.turns[t].context_tokens <= bound + 6  # + the tag words
    assert ep.turns[5].context[-1]["content"].endswith("[Last turn: give the <answer> now.]")
    assert all(r.raw.endswith("</query>") and "junk" not in r.raw for r in ep.turns[:5])  # cut at the stop tag
    assert ep.answers == ("ans0", "wrong") and ep.em == [1.0, 0.0]


def test_full_mode_keeps_every_turn():
    task = _toy_task()
    ep = run_episode(task, _counting_policy(5), None, "full", max_turns=6, score=score_answer)
    for t, rec in enumerate(ep.turns):
        assert len(rec.context) == 1 + 2 * t
        assert [m["content"] for m in rec.context[1::2]] == [
            render_turn(f"state {s}", ep.turns[s].query) for s in range(t)
        ]
        infos = [m["content"] for m in rec.context[2::2]]
        assert all(i.startswith(f"<info>\n{ep.turns[s].info}\n</info>") for s, i in enumerate(infos))
    mem1 = run_episode(task, _counting_policy(5), None, "mem1", max_turns=6, score=score_answer)
    p = ep.turns[-1].prompt_tokens  # 5 earlier turns against 1, the prompt aside
    assert ep.turns[-1].context_tokens - p > 3 * (mem1.turns[-1].context_tokens - p)


def test_truncate_keeps_newest_turns_within_budget():
    task = _toy_task()
    history = [(f"s{i}", f"q{i}", f"docs of turn {i} " * 5) for i in range(4)]
    full = build_context(task, 5, "s4", "q4", "docs of turn 4 " * 5, 2, "full", history=history)
    pair = lambda k: full[1 + 2 * k : 3 + 2 * k]  # noqa: E731
    cost = lambda msgs: sum(WHITESPACE(m["content"]) for m in msgs)  # noqa: E731
    budget = cost(full[:1]) + cost(pair(3)) + cost(pair(4)) + 1
    got = build_context(
        task, 5, "s4", "q4", "docs of turn 4 " * 5, 2, "truncate", history=history, budget_tokens=budget
    )
    assert got == full[:1] + pair(3) + pair(4) and cost(got) <= budget
    tiny = build_context(task, 5, "s4", "q4", "docs of turn 4 " * 5, 2, "truncate", history=history, budget_tokens=1)
    assert tiny == full[:1] + pair(4)  # the newest turn always stays
    big = build_context(task, 5, "s4", "q4", "docs of turn 4 " * 5, 2, "truncate", history=history, budget_tokens=10**6)
    assert big == full
    with pytest.raises(ConfigError, match="history"):
        build_context(task, 5, "s4", "q4", "x", 2, "full", history=history[:2])


def test_build_context_is_pure():
    task = _toy_task()
    history = [("s0", "q0", "i0")]
    a = build_context(task, 2, "s1", "q1", "i1", 3, "full", history=history)
    b = build_context(task, 2, "s1", "q1", "i1", 3, "full", history=history)
    assert a == b and history == [("s0", "q0", "i0")]
    a[0]["content"] = "mutated"
    assert build_context(task, 2, "s1", "q1", "i1", 3, "full", history=history)[0]["content"] == task_prompt(task)
    assert build_context(task, 2, "s1", "q1", "i1", 3, "mem1", history=[("junk", "junk", "junk")]) == build_context(
        task, 2, "s1", "q1", "i1", 3, "mem1"
    )


# --------------------------------------------------------------------------- tasks and retrieval


def test_hotpotqa_tasks_reproducible_and_distinct(hotpot):
    a = make_tasks(hotpot, 4, 5, seed=1)
    assert a == make_tasks(hotpot, 4, 5, seed=1)
    assert a[:3] == make_tasks(hotpot, 4, 3, seed=1)  # asking for more tasks keeps the first ones
    assert a != make_tasks(hotpot, 4, 5, seed=2)
    for t in make_tasks(hotpot, 16, 4, seed=0) + a:
        assert len({o.qid for o in t.objectives}) == t.n_objectives
        assert len({o.question for o in t.objectives}) == t.n_objectives
        assert t.corpus is hotpot.corpus and len(t.corpus) == 991
        assert all(len(o.gold_ids) == 2 for o in t.objectives)
    for bad in (0, 17):
        with pytest.raises(ConfigError, match="n_objectives"):
            make_tasks(hotpot, bad, 1)


def test_train_and_test_pools_are_disjoint_by_question(hotpot, locomo):
    from memr1.data.splits import split_conversations
    from memr1.data.tasks import hotpotqa_pool

    def questions(tasks):
        return {o.qid for t in tasks for o in t.objectives}, {o.question.lower() for t in tasks for o in t.objectives}

    train, test = hotpotqa_pool(hotpot, "train"), hotpotqa_pool(hotpot, "test")
    assert len(train) + len(test) == len(hotpotqa_pool(hotpot, "all")) and len(test) >= 16
    assert not {o.qid for o in train} & {o.qid for o in test}
    for source in (hotpot, locomo):
        tr = make_tasks(source, 2, 60, seed=0, split="train")
        te = [t for n in (1, 2, 4, 8, 16) for t in make_tasks(source, n, 6, seed=0, split="test")]
        (tr_ids, tr_text), (te_ids, te_text) = questions(tr), questions(te)
        assert tr_ids and te_ids and not tr_ids & te_ids and not tr_text & te_text
        assert all("-train-" in t.id for t in tr) and all("-test-" in t.id for t in te)
    held_out = {c.sample_id for c in split_conversations(locomo, "test")}
    assert {t.corpus_id for t in make_tasks(locomo, 2, 20, seed=0, split="train")} == {"locomo:conv-26"}
    assert {t.corpus_id.split(":")[1] for t in make_tasks(locomo, 4, 40, seed=0, split="test")} <= held_out
    with pytest.raises(ConfigError, match="split"):
        make_tasks(hotpot, 2, 1, split="dev")
    with pytest.raises(ConfigError, match="train and a test half"):
        make_tasks(hotpot, 2, 1, split="validation")
    with pytest.raises(ConfigError, match="conv-26"):
        make_tasks(locomo, 2, 1, split="test", conversation="conv-26")


def test_turn_budget_follows_mem1_and_the_loop_honours_it():
    from memr1.agents.mem1 import resolve_turns, turn_budget

    assert [turn_budget(n) for n in (1, 2, 3, 4, 5, 8, 16)] == [6, 6, 6, 6, 20, 20, 20]
    assert resolve_turns(-1, 8) == 20 and resolve_turns(3, 8) == 3
    with pytest.raises(ConfigError, match="max_turns"):
        resolve_turns(0, 2)
    never = _counting_policy(answer_turn=99)
    eps = run_batch([_toy_task(2), _toy_task(8)], never, None, "mem1", -1, score=score_answer)
    assert [(len(e.turns), e.max_turns, e.stop) for e in eps] == [(6, 6, "max_turns"), (20, 20, "max_turns")]
    assert "Last turn" in eps[0].turns[-1].context[-1]["content"]


def test_a_context_past_the_model_window_ends_the_episode_before_generation():
    from memr1.agents.mem1 import CHAT_TOKENS_PER_MESSAGE
    from memr1.llm.generate import Sampling

    sampling = Sampling(max_new_tokens=16)
    unbounded = run_batch([_toy_task(8)], _counting_policy(99), None, "full", -1, sampling, score=score_answer)[0]
    sizes = [t.context_tokens + CHAT_TOKENS_PER_MESSAGE * len(t.context) + 16 for t in unbounded.turns]
    assert unbounded.stop == "max_turns" and sizes == sorted(sizes) and sizes[0] < sizes[3]  # full context grows

    seen: list[int] = []

    class Windowed(ScriptedGenerator):
        context_window = sizes[3] - 1  # turn 3's context no longer fits

        def generate(self, prompts, sampling=Sampling()):
            seen.extend(len(p) for p in prompts)
            return super().generate(prompts, sampling)

    policy = Windowed(_counting_policy(99).fn)
    full = run_batch([_toy_task(8)], policy, None, "full", -1, sampling, score=score_answer, progress=True)[0]
    assert (full.stop, len(full.turns), full.em) == ("context_window", 3, [0.0] * 8)
    assert seen == [len(t.context) for t in full.turns]  # turn 3 was never generated
    pruned = run_batch([_toy_task(8)], policy, None, "mem1", -1, sampling, score=score_answer)[0]
    assert (pruned.stop, len(pruned.turns)) == ("max_turns", 20)  # MEM1's context stays inside the window


def test_inference_decodes_with_the_stop_strings():
    from memr1.agents.mem1 import STOP_STRINGS
    from memr1.llm.generate import Sampling

    seen = []

    def act(messages):
        return "<IS>s</IS><query>alpha</query> then more text <answer>x</answer>"

    class Recording(ScriptedGenerator):
        def generate(self, prompts, sampling=Sampling()):
            seen.append(sampling)
            return super().generate(prompts, sampling)

    ep = run_episode(_toy_task(), Recording(act), None, "mem1", 2, Sampling(max_new_tokens=9), score=score_answer)
    assert seen and all(s.stop == STOP_STRINGS and s.max_new_tokens == 9 for s in seen)
    assert ep.turns[0].raw.endswith("</query>") and ep.turns[0].query == "alpha"  # nothing past the action


def test_locomo_tasks_use_evidence_turns_of_one_conversation(locomo):
    tasks = make_tasks(locomo, 4, 6, seed=3)
    assert tasks == make_tasks(locomo, 4, 6, seed=3)
    for t in tasks:
        conv = locomo.conversation(t.corpus_id.split(":", 1)[1])
        qa = {q.qid: q for q in conv.qa}
        assert len(t.corpus) == conv.num_turns()
        for o in t.objectives:
            assert o.qid in qa and qa[o.qid].category != 5 and o.gold_ids == qa[o.qid].evidence
            for pid in o.gold_ids:
                turn, p = conv.turn(pid), t.corpus.get(pid)
                assert p.title == f"{turn.speaker}, {conv.session_time(turn.session)}"
                assert p.text.startswith(turn.text)
    fixed = make_tasks(locomo, 2, 3, seed=0, conversation="conv-30", pool=10)
    first10 = [q.qid for q in locomo.conversation("conv-30").qa if q.category != 5 and q.evidence][:10]
    assert all(o.qid in first10 for t in fixed for o in t.objectives)


def test_bm25_finds_the_gold_paragraph_named_in_the_question(hotpot):
    bm25 = make_retriever(hotpot.corpus, "bm25")
    q0 = hotpot.questions[0]
    assert "Ed Wood" in [p.id for p in bm25.search(q0.question, k=3)]  # "Were Scott Derrickson and Ed Wood ..."
    assert [p.id for p in bm25.search("Scott Derrickson director", k=1)] == ["Scott Derrickson"]
    named = [q for q in hotpot.questions if any(g.lower() in q.question.lower() for g in q.gold_ids)]
    hits = sum(any(p.id in q.gold_ids for p in bm25.search(q.question, 3)) for q in named)
    assert len(named) > 50 and hits / len(named) >= 0.9  # measured 66 / 69
    dense = make_retriever(hotpot.corpus, "dense", embedder="hash")
    assert len(dense.search(q0.question, 3)) == 3 and dense.search("", 0) == []
    with pytest.raises(ConfigError):
        make_retriever(hotpot.corpus, "tfidf")


def test_hotpotqa_loader_reads_official_layout_and_rejects_bad_files(tmp_path, monkeypatch):
    from memr1.data.hotpotqa import load_hotpotqa

    official = [
        {
            "_id": "5a8b",
            "question": "Who?",
            "answer": "Ann",
            "type": "bridge",
            "level": "easy",
            "supporting_facts": [["B", 0], ["A", 1]],
            "context": [["A", ["Ann was born.", " She lives."]], ["B", ["B is a town."]]],
        }
    ]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(official))
    hp = load_hotpotqa(path)
    assert hp.questions[0].qid == "5a8b" and hp.questions[0].gold_ids == ("B", "A")
    assert hp.corpus.get("A").text == "Ann was born. She lives."
    for bad, match in (
        ({"x": 1}, "expected a list"),
        ([{"question": "q"}], "missing key"),
        ([{**official[0], "context": [["A", "not a list"]]}], "sentence strings"),
        ([{**official[0], "context": {"title": ["A"]}}], "expected keys"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(DataFormatError, match=match):
            load_hotpotqa(path)
    path.write_text("[{")
    with pytest.raises(DataFormatError, match="JSON"):
        load_hotpotqa(path)
    monkeypatch.delenv("MEMR1_DATA_DIR", raising=False)
    monkeypatch.setenv("MEMR1_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataNotFoundError, match="MEMR1_DATA_DIR"):
        load_hotpotqa()


# --------------------------------------------------------------------------- prompt styles


def test_worked_examples_are_episodes_the_parser_reads():
    for n, answers in ((1, ("Tessa",)), (2, ("Tessa", "1908")), (16, ("Tessa", "1908"))):
        msgs = example_messages(n)
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        turns = [parse_action(m["content"], min(n, 2)) for m in msgs[1::2]]
        assert all(a.ok and a.state for a in turns)
        assert [a.kind for a in turns] == ["query"] * (len(turns) - 1) + ["answer"]
        assert turns[-1].answers == answers
        for a, info in zip(turns, msgs[2::2]):  # each search is answered with its documents
            assert info["content"].startswith("<info>\nDoc 1 (Title: ") and a.query.split()[0] in info["content"]
    assert example_messages(4, "plain") == []
    with pytest.raises(ConfigError, match="prompt style"):
        example_messages(1, "fewshot")


def test_examples_style_prefixes_every_context_and_counts_as_prompt():
    task = _toy_task()

    def policy(messages):  # reads its turn from its own last state, whatever came before
        first = not messages[-1]["content"].startswith("<info>")
        t = 0 if first else int(parse_action(messages[-2]["content"]).state.split()[-1]) + 1
        return (
            f"<IS>state {t}</IS><answer>ans0 ; ans1</answer>" if t == 3 else f"<IS>state {t}</IS><query>alpha</query>"
        )

    runs = {
        style: run_episode(
            task, ScriptedGenerator(policy), None, mode, max_turns=6, score=score_answer, prompt_style=style
        )
        for style in ("plain", "examples")
        for mode in ("mem1",)
    }
    plain, ex = runs["plain"], runs["examples"]
    prefix = example_messages(2)
    assert ex.em == [1.0, 1.0] and len(ex.turns) == len(plain.turns) == 4
    for t, (p, e) in enumerate(zip(plain.turns, ex.turns)):
        assert e.context[: len(prefix)] == prefix
        assert e.context[len(prefix)]["content"].startswith(task_prompt(task, "examples"))
        assert len(e.context) - len(prefix) == len(p.context)  # the same episode after the prefix
        assert e.context_state_tokens == p.context_state_tokens  # example states are not the agent's
        extra = sum(WHITESPACE(m["content"]) for m in prefix)
        assert e.prompt_tokens == WHITESPACE(task_prompt(task, "examples")) + extra
    full = run_episode(
        task, ScriptedGenerator(policy), None, "full", max_turns=6, score=score_answer, prompt_style="examples"
    )
    assert all(r.context[: len(prefix)] == prefix for r in full.turns)
    assert len(full.turns[-1].context) == len(prefix) + 1 + 2 * 3


def test_gold_policy_solves_tasks_under_the_examples_style(hotpot):
    tasks = make_tasks(hotpot, 2, 2, seed=0)
    for ep in run_episodes(tasks, GOLD, ("mem1", "full"), max_turns=gold_max_turns(2, 6), prompt_style="examples"):
        assert ep.stop == "answer" and ep.em == [1.0, 1.0]


# --------------------------------------------------------------------------- gold policy and growth


def test_gold_policy_solves_four_objective_tasks(hotpot, locomo):
    for source in (hotpot, locomo):
        tasks = make_tasks(source, 4, 3, seed=0)
        for ep in run_episodes(tasks, GOLD, ("mem1",), max_turns=gold_max_turns(4, 6)):
            assert ep.stop == "answer" and ep.em == [1.0] * 4 and ep.answer_count_ok
            assert len(ep.turns) >= 5  # at least one query per objective, then the answer


def test_peak_grows_far_less_under_mem1_than_full(hotpot):
    eps = []
    for n in (2, 8):
        eps += run_episodes(make_tasks(hotpot, n, 4, seed=0), GOLD, ("mem1", "full"), max_turns=gold_max_turns(n, 6))
    table = aggregate(eps)
    assert (table.em == table.n_objectives).all()
    print(
        {
            c: (peak_ratio(table, "mem1", 8, 2, c), peak_ratio(table, "full", 8, 2, c))
            for c in ("peak_tokens", "peak_mem1")
        }
    )
    # measured: mem1 1.43, full 3.74 (peak_tokens); mem1 1.37, full 4.39 (peak_paper)
    assert peak_ratio(table, "mem1", 8, 2) <= 1.6 and peak_ratio(table, "full", 8, 2) >= 3.0
    assert peak_ratio(table, "mem1", 8, 2, "peak_mem1") <= 1.5 and peak_ratio(table, "full", 8, 2, "peak_mem1") >= 3.5
    at8 = table[table.n_objectives == 8].set_index("mode")
    assert at8.loc["full", "peak_tokens"] >= 4 * at8.loc["mem1", "peak_tokens"]  # measured 4.35
    assert at8.loc["full", "dependency"] >= 3 * at8.loc["mem1", "dependency"]


# --------------------------------------------------------------------------- measures


def _record(turn: int, ctx: int, prompt: int, gen: int, state: int = 0, shown: int = 0) -> TurnRecord:
    return TurnRecord(
        turn,
        [],
        ctx,
        prompt,
        gen,
        "",
        "",
        None,
        None,
        [],
        "",
        True,
        0.5,
        state_tokens=state,
        context_state_tokens=shown,
    )


def test_measures_on_hand_computed_values():
    assert dependency([]) == 0
    assert dependency([(10, 3)]) == 10 + 11 + 12
    assert dependency([(10, 3), (100, 1), (7, 0)]) == 33 + 100
    ep = Episode(
        "t",
        "mem1",
        "p",
        "whitespace",
        3,
        6,
        [_record(0, 20, 15, 4, state=3), _record(1, 40, 15, 2, state=1, shown=3)],
        answers=("a", "b", "c"),
        em=[1.0, 0.0, 1.0],
        f1=[1.0, 0.5, 1.0],
        stop="answer",
        wall_s=1.0,
    )
    m = episode_metrics(ep)
    assert m["peak_tokens"] == 40 and m["dependency"] == (20 + 21 + 22 + 23) + (40 + 41)
    # MEM1's counting: prompt out, output in, each state twice (turn 1 shows turn 0's state of 3 tokens)
    assert m["peak_mem1"] == max(20 - 15 + 0 + 4 + 3, 40 - 15 + 3 + 2 + 1) == 31
    c0, c1 = 20 - 15, 40 - 15 + 3  # context without the prompt, shown states twice
    assert m["dependency_mem1"] == (c0 + 1) * 3 + (c0 + 3 + 2) * 4 + (c1 + 0) * 1 + (c1 + 1 + 1) * 2
    assert m["em"] == 2.0 and m["f1"] == 2.5 and m["em_strict"] == 2.0 and m["f1_strict"] == 2.5
    ep.answers = ("a", "b")  # MEM1's evaluation: a wrong answer count scores 0
    m = episode_metrics(ep)
    assert (m["em_strict"], m["f1_strict"], m["em"]) == (0.0, 0.0, 2.0)
    # MEM1 averages peak over the tasks with EM > 0 only
    zero = dataclasses.replace(ep, task_id="u", em=[0.0] * 3, turns=[_record(0, 100, 15, 50)])
    row = aggregate([ep, zero]).iloc[0]
    assert row["tasks_em_nonzero"] == 1 and row["peak_mem1"] == 31
    assert row["peak_mem1_all_tasks"] == (31 + 135) / 2 and row["peak_tokens"] == (40 + 100) / 2
    assert aggregate([zero]).iloc[0]["peak_mem1"] != aggregate([zero]).iloc[0]["peak_mem1"]  # NaN: no task scored


def test_answers_are_scored_per_objective_by_position():
    task = _toy_task(3)
    for text, em in (
        ("<IS>x</IS><answer>1. ans0\n2. nope\n3. ans2</answer>", [1.0, 0.0, 1.0]),
        ("<IS>x</IS><answer>ans0; ans1</answer>", [1.0, 1.0, 0.0]),
        ("<IS>x</IS><answer>The ans0!</answer>", [1.0, 0.0, 0.0]),
    ):
        ep = run_episode(task, ScriptedGenerator(lambda m, t=text: t), None, "mem1", max_turns=2, score=score_answer)
        assert ep.em == em and ep.stop == "answer"
    ep = run_episode(task, ScriptedGenerator(lambda m: "no tags at all"), None, "mem1", max_turns=4, score=score_answer)
    assert ep.stop == "invalid" and len(ep.turns) == 1 and ep.em == [0.0] * 3
    ep = run_episode(
        task,
        ScriptedGenerator(lambda m: "no tags"),
        None,
        "mem1",
        max_turns=3,
        stop_on_invalid=False,
        score=score_answer,
    )
    assert ep.stop == "max_turns" and len(ep.turns) == 3 and "Invalid turn" in ep.turns[1].context[-1]["content"]


# --------------------------------------------------------------------------- parser


def test_parse_action_reads_tolerant_forms():
    a = parse_action("  <IS> Q1=Paris </IS>\n<query>capital of Norway</query><answer>x</answer>")
    assert (a.kind, a.state, a.query, a.ok) == ("query", "Q1=Paris", "capital of Norway", True)
    assert parse_action("<think>s</think><search>q</search>").query == "q"  # MEM1's own tags
    assert parse_action("<IS>s</IS><query>unclosed at the end").query == "unclosed at the end"
    assert parse_action("<is>s<answer>a ; b").answers == ("a", "b")  # state closed by the action
    assert parse_action("<IS>I will write <answer>x</answer> later</IS><query>q</query>").query == "q"
    assert parse_action("<IS>s</IS><answer>1) Paris\n(2) 1945\nQ3: yes</answer>").answers == ("Paris", "1945", "yes")
    assert parse_action("<IS>s</IS><answer>A; B</answer>", n_objectives=1).answers == ("A; B",)
    assert parse_action("<IS>s</IS><answer>1.5 million ; 2</answer>").answers == ("1.5 million", "2")


MALFORMED = [
    None,
    123,
    b"<IS>x</IS>",
    "",
    "   ",
    "<IS>",
    "<IS>only a state",
    "</IS></query>",
    "<query></query>",
    "<answer>   </answer>",
    "<query><answer></answer></query>",
    "<<IS>>x<</IS>>",
    "<IS>a</IS><query>",
    "\x00\xff<IS>\u202e</IS>",
    "<IS>" * 1000,
    "<answer>" + ";" * 500,
    "<query>" + "x" * 100_000,
]


@pytest.mark.parametrize("text", MALFORMED, ids=range(len(MALFORMED)))
def test_parse_action_never_raises_on_malformed_output(text):
    a = parse_action(text, n_objectives=3)
    assert isinstance(a, Action) and isinstance(a.state, str)
    assert a.ok == (a.kind != "invalid")
    if a.answers is not None:
        assert all(isinstance(x, str) for x in a.answers)


def test_parse_action_fuzz():
    rng = random.Random(0)
    pieces = [
        "<IS>",
        "</IS>",
        "<query>",
        "</query>",
        "<answer>",
        "</answer>",
        "<think>",
        "<search>",
        ";",
        "\n",
        "1.",
        "Q2:",
        " ",
        "x",
        "<",
        ">",
        "/",
        "é",
        "<info>",
    ]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        a = parse_action(text, n_objectives=rng.choice([None, 1, 2]))
        assert a.ok == (a.kind != "invalid")
        assert not re.search(r"</?(?:IS|query|answer)>", a.state + (a.query or ""), re.I)


# --------------------------------------------------------------------------- widget and stage


def test_context_widget_and_stage_registration():
    from memr1.stages import STAGES
    from memr1.stages.mem1 import Mem1Config, Mem1Result
    from widgets.mem1_context import context_figure, peak_figure

    task = _toy_task()
    eps = [
        run_episode(task, _counting_policy(3), None, mode, max_turns=6, score=score_answer) for mode in ("mem1", "full")
    ]
    fig = context_figure(eps)
    assert len(fig.data) == 2 and list(fig.data[0].x) == [0, 1, 2, 3]
    assert "state 2" in fig.data[0].customdata[2][0]
    assert len(peak_figure(aggregate(eps)).data) == 2
    two = pd.concat([aggregate(eps).assign(policy=p, spread=k) for k, p in enumerate(("base", "trained"))])
    bars = peak_figure(two, error="spread").data
    assert [(t.line.dash, list(t.error_y.array)) for t in bars] == [("solid", [0])] * 2 + [("dash", [1])] * 2
    assert any(s.name == "06_mem1" and s.config is Mem1Config and s.result is Mem1Result for s in STAGES)
    assert Mem1Result.json_fields() == [
        "environment",
        "n_objectives",
        "eval_objectives",
        "tasks",
        "model",
        "trained_steps",
        "tokenizer",
        "turn_budgets",
        "table",
        "memory_r1_comparison",
    ]
    with pytest.raises(ConfigError, match="environment"):
        Mem1Config.from_params({"environment": "webshop"})
    with pytest.raises(ConfigError, match="n_objectives"):
        Mem1Config.from_params({"n_objectives": 17})
    for bad in ("1,2,x", "0,2", "2,2", ""):
        with pytest.raises(ConfigError, match="eval_objectives"):
            Mem1Config.from_params({"eval_objectives": bad})
    with pytest.raises(ConfigError, match="max_turns"):
        Mem1Config.from_params({"max_turns": 0})
    for bad in ({"prompt_style": "fewshot"}, {"reward": "bleu"}):
        with pytest.raises(ConfigError, match="prompt_style must be one of"):
            Mem1Config.from_params(bad)
    assert Mem1Config.from_params({"profile": "cpu"}).resolved().max_new_tokens == 256


def test_every_training_setting_is_a_train_mem1_parameter():
    from memr1.rl.mem1_trainer import Mem1TrainSettings
    from memr1.stages import TRAINERS

    config = TRAINERS["mem1"][0]
    names = {f.name for f in dataclasses.fields(config)}
    assert {f.name for f in dataclasses.fields(Mem1TrainSettings)} | {"profile", "data_dir", "run_dir", "seed"} <= names
    assert all(config.field_docs().values())  # each one has its help text
    assert config.from_params({"learning_rate": "2e-5", "packed": "true"}).learning_rate == 2e-5
    with pytest.raises(ConfigError, match="loss_type"):
        config.from_params({"loss_type": "sequence"})


def test_train_stage_writes_a_typed_result(tmp_path, data_dir, monkeypatch):
    from memr1.runs import read_result
    from memr1.stages.mem1 import Mem1TrainConfig, Mem1TrainResult, train

    monkeypatch.setenv("MEMR1_DATA_DIR", str(data_dir))
    result = train(
        Mem1TrainConfig(
            steps=1, tasks_per_step=1, group_size=2, max_turns=2, max_new_tokens=4, run_dir=str(tmp_path / "run")
        )
    )
    saved = read_result(tmp_path / "run", Mem1TrainResult)
    assert saved.result == result and saved.config["model"] == "tiny"  # "" resolved to the profile's model
    assert result.steps == 1 and [row["step"] for row in result.history] == [0]
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) == 1


def test_stage_trains_on_train_tasks_and_scores_held_out_tasks_at_every_n(tmp_path, data_dir, monkeypatch):
    from memr1.runs import read_result
    from memr1.stages.mem1 import Mem1Config, Mem1TrainResult, run

    monkeypatch.setenv("MEMR1_DATA_DIR", str(data_dir))
    cfg = Mem1Config(
        run_dir=str(tmp_path / "s06"),
        steps=1,
        n_tasks=2,
        eval_objectives="1,8",
        max_new_tokens=8,
        prompt_style="examples",
        reward="f1",
    )
    result = run(cfg)
    log = [json.loads(x) for x in (tmp_path / "s06" / "train" / "train_log.jsonl").read_text().splitlines()]
    trained_on = {t for line in log for t in line["tasks"]}
    evaluated = {t.id for t in result.task_list}
    assert trained_on and all("-train-n2-" in t for t in trained_on)
    assert all("-test-" in t for t in evaluated) and len(evaluated) == 4
    table = result.table_frame
    assert set(table.policy) == {"tiny", "tiny+mem1-rl", "gold-scripted"} and set(table.n_objectives) == {1, 8}
    assert result.turn_budgets == {"1": 6, "8": 20}
    trained_cfg = read_result(tmp_path / "s06" / "train", Mem1TrainResult).config
    assert (trained_cfg["prompt_style"], trained_cfg["reward"]) == ("examples", "f1")  # passed on to training
    for ep in result.model_episodes + result.gold_episodes:  # every context opens with the worked episode
        prefix = example_messages(ep.n_objectives)
        assert all(t.context[: len(prefix)] == prefix for t in ep.turns)
    gold = table[table.policy == "gold-scripted"]
    assert (gold.em == gold.n_objectives).all()
    model_rows = table[table.policy != "gold-scripted"]
    assert (model_rows.set_index("n_objectives").max_turns.to_dict()) == {1: 6, 8: 20}
    assert {
        "em",
        "em_strict",
        "f1_strict",
        "peak_tokens",
        "peak_mem1",
        "peak_mem1_all_tasks",
        "dependency_mem1",
    } <= set(table.columns)
