"""Docs the code relies on: every `docs/design.md §Key` citation resolves; lint and types stay clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"


def design_keys() -> set[str]:
    """Keys from the table at the top of docs/design.md (column "Key(s)")."""
    keys = set()
    for line in DESIGN.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1].isdigit():
            keys |= {k.strip().lower() for k in cells[2].split(",")}
    return keys


def citations() -> list[tuple[str, str]]:
    """(file, cited text after §) for every citation of docs/design.md in code, notebooks and tests."""
    out = []
    files = [*REPO.glob("memr1/**/*.py"), *REPO.glob("widgets/*.py"), *REPO.glob("notebooks/*.ipynb")]
    for path in [*files, *REPO.glob("tests/*.py"), REPO / "README.md"]:
        if path.name == "test_docs.py":
            continue
        for m in re.finditer(r"docs/design\.md((?:,? ?§[^§,;)\n\"`]+)+)", path.read_text()):
            out += [(path.name, c.strip()) for c in m.group(1).split("§")[1:]]
    return out


def test_design_doc_has_its_keys():
    assert {"layout", "split", "categories", "metrics", "rewards", "mem1 exactness", "profiles"} <= design_keys()


@pytest.mark.parametrize("where, cited", citations())
def test_every_citation_names_a_section(where, cited):
    assert any(cited.lower().rstrip(". ,").startswith(k) for k in design_keys()), (
        f"{where} cites docs/design.md §{cited!r}; keys are {sorted(design_keys())}"
    )


def test_no_reference_to_files_outside_the_repository():
    for path in [*REPO.glob("memr1/**/*.py"), *REPO.glob("widgets/*.py"), *REPO.glob("notebooks/*.ipynb")]:
        text = path.read_text()
        assert "DESIGN §" not in text and not re.search(r"\bresearch/[a-z0-9-]+\.md", text), f"{path} cites outside"


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it is in the dev extra)")
    return found


def test_ruff_lint_and_format_are_clean():
    lint = subprocess.run(
        [_tool("ruff"), "check", "memr1", "widgets", "tests", "bench", "experiments"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout[-3000:]
    fmt = subprocess.run(
        [_tool("ruff"), "format", "--check", "memr1", "widgets", "tests", "bench", "experiments"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout[-3000:]


def test_memr1_type_checks():
    res = subprocess.run([_tool("mypy"), "memr1"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:]


def test_readme_layout_names_every_module():
    """The README's layout block lists each memr1 and widgets module, and only files that exist."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"\b([a-z_0-9]+\.py)\b", block))
    on_disk = {p.name for p in [*REPO.glob("memr1/**/*.py"), *REPO.glob("widgets/*.py")] if p.name != "__init__.py"}
    assert on_disk - named == set(), f"modules missing from the README layout: {sorted(on_disk - named)}"
    assert named - on_disk - {"__init__.py"} == set(), f"README layout names files that do not exist: {named - on_disk}"
