"""TunescopeTracker in a home-made accelerate loop: one process logging
through ``accelerator.log``, and two under torchrun (gloo), each rank
logging its own loss through the tracker."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import events, nonfinite_findings, steps

pytestmark = pytest.mark.slow

LOOP = Path(__file__).resolve().parents[1] / "helpers" / "accelerate_loop.py"
LR, STEPS = 0.05, 8  # as in accelerate_loop.py


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _eval(finding: dict) -> bool:
    return json.loads(finding["evidence"]).get("kind") == "eval"


def test_one_process_writes_the_run_and_analyze_finds_the_nan(tmp_path):
    run = tmp_path / "runs" / "acc"
    _run([sys.executable, str(LOOP), str(run), "0", "5", "accelerator"])

    ev = events(run)
    assert ev[0]["kind"] == "run_start"
    assert ev[0]["config"] == {"lr": LR, "steps": STEPS}
    assert ev[0]["world_size"] == 1 and ev[0]["per_rank"] is True
    assert ev[-1] == {**ev[-1], "kind": "run_end", "status": "completed"}
    rows = steps(run)
    assert [s["step"] for s in rows] == list(range(1, STEPS + 1))  # one event per step
    for s in rows:
        # the loop's own schedule, under the canonical name
        assert s["lr"] == pytest.approx(LR * (1 - (s["step"] - 1) / (2 * STEPS)))
        assert s["mem_allocated_mb"] > 0
        assert "train_loss" not in s and "learning_rate" not in s
    assert all(math.isfinite(s["loss"]) and s["grad_norm"] > 0 for s in rows[:4])
    assert math.isnan(rows[4]["loss"]) and math.isnan(rows[4]["grad_norm"])
    assert all(s["step_time_s"] > 0 for s in rows[1:])
    assert [(e["step"], "eval_loss" in e) for e in ev if e["kind"] == "eval"] == [
        (4, True),
        (8, True),
    ]

    found = [f for f in nonfinite_findings(run.parent) if not _eval(f)]
    assert [(f["rank"], f["step_start"], f["severity"]) for f in found] == [(0, 5, "error")]


def test_two_ranks_each_write_their_own_loss(tmp_path):
    run = tmp_path / "runs" / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run([*cmd, str(LOOP), str(run), "1", "3", "tracker"])  # rank 1 alone goes NaN at step 3

    assert sorted(p.name for p in (run / "events").glob("*.jsonl")) == [
        "rank-0.jsonl",
        "rank-1.jsonl",
    ]
    for rank in (0, 1):
        ev = events(run, rank)
        assert ev[0]["world_size"] == 2 and all(e["rank"] == rank for e in ev)
        assert ev[-1]["status"] == "completed"
    loss = {rank: {s["step"]: s["loss"] for s in steps(run, rank)} for rank in (0, 1)}
    assert math.isnan(loss[1][3]) and math.isfinite(loss[0][3])  # each rank's own loss
    assert loss[0][1] != loss[1][1]  # different data per rank

    # DDP averages rank 1's NaN gradients into rank 0's at the same step: one
    # finding for both ranks, at step 3
    found = [f for f in nonfinite_findings(run.parent) if not _eval(f)]
    assert [(f["step_start"], json.loads(f["evidence"]).get("ranks")) for f in found] == [
        (3, [0, 1])
    ]
