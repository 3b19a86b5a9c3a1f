"""The O(n) pre-screen of the spike scans: it may let a series through that has
nothing, never stop one that has something (the scans' verdicts are unchanged)."""

from __future__ import annotations

import numpy as np
import pytest

from tunescope.detectors import grad_spike, loss_spike, series
from tunescope.detectors.series import Series, may_rise_by


def _brute(y: np.ndarray, lookback: int, need: float) -> bool:
    c = y[np.isfinite(y)]
    return any(c[i] - c[max(0, i - lookback) : i].min() >= need for i in range(1, len(c)))


def test_never_false_when_a_point_rises_that_far():
    rng = np.random.default_rng(5)
    said_false = 0
    for _ in range(400):
        n = int(rng.integers(2, 700))
        y = np.cumsum(rng.normal(0, 0.05, n)) * rng.choice([0.0, 1.0])
        y = y + rng.normal(0, 0.03, n)
        if rng.random() < 0.3:
            y[rng.integers(0, n)] += float(rng.uniform(0, 1))
        if rng.random() < 0.2:
            y[rng.integers(0, n, 3)] = np.nan
        lookback, need = int(rng.choice([10, 60, 300])), float(rng.uniform(0.05, 0.5))
        got = may_rise_by(y, lookback, need)
        if _brute(y, lookback, need):
            assert got
        said_false += not got
    assert said_false > 50  # it does rule series out


def test_short_or_empty_series():
    assert not may_rise_by(np.array([1.0]), 10, 0.1)
    assert not may_rise_by(np.array([np.nan, np.nan, 2.0]), 10, 0.1)
    assert may_rise_by(np.array([0.0, 1.0]), 10, 0.5)


def _series(loss: np.ndarray, gn: np.ndarray) -> Series:
    n = len(loss)
    step = np.arange(1, n + 1)
    return Series("run", 0, step, loss, np.full(n, 1e-4), gn, step / n, gn_logged=np.ones(n, bool))


@pytest.mark.parametrize("seed", range(8))
def test_scans_unchanged_by_the_prescreen(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([80, 400, 1500]))
    t = np.arange(1, n + 1, dtype=float)
    loss = (1.2 + 1.5 * np.exp(-t / (n / 5))) * np.exp(rng.normal(0, 0.04, n))
    gn = 0.8 * np.exp(rng.normal(0, 0.2, n))
    if seed % 2:
        at = int(rng.integers(n // 3, n - 5))
        loss[at] *= float(rng.uniform(1.2, 3))
        gn[at] *= float(rng.uniform(5, 40))
    s = _series(loss, gn)
    with_screen = (
        loss_spike.scan(s, loss_spike.Options()),
        grad_spike._scan(s, grad_spike.Options()),
    )
    monkeypatch.setattr(loss_spike, "may_rise_by", lambda *a, **k: True)
    monkeypatch.setattr(series, "may_rise_by", lambda *a, **k: True)
    without = (
        loss_spike.scan(s, loss_spike.Options()),
        grad_spike._scan(s, grad_spike.Options()),
    )

    def key(incs):
        return [(i.a, i.b, i.peak) for i in incs]

    assert [key(x) for x in with_screen] == [key(x) for x in without]
