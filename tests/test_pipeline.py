"""memr1 run's plan: scoped overrides, global keys, validation of every stage before any runs."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

from memr1.cli import build_parser, main
from memr1.errors import ConfigError
from memr1.pipeline import GLOBAL_KEYS, plan, run_pipeline
from memr1.stages import STAGES, TRAINERS

RUN = Path("/tmp/memr1-plan-test")


def by_name(planned):
    return {p.name: p for p in planned}


def test_a_scoped_override_reaches_one_stage_only():
    planned = by_name(plan("smoke", {"evaluate.max_turns": "0", "mem1.max_turns": "3"}, run_dir=RUN))
    assert planned["05_evaluate_locomo"].config.max_turns == 0
    assert planned["06_mem1"].config.max_turns == 3
    long = by_name(plan("smoke", {"05_evaluate_locomo.limit": "7"}, run_dir=RUN))
    assert long["05_evaluate_locomo"].config.limit == 7


def test_steps_no_longer_switches_on_mem1_training():
    with pytest.raises(ConfigError, match=r"'steps' needs a stage prefix.*train_answer"):
        plan("smoke", {"steps": "2"}, run_dir=RUN)
    planned = by_name(plan("smoke", {"train_answer.steps": "2"}, run_dir=RUN))
    assert planned["03_train_answer_agent"].config.steps == 2
    assert planned["06_mem1"].config.steps == 0


def test_global_keys_reach_every_stage_that_has_them():
    planned = plan("smoke", {"seed": "5", "embedder": "hash"}, run_dir=RUN)
    assert all(p.config.seed == 5 for p in planned)
    assert {p.name for p in planned if getattr(p.config, "embedder", None) == "hash"} == {
        s.name for s in STAGES if "embedder" in s.fields()
    }
    assert set(GLOBAL_KEYS) == {"profile", "seed", "model", "embedder", "data_dir"}


def test_each_stage_gets_its_own_folder_and_run_dir_is_not_an_override():
    planned = plan("smoke", {}, run_dir=RUN)
    assert [p.config.run_dir for p in planned] == [str(RUN / s.name) for s in STAGES]
    for key in ("run_dir", "evaluate.run_dir"):
        with pytest.raises(ConfigError, match="run_dir is not an override"):
            plan("smoke", {key: "/tmp/x"}, run_dir=RUN)


def test_a_bad_value_for_a_late_stage_fails_before_anything_runs(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"Mem1Config\.n_objectives"):
        run_pipeline("smoke", overrides={"mem1.n_objectives": "99"}, runs_root=tmp_path, progress=False)
    assert not (tmp_path / "smoke").exists()  # nothing was created, stage 01 never started
    assert time.perf_counter() - start < 5  # generous bound; it is the plan, not a stage, that failed


def test_values_reach_papermill_typed():
    planned = by_name(plan("smoke", {"train_answer.learning_rate": "2e-5"}, run_dir=RUN))
    assert planned["03_train_answer_agent"].params["learning_rate"] == 2e-5


def test_unknown_stage_prefix_lists_the_stages():
    with pytest.raises(ConfigError, match=r"unknown stage 'evaluation'.*05_evaluate_locomo \(evaluate\)"):
        plan("smoke", {"evaluation.limit": "1"}, run_dir=RUN)


def _readme_commands() -> list[list[str]]:
    """Every `memr1 ...` command line quoted in README.md's code blocks (after any VAR=value prefix)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("  #")[0].strip(), comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words = words[1:]  # environment assignments
            if words and Path(words[0]).name == "memr1" and not words[0].endswith("/"):
                out.append(words[1:])
            elif "memr1.cli" in words:
                out.append(words[words.index("memr1.cli") + 1 :])
    return out


README_COMMANDS = _readme_commands()


def test_the_readme_quotes_memr1_commands():
    assert any(c[:1] == ["run"] for c in README_COMMANDS) and any(c[:1] == ["train"] for c in README_COMMANDS)


@pytest.mark.parametrize("argv", README_COMMANDS, ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses_and_validates(argv, capsys, tmp_path, monkeypatch):
    """Each command line the README quotes is accepted by the parser and its parameters validate.

    Adapters that an earlier README command trains (``runs/<name>/03_train_answer_agent``) are stood in
    for by an adapter folder, since the plan check requires them to exist (tested on its own above)."""
    from memr1.pipeline import ADAPTER_FIELDS

    monkeypatch.chdir(tmp_path)
    for word in _params(argv):
        key, _, value = word.partition("=")
        if key.split(".")[-1] in ADAPTER_FIELDS and value:
            (tmp_path / value / "adapter").mkdir(parents=True, exist_ok=True)
            (tmp_path / value / "adapter" / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny"}')
    args = build_parser().parse_args(argv)
    if args.command == "run":
        profile = "smoke" if args.profile == "auto" else args.profile
        assert main(["run", "--dry-run", "--profile", profile, *_params(argv)]) == 0, capsys.readouterr().err
    elif args.command == "train":
        assert args.agent in TRAINERS
        assert main(["train", args.agent, "--dry-run", *_params(argv)]) == 0, capsys.readouterr().err


def _params(argv: list[str]) -> list[str]:
    out = []
    for i, w in enumerate(argv):
        if w in ("-p", "--param"):
            out += ["-p", argv[i + 1]]
        elif w.startswith("--stages"):
            out += [w] if "=" in w else [w, argv[i + 1]]
    return out


def test_the_profile_budgets_apply_under_the_users_overrides():
    from memr1.config import get_profile

    budgets = dict(get_profile("cpu").budgets)
    planned = by_name(plan("cpu", {"evaluate.limit": "3"}, run_dir=RUN))
    ev = planned["05_evaluate_locomo"].config
    assert ev.system == budgets["evaluate.system"] and ev.k_per_speaker == budgets["evaluate.k_per_speaker"]
    assert ev.limit == 3  # the user's override wins
    assert planned["05_evaluate_locomo"].params["limit"] == 3
    smoke = by_name(plan("smoke", {}, run_dir=RUN))["05_evaluate_locomo"].config
    assert smoke.system == "heuristic" and smoke.k_per_speaker == 30  # smoke has no budgets
    paper = by_name(plan("paper", {}, run_dir=RUN))
    assert paper["05_evaluate_locomo"].config.manager_tokens == 2048  # Memory-R1's cap for the manager
    assert paper["04_train_memory_manager"].config.max_completion_length == 2048


def test_an_adapter_that_is_not_there_fails_the_plan(tmp_path):
    params = {"evaluate.system": "memory-r1-answer"}
    with pytest.raises(ConfigError, match="05_evaluate_locomo: answer_adapter 'no/such/adapter'"):
        plan("smoke", {**params, "evaluate.answer_adapter": "no/such/adapter"}, run_dir=RUN)
    (tmp_path / "empty").mkdir()  # a folder that holds no adapter
    with pytest.raises(ConfigError, match="neither a training run dir"):
        plan("smoke", {**params, "evaluate.answer_adapter": str(tmp_path / "empty")}, run_dir=RUN)
    with pytest.raises(ConfigError, match="answer_model"):
        plan("smoke", {"train_manager.answer_model": str(tmp_path / "empty")}, run_dir=RUN)
    # the run folder stage 03 of this plan writes is fine before it exists, and so is its adapter/
    for target in (RUN / "03_train_answer_agent", RUN / "03_train_answer_agent" / "adapter"):
        plan("smoke", {**params, "evaluate.answer_adapter": str(target)}, run_dir=RUN)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny"}')
    plan("smoke", {**params, "evaluate.answer_adapter": str(adapter)}, run_dir=RUN, stages=["evaluate"])
