"""Detectors are independent: each judges with its own options, and what
combines findings is one engine pass over the selected, configured ones.

- ignoring or re-tuning detector X never removes a finding of detector Y;
- every field of every ``Options`` is read by its detector;
- a filtered ``analyze`` filters its report and exit code, never the store;
- what a log cannot show is in the run summary (``limits``), not a finding.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detector_cases import one_rank_run, write_case

from tunescope.config import Config
from tunescope.detectors.engine import analyze, analyze_views, run_summaries
from tunescope.detectors.registry import DETECTORS
from tunescope.ingest.store.database import Store

REPO = Path(__file__).resolve().parents[2]
TUNESCOPE = str(Path(sys.executable).with_name("tunescope"))
IDS = [d.ID for d in DETECTORS]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """Runs where several detectors see one incident: a grad spike before a
    loss spike, a spike that never comes back (a divergence), a NaN, a
    sustained grad-norm explosion, a plateau, a spike at a resume."""
    base = tmp_path_factory.mktemp("indep")
    runs = {
        "linked": one_rank_run(
            400,
            1000,
            grad_norm={"scale": {"from": 195, "to": 195, "by": 40}},
            loss={"scale": {"from": 200, "to": 200, "by": 3.47}},
        ),
        "unrecovered": one_rank_run(400, 2000, loss={"scale": {"from": 250, "by": 3}}),
        "nan": one_rank_run(400, 3000, loss={"set": {"from": 300, "value": "nan"}}),
        "grad-explosion": one_rank_run(400, 4000, grad_norm={"scale": {"from": 220, "by": 60}}),
        "ramp": one_rank_run(400, 5000, loss={"ramp": {"from": 200, "rate": 0.006}}),
    }
    write_case({"runs": runs}, base / "runs")
    return Store.open(base / "runs", base / "cache")


def _keys(findings, detector: str) -> set[tuple]:
    return {(f.run, f.rank, f.step_start) for f in findings if f.detector == detector}


def test_the_corpus_exercises_the_engine_pass(store):
    found = analyze(store)
    by = {f.detector for f in found}
    assert {"TS101", "TS102", "TS001", "TS105"} <= by
    # the grad spike before the loss spike is told in the loss spike's finding
    linked = [f for f in found if f.run == "linked" and f.detector == "TS101"]
    assert linked and "grad norm spiked first" in linked[0].message
    assert not [f for f in found if f.run == "linked" and f.detector == "TS105"]


@pytest.mark.parametrize("x", IDS)
def test_ignoring_a_detector_never_removes_another_ones_findings(store, x):
    full = analyze(store)
    without = analyze(store, ignore=[x])
    for y in IDS:
        if y == x:
            continue
        lost = _keys(full, y) - _keys(without, y)
        assert not lost, f"--ignore {x} removed {y} findings {lost}"


@pytest.mark.parametrize(
    "x, options",
    [
        ("TS101", {"min-ratio": 100.0}),
        ("TS101", {"z": 1000.0, "z-consecutive": 1000.0}),
        ("TS105", {"min-ratio": 1000.0, "scale-ratio": 1000.0}),
        ("TS102", {"p-value": 1e-12, "rise-factor": 100.0, "stay-factor": 50.0}),
        ("TS001", {"max-transient-points": 1000}),
    ],
)
def test_retuning_a_detector_never_removes_another_ones_findings(store, x, options):
    full = analyze(store)
    cfg = Config(detectors={x: options})
    tuned = analyze(store, config=cfg)
    for y in IDS:
        if y != x:
            assert _keys(full, y) <= _keys(tuned, y), f"re-tuning {x} removed {y} findings"


def test_selecting_one_detector_reports_its_own_findings(store):
    """A spike covered by a divergence is still TS101's finding when TS101 is selected alone."""
    alone = analyze(store, select=["TS101"])
    assert any(f.run == "unrecovered" for f in alone)
    assert all(f.detector == "TS101" for f in alone)
    full = analyze(store)  # there, TS102's divergence is the incident's one finding
    assert not [f for f in full if f.run == "unrecovered" and f.detector == "TS101"]
    assert [f for f in full if f.run == "unrecovered" and f.detector == "TS102"]


def _options_views(tree: ast.Module) -> list[set[str]]:
    """The fields of each ``Protocol`` class of a module: the options a
    helper reads, declared in the helper (the detector's Options has them)."""
    views = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(b, ast.Name) and b.id == "Protocol" for b in node.bases
        ):
            views.append(
                {
                    n.target.id
                    for n in node.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                }
            )
    return views


