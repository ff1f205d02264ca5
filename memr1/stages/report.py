"""Stage 07: every finished stage of a run folder in one self-contained ``report.html``.

The page itself is drawn by ``widgets.report`` (plotly lives there; memr1 never imports widgets) from
the typed results that ``memr1.pipeline.load_run`` reads back; this stage records which run and
which finished stages the report covers. The notebook calls ``widgets.report.write_report``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from memr1.config import RunConfig
from memr1.runs import StageResult, save_result


@dataclass
class ReportConfig(RunConfig):
    """Stage 07: collect every finished stage of a run folder into one self-contained report.html.

    No fields of its own: the report covers the parent of ``run_dir`` (the run folder)."""

    STAGE: ClassVar[str] = "07_report"


@dataclass
class ReportResult(StageResult):
    """Which run the report covers."""

    run_folder: str
    """The run folder (the parent of this stage's run_dir); report.html is written there."""
    profile: str
    """Profile the run used, as recorded in run.json."""
    stages: list[str]
    """Finished stages (folders holding a metrics.json), in name order."""


def run(cfg: ReportConfig) -> ReportResult:
    """Record the run folder, its profile and its finished stages in metrics.json."""
    import json

    folder = Path(cfg.run_dir).resolve().parent
    run_json = folder / "run.json"
    profile = json.loads(run_json.read_text()).get("profile", cfg.profile) if run_json.is_file() else cfg.profile
    finished = sorted(p.parent.name for p in folder.glob("*/metrics.json") if p.parent.name != folder.name)
    result = ReportResult(str(folder), profile, [s for s in finished if s != Path(cfg.run_dir).name])
    save_result(cfg.run_dir, result, cfg)
    return result
