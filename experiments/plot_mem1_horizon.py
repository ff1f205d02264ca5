"""The MEM1 horizon figure: peak context tokens against N, pruned vs full context, untrained vs RL.

Reads a result file of ``experiments/mem1_horizon.py`` (mean ± std over its seeds, the error bars)
and writes ``<out>.png`` for the README through Chromium (Playwright with the system browser, as in
``tests/test_browser.py``); ``<out>.html`` (plotly, self-contained, about 5 MB) with ``--html`` or
where Chromium is missing:

    .venv/bin/python experiments/plot_mem1_horizon.py docs/results/mem1_horizon.json --out docs/img/mem1_horizon

The dotted line is the model's context window: a full-context episode ends there (stop
``context_window``), so the full-context peaks at N >= 8 are of what the model could read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from widgets.mem1_context import peak_figure


def horizon_frame(results: dict, column: str = "peak_tokens") -> pd.DataFrame:
    """One row per (policy, mode, N): mean and std over seeds of ``column``, and the seed count."""
    cells = pd.DataFrame(results["cells"].values())
    cells["policy"] = cells["trained"].map({False: "untrained", True: "RL at N = 2"})
    out = (
        cells.groupby(["policy", "mode", "n"], sort=False)[column]
        .agg(["mean", "std", "count"])
        .reset_index()
        .rename(columns={"n": "n_objectives", "mean": column, "std": f"{column}_std", "count": "seeds"})
    )
    out["tokenizer"] = cells["tokenizer"].iloc[0].replace("+mem1-rl", "")
    out["trained"] = out["policy"] != "untrained"  # untrained first: drawn solid
    return out.sort_values(["trained", "mode", "n_objectives"]).drop(columns="trained")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a .json written by mem1_horizon.py")
    ap.add_argument("--out", default="docs/img/mem1_horizon", help="path without suffix")
    ap.add_argument("--window", type=int, default=8192, help="context window drawn (SmolLM2-135M: 8192)")
    ap.add_argument("--html", action="store_true", help="keep the interactive HTML beside the PNG")
    args = ap.parse_args()

    frame = horizon_frame(json.loads(Path(args.results).read_text()))
    fig = peak_figure(
        frame,
        "peak_tokens",
        error="peak_tokens_std",
        title="MEM1 on SmolLM2-135M: peak context tokens (prompt included), mean ± std over seeds",
    )
    fig.add_hline(y=args.window, line_dash="dot", line_color="grey", annotation_text="context window")
    fig.update_layout(width=900, height=480, yaxis_title=f"peak context tokens ({frame['tokenizer'].iloc[0]})")
    fig.update_xaxes(tickvals=sorted(frame["n_objectives"].unique()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(frame.to_string(index=False))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if args.html or chromium is None:
        fig.write_html(out.with_suffix(".html"), include_plotlyjs=True)
        print(f"wrote {out.with_suffix('.html')}" + (" (no chromium: no PNG)" if chromium is None else ""))
    if chromium is None:
        return
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        page_file = Path(tmp) / "figure.html"
        fig.write_html(page_file, include_plotlyjs=True)
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 920, "height": 500})
        page.goto(page_file.as_uri())
        page.locator(".plotly-graph-div").first.screenshot(path=str(out.with_suffix(".png")))
        browser.close()
    print(f"wrote {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
