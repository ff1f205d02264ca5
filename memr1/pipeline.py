"""Run the numbered notebooks headless with papermill, one folder per run.

``runs/<name>/`` receives each executed notebook (``01_locomo_data.ipynb``) and each stage's folder
(``01_locomo_data/metrics.json`` plus whatever the stage writes). A stage whose ``metrics.json``
exists is skipped unless ``force``; a failing stage stops the run with the failing cell's error and
keeps everything finished before it.

>>> [s.name for s in STAGES][:1]
['01_locomo_data']
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from memr1.config import (AnswerTrainConfig, BankConfig, DataConfig, EvalConfig, ManagerTrainConfig, Mem1Config,
                          QuickstartConfig, ReportConfig, StageConfig, get_profile)
from memr1.errors import ConfigError, Memr1Error
from memr1.runs import write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]


class StageError(Memr1Error):
    """A notebook stage failed; the executed notebook with the traceback is kept."""


@dataclass(frozen=True)
class Stage:
    name: str
    """Notebook file stem in ``notebooks/``."""
    config: type[StageConfig]
    """The stage's config dataclass; its fields are the notebook's parameters."""
    always: bool = False
    """Run even when it finished before (the report, which summarises the other stages)."""

    def fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config)]


STAGES: list[Stage] = [
    Stage("01_locomo_data", DataConfig),
    Stage("02_build_memory_bank", BankConfig),
    Stage("03_train_answer_agent", AnswerTrainConfig),
    Stage("04_train_memory_manager", ManagerTrainConfig),
    Stage("05_evaluate_locomo", EvalConfig),
    Stage("06_mem1", Mem1Config),
    Stage("07_report", ReportConfig, always=True),
]


TOUR = Stage("00_quickstart", QuickstartConfig)
"""The quickstart notebook: parameterised like a stage, not part of ``memr1 run``."""


def notebooks_dir() -> Path:
    """``$MEMR1_NOTEBOOKS`` or the repository's ``notebooks/`` folder."""
    return Path(os.environ.get("MEMR1_NOTEBOOKS") or REPO_ROOT / "notebooks")


def stage_params(stage: Stage, profile: str, stage_dir: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters papermill injects: profile and run_dir, plus the overrides this stage knows."""
    base = {"profile": profile, "run_dir": str(stage_dir)}
    params = {k: v for k, v in {**base, **overrides}.items() if k in stage.fields()}
    stage.config.from_params(params)  # fail before starting a kernel
    return params


@contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def detect_profile() -> tuple[str, str]:
    """The profile a fresh machine can run, and why: paper on CUDA, cpu when the hub answers, else smoke."""
    import torch

    if torch.cuda.is_available():
        return "paper", f"CUDA GPU found ({torch.cuda.get_device_name(0)})"
    if os.environ.get("HF_HUB_OFFLINE", "").strip() in ("1", "true", "TRUE", "yes"):
        return "smoke", "no GPU, and HF_HUB_OFFLINE is set: the tiny local model stands in for a real one"
    try:
        urllib.request.urlopen("https://huggingface.co/api/models/Qwen/Qwen2.5-0.5B-Instruct", timeout=3).close()
    except (OSError, ValueError) as exc:
        return "smoke", (f"no GPU, and the Hugging Face hub is unreachable ({type(exc).__name__}): "
                         "the tiny local model stands in for a real one")
    return "cpu", "no GPU; the Hugging Face hub answers, so Qwen2.5-0.5B-Instruct runs on the CPU"


def _record(run_dir: Path, profile: str, reason: str, stage: str, entry: dict[str, Any]) -> None:
    """Merge one stage's outcome into run.json (earlier stages and runs are kept)."""
    path = run_dir / "run.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    stages = old.get("stages", {}) if isinstance(old.get("stages"), dict) else {}
    stages[stage] = {**entry, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(path, {"profile": profile, "profile_reason": reason, "stages": stages})


def run_pipeline(profile: str = "smoke", *, name: str = "", overrides: Mapping[str, Any] | None = None,
                 stages: Sequence[str] | None = None, force: bool = False, runs_root: str | os.PathLike = "runs",
                 progress: bool = True) -> Path:
    """Execute the stage notebooks in order and return the run folder.

    Args:
        profile: smoke, cpu, paper, or auto (``detect_profile``: what this machine can run).
        name: run folder name under ``runs_root`` (default: the profile name).
        overrides: parameter values for every stage that has a field of that name.
        stages: run only these stage names (default: all, in order).
        force: re-run stages that already finished.
        runs_root: parent folder of the run folders.
        progress: show papermill's per-cell progress bar.
    """
    import papermill as pm

    reason = "chosen by the caller"
    if profile == "auto":
        profile, reason = detect_profile()
        print(f"[memr1] profile {profile}: {reason}")
    get_profile(profile)
    overrides = dict(overrides or {})
    known = {f for s in STAGES for f in s.fields()}
    if unknown := sorted(set(overrides) - known):
        raise ConfigError(f"no stage has parameter(s) {unknown}; known: {sorted(known)}")
    selected = [s for s in STAGES if stages is None or s.name in stages]
    if stages is not None and (missing := sorted(set(stages) - {s.name for s in STAGES})):
        raise ConfigError(f"unknown stage(s) {missing}; stages: {[s.name for s in STAGES]}")
    run_dir = Path(runs_root).resolve() / (name or profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in selected:
        stage_dir = run_dir / stage.name
        params = stage_params(stage, profile, stage_dir, overrides)
        if (stage_dir / "metrics.json").exists() and not (force or stage.always):
            print(f"[memr1] {stage.name}: finished before, skipped (use --force to re-run)")
            continue
        print(f"[memr1] {stage.name}: running with {params}")
        start = time.time()
        out_nb = run_dir / f"{stage.name}.ipynb"
        try:
            with _env(MEMR1_STATIC_WIDGETS="1"):
                pm.execute_notebook(str(notebooks_dir() / f"{stage.name}.ipynb"), str(out_nb),
                                    parameters=params, kernel_name="python3", cwd=str(Path.cwd()),
                                    progress_bar=progress)
        except pm.PapermillExecutionError as exc:
            _record(run_dir, profile, reason, stage.name, {"status": "failed", "error": f"{exc.ename}: {exc.evalue}"})
            raise StageError(f"stage {stage.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}. "
                             f"The executed notebook is {out_nb}; finished stages are kept.") from None
        _record(run_dir, profile, reason, stage.name, {"status": "done", "seconds": round(time.time() - start, 1)})
    return run_dir


def notebook_params(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A notebook's parameters as papermill sees them: name → {type, default, help}."""
    import papermill as pm

    return {name: {"type": p["inferred_type_name"], "default": p["default"], "help": p["help"]}
            for name, p in pm.inspect_notebook(str(path)).items()}
