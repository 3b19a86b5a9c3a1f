"""TS102's trend test: a slow exponential rise is caught within 100 steps of
its onset, and a jump that stays flat (a spike recovering slowly) is not
taken for a trend."""

from __future__ import annotations

import numpy as np
import pytest

from tunescope.detectors.divergence import Options, _trend_hits
from tunescope.detectors.scans.divergence_trend import looks_like_step
from tunescope.detectors.scans.series import Series


def _series(loss: np.ndarray) -> Series:
    n = len(loss)
    step = np.arange(1, n + 1)
    return Series(
        run="run",
        rank=None,
        step=step,
        loss=loss,
        lr=np.full(n, 3e-4),
        grad_norm=np.full(n, 0.8),
        epoch=step / n,
    )


@pytest.mark.parametrize("seed", range(6))
def test_slow_divergence_caught_within_100_steps(seed):
    rng = np.random.default_rng(seed)
    n, onset, rate = 1200, 600, 0.0012  # 0.12 %/step: ~13% over 100 steps
    t = np.arange(1, n + 1, dtype=float)
    loss = (1.2 + 1.5 * np.exp(-t / 150)) * np.exp(rng.normal(0, 0.04, n))
    loss[onset - 1 :] *= np.exp(rate * np.arange(n - onset + 1))
    hits = _trend_hits(_series(loss), Options(), np.zeros(n, dtype=bool))
    assert hits, "slow divergence not caught"
    assert onset <= hits[0].detected <= onset + 100


@pytest.mark.parametrize("seed", range(4))
def test_clean_decay_has_no_trend_hit(seed):
    rng = np.random.default_rng(100 + seed)
    n = 1500
    t = np.arange(1, n + 1, dtype=float)
    loss = (1.2 + 1.5 * np.exp(-t / 300)) * np.exp(rng.normal(0, 0.05, n))
    assert _trend_hits(_series(loss), Options(), np.zeros(n, dtype=bool)) == []


def test_step_then_flat_or_falling_is_a_step():
    rng = np.random.default_rng(1)
    x = np.arange(100, dtype=float)
    flat = np.where(x < 55, 0.0, np.log(2.0)) + rng.normal(0, 0.03, 100)
    assert looks_like_step(x, flat)
    falling = flat - 0.002 * x  # the loss keeps falling at the new level
    assert looks_like_step(x, falling)


@pytest.mark.parametrize("noise", [0.01, 0.06])
def test_ramps_are_not_steps(noise):
    rng = np.random.default_rng(2)
    x = np.arange(100, dtype=float)
    ramp = 0.002 * x + rng.normal(0, noise, 100)
    assert not looks_like_step(x, ramp)
    # flat, then a steep rise: the later part keeps rising
    hockey = np.where(x < 50, 0.0, 0.02 * (x - 50)) + rng.normal(0, noise, 100)
    assert not looks_like_step(x, hockey)
    # a jump followed by a rise is still a rise
    jump_rise = np.where(x < 50, 0.0, 0.3 + 0.01 * (x - 50)) + rng.normal(0, noise, 100)
    assert not looks_like_step(x, jump_rise)


def test_short_windows_are_never_steps():
    x = np.arange(15, dtype=float)
    assert not looks_like_step(x, np.where(x < 7, 0.0, 1.0))


def test_kendall_rises_agrees_with_the_full_trend_test():
    from tunescope.detectors.scans.divergence_trend import kendall_rises
    from tunescope.detectors.scans.stats import trend_np

    rng = np.random.default_rng(3)
    decided = set()
    for _ in range(400):
        n = int(rng.choice([5, 20, 50, 450]))
        x = np.arange(n) * float(rng.choice([1, 10]))
        y = 0.01 * rng.normal(0, 1) * np.arange(n) + rng.normal(0, 0.05, n)
        if rng.random() < 0.3:
            y = np.round(y, 1)  # ties
        if rng.random() < 0.05:
            y = np.full(n, 1.0)  # constant
        p_max = float(10 ** rng.uniform(-8, -1))
        t = trend_np(x, y, alpha=0.99)
        want = bool(t.tau > 0 and t.p < p_max)
        assert kendall_rises(x, y, p_max) is want
        decided.add(want)
    assert decided == {True, False}
