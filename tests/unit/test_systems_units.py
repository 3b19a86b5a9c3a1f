"""Unit tests for the pieces the systems detectors are built from: the
vectorised trend test (against scipy), rank collapsing, option validation,
device capacity parsing, onset and level-shift estimates, an empty store."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from scipy import stats as sps

from tunescope.detectors import memory_growth
from tunescope.detectors.base import Context
from tunescope.detectors.scans import memory_windows, stats
from tunescope.detectors.scans.rankwise import collapse_ranks
from tunescope.findings import Finding, Severity
from tunescope.ingest.store.database import Store

MODULES = ["adapter_grads", "straggler", "throughput", "memory_growth"]


def test_trend_windows_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    n, w = 40, 12
    x = np.cumsum(rng.uniform(0.5, 2.0, size=(w, n)), axis=1)
    y = 0.05 * x * rng.uniform(-1, 1, size=(w, 1)) + rng.standard_normal((w, n))
    got = stats.trend_windows(x, y, alpha=0.99)
    for k in range(w):
        tau = sps.kendalltau(x[k], y[k])
        ts = sps.theilslopes(y[k], x[k], alpha=0.99)
        assert got.tau[k] == pytest.approx(tau.statistic, abs=1e-12)
        assert got.p[k] == pytest.approx(tau.pvalue, rel=0.15, abs=1e-6)
        assert got.slope[k] == pytest.approx(ts.slope, rel=1e-9, abs=1e-12)
        assert got.lo[k] == pytest.approx(ts.low_slope, rel=1e-9, abs=1e-12)
        assert got.hi[k] == pytest.approx(ts.high_slope, rel=1e-9, abs=1e-12)


def test_trend_windows_short_input() -> None:
    got = stats.trend_windows(np.array([[1.0, 2.0]]), np.array([[1.0, 5.0]]))
    assert got.p[0] == 1.0 and got.slope[0] == 0.0


def _f(rank: int | None, s0: int, s1: int, kind: str = "leak", sev: str = "warning") -> Finding:
    return Finding(
        "run",
        "TS401",
        "memory-growth",
        Severity(sev),
        s0,
        s1,
        f"rank {rank}: grew.",
        "fix",
        rank=rank,
        evidence={"kind": kind},
    )


def test_collapse_ranks_merges_only_incidents_on_every_rank() -> None:
    ranks = {"run": [0, 1]}
    merged = collapse_ranks([_f(0, 100, 500), _f(1, 120, 480, sev="error")], ranks)
    assert len(merged) == 1
    m = merged[0]
    assert m.rank is None and m.severity is Severity.ERROR
    assert (m.step_start, m.step_end) == (100, 500)
    assert m.message.startswith("every rank")
    assert m.evidence["ranks"] == {"0": [100, 500], "1": [120, 480]}
    # one rank only, or disjoint incidents, or different kinds: kept per rank
    assert [f.rank for f in collapse_ranks([_f(0, 100, 500)], ranks)] == [0]
    assert len(collapse_ranks([_f(0, 100, 200), _f(1, 400, 500)], ranks)) == 2
    assert len(collapse_ranks([_f(0, 100, 200), _f(1, 100, 200, kind="frag")], ranks)) == 2


@pytest.mark.parametrize(
    ("module", "bad"),
    [
        ("memory_growth", {"min_points": 3}),
        ("memory_growth", {"p_value": 2.0}),
        ("straggler", {"error_score": 0.95, "warn_score": 0.9}),
        ("straggler", {"window": 10, "min_window": 20}),
        ("throughput", {"drop": 1.5}),
        ("adapter_grads", {"vanish_ratio": 0.0}),
    ],
)
def test_options_reject_bad_values(module: str, bad: dict) -> None:
    mod = importlib.import_module(f"tunescope.detectors.{module}")
    with pytest.raises(ValueError):
        mod.Options(**bad)


@pytest.mark.parametrize("module", MODULES)
def test_module_contract(module: str) -> None:
    mod = importlib.import_module(f"tunescope.detectors.{module}")
    assert mod.ID.startswith("TS") and mod.NAME
    doc = mod.__doc__ or ""
    for section in ("What it flags", "Why it matters", "Example", "Suggestion", "Options"):
        assert section in doc, f"{module}: docstring lacks {section!r}"
    mod.Options()  # defaults are valid


def test_capacity_from_run_start() -> None:
    cap = memory_growth.capacity_mb
    assert cap({"device_memory_mb": 81920}, 3) == 81920
    assert cap({"device_memory_mb": [40960, 81920]}, 1) == 81920
    assert cap({"devices": [{"name": "H100", "memory_mb": 81559}]}, 0) == 81559
    assert cap({"config": {"device_memory_mb": 24576}}, 0) == 24576
    assert cap({"devices": ["cuda:0"]}, 0) is None
    assert cap({}, 0) is None


def test_onset_and_level_shift() -> None:
    rng = np.random.default_rng(0)
    x = np.arange(400.0)
    hinge = 100 + 0.5 * np.clip(x - 250, 0, None) + rng.normal(0, 1, 400)
    assert 235 <= memory_windows.onset(x, hinge) <= 265
    step = np.where(x < 200, 0.0, 50.0) + rng.normal(0, 1, 400)
    line = 0.25 * x + rng.normal(0, 1, 400)
    both = memory_windows.line_beats_step(np.stack([x, x]), np.stack([step, line]))
    assert list(both) == [False, True]


def test_empty_store(tmp_path) -> None:
    (tmp_path / "runs").mkdir()
    store = Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache")
    ctx = Context(store)
    for module in MODULES:
        mod = importlib.import_module(f"tunescope.detectors.{module}")
        assert mod.run(ctx, mod.Options()) == []
