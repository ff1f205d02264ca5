"""Bootstrap intervals over questions: one system's mean, and the paired difference of two.

Paired means both systems answered the same questions: each resample draws question indices once
and takes both systems' scores of those questions, so question difficulty cancels and the interval
is that of the difference itself (Efron & Tibshirani, *An Introduction to the Bootstrap*, ch. 13:
percentile intervals). numpy's ``default_rng(seed)`` makes every interval reproducible.

>>> lo, hi = bootstrap_ci([1.0, 1.0, 1.0])
>>> (lo, hi)
(1.0, 1.0)
>>> d = paired_bootstrap([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0])
>>> (d.mean, d.lo, d.hi)
(1.0, 1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memr1.errors import ConfigError

RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean and its percentile bootstrap interval (``level`` two-sided)."""

    mean: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def __format__(self, spec: str) -> str:
        """``+mean [+lo, +hi]`` with each number in ``spec`` (default ``.1f``): ``f"{iv:.3f}"``."""
        spec = spec or ".1f"
        return f"{self.mean:+{spec}} [{self.lo:+{spec}}, {self.hi:+{spec}}]"

    def __str__(self) -> str:
        return format(self, "")


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ConfigError("a bootstrap needs at least one question")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(scores: Sequence[float], *, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0):
    """``(lo, hi)`` of the mean of ``scores`` over resampled questions."""
    x = np.asarray(scores, dtype=float)
    means = x[_indices(len(x), resamples, seed)].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Mean of ``a - b`` (same questions, same order) with its paired bootstrap interval."""
    if len(a) != len(b):
        raise ConfigError(f"a paired bootstrap needs the same questions on both sides, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    lo, hi = bootstrap_ci(d, level=level, resamples=resamples, seed=seed)
    return Interval(float(d.mean()), lo, hi, len(d), level)


__all__ = ["Interval", "bootstrap_ci", "paired_bootstrap", "RESAMPLES"]
