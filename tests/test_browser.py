"""Real-browser check: an executed notebook, exported to HTML, shows the bank timeline and plotly figures.

Runs headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it) through Playwright with the system
executable. Screenshots are saved as test artifacts in ``$MEMR1_ARTIFACTS`` (default ``tests/artifacts``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from memr1.pipeline import run_pipeline

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip without Chromium, except under CI, where its absence is a failure."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium); .ci/run should have done it")
        pytest.skip("chromium is not installed")


@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
    """Notebooks 01 and 02 executed by ``memr1 run`` and exported with nbconvert beside them (where the run's one
    plotly.min.js is), as HTML files, and the run's report.html (stage 07, after stage 05 gave it a table)."""
    from nbconvert import HTMLExporter

    require_chromium()
    old = os.environ.get("MEMR1_DATA_DIR")
    os.environ["MEMR1_DATA_DIR"] = str(data_dir)
    try:
        run = run_pipeline(
            "smoke",
            name="browser",
            runs_root=tmp_path_factory.mktemp("runs"),
            progress=False,
            stages=["01_locomo_data", "02_build_memory_bank", "05_evaluate_locomo", "07_report"],
            overrides={"embedder": "hash", "bank.focus_turn": 2},
        )
    finally:
        os.environ.pop("MEMR1_DATA_DIR") if old is None else os.environ.__setitem__("MEMR1_DATA_DIR", old)
    out = {"report": run / "report.html"}
    for name in ("01_locomo_data", "02_build_memory_bank"):
        body, _ = HTMLExporter().from_filename(str(run / f"{name}.ipynb"))
        out[name] = run / f"{name}.html"
        out[name].write_text(body, encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


def _artifacts() -> Path:
    path = Path(os.environ.get("MEMR1_ARTIFACTS") or Path(__file__).parent / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_bank_timeline_renders_and_scrubs(exported, page):
    page.goto(exported["02_build_memory_bank"].as_uri())
    timeline = page.locator(".m1-tl").first
    timeline.wait_for()
    label = timeline.locator(".lbl")
    assert label.inner_text().startswith("turn 2 ")  # opened at the focus turn, drawn by the inline script
    assert "ADD caroline-0" in timeline.locator(".frame").inner_text()
    slider = timeline.locator("input[type=range]")
    slider.fill("5")
    slider.dispatch_event("input")
    assert not label.inner_text().startswith("turn 2 ")
    timeline.locator("select").select_option("Melanie")
    assert "Melanie" in timeline.locator(".frame").inner_text()
    timeline.screenshot(path=str(_artifacts() / "bank_timeline.png"))


def test_plotly_figures_render(exported, page):
    page.goto(exported["01_locomo_data"].as_uri())
    page.locator(".plotly-graph-div .main-svg").first.wait_for(timeout=20_000)
    assert page.locator(".plotly-graph-div").count() >= 3
    assert "conv-26: turns per session" in page.locator(".plotly-graph-div").first.inner_text()
    page.locator(".plotly-graph-div").first.screenshot(path=str(_artifacts() / "turns_per_session.png"))


def test_report_opens_with_the_papers_tables(exported, page):
    """report.html, opened offline: the two tables come first, in the first screen, and its figures draw."""
    page.goto(exported["report"].as_uri())
    heading = page.get_by_text("The papers' tables, from this run").first
    heading.wait_for()
    assert heading.bounding_box()["y"] < 900  # the first thing a reader sees, above the stage sections
    assert "LoCoMo (Memory-R1's Table 1 layout)" in page.locator("h3").first.inner_text()
    table = page.locator("table").first  # the stage list comes after
    assert "Memory-R1-GRPO (published)" in table.inner_text()
    page.locator(".plotly-graph-div .main-svg").first.wait_for(timeout=20_000)
    page.screenshot(path=str(_artifacts() / "report_top.png"))