def _attributes(module) -> set[str]:
    """Attribute names read in a detector's module and in the helper modules
    it imports that take its Options (a long detector's scoring beside it,
    which imports the Options or declares a Protocol of the fields it reads)."""
    names = set()
    fields = {f.name for f in dataclasses.fields(module.Options)}
    tree = ast.parse(inspect.getsource(module))
    sources = [tree]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "tunescope.detectors."
        ):
            helper = importlib.import_module(node.module)
            text = inspect.getsource(helper)
            parsed = ast.parse(text)
            views = _options_views(parsed)
            if f"from {module.__name__} import Options" in text or any(
                view and view <= fields for view in views
            ):
                sources.append(parsed)
    for source in sources:
        for node in ast.walk(source):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
    return names


@pytest.mark.parametrize("det", DETECTORS, ids=IDS)
def test_every_option_is_read(det):
    used = _attributes(det)
    unread = [f.name for f in dataclasses.fields(det.Options) if f.name not in used]
    assert not unread, f"{det.ID}: options never read: {unread}"


def test_filtered_analyze_keeps_the_full_analysis_in_the_store(tmp_path):
    runs = tmp_path / "runs"
    write_case(
        {
            "runs": {
                "ramp": one_rank_run(400, 5000, loss={"ramp": {"from": 200, "rate": 0.006}}),
                "spike": one_rank_run(400, 6000, loss={"scale": {"from": 300, "to": 300, "by": 3}}),
            }
        },
        runs,
    )
    env = {**os.environ, "NO_COLOR": "1"}

    def ts(*args):
        return subprocess.run(
            [TUNESCOPE, *args], capture_output=True, text=True, env=env, timeout=120
        )

    assert ts("analyze", str(runs)).returncode == 1
    before = ts("query", str(runs), "SELECT detector, run_id FROM findings ORDER BY ALL").stdout
    assert "TS102" in before and "TS101" in before
    r = ts("analyze", str(runs), "--select", "TS0", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["findings"] == []  # the report is filtered...
    after = ts("query", str(runs), "SELECT detector, run_id FROM findings ORDER BY ALL").stdout
    assert after == before  # ...the store is not


def test_limits_are_in_the_run_summary_not_findings(tmp_path):
    from tunescope.train.events import EventWriter

    root = tmp_path / "runs"
    with EventWriter(root / "foreign", rank=0) as w:
        w.run_start(format="some-trainer", per_rank=False, logging_steps=10)
        for step in range(10, 310, 10):
            w.step(step=step, loss=2.0 - step / 1000, lr=1e-4)
    for rank in (0, 1):
        with EventWriter(root / "two-ranks", rank=rank) as w:
            w.run_start(world_size=2)
            for step in range(1, 101):
                w.step(step=step, loss=2.0, grad_norm=1.0, mem_allocated_mb=1000.0)
    with EventWriter(root / "single", rank=0) as w:
        w.run_start(world_size=1)
        for step in range(1, 101):
            w.step(step=step, loss=2.0, grad_norm=1.0, step_time_s=0.3, mem_allocated_mb=1000.0)
    store = Store.open(root, tmp_path / "cache")
    _, full = analyze_views(store)
    assert not [f for f in full if f.detector == "TS301"]
    limits = {r["run"]: r["limits"] for r in run_summaries(store, full)}
    assert any("one row for all ranks" in x for x in limits["foreign"])
    assert any(x.startswith("gradient explosions") for x in limits["foreign"])
    assert any(x.startswith("memory growth") for x in limits["foreign"])
    assert any("log no compute_time_s" in x for x in limits["two-ranks"])
    assert limits["single"] == []
    r = subprocess.run(
        [TUNESCOPE, "analyze", str(root)], capture_output=True, text=True, timeout=120
    )
    assert (
        "  cannot show: stragglers and hung ranks: some-trainer has one row for all ranks"
        in r.stdout
    )


def test_batches_of_runs_give_the_same_findings_as_one_pass(store, monkeypatch):
    from tunescope.detectors import engine

    whole = [f.to_dict() for f in analyze(store)]
    assert engine.run_batches(store) == [None]
    monkeypatch.setattr(engine, "BATCH_ROWS", 700)  # about two runs of 400 steps a batch
    batches = engine.run_batches(store)
    assert len(batches) >= 3 and sorted(r for b in batches for r in b) == store.run_ids()
    assert [f.to_dict() for f in analyze(store)] == whole
    assert engine.run_batches(store, run_ids=[]) == []
