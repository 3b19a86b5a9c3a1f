"""Each injected fault shows its symptom in a real (short) training run's log."""

from __future__ import annotations

import math

import pytest
from train_helpers import events, median, steps, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """freeze_adapter + bad_batch@10 + leak:8 + nan@20 + slowdown@12:x12 in one 24-step run."""
    from tunescope.train.trainer import train

    out = tmp_path_factory.mktemp("faults-a")
    cfg = tiny_config(
        out,
        max_steps=24,
        inject=["freeze_adapter", "bad_batch@10", "leak:8", "nan@20", "slowdown@12:x12"],
    )
    assert train(cfg) == 0
    return out


@pytest.fixture(scope="module")
def run_b(tmp_path_factory):
    """warmup_noise:4 + lr_spike@16:50 in one 30-step run with 5 warmup steps."""
    from tunescope.train.trainer import train

    out = tmp_path_factory.mktemp("faults-b")
    cfg = tiny_config(
        out, max_steps=30, warmup_steps=5, inject=["warmup_noise:4", "lr_spike@16:50"]
    )
    assert train(cfg) == 0
    return out


def by_step(run, key):
    return {s["step"]: s[key] for s in steps(run)}


def test_faults_are_recorded_in_run_start(run_a):
    start = events(run_a)[0]
    assert start["kind"] == "run_start"
    kinds = [f["kind"] for f in start["faults"]]
    assert kinds == ["freeze_adapter", "bad_batch", "leak", "nan", "slowdown"]
    assert start["faults"][1]["step"] == 10


def test_freeze_adapter_gives_zero_adapter_gradients(run_a):
    rows = [s for s in steps(run_a) if s["step"] < 20]
    assert rows and all(s["grad_norm_adapter"] == 0.0 for s in rows)
    assert all(s["grad_norm_backbone"] > 0 for s in rows)  # embeddings/head still learn


def test_bad_batch_is_a_transient_spike(run_a):
    loss = by_step(run_a, "loss")
    before = median([loss[s] for s in range(5, 10)])
    after = median([loss[s] for s in range(13, 19)])
    assert loss[10] > 1.3 * before
    assert after < loss[10] * 0.8


def test_nan_from_its_step_on_and_not_filtered(run_a):
    loss = by_step(run_a, "loss")
    assert all(math.isfinite(loss[s]) for s in range(1, 20))
    assert all(math.isnan(loss[s]) for s in range(20, 25))
    assert math.isnan(by_step(run_a, "grad_norm")[20])


def test_leak_raises_the_memory_floor(run_a):
    mem = by_step(run_a, "mem_allocated_mb")
    grown = mem[24] - mem[4]
    assert grown > 0.7 * 8 * 20, f"RSS grew {grown:.0f} MiB over 20 steps with leak:8"


def test_slowdown_is_a_ratio_of_the_steps_own_time(run_a):
    # every forward from step 12 on takes 12x as long (about 4x the step with its
    # backward, so machine noise cannot hide it): a drop in throughput that
    # is the same on an idle or a busy machine (a ratio, not seconds)
    compute = by_step(run_a, "compute_time_s")
    before = median([compute[s] for s in range(3, 10)])
    after = median([compute[s] for s in range(13, 20)])
    assert after > 1.8 * before, f"compute time {before:.3f} -> {after:.3f} s with slowdown x12"


def test_warmup_noise_multiplies_lr_only_during_warmup(run_b):
    lr = by_step(run_b, "lr")
    base = events(run_b)[0]["config"]["lr"]
    for s in range(2, 6):  # the scheduler's warmup: base * (s - 1) / 5
        assert lr[s] == pytest.approx(4 * base * (s - 1) / 5, rel=1e-6)
    assert lr[6] == pytest.approx(base, rel=1e-6)


def test_lr_spike_diverges(run_b):
    lr = by_step(run_b, "lr")
    loss = by_step(run_b, "loss")
    assert lr[16] > 20 * lr[15]
    before = median([loss[s] for s in range(11, 16)])
    after = median([loss[s] for s in range(22, 31)])
    assert after > before + 0.5, f"loss {before:.2f} -> {after:.2f} after lr x50"
