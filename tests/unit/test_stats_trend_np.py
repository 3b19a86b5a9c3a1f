"""``stats.trend_np`` (numpy only) agrees with the scipy-based ``stats.trend``."""

from __future__ import annotations

import numpy as np
import pytest

from tunescope.detectors.scans.stats import trend, trend_np


@pytest.mark.parametrize("n", [12, 60, 250, 900])
@pytest.mark.parametrize("slope", [0.0, 1e-3, -5e-4])
def test_matches_scipy_with_ties(n, slope):
    rng = np.random.default_rng(n)
    x = np.arange(n) * 5.0
    y = np.round(slope * x + rng.normal(0, 0.2, n), 2)  # rounding makes ties in y
    a, b = trend(x, y), trend_np(x, y)
    assert b.n == a.n
    for field in ("tau", "slope", "lo", "hi"):
        assert getattr(b, field) == pytest.approx(getattr(a, field), rel=1e-9, abs=1e-12)
    if a.n > 50:  # scipy's exact small-sample p-value differs from the normal approximation
        assert b.p == pytest.approx(a.p, rel=1e-6, abs=1e-12)


def test_degenerate_inputs():
    assert trend_np([1.0, 2.0], [3.0, 4.0]).n == 2
    flat = trend_np(np.arange(10.0), np.full(10, 2.0))
    assert (flat.tau, flat.p, flat.slope) == (0.0, 1.0, 0.0)
    with_nan = trend_np(np.arange(6.0), np.array([1.0, np.nan, 2.0, 3.0, np.inf, 4.0]))
    assert with_nan.n == 4 and with_nan.tau == pytest.approx(1.0)


def _sorted_slopes(x, y, max_points=400):
    """The Theil-Sen slopes of the points trend_np tests, fully sorted."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) > max_points:
        idx = np.linspace(0, len(x) - 1, max_points).round().astype(int)
        x, y = x[idx], y[idx]
    i, j = np.triu_indices(len(x), k=1)
    keep = x[j] != x[i]
    return np.sort((y[j] - y[i])[keep] / (x[j] - x[i])[keep])


@pytest.mark.parametrize("seed", range(6))
def test_order_statistics_equal_a_full_sort(seed):
    """The slope and its bounds come from a partition, not a sort: the same
    values, the sign of a zero included (-0.0 beside 0.0 falls back to the sort)."""
    rng = np.random.default_rng(seed)
    n = (37, 400, 401, 1000, 9, 250)[seed]
    x = np.sort(rng.integers(0, n // 2 + 2, n)).astype(float) if seed % 2 else np.arange(n) * 1.0
    y = np.round(rng.normal(0, 1, n).cumsum(), 1)
    if seed == 5:
        y[::7] = -0.0  # signed zeros among the differences
    got = trend_np(x, y)
    slopes = _sorted_slopes(x, y)
    assert np.signbit(got.slope) == np.signbit(np.median(slopes)) and got.slope == np.median(slopes)
    assert got.lo in slopes and got.hi in slopes and got.lo <= got.slope <= got.hi
    for bound in (got.lo, got.hi):
        k = np.searchsorted(slopes, bound)
        assert slopes[k] == bound
