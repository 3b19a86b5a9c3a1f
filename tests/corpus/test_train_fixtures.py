"""The committed fixture corpus: labels match the runs, and each labelled fault is
visible in its log (so the detector benchmark scores against real symptoms)."""

from __future__ import annotations

import json
import math

import pytest
from train_helpers import events, median, steps

from tunescope.train.fixtures import SPECS, labels
from tunescope.train.trainer import REPO

RUNS = REPO / "fixtures" / "runs"
pytestmark = pytest.mark.skipif(not (RUNS / "LABELS.json").exists(), reason="no corpus")


def series(name, key, rank=0):
    return {s["step"]: s.get(key) for s in steps(RUNS / name, rank)}


def test_labels_file_matches_the_specs_and_the_folders():
    data = json.loads((RUNS / "LABELS.json").read_text())
    assert data == labels()
    assert set(data["runs"]) == {
        p.name for p in RUNS.iterdir() if p.is_dir() and not p.name.startswith(".")
    }
    for entry in data["runs"].values():
        assert entry["healthy"] == (not entry["faults"])
        for f in entry["faults"]:
            assert set(f) == {"detector", "rank", "first_step", "last_step", "note", "required"}
    assert sum(1 for e in data["runs"].values() if e["healthy"]) >= 3 + 3
    size = sum(
        p.stat().st_size for p in RUNS.rglob("*") if p.is_file() and ".tunescope" not in p.parts
    )
    assert size < 10 * 1024 * 1024


def test_runs_record_their_faults_and_are_long_enough():
    for spec in SPECS:
        ev = events(RUNS / spec.name)
        assert ev[0]["kind"] == "run_start"
        assert [f["spec"] for f in ev[0]["faults"]] == spec.inject
        assert len(steps(RUNS / spec.name)) >= 170


def test_healthy_runs_learn_then_flatten():
    for name in ("healthy-lora-s0", "healthy-lora-s1", "healthy-full-s2"):
        loss = series(name, "loss")
        early = median([loss[s] for s in range(1, 11)])
        mid = median([loss[s] for s in range(140, 161)])
        late = median([loss[s] for s in range(280, 301)])
        assert early > 4.0 and mid < early / 2 and late <= mid and mid - late < 0.6


def test_each_fault_shows_in_its_log():
    loss = series("fault-lr-spike", "loss")
    before = median([loss[s] for s in range(100, 120)])
    assert max(loss[s] for s in range(120, 140)) > 5 * before  # the jump
    assert median([loss[s] for s in range(200, 301)]) > 2.5 * before  # and it stays high
    loss = series("fault-bad-batch", "loss")
    around = median([loss[s] for s in range(140, 150)])
    assert loss[150] > 3 * around and median([loss[s] for s in range(152, 162)]) < 1.5 * around
    loss = series("fault-nan", "loss")
    assert all(math.isfinite(loss[s]) for s in range(1, 200))
    assert all(math.isnan(loss[s]) for s in range(200, 301))
    adapter = series("fault-freeze-adapter", "grad_norm_adapter")
    assert set(adapter.values()) == {0.0}
    mem = series("fault-leak", "mem_allocated_mb")
    assert mem[300] - mem[10] > 200
    c0 = median(list(series("fault-straggler-2rank", "compute_time_s", 0).values()))
    c1 = median(list(series("fault-straggler-2rank", "compute_time_s", 1).values()))
    assert c1 > 1.8 * c0  # a ratio: the same on a fast or a busy machine


def test_warmup_noise_recovers_resume_continues_and_kill_tears():
    lr = series("warmup-noise", "lr")
    assert lr[40] > 2.5 * lr[42]  # hot warmup, then the normal rate
    loss = series("warmup-noise", "loss")
    assert median([loss[s] for s in range(280, 301)]) < 1.5
    ev = events(RUNS / "resumed")
    assert [e["kind"] for e in ev if e["kind"] not in ("step", "checkpoint")] == [
        "run_start",
        "run_end",
        "resume",
        "run_end",
    ]
    assert ev[-1]["status"] == "completed"
    raw = (RUNS / "killed" / "events" / "rank-0.jsonl").read_bytes()
    assert not raw.endswith(b"\n")
    assert "run_end" not in raw.decode() and len(series("killed", "loss")) == 179


def test_detectors_find_every_labelled_fault_and_nothing_on_healthy_runs(tmp_path):
    from tunescope.detectors.engine import analyze
    from tunescope.ingest.store.database import Store

    data = json.loads((RUNS / "LABELS.json").read_text())
    found = analyze(Store.open(RUNS, tmp_path / "cache"))
    alarms = [f for f in found if f.severity.value in ("warning", "error")]
    for run, entry in data["runs"].items():
        mine = [f for f in alarms if f.run == run]
        for fault in entry["faults"]:
            hits = [
                f
                for f in mine
                if f.detector == fault["detector"]
                and f.step_start <= fault["last_step"]
                and (f.step_end or f.step_start) >= fault["first_step"]
                and fault["rank"] in (None, f.rank)
            ]
            assert hits or not fault["required"], f"{run}: {fault['detector']} not found"
        labelled = {f["detector"] for f in entry["faults"]}
        extra = [f"{f.detector}@{f.step_start}" for f in mine if f.detector not in labelled]
        assert not extra, f"{run}: unlabelled findings {extra}"
