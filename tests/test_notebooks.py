"""Notebooks run headless with papermill, through the API and the ``memr1 run`` pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import papermill as pm
import pytest

from memr1.pipeline import StageError, notebooks_dir, run_pipeline
from memr1.stages import STAGES

pytestmark = pytest.mark.slow


def _env(data_dir):
    return {**os.environ, "MEMR1_DATA_DIR": str(data_dir), "MEMR1_STATIC_WIDGETS": "1"}


def test_notebook_01_papermill_cli(data_dir, tmp_path):
    """The exact command a user would type, with -p overrides."""
    out = tmp_path / "out.ipynb"
    run_dir = tmp_path / "stage01"
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        str(notebooks_dir() / "01_locomo_data.ipynb"),
        str(out),
        "-p",
        "conversation",
        "conv-30",
        "-p",
        "run_dir",
        str(run_dir),
        "-p",
        "seed",
        "1",
        "-k",
        "python3",
    ]
    subprocess.run(cmd, check=True, env=_env(data_dir), capture_output=True, timeout=300)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["result"]["splits"]["test"]["total"] == 1307
    assert metrics["config"]["conversation"] == "conv-30"
    html = "".join(
        o.get("data", {}).get("text/html", "")
        for c in nbformat.read(out, 4).cells
        for o in c.get("outputs", [])
        if isinstance(o.get("data", {}).get("text/html", ""), str)
    )
    assert "conv-30: turns per session" in html and "plotly" in html  # static figures were rendered


def test_wrong_parameter_type_fails_with_config_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMR1_DATA_DIR", str(data_dir))
    with pytest.raises(pm.PapermillExecutionError, match=r"ConfigError.*seed must be int, got str"):
        pm.execute_notebook(
            str(notebooks_dir() / "01_locomo_data.ipynb"),
            str(tmp_path / "o.ipynb"),
            parameters={"seed": "abc", "run_dir": str(tmp_path)},
            kernel_name="python3",
            progress_bar=False,
        )


def test_pipeline_runs_skips_and_forces(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMR1_DATA_DIR", str(data_dir))
    run_dir = run_pipeline("smoke", name="t", runs_root=tmp_path, progress=False, overrides={"embedder": "hash"})
    first = {s.name: (run_dir / s.name / "metrics.json").stat().st_mtime_ns for s in STAGES if not s.always}
    assert all((run_dir / f"{s.name}.ipynb").exists() for s in STAGES)
    # plotly.js lives once in the run folder; each executed notebook holds its figures' data only (goal <= 1 MB)
    sizes = {s.name: (run_dir / f"{s.name}.ipynb").stat().st_size for s in STAGES}
    assert max(sizes.values()) < 1_000_000, sizes
    assert (run_dir / "plotly.min.js").stat().st_size > 1_000_000
    html = {s.name: _html_outputs(run_dir / f"{s.name}.ipynb") for s in STAGES}
    assert all('src="plotly.min.js"' in html[s.name] for s in STAGES if s.name[:2] in ("01", "03", "05")), {
        k: v.count("plotly") for k, v in html.items()
    }
    run_pipeline("smoke", name="t", runs_root=tmp_path, progress=False, overrides={"embedder": "hash"})  # skipped
    assert {s.name: (run_dir / s.name / "metrics.json").stat().st_mtime_ns for s in STAGES if not s.always} == first
    report = (run_dir / "report.html").read_text()
    assert "Every model number in this report comes from a tiny random model" in report
    assert all(f"({s.name})" in report for s in STAGES if not s.always)  # one section per finished stage
    # it opens with the papers' two tables built from this run, published rows beside, and a computed summary
    assert report.index("The papers' tables, from this run") < report.index("<h3>Stages</h3>")
    assert "LoCoMo (Memory-R1's Table 1 layout)" in report and "MEM1 (its Table 1 layout)" in report
    assert "Memory-R1-GRPO (published)" in report and "MEM1-QA (7B) (published)" in report
    assert "published Memory-R1-GRPO on LLaMA-3.1-8B: F1 45.02 over 1,307 questions" in report
    assert all(v["status"] == "done" for v in json.loads((run_dir / "run.json").read_text())["stages"].values())
    run_pipeline(
        "smoke",
        name="t",
        runs_root=tmp_path,
        progress=False,
        force=True,
        stages=[STAGES[0].name],
        overrides={"embedder": "hash"},
    )
    assert (run_dir / STAGES[0].name / "metrics.json").stat().st_mtime_ns != first[STAGES[0].name]


def _html_outputs(path) -> str:
    """Every text/html output of an executed notebook, joined."""
    cells = json.loads(path.read_text())["cells"]
    data = [o.get("data", {}) for c in cells for o in c.get("outputs", [])]
    html = [d.get("text/html", "") for d in data]
    return "".join("".join(h) if isinstance(h, list) else h for h in html)


def test_failed_stage_keeps_notebook_and_reports_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMR1_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("MEMR1_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(StageError, match=r"01_locomo_data failed in cell \d+: DataNotFoundError"):
        run_pipeline(
            "smoke",
            name="bad",
            runs_root=tmp_path,
            progress=False,
            overrides={"data_dir": str(tmp_path / "no-data" / "x.json")},
        )
    assert (tmp_path / "bad" / "01_locomo_data.ipynb").exists()
    assert not (tmp_path / "bad" / "01_locomo_data" / "metrics.json").exists()
    assert json.loads((tmp_path / "bad" / "run.json").read_text())["stages"]["01_locomo_data"]["status"] == "failed"


def test_notebook_02_timeline_shows_a_real_turn_diff(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMR1_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MEMR1_STATIC_WIDGETS", "1")
    out, run_dir = tmp_path / "out02.ipynb", tmp_path / "stage02"
    pm.execute_notebook(
        str(notebooks_dir() / "02_build_memory_bank.ipynb"),
        str(out),
        parameters={"run_dir": str(run_dir), "focus_turn": 2},
        kernel_name="python3",
        progress_bar=False,
    )
    html = "".join(
        o["data"]["text/html"]
        for c in nbformat.read(out, 4).cells
        for o in c.get("outputs", [])
        if "text/html" in o.get("data", {})
    )
    assert "D1:3" in html and "ADD <b>caroline-0</b>: Caroline attended an LGBTQ support group" in html
    metrics = json.loads((run_dir / "metrics.json").read_text())["result"]
    assert metrics["replay"]["entries"] == {"Caroline": 102, "Melanie": 82}
    assert metrics["embedder"] == "all-MiniLM-L6-v2" and metrics["recall"][-1]["count"] == 150
    assert (run_dir / "store" / "conv-26").is_dir()


def test_quickstart_runs_on_cpu(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMR1_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MEMR1_STATIC_WIDGETS", "1")
    pm.execute_notebook(
        str(notebooks_dir() / "00_quickstart.ipynb"),
        str(tmp_path / "qs.ipynb"),
        parameters={"run_dir": str(tmp_path / "qs"), "embedder": "hash", "until_turn": 60},
        kernel_name="python3",
        progress_bar=False,
    )
    metrics = json.loads((tmp_path / "qs" / "metrics.json").read_text())["result"]
    assert metrics["answers"] == 5 and metrics["grpo_steps"] == 2 and metrics["completions_logged"] == 8
    assert sum(metrics["replay"]["entries"].values()) > 0
