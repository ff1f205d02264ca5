"""Live widgets in a real JupyterLab: the training curves of notebooks 00, 03 and 04 grow while training runs.

Starts ``jupyter lab`` on a free local port, opens a copy of each notebook (smoke profile, more steps so a
run lasts a few seconds) in headless Chromium, runs all cells from the Run menu and samples the number
of plotted points of the live figure every 50 ms while the kernel is busy. Curves that update during
training show several different point counts before the run ends; curves drawn only at the end would
jump from nothing to the final count. Screenshots go to ``$MEMR1_ARTIFACTS``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.test_browser import ARGS, CHROMIUM, _artifacts, require_chromium

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# notebook → the parameters that make its training cell last several steps on the tiny model
NOTEBOOKS = {
    "03_train_answer_agent": {"steps": 8, "eval_every": 0, "save_every": 0},
    "04_train_memory_manager": {"steps": 6, "eval_every": 0, "save_every": 0},
    "00_quickstart": {"grpo_steps": 6},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(data_dir, tmp_path_factory):
    """A running JupyterLab serving a folder of notebook copies: ``(base url, token, folder)``."""
    require_chromium()
    folder = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "MEMR1_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), "JUPYTER_PLATFORM_DIRS": "1"}
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):  # a fresh user
        env[var] = str(tmp_path_factory.mktemp(var.lower()))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={folder}",
            "--ServerApp.ip=127.0.0.1",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not start within 60 s")
        yield url, token, folder
    finally:
        server.terminate()
        server.wait(timeout=30)


def _copy_with_parameters(name: str, folder: Path, params: dict) -> Path:
    """The notebook with a cell after its parameters cell, as papermill would inject it."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    run_dir = folder / "runs" / name
    given = {**params, "profile": "smoke", "run_dir": str(run_dir), "embedder": "hash"}
    lines = [f"{k} = {v!r}" for k, v in given.items()]
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(lines)))
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


POINTS = """() => {
  const figs = [...document.querySelectorAll('.jp-OutputArea .js-plotly-plot')]
    .filter(f => (f.innerText || '').includes('RL training'));
  return figs.length ? figs[0].querySelectorAll('path.point').length : -1;
}"""
BUSY = "() => !!document.querySelector('.jp-Notebook-ExecutionIndicator[data-status=\"busy\"]')"
IDLE = "() => !!document.querySelector('.jp-Notebook-ExecutionIndicator[data-status=\"idle\"]')"
STARTED = (
    "() => [...document.querySelectorAll('.jp-InputArea-prompt')].some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"
)


def _dismiss_dialogs(page, name: str) -> list[str]:
    """Answer the modal dialogs a fresh JupyterLab may open (kernel choice: the default; anything else,
    e.g. a build suggestion: dismissed); their texts are saved beside the screenshots."""
    seen = []
    for _ in range(5):
        dialog = page.locator(".jp-Dialog")
        try:
            dialog.first.wait_for(timeout=3_000)
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: no dialog
            break
        text = dialog.first.inner_text()
        seen.append(text)
        kind = "accept" if "kernel" in text.lower() else "reject"
        dialog.first.locator(f".jp-Dialog-button.jp-mod-{kind}").first.click()
    (_artifacts() / f"dialogs_{name}.json").write_text(json.dumps(seen))
    return seen


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_training_curves_update_while_training_runs(lab, name):
    from playwright.sync_api import sync_playwright

    url, token, folder = lab
    _copy_with_parameters(name, folder, NOTEBOOKS[name])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        # a workspace of its own, reset: only this notebook is open (the server remembers earlier tabs)
        page.goto(f"{url}/lab/workspaces/{name.replace('_', '-')}/tree/{name}.ipynb?reset&token={token}")
        page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
        page.wait_for_function(IDLE, timeout=120_000)  # the kernel has started
        _dismiss_dialogs(page, name)
        for _ in range(3):  # a click while the kernel is still connecting runs nothing: try again
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            try:
                page.wait_for_function(STARTED, timeout=20_000)
                break
            except Exception:  # noqa: BLE001 - playwright's TimeoutError; retried
                continue
        seen: list[int] = []
        deadline, was_busy = time.time() + 300, False
        while time.time() < deadline:
            seen.append(page.evaluate(POINTS))
            busy = page.evaluate(BUSY)
            if was_busy and not busy:
                break
            was_busy |= busy
            time.sleep(0.05)
        page.screenshot(path=str(_artifacts() / f"live_curves_{name}.png"), full_page=True)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
        figure = page.locator(".jp-OutputArea .js-plotly-plot", has_text="RL training")
        if figure.count():
            figure.first.screenshot(path=str(_artifacts() / f"live_curves_{name}.png"))
        browser.close()
    assert was_busy, "the notebook never ran: Run All Cells started nothing"
    assert not tracebacks, tracebacks[0][-2000:]
    counts = [c for c in seen if c > 0]
    distinct = sorted(set(counts))
    # live: the figure was on screen with points before training ended, and grew in several steps
    assert len(distinct) >= 3, f"point counts seen while running: {distinct} (samples: {len(seen)})"
    assert counts[-1] == max(counts)
    (_artifacts() / f"live_curves_{name}.json").write_text(json.dumps({"distinct_point_counts": distinct}))
