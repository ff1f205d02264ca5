"""Run folders: atomic JSON writes and the provenance block stamped on every metrics.json."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = ("memr1", "torch", "transformers", "trl", "peft", "datasets", "lancedb", "nltk")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON to a temp file beside ``path`` and rename it over: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=False, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def provenance() -> dict[str, Any]:
    """Versions, interpreter and time: enough to say what produced a result."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "machine": platform.machine(), "packages": versions}


def write_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any], config: Any = None) -> Path:
    """Write ``run_dir/metrics.json``: the stage's metrics, its config and provenance.

    The file is written last by every notebook, so its presence marks the stage as finished.
    """
    body = {"metrics": metrics, "provenance": provenance()}
    if config is not None:
        body["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return write_json_atomic(Path(run_dir) / "metrics.json", body)


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run folder as data: ``run.json`` (profile, reason, stage status) and every stage's metrics.json.

    Returns:
        ``{"name", "profile", "profile_reason", "status": {stage: {...}}, "stages": {stage: metrics.json}}``,
        stages in name order (their numeric prefix).
    """
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    stages = {p.parent.name: json.loads(p.read_text()) for p in sorted(run_dir.glob("*/metrics.json"))}
    status = run.get("stages", {})
    if isinstance(status, list):  # run.json before stages were keyed by name
        status = {s["stage"]: {k: v for k, v in s.items() if k != "stage"} for s in status}
    return {"name": run_dir.name, "profile": run.get("profile", "?"), "profile_reason": run.get("profile_reason", ""),
            "status": status, "stages": stages}
