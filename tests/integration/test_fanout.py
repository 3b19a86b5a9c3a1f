"""``tunescope.analyze_runs``: the entry point of a fan-out job, and its
local-mode parallel form (a process per group of runs), against one
``analyze`` over the same runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import tunescope
from tunescope.cli import main
from tunescope.fanout import analyze_groups, findings_schema

FIXTURES = Path(__file__).parents[2] / "fixtures" / "runs"
RUNS = ["healthy-lora-s0", "fault-nan", "fault-straggler-2rank", "fault-lr-spike"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fan") / "runs"
    for name in RUNS:
        shutil.copytree(FIXTURES / name, root / name)
    return root


def keys(rows):
    return sorted((r["run_id"], r["detector"], r["rank"], r["step_start"]) for r in rows)


def test_analyze_runs_matches_analyze(runs, tmp_path, capsys):
    assert main(["analyze", str(runs), "--format", "json", "--cache-dir", str(tmp_path / "a")]) == 1
    want = json.loads(capsys.readouterr().out)["findings"]
    table = tunescope.analyze_runs([runs / n for n in RUNS], cache_dir=tmp_path / "b")
    assert table.schema == findings_schema()
    got = table.to_pylist()
    # each path alone: the same findings, but for the cross-run detectors' (siblings in one path)
    want = [f for f in want if f["detector"] not in ("TS501",)]
    got_alone = [r for r in got if r["detector"] not in ("TS501",)]
    assert keys(got_alone) == sorted(
        (f["run"], f["detector"], f["rank"], f["step_start"]) for f in want
    )
    assert {r["root"] for r in got} <= {str(runs / n) for n in RUNS}
    assert {r["run_id"] for r in got} >= {"fault-nan", "fault-lr-spike"}


def test_groups_in_parallel_processes_equal_one_pass(runs, tmp_path):
    paths = [runs / n for n in RUNS]
    serial = tunescope.analyze_runs(paths, cache_dir=tmp_path / "s")
    groups = [paths[:2], paths[2:]]
    parallel = analyze_groups(groups, workers=2, cache_dir=tmp_path / "p")
    assert parallel.num_rows == serial.num_rows > 0
    assert keys(parallel.to_pylist()) == keys(serial.to_pylist())
    # each task stored its findings in its path's cache: a later export sees them
    caches = list((tmp_path / "p").iterdir())
    assert len(caches) == len(RUNS)
    assert all(json.loads((c / "manifest.json").read_text())["findings"] for c in caches)


def test_select_filters_the_table(runs, tmp_path):
    table = tunescope.analyze_runs([runs], cache_dir=tmp_path, select=["TS301"])
    assert set(table.column("detector").to_pylist()) == {"TS301"}
