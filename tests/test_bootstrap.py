"""memr1.eval.bootstrap: intervals that can be checked by hand, and pairing that matters."""

from __future__ import annotations

import numpy as np
import pytest

from memr1.errors import ConfigError
from memr1.eval.bootstrap import Interval, bootstrap_ci, paired_bootstrap


def test_paired_interval_sees_a_small_constant_gain_that_unpaired_noise_hides():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 100, size=81)  # questions differ far more than the systems do
    base, better = difficulty, difficulty + 2.0
    d = paired_bootstrap(better, base)
    assert d.mean == pytest.approx(2.0) and d.lo == pytest.approx(2.0) and d.excludes_zero()
    lo_a, hi_a = bootstrap_ci(better)
    lo_b, hi_b = bootstrap_ci(base)
    assert lo_a < hi_b  # the two unpaired intervals overlap: unpaired, the gain is invisible


def test_interval_covers_the_mean_and_shrinks_with_more_questions():
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 1.0, size=400)
    lo, hi = bootstrap_ci(x)
    assert lo < x.mean() < hi
    lo4, hi4 = bootstrap_ci(x[:100])
    assert (hi - lo) < (hi4 - lo4)
    # sd / sqrt(n) * 1.96 * 2 is the normal-theory width; the percentile interval is close to it
    assert (hi - lo) == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(len(x)), rel=0.1)


def test_a_noisy_difference_around_zero_is_not_called_a_gain():
    rng = np.random.default_rng(2)
    d = paired_bootstrap(rng.normal(0, 10, 81), rng.normal(0, 10, 81))
    assert d.lo < 0 < d.hi and not d.excludes_zero()


def test_reproducible_and_typed_errors():
    assert paired_bootstrap([1, 2, 3], [0, 2, 1]) == paired_bootstrap([1, 2, 3], [0, 2, 1])
    with pytest.raises(ConfigError, match="same questions"):
        paired_bootstrap([1, 2], [1])
    with pytest.raises(ConfigError, match="at least one"):
        bootstrap_ci([])


def test_interval_prints_in_the_precision_asked():
    iv = Interval(0.12345, -0.01, 0.3, 5)
    assert str(iv) == "+0.1 [-0.0, +0.3]"  # scores ×100 keep one decimal
    assert f"{iv:.3f}" == "+0.123 [-0.010, +0.300]"  # rewards on a 0-2 scale need three
