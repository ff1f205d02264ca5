"""Notebooks in git: outputs stripped, parameters cell mirrors the stage config field by field."""

from __future__ import annotations

import ast
import dataclasses
import typing

import nbformat
import pytest

from memr1.pipeline import notebooks_dir
from memr1.stages import STAGES, TOUR

NOTEBOOKS = [TOUR, *STAGES]


@pytest.mark.parametrize("stage", NOTEBOOKS, ids=lambda s: s.name)
def test_outputs_are_stripped(stage):
    nb = nbformat.read(notebooks_dir() / f"{stage.name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{stage.name}: commit without outputs"


@pytest.mark.parametrize("stage", NOTEBOOKS, ids=lambda s: s.name)
def test_parameters_cell_mirrors_config(stage):
    nb = nbformat.read(notebooks_dir() / f"{stage.name}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    source = tagged[0].source
    found = {}
    for node in ast.parse(source).body:
        assert isinstance(node, ast.AnnAssign), f"only annotated literals in the parameters cell: {ast.dump(node)}"
        line = source.splitlines()[node.lineno - 1]
        found[node.target.id] = (
            ast.unparse(node.annotation),
            ast.literal_eval(node.value),
            line.split("#", 1)[1].strip() if "#" in line else "",
        )
    hints = typing.get_type_hints(stage.config)
    docs = stage.config.field_docs()
    expected = {
        f.name: (getattr(hints[f.name], "__name__", str(hints[f.name])), f.default, docs[f.name])
        for f in dataclasses.fields(stage.config)
    }
    assert found == expected
    assert list(found) == list(expected)  # same order as the dataclass


@pytest.mark.parametrize("stage", NOTEBOOKS, ids=lambda s: s.name)
def test_config_is_built_right_after_parameters(stage):
    nb = nbformat.read(notebooks_dir() / f"{stage.name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert f"{stage.config.__name__}.from_namespace(globals())" in code[1].source
    assert f"from {stage.config.__module__} import" in code[1].source  # the config comes from its stage module
    calls = "".join(c.source for c in code[2:])
    assert "run(cfg" in calls or "finish(" in calls  # the stage's run writes metrics.json; notebooks compute nothing
    assert "write_metrics" not in calls and "save_result" not in calls


@pytest.mark.parametrize("stage", NOTEBOOKS, ids=lambda s: s.name)
def test_papermill_sees_every_parameter(stage):
    """papermill's own parser must read each line (a help text with '=' or a quote can break it)."""
    from memr1.pipeline import notebook_params, parameters_source

    tagged = [
        c
        for c in nbformat.read(notebooks_dir() / f"{stage.name}.ipynb", as_version=4).cells
        if "parameters" in c.metadata.get("tags", [])
    ]
    assert tagged[0].source == parameters_source(stage.config)  # regenerate the cell with parameters_source

    params = notebook_params(notebooks_dir() / f"{stage.name}.ipynb")
    assert list(params) == [f.name for f in dataclasses.fields(stage.config)]
    assert all(p["help"] for p in params.values())


def test_every_notebook_file_is_a_known_stage():
    on_disk = sorted(p.stem for p in notebooks_dir().glob("*.ipynb"))
    assert on_disk == sorted(s.name for s in NOTEBOOKS)
