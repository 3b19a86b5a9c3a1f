"""``analyze_store``: the one function that analyses a store and stores what
it computed, over real runs, a real DuckDB and the real detectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from detector_cases import one_rank_run, write_case

from tunescope.analysis import analyze_store
from tunescope.config import parse_config
from tunescope.detectors import engine, loss_spike
from tunescope.findings import Finding, Severity
from tunescope.ingest.store.database import Store

METRICS = {
    "loss": {"start": 2.5, "end": 1.5, "tau": 10, "log_noise": 0.01},
    "lr": {"peak": 1e-4, "decay": "constant"},
}


def nan_run(seed: int) -> dict[str, Any]:
    """A run whose loss turns NaN at step 30: TS001 and TS102 both see it, and
    TS001's finding covers TS102's (one incident)."""
    return one_rank_run(40, seed, METRICS, loss={"set": {"from": 30, "value": "nan"}})


@pytest.fixture
def store(tmp_path: Path):
    write_case({"runs": {"a": nan_run(1), "b": nan_run(2)}}, tmp_path / "runs")
    s = Store.open(tmp_path / "runs", tmp_path / "cache")
    yield s
    s.close()


def stored(store: Store) -> list[tuple[str, str, int | None]]:
    rows = store.cursor().execute("SELECT run_id, detector, step_start FROM findings ORDER BY ALL")
    return [tuple(r) for r in rows.fetchall()]


def keys(findings: list[Finding]) -> list[tuple[str, str, int | None]]:
    return sorted((f.run, f.detector, f.step_start) for f in findings)


def test_it_stores_what_it_computes(store: Store) -> None:
    analysis = analyze_store(store)
    assert analysis.run_ids == ["a", "b"]
    assert keys(analysis.full) == [("a", "TS001", 30), ("b", "TS001", 30)]
    assert analysis.found == analysis.full  # no select/ignore: one view
    assert stored(store) == keys(analysis.full)
    # a second reader of the same cache (as `tunescope query` is) sees them
    again = Store.open(store.root, store.cache.dir)
    try:
        assert stored(again) == keys(analysis.full)
    finally:
        again.close()


def test_select_filters_the_result_never_the_store(store: Store) -> None:
    analysis = analyze_store(store, select=["TS1"])
    # TS001 not chosen: TS102 tells the non-finite loss in the selected view
    assert keys(analysis.found) == [("a", "TS102", 30), ("b", "TS102", 30)]
    assert keys(analysis.full) == [("a", "TS001", 30), ("b", "TS001", 30)]
    assert stored(store) == keys(analysis.full)
    cfg = parse_config({"ignore": ["TS0"]})  # the config's ignore is what is enabled
    analysis = analyze_store(store, cfg)
    assert keys(analysis.full) == keys(analysis.found) == [("a", "TS102", 30), ("b", "TS102", 30)]
    assert stored(store) == keys(analysis.full)


def test_run_ids_replace_those_runs_findings_only(store: Store) -> None:
    analyze_store(store, parse_config({"ignore": ["TS0"]}))  # TS102 for both runs
    assert store.cache.load_manifest()["findings_key"] is not None  # the whole table
    analysis = analyze_store(store, run_ids=["a"])
    assert analysis.run_ids == ["a"]
    assert keys(analysis.found) == keys(analysis.full) == [("a", "TS001", 30)]
    assert stored(store) == [("a", "TS001", 30), ("b", "TS102", 30)]
    # some runs only: what the whole table was made from is no longer known
    assert store.cache.load_manifest()["findings_key"] is None
    assert analyze_store(store, run_ids=[]).run_ids == []
    assert stored(store) == [("a", "TS001", 30), ("b", "TS102", 30)]


def test_unchanged_runs_are_not_analysed_again(store: Store, monkeypatch) -> None:
    first = analyze_store(store)
    stored_file = store.cache.load_manifest()["findings"]

    def boom(ctx: Any, opts: Any) -> list[Finding]:
        raise RuntimeError("a detector ran")

    monkeypatch.setattr(loss_spike, "run", boom)
    again = analyze_store(store)  # every run's findings come from the memo
    assert keys(again.full) == keys(first.full) and again.memo is not None
    assert store.cache.load_manifest()["findings"] == stored_file  # not stored again
    with pytest.raises(engine.DetectorError, match="a detector ran"):
        analyze_store(store, reuse=False)
    assert store.cache.load_manifest()["findings"] == stored_file  # nothing stored


def test_a_detect_function_replaces_the_detectors(store: Store) -> None:
    calls: list[dict[str, Any]] = []

    def detect(store: Store, **kw: Any) -> list[Finding]:
        calls.append(kw)
        return [
            Finding(run, "X1", "probe", Severity.WARNING, 3, 4, "probe", "none")
            for run in ("a", "b", "gone")
        ]

    analysis = analyze_store(store, select=["X"], run_ids=["b"], detect=detect)
    assert calls == [{"select": ["X"], "ignore": None, "config": None, "run_ids": ["b"]}]
    assert keys(analysis.found) == keys(analysis.full) == [("b", "X1", 3)]  # about b only
    assert analysis.memo is None
    assert stored(store) == [("b", "X1", 3)]
