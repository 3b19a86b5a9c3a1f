"""``stats.rolling_median``, shared by TS302 and TS502: the trailing median of
each point of a finite series, bit for bit what ``np.median`` over each
window gives."""

from __future__ import annotations

import numpy as np

from tunescope.detectors.scans.stats import rolling_median


def test_rolling_median_is_np_median_of_each_trailing_window():
    rng = np.random.default_rng(502)
    for n, k in ((1, 5), (4, 5), (5, 5), (60, 1), (60, 7), (301, 15), (1000, 50)):
        x = rng.normal(3.0, 0.5, n)
        x[rng.random(n) < 0.2] = 3.0  # ties
        want = np.array([np.median(x[max(0, i - k + 1) : i + 1]) for i in range(n)])
        assert np.array_equal(rolling_median(x, k, 1), want)
        # before min_k points: NaN
        got = rolling_median(x, k, min(k, n))
        assert np.isnan(got[: min(k, n) - 1]).all()
        assert np.array_equal(got[min(k, n) - 1 :], want[min(k, n) - 1 :])
