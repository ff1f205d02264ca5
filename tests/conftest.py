"""Shared fixtures: the real data folder (never copied into the repo) and an isolated cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_data_dir() -> Path | None:
    for candidate in (os.environ.get("MEMR1_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "locomo" / "locomo10.json").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder holding locomo/locomo10.json; CI must have it, a laptop without it skips."""
    found = _find_data_dir()
    if found is None:
        msg = "LoCoMo not found: set MEMR1_DATA_DIR to a folder holding locomo/locomo10.json"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="session")
def locomo(data_dir):
    from memr1.data.locomo import load_locomo

    return load_locomo(data_dir, allow_download=False)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test session gets its own memr1 cache, so nothing leaks from a developer's ~/.cache."""
    old = os.environ.get("MEMR1_CACHE_DIR")
    os.environ["MEMR1_CACHE_DIR"] = str(tmp_path_factory.mktemp("memr1-cache"))
    yield
    if old is None:
        os.environ.pop("MEMR1_CACHE_DIR", None)
    else:
        os.environ["MEMR1_CACHE_DIR"] = old
