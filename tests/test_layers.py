"""The package's layering, read from the source: library below, stages above, no cycles.

Layers, bottom to top (docs/design.md §Layout): base modules → data → memory → llm → agents →
rl / eval → stages → pipeline / cli. A module may import its own layer or lower ones; imports inside
functions count too. ``widgets`` and the notebooks sit on top and are never imported by memr1.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "memr1"
LAYERS = [
    {
        "memr1",
        "memr1.errors",
        "memr1.paths",
        "memr1.files",
        "memr1.jsontext",
        "memr1.seeding",
        "memr1.config",
        "memr1.runs",
    },
    {"memr1.data"},
    {"memr1.memory"},
    {"memr1.llm"},
    {"memr1.agents"},
    {"memr1.rl", "memr1.eval"},
    {"memr1.stages"},
    {"memr1.pipeline", "memr1.cli"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest listed prefix of ``module``."""
    best = None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if (module == prefix or module.startswith(prefix + ".")) and prefix != "memr1":
                if best is None or len(prefix) > len(best[1]):
                    best = (i, prefix)
    if best is None and module == "memr1":
        return 0
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and docs/design.md)"
    return best[0]


def imports_of(path: Path) -> set[str]:
    """Every memr1 module ``path`` imports, at module level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] in ("memr1", "widgets")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in ("memr1", "widgets"):
                out.add(node.module)
                out |= {
                    f"{node.module}.{a.name}"
                    for a in node.names
                    if (PKG.parent / node.module.replace(".", "/") / f"{a.name}.py").exists()
                }
    return out


GRAPH = {module_name(p): imports_of(p) for p in sorted(PKG.rglob("*.py"))}


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    mine = layer_of(module)
    for target in sorted(GRAPH[module]):
        assert not target.startswith("widgets"), f"{module} imports {target}: memr1 never imports widgets"
        assert layer_of(target) <= mine, (
            f"{module} (layer {mine}) imports {target} (layer {layer_of(target)}): "
            "library modules take plain values and never reach up"
        )


def test_no_import_cycle():
    graph = {m: {t for t in targets if t in GRAPH and t != m} for m, targets in GRAPH.items()}
    # a package's __init__ importing its own submodules is how a registry works, not a cycle
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_catches_an_upward_import(tmp_path):
    """Negative control: a data module importing the agents layer is flagged."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from memr1.agents.answer import AnswerAgent\n")
    found = imports_of(bad)
    assert "memr1.agents.answer" in found and layer_of("memr1.agents.answer") > layer_of("memr1.data.locomo")
