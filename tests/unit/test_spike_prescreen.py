"""The pre-screen of the spike scans never changes a result: it scores only the
points that pass a necessary condition, and a property test holds it to the
unscreened scan on random series (screen on vs off). The scan's defaults are
written once, in ``LossSpikeParams``."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tunescope.detectors import divergence, grad_spike, loss_spike
from tunescope.detectors.scans.series import Series, floor_before
from tunescope.detectors.scans.spike_scan import SPIKE_DEFAULTS, LossSpikeParams, scan


def test_floor_is_a_lower_bound_of_the_minimum_before_each_point():
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(2, 400))
        c = np.cumsum(rng.normal(0, 0.05, n)) + rng.normal(0, 0.03, n)
        lookback = int(rng.choice([10, 60, 300]))
        floor = floor_before(c, lookback)
        assert np.isinf(floor[0])
        for i in range(1, n):
            assert floor[i] <= c[max(0, i - lookback) : i].min()


def _series(loss: np.ndarray, gn: np.ndarray) -> Series:
    n = len(loss)
    step = np.arange(1, n + 1)
    return Series("run", 0, step, loss, np.full(n, 1e-4), gn, step / n, gn_logged=np.ones(n, bool))


def _key(incs):
    return [(i.a, i.b, i.peak, i.recovered) for i in incs]


series_args = st.tuples(
    st.integers(0, 2**32 - 1),
    st.integers(8, 600),
    st.floats(0.005, 0.3),
    st.floats(1.1, 6.0),
    st.integers(0, 4),
)


@settings(max_examples=60, deadline=None)
@given(series_args, st.floats(1.05, 4.0), st.floats(1.0, 8.0))
def test_screen_never_changes_a_scan(args, min_ratio, z):
    seed, n, noise, jump, spikes = args
    rng = np.random.default_rng(seed)
    t = np.arange(1, n + 1, dtype=float)
    loss = (1.2 + 1.5 * np.exp(-t / max(n / 5, 1))) * np.exp(rng.normal(0, noise, n))
    gn = 0.8 * np.exp(rng.normal(0, noise * 5, n))
    for at in rng.integers(0, n, spikes):
        loss[at] *= jump
        gn[at] *= jump * 10
    if rng.random() < 0.2:
        loss[rng.integers(0, n)] = np.nan
    s = _series(loss, gn)
    p = LossSpikeParams(min_ratio=min_ratio, z=z, z_consecutive=z * 0.7)
    assert _key(scan(s, p, screen=True)) == _key(scan(s, p, screen=False))
    g = grad_spike.Options(z=z, z_consecutive=z * 0.7)
    assert _key(grad_spike._scan(s, g, screen=True)) == _key(grad_spike._scan(s, g, screen=False))


def test_a_large_spike_is_found_at_any_min_ratio_it_passes():
    """The old block screen lost a 3.47x spike at a min-ratio of 1.9-3.4."""
    rng = np.random.default_rng(1)
    n = 400
    t = np.arange(1, n + 1, dtype=float)
    loss = (1.0 + 2.0 * np.exp(-t / 60)) * np.exp(rng.normal(0, 0.02, n))
    loss[300] *= 3.47
    s = _series(loss, np.full(n, 0.5))
    for ratio in (1.3, 1.9, 2.5, 3.0, 3.4):
        found = scan(s, LossSpikeParams(min_ratio=ratio))
        assert [int(s.step[i.peak]) for i in found] == [301], ratio


def test_ts101_and_ts102_take_the_spike_defaults_from_the_scan():
    """The scan's parameters are written once: TS101's defaults are the
    scan's, and TS102's three spike options are the same as TS101's."""
    assert loss_spike.params(loss_spike.Options()) == SPIKE_DEFAULTS == LossSpikeParams()
    assert divergence.spike_params(divergence.Options()) == SPIKE_DEFAULTS
