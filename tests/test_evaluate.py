"""Stage 05 (memr1.stages.evaluate): scripted policies prove the plumbing; the tiny model runs every system."""

from __future__ import annotations

import json

import pandas as pd
import pytest

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
        _cfg(tmp_path, data_dir, system="base", limit=3, max_turns=10),
        generator=ScriptedGenerator(policy),
        progress=False,
    )
    assert res.operations["applied"]["ADD"] == 10 and res.operations["rejected_outputs"] == {}
    assert all(len(r) == 10 for r in res.records.retrieved)  # 5 per speaker after 10 turns
    lat = res.latency_frame().set_index("component")
    assert lat.loc["extract", "calls"] == 10 and lat.loc["manager", "calls"] == 10


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
