"""Shared by the experiment scripts: how a number over seeds is printed."""

from __future__ import annotations

import math
import statistics


def mean_std(values: list[float | None], fmt: str = ".1f") -> str:
    """``mean ± std`` (sample std) of the values that are numbers; one value alone; "–" for none."""
    kept = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not kept:
        return "–"
    if len(kept) == 1:
        return format(kept[0], fmt)
    return f"{format(statistics.mean(kept), fmt)} ± {format(statistics.stdev(kept), fmt)}"
