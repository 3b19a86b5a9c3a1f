"""The peers' published rules as ``bench/peers_rules.py`` replays them: on a
small series with one known spike each peer fires where its rule says, and
stays quiet where its rule says (warmup, minimum history, analysis interval,
rate limit, non-finite values)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


R = _load("peers_rules")
STEPS, LOSSES, NORMS = R.spike_series(n=120, at=80)


def _at(alerts, rule=None):
    return [a.step for a in alerts if rule is None or a.rule == rule]


def test_every_peer_fires_at_the_spike():
    alerts = R.replay(STEPS, LOSSES, STEPS, NORMS)
    for peer, rule in [
        ("lightning", "spike"),
        ("trainscope", "cusum-up"),
        ("trainsight", "divergence"),
        ("trainsight", "grad-explosion"),
        ("gradscope", "grad-explosion"),
        ("gradscope", "grad-z-spike"),
        ("gradscope", "grad-ema-spike"),
    ]:
        assert 80 in [a.step for a in alerts if a.peer == peer and a.rule == rule], (peer, rule)
    assert {a.peer for a in alerts} == set(R.PEERS)
    assert {(a.peer, a.rule) for a in alerts} <= set(R.RULES)


def test_lightning_fires_only_on_a_rise_of_rtol_times_the_running_mean():
    assert _at(R.lightning_spike(STEPS, LOSSES)) == [80]
    # a loss 3x the mean of the last 10 is 2x above it: rtol 2.0 fires; just under does not
    flat = [1.0] * 12
    assert _at(R.lightning_spike(range(1, 14), [*flat, 3.0])) == [13]
    assert _at(R.lightning_spike(range(1, 14), [*flat, 2.99])) == []
    # a falling loss is an improvement, whatever its distance from the mean
    assert _at(R.lightning_spike(range(1, 4), [10.0, 1.0, 0.1])) == []
    # atol is required as well as rtol when set
    assert _at(R.lightning_spike(range(1, 14), [*flat, 3.0], atol=5.0)) == []


def test_lightning_warmup_and_non_finite_losses():
    # batch 0 only feeds the mean (warmup=1); a jump at batch 1 is judged against it
    assert _at(R.lightning_spike([1, 2], [1.0, 9.0])) == [2]
    assert _at(R.lightning_spike([1, 2], [1.0, 9.0], warmup=2)) == []
    nan = [1.0, 1.0, math.nan, 1.0]
    assert _at(R.lightning_spike(range(1, 5), nan)) == [3]
    assert _at(R.lightning_spike(range(1, 5), nan, finite_only=False)) == []
    # a spike leaves the running mean and the previous loss alone: 3.5 after the
    # spike 9.0 is still a rise over 1.0 and 2.5 above the mean of 1.0
    assert _at(R.lightning_spike(range(1, 14), [*([1.0] * 11), 9.0, 3.5])) == [12, 13]
    with pytest.raises(ValueError, match="mode"):
        R.lightning_spike([1], [1.0], mode="median")


def test_trainscope_cusum_waits_for_its_history_then_fires_and_resets():
    up = R.trainscope_cusum(STEPS, LOSSES)
    assert _at(up, "cusum-up") == [80]
    assert up[[a.step for a in up].index(80)].value >= 6.0
    # nothing is scored before 30 observations, however large
    early = [1.0 + 0.01 * (i % 3) for i in range(40)]
    early[10] = 100.0
    assert R.trainscope_cusum(range(1, 41), early) == []
    # non-finite losses are not fed: they neither fire nor count towards the 30
    with_nan = [math.nan] * 5 + [1.0 + 0.01 * (i % 3) for i in range(30)] + [50.0]
    assert _at(R.trainscope_cusum(range(1, 37), with_nan)) == [36]


def test_trainsight_loss_rules_run_every_tenth_update():
    div = R.trainsight_loss(STEPS, LOSSES)
    assert _at(div, "divergence") == [80, 90]
    assert all(a.step % 10 == 0 for a in div)
    flat = [1.0] * 60
    assert _at(R.trainsight_loss(range(1, 61), flat), "plateau") == [50, 60]
    # fewer than 50 points: never analysed
    assert R.trainsight_loss(range(1, 50), [1.0] * 49) == []
    # eval losses 50% above the train losses: overfitting once 10 evals are held
    falling = [2.0 - 0.02 * i for i in range(60)]
    evals = [None] * 40 + [1.5 * v for v in falling[40:]]
    over = R.trainsight_loss(range(1, 61), falling, evals)
    assert _at(over, "overfitting") == [50, 60]
    # a NaN inside the window makes no alert (step 60's window holds one)
    assert _at(R.trainsight_loss(range(1, 61), [*flat[:55], math.nan, *flat[56:]])) == [50]


def test_trainsight_amp_and_gradient_thresholds():
    steady = [1.0 + 0.1 * (i % 2) for i in range(40)]
    assert R.trainsight_amp(range(1, 41), steady) == []
    wild = [0.1 if i % 2 else 3.0 for i in range(40)]
    assert _at(R.trainsight_amp(range(1, 41), wild)) == [20, 40]
    g = R.trainsight_grads([1, 2, 3, 4], [50.0, 150.0, 1e-8, math.nan])
    assert [(a.rule, a.step) for a in g] == [("grad-explosion", 2), ("grad-vanishing", 3)]


def test_gradscope_rules_and_their_rate_limit():
    norms = [1.0] * 200
    norms[29] = norms[39] = norms[99] = 50.0  # steps 30, 40 and 100
    got = R.gradscope(range(1, 201), norms)
    # above 5x the running average at 30; at 40 the same kind is held back (50 steps)
    assert _at(got, "grad-ema-spike") == [30, 100]
    assert _at(got, "grad-z-spike") == [30, 100]
    assert _at(got, "grad-explosion") == []
    low = R.gradscope([1, 2, 100], [1e-9, 1e-9, 1e-9])
    assert _at(low, "grad-vanishing") == [1, 100]
    assert _at(R.gradscope([1, 2], [1.0, math.nan])) == []


def test_each_rule_names_the_kinds_of_fault_it_speaks_of():
    assert set(R.KIND) == {rule for _, rule in R.RULES}
    assert R.KIND["cusum-down"] == ()
    assert "TS105" in R.KIND["grad-z-spike"]
