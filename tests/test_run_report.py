"""Run folders read back as typed results; the HTML report draws them or fails loudly."""

from __future__ import annotations

import json

import pytest

from memr1.errors import ResultError
from memr1.files import write_json_atomic
from memr1.pipeline import load_run
from memr1.runs import read_result, save_result
from memr1.stages.locomo_data import DataConfig, DataResult


def _data_result() -> DataResult:
    return DataResult(
        file="locomo10.json",
        sha256="ab" * 32,
        conversations=10,
        sessions=272,
        turns=5882,
        questions=1540,
        questions_with_adversarial=1986,
        splits={"train": {"1": 31, "total": 152}},
        evidence_problems={"dangling": 2},
    )


@pytest.fixture()
def run_folder(tmp_path):
    write_json_atomic(tmp_path / "run.json", {"profile": "smoke", "profile_reason": "test", "stages": {}})
    save_result(tmp_path / "01_locomo_data", _data_result(), DataConfig(run_dir=str(tmp_path / "01_locomo_data")))
    return tmp_path


def test_a_result_round_trips(run_folder):
    saved = read_result(run_folder / "01_locomo_data", DataResult)
    assert saved.result == _data_result()
    assert saved.config["run_dir"].endswith("01_locomo_data") and "packages" in saved.provenance
    assert list(load_run(run_folder).stages) == ["01_locomo_data"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("turns"), r"missing key\(s\) \['turns'\]"),
        (lambda r: r.update(turns_total=1), r"unknown key\(s\) \['turns_total'\]"),
        (lambda r: r.update(schema="DataResult/0"), r"schema 'DataResult/0', expected 'DataResult/1'"),
    ],
)
def test_a_renamed_or_missing_key_is_an_error_not_a_gap(run_folder, change, message):
    path = run_folder / "01_locomo_data" / "metrics.json"
    body = json.loads(path.read_text())
    change(body["result"])
    path.write_text(json.dumps(body))
    with pytest.raises(ResultError, match=message):
        load_run(run_folder)
    from widgets.report import report_html

    with pytest.raises(ResultError):
        report_html(str(run_folder))


def test_the_report_draws_the_typed_result(run_folder):
    from widgets.report import report_html

    page = report_html(str(run_folder))
    assert "10 conversations, 272 sessions, 5882 turns, 1540 questions" in page
    assert "(01_locomo_data)" in page and "dangling" in page


def test_a_truncated_metrics_file_is_a_typed_error(run_folder):
    (run_folder / "01_locomo_data" / "metrics.json").write_text('{"result": {')
    with pytest.raises(ResultError, match="cannot read a stage result"):
        read_result(run_folder / "01_locomo_data", DataResult)
