"""Stage 05 (memr1.stages.evaluate): scripted policies prove the plumbing; the tiny model runs every system."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from memr1.data.locomo import load_locomo
from memr1.errors import ConfigError
from memr1.llm.generate import ScriptedGenerator
from memr1.runs import read_result
from memr1.stages.evaluate import EvalConfig, EvalResult, run


def _cfg(tmp_path, data_dir, **kw):
    params = {
        "data_dir": str(data_dir),
        "run_dir": str(tmp_path / "run"),
        "embedder": "hash",
        "split": "train",
        "limit": 30,
        "max_turns": 60,
        **kw,
    }
    return EvalConfig.from_params(params)


def _gold_lookup(locomo):
    return {q.question: q.answer for q in locomo.questions()}


def _role(messages) -> str:
    last = messages[-1]["content"]
    if "New facts from" in last:
        return "manager"
    return "answer" if "Question:" in last else "extract"


def test_gold_policy_scores_100_everywhere_and_empty_scores_0(locomo, data_dir, tmp_path):
    gold = _gold_lookup(locomo)

    def oracle(messages):
        question = messages[-1]["content"].split("Question:", 1)[1].strip().splitlines()[0].strip()
        return f"**Memories selected as relevant:**\n- none\n**Answer:** {gold[question]}"

    res = run(_cfg(tmp_path, data_dir, system="replay", limit=0), generator=ScriptedGenerator(oracle), progress=False)
    table = res.table_frame()
    assert len(res.records) == 152 and list(table["count"]) == [32, 37, 13, 70, 152]
    assert (table[["f1", "bleu1", "em"]] == 100.0).all().all()
    empty = run(
        _cfg(tmp_path, data_dir, system="replay", limit=0, run_dir=str(tmp_path / "e")),
        generator=ScriptedGenerator(lambda m: ""),
        progress=False,
    )
    assert (empty.table_frame()[["f1", "bleu1", "em"]] == 0.0).all().all()


def test_malformed_manager_output_leaves_banks_empty_and_is_counted(data_dir, tmp_path):
    def policy(messages):
        role = _role(messages)
        if role == "extract":
            return '{"facts": ["Caroline likes hiking."]}'
        return "{not json" if role == "manager" else "**Answer:** hiking"

    res = run(
        _cfg(tmp_path, data_dir, system="base", limit=5, max_turns=20),
        generator=ScriptedGenerator(policy),
        progress=False,
    )
    ops = res.operations
    assert ops["rejected_outputs"] == {"malformed_json": 20}  # one per turn: every turn had a fact
    assert sum(ops["applied"].values()) == 0
    assert all(len(r) == 0 for r in res.records.retrieved)  # nothing was ever stored


def test_base_pipeline_with_scripted_llm_writes_memories(data_dir, tmp_path):
    def policy(messages):
        role = _role(messages)
        if role == "extract":
            turn = messages[-1]["content"].strip().splitlines()[-1]
            return json.dumps({"facts": [turn[:200]]})
        if role == "manager":
            return '{"memory": [{"id": "new", "text": "Caroline attended a support group.", "event": "ADD"}]}'
        return "**Answer:** support group"

    res = run(
        _cfg(tmp_path, data_dir, system="base", limit=3, max_turns=10, run_dir=str(tmp_path / "05_evaluate_locomo")),
        generator=ScriptedGenerator(policy),
        progress=False,
    )
    assert res.operations["applied"]["ADD"] == 10 and res.operations["rejected_outputs"] == {}
    assert all(len(r) == 10 for r in res.records.retrieved)  # 5 per speaker after 10 turns
    lat = res.latency_frame().set_index("component")
    assert lat.loc["extract", "calls"] == 10 and lat.loc["manager", "calls"] == 10

    # the report and notebook 05 show the banks the manager built, turn by turn
    from widgets.bank_timeline import evaluated_banks
    from widgets.report import report_html

    timeline = evaluated_banks(res, str(data_dir))
    assert timeline is not None and timeline.conv.sample_id == res.records.sample_id.iloc[0]
    assert len(timeline.turns) == 10 and "Caroline attended a support group." in timeline.static_html()
    assert "Memory banks built by the base system" in report_html(str(tmp_path))
    rag = run(
        _cfg(tmp_path, data_dir, system="rag", limit=1, run_dir=str(tmp_path / "rag")),
        generator=ScriptedGenerator(policy),
        progress=False,
    )
    assert rag.store == "" and evaluated_banks(rag) is None
    oracle = run(
        _cfg(tmp_path, data_dir, system="oracle", limit=4, run_dir=str(tmp_path / "oracle")),
        generator=ScriptedGenerator(policy),
        progress=False,
    )
    evidence = {q.qid: set(q.evidence) for c in load_locomo(str(data_dir)).conversations for q in c.qa}
    assert oracle.store == "" and len(oracle.records) == 4
    for qid, shown, note in zip(oracle.records.qid, oracle.records.retrieved, oracle.records.context_note):
        assert len(shown) == len(evidence[qid]) and note.startswith(f"{len(evidence[qid])} evidence turn(s) of")
    for system in ("oracle", "rag", "full-context"):  # the baselines reply in the stage's answer_style
        prompts: list = []
        run(
            _cfg(tmp_path, data_dir, system=system, limit=1, answer_style="direct", run_dir=str(tmp_path / system)),
            generator=ScriptedGenerator(lambda m: prompts.append(m[-1]["content"]) or "**Answer:** x"),
            progress=False,
        )
        assert len(prompts) == 1 and prompts[0].splitlines()[-1].startswith("Give only the short answer"), system


def test_rerun_gives_the_same_records_and_counts(data_dir, tmp_path):
    cfg = _cfg(tmp_path, data_dir, system="heuristic", limit=8, max_turns=30)
    first = run(cfg, generator=ScriptedGenerator(lambda m: "**Answer:** 7 May 2023"), progress=False)
    again = run(cfg, generator=ScriptedGenerator(lambda m: "**Answer:** 7 May 2023"), progress=False)
    volatile = ["latency_s"]
    pd.testing.assert_frame_equal(first.records.drop(columns=volatile), again.records.drop(columns=volatile))
    assert first.operations == again.operations and first.operations["applied"]["ADD"] > 0
    saved = pd.read_parquet(tmp_path / "run" / "records.parquet")
    assert list(saved.qid) == list(first.records.qid)
    assert read_result(tmp_path / "run", EvalResult).result == again  # metrics.json holds the typed result


def test_a_killed_run_resumes_after_its_last_answered_conversation(data_dir, tmp_path):
    """Answers are kept per conversation: a rerun answers only what the killed run had not, with the same
    records as an uninterrupted run; a changed config answers everything again; a finished run keeps no files."""
    cfg = _cfg(tmp_path, data_dir, system="oracle", split="all", limit=0, max_turns=0, per_category=1)
    calls: list = []

    def answer(dies_after=None):
        def policy(messages):
            if dies_after is not None and len(calls) >= dies_after:
                raise RuntimeError("killed")
            calls.append(messages)
            return "**Answer:** 7 May 2023"

        return ScriptedGenerator(policy)

    def killed(c):
        calls.clear()
        with pytest.raises(RuntimeError, match="killed"):
            run(c, generator=answer(dies_after=5), progress=False)
        return sorted(p.stem for p in (tmp_path / "run" / "answered").glob("*.json"))

    done = killed(cfg)
    assert len(done) == 1  # the first conversation's 4 answers, not the 5th call's conversation
    calls.clear()
    changed = EvalConfig.from_params({**cfg.to_dict(), "answer_tokens": 16})  # another key: answered again
    res = run(changed, generator=answer(), progress=False)
    assert len(calls) == len(res.records) and not (tmp_path / "run" / "answered").exists()

    assert killed(cfg) == done
    calls.clear()
    resumed = run(cfg, generator=answer(), progress=False)
    assert len(calls) == len(resumed.records) - (resumed.records.sample_id == done[0]).sum() > 0
    whole = run(
        EvalConfig.from_params({**cfg.to_dict(), "run_dir": str(tmp_path / "whole")}),
        generator=answer(),
        progress=False,
    )
    volatile = ["latency_s"]
    pd.testing.assert_frame_equal(resumed.records.drop(columns=volatile), whole.records.drop(columns=volatile))
    assert resumed.truncated == whole.truncated and not (tmp_path / "run" / "answered").exists()


@pytest.mark.slow
@pytest.mark.parametrize("system", ["base", "heuristic", "full-context", "rag"])
def test_tiny_model_runs_every_system_end_to_end(data_dir, tmp_path, system):
    res = run(
        _cfg(
            tmp_path,
            data_dir,
            system=system,
            limit=4,
            max_turns=24,
            answer_tokens=16,
            extract_tokens=16,
            manager_tokens=16,
        ),
        progress=False,
    )
    recs = res.records
    assert len(recs) == 4 and recs.prediction.map(type).eq(str).all()
    for col in (
        "qid",
        "category",
        "question",
        "gold",
        "raw_output",
        "retrieved",
        "prompt_tokens",
        "f1",
        "bleu1",
        "f1_locomo",
        "em",
    ):
        assert recs[col].notna().all(), col
    assert res.table_frame().iloc[-1]["count"] == 4 and res.model == "tiny"
    if system == "full-context":
        assert recs.context_note.str.startswith("kept").all()


def test_bad_configs():
    with pytest.raises(ConfigError, match="system must be one of"):
        EvalConfig.from_params({"system": "mem0"})
    with pytest.raises(ConfigError, match="needs base_url"):
        EvalConfig.from_params({"backend": "openai"})
    with pytest.raises(ConfigError, match="judge_base_url and judge_model"):
        EvalConfig.from_params({"judge_model": "gpt-4o-mini"})


def test_memory_r1_systems_need_their_adapters():
    with pytest.raises(ConfigError, match="needs answer_adapter and manager_adapter"):
        EvalConfig.from_params({"system": "memory-r1"})
    with pytest.raises(ConfigError, match="needs answer_adapter: a training run folder"):
        EvalConfig.from_params({"system": "memory-r1-answer"})
    with pytest.raises(ConfigError, match="manager_adapter applies to system memory-r1, not to 'base'"):
        EvalConfig.from_params({"system": "base", "manager_adapter": "x"})
    with pytest.raises(ConfigError, match="answer_adapter applies to memory systems, not to 'rag'"):
        EvalConfig.from_params({"system": "rag", "answer_adapter": "x"})
    with pytest.raises(ConfigError, match="memory_style must be one of"):
        EvalConfig.from_params({"memory_style": "yaml"})


def test_question_subsets_and_turn_cuts(locomo):
    from memr1.stages.evaluate import select_questions, system_key

    def pick(**kw):
        return select_questions(locomo, EvalConfig.from_params({"split": "test", "limit": 0, "max_turns": 16, **kw}))

    every, seen = pick(), pick(answerable=True)
    by_conv = {c.sample_id: c for c in locomo.conversations}
    assert 0 < len(seen) < len(every)
    for q in seen:  # every evidence turn lies in the first 16 turns
        assert max(by_conv[q.sample_id].turn(e).position for e in q.evidence) < 16
    balanced = pick(per_category=1)
    keys = [(q.sample_id, q.category) for q in balanced]
    assert len(keys) == len(set(keys)) == len({(q.sample_id, q.category) for q in every})
    assert len(pick(per_category=1, limit=3)) == 3
    conv = by_conv["conv-26"]
    cut = conv.first_turns(16)
    assert [t.position for t in cut.turns()] == list(range(16)) and cut.qa == conv.qa
    assert conv.first_turns(0) is conv
    with pytest.raises(Exception, match="no turn"):
        cut.turn(conv.sessions[-1].turns[-1].dia_id)
    base = EvalConfig.from_params({"system": "base"})
    r1 = base.replace(system="memory-r1-answer", answer_adapter="x")  # the trained answerer reads base's banks
    assert system_key(r1) == system_key(base) != system_key(base.replace(memory_style="lines"))


@pytest.mark.slow
def test_memory_r1_runs_the_trained_manager_and_answer_agent(data_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from memr1.llm.load import load_policy

    policy = load_policy("tiny", "transformers")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    adapter = tmp_path / "adapter"
    get_peft_model(policy.model, lora).save_pretrained(str(adapter))
    (tmp_path / "train_config.json").write_text(json.dumps({"model": "tiny", "base_model": "tiny"}))
    kw = dict(limit=2, max_turns=6, answer_tokens=8, extract_tokens=16, manager_tokens=16, memory_style="lines")
    extractor = ScriptedGenerator(lambda m: "- Caroline likes tea.")  # the plain model's role here
    res = run(
        _cfg(tmp_path, data_dir, system="memory-r1", answer_adapter=str(tmp_path), manager_adapter=str(adapter), **kw),
        generator=extractor,
        progress=False,
    )
    calls = {row["component"]: row["calls"] for row in res.latency}
    assert len(res.records) == 2 and calls["answer"] == 2 and calls["extract"] == 6
    assert calls["manager"] > 0 and res.truncated["manager"]["calls"] == calls["manager"]  # the adapter's manager
    assert not res.records.raw_output.str.contains("Caroline likes tea").all()  # answers are not the script's
    assert res.system == "memory-r1" and (tmp_path / "run" / "metrics.json").is_file()


def test_judge_column_through_a_real_local_endpoint(data_dir, tmp_path):
    from chat_server import completion, serve

    def judge(req):  # CORRECT when the generated answer line repeats the gold line
        prompt = req.body["messages"][-1]["content"]
        gold = prompt.split("Gold answer:", 1)[1].splitlines()[0].strip()
        pred = prompt.split("Generated answer:", 1)[1].splitlines()[0].strip()
        label = "CORRECT" if gold == pred else "WRONG"
        reply = json.dumps({"reason": "compared.", "label": label})
        return 200, completion(reply, req.body["model"]), "application/json"

    with serve(judge) as url:
        cfg = _cfg(tmp_path, data_dir, system="replay", limit=6, judge_base_url=url, judge_model="judge-x")
        res = run(cfg, generator=ScriptedGenerator(lambda m: "**Answer:** 7 May 2023"), progress=False)
    assert list(res.records.judge_label) == ["CORRECT"] + ["WRONG"] * 5  # only q0's gold is 7 May 2023
    assert "j" in res.metric_columns() and res.table_frame().iloc[-1]["j"] == pytest.approx(100 / 6)
    assert res.judge["model"] == "judge-x" and (tmp_path / "run" / "judge_cache.sqlite").exists()


class _CutGenerator(ScriptedGenerator):
    """A scripted policy whose manager outputs all hit the token cap (finish_reason "length")."""

    def generate(self, prompts, sampling=None):
        from dataclasses import replace

        gens = super().generate(prompts) if sampling is None else super().generate(prompts, sampling)
        return [replace(g, finish_reason="length") if _role(p) == "manager" else g for p, g in zip(prompts, gens)]


def test_a_cut_manager_output_is_its_own_rejection_and_is_counted_per_role(data_dir, tmp_path):
    def policy(messages):
        role = _role(messages)
        if role == "extract":
            return '{"facts": ["Caroline likes hiking."]}'
        return '{"memory": []}' if role == "manager" else "**Answer:** hiking"  # parses, but was cut

    res = run(
        _cfg(tmp_path, data_dir, system="base", limit=5, max_turns=20), generator=_CutGenerator(policy), progress=False
    )
    assert res.operations["rejected_outputs"] == {"truncated": 20} and res.operations["applied"] == {}
    assert res.truncated["manager"] == {"calls": 20, "truncated": 20}
    assert res.truncated["answer"] == {"calls": 5, "truncated": 0} and res.truncated["extract"]["truncated"] == 0
    assert set(res.records.finish_reason) == {"stop"}
