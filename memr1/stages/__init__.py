"""The stages of a memr1 run, in order: one module each, owning its config, ``run`` and result.

Each stage module defines a config dataclass (derived from ``memr1.config.RunConfig``), a
``StageResult`` subclass and ``run(cfg) -> result``, which resolves the config once (profile
defaults filled in), does the work and writes ``run_dir/metrics.json``. The numbered notebook of
the same name is a thin face over it: parameters cell → config → ``run`` → widgets.

This registry drives ``memr1 run`` (which executes the notebooks), ``memr1 train`` and the tests.
Stage modules import only light modules at the top (heavy ones inside ``run``), so the registry
loads fast and a typo in a parameter fails in well under a second.

>>> [s.short for s in STAGES]
['data', 'bank', 'train_answer', 'train_manager', 'evaluate', 'mem1', 'report']
>>> find_stage("evaluate").name
'05_evaluate_locomo'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memr1.config import RunConfig
from memr1.errors import ConfigError
from memr1.runs import StageResult
from memr1.stages import evaluate, locomo_data, mem1, memory_bank, quickstart, report, train_answer, train_manager


@dataclass(frozen=True)
class Stage:
    name: str
    """Notebook file stem in ``notebooks/`` and folder name in a run."""
    short: str
    """Short name accepted as an override prefix (``-p evaluate.limit=10``)."""
    config: type[RunConfig]
    """The stage's config dataclass; its fields are the notebook's parameters."""
    result: type[StageResult]
    """What ``run`` returns and metrics.json holds."""
    run: Callable[[Any], StageResult]
    """``run(cfg) -> result``; writes ``cfg.run_dir/metrics.json``."""
    always: bool = False
    """Run even when it finished before (the report, which summarises the other stages)."""

    def fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config)]


STAGES: list[Stage] = [
    Stage("01_locomo_data", "data", locomo_data.DataConfig, locomo_data.DataResult, locomo_data.run),
    Stage("02_build_memory_bank", "bank", memory_bank.BankConfig, memory_bank.BankResult, memory_bank.run),
    Stage(
        "03_train_answer_agent",
        "train_answer",
        train_answer.AnswerTrainConfig,
        train_answer.AnswerTrainResult,
        train_answer.run,
    ),
    Stage(
        "04_train_memory_manager",
        "train_manager",
        train_manager.ManagerTrainConfig,
        train_manager.ManagerTrainResult,
        train_manager.run,
    ),
    Stage("05_evaluate_locomo", "evaluate", evaluate.EvalConfig, evaluate.EvalResult, evaluate.run),
    Stage("06_mem1", "mem1", mem1.Mem1Config, mem1.Mem1Result, mem1.run),
    Stage("07_report", "report", report.ReportConfig, report.ReportResult, report.run, always=True),
]

TOUR = Stage("00_quickstart", "quickstart", quickstart.QuickstartConfig, quickstart.QuickstartResult, quickstart.run)
"""The quickstart notebook: parameterised like a stage, not part of ``memr1 run``."""

TRAINERS: dict[str, tuple[type[RunConfig], Callable[[Any], StageResult]]] = {
    "answer": (train_answer.AnswerTrainConfig, train_answer.run),
    "manager": (train_manager.ManagerTrainConfig, train_manager.run),
    "mem1": (mem1.Mem1TrainConfig, mem1.train),
}
"""``memr1 train <agent>``: every field of these configs is reachable with ``-p``."""


def find_stage(name: str) -> Stage:
    """A stage by notebook name or short name; ConfigError lists both otherwise."""
    for stage in (*STAGES, TOUR):
        if name in (stage.name, stage.short):
            return stage
    raise ConfigError(f"unknown stage {name!r}; stages: {[f'{s.name} ({s.short})' for s in (*STAGES, TOUR)]}")
