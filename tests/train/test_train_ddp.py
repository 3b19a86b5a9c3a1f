"""A real two-process torchrun (gloo) run of the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import events, median, steps

from tunescope.train.trainer import REPO

pytestmark = pytest.mark.slow


def test_two_ranks_write_two_logs_and_expose_a_straggler(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "tunescope.train", str(REPO / "fixtures" / "configs" / "lora.yaml")]
    for s in (f"output_dir={run}", "max_steps=6", "batch_size=4", "seq_len=64", "cpu_threads=1"):
        cmd += ["--set", s]
    cmd += ["--inject", "straggler:1:0.5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert sorted(p.name for p in (run / "events").glob("*.jsonl")) == [
        "rank-0.jsonl",
        "rank-1.jsonl",
    ]
    per_rank = {}
    for rank in (0, 1):
        ev = events(run, rank)
        assert ev[0]["kind"] == "run_start" and ev[0]["world_size"] == 2
        assert ev[0]["faults"][0]["kind"] == "straggler"
        assert ev[-1]["kind"] == "run_end" and ev[-1]["status"] == "completed"
        assert all(e["rank"] == rank for e in ev)
        per_rank[rank] = steps(run, rank)
        assert [s["step"] for s in per_rank[rank]] == [1, 2, 3, 4, 5, 6]

    # Each rank logs its own loss and batch, not an average.
    assert per_rank[0][2]["sample_ids"] != per_rank[1][2]["sample_ids"]
    assert per_rank[0][2]["loss"] != per_rank[1][2]["loss"]
    # The gradients are all-reduced: both ranks see the same norm.
    assert per_rank[0][2]["grad_norm"] == pytest.approx(per_rank[1][2]["grad_norm"], rel=1e-4)

    # Rank 1 computes 0.5 s longer; rank 0 waits for it in the all-reduce, so the
    # step times stay equal and only compute_time_s shows who is slow.
    c0 = median([s["compute_time_s"] for s in per_rank[0][1:]])
    c1 = median([s["compute_time_s"] for s in per_rank[1][1:]])
    t0 = median([s["step_time_s"] for s in per_rank[0][1:]])
    t1 = median([s["step_time_s"] for s in per_rank[1][1:]])
    assert c1 - c0 > 0.35, (c0, c1)
    assert abs(t1 - t0) < (c1 - c0) / 2, (t0, t1, c0, c1)


def test_ctrl_c_during_nproc_2_is_one_line_and_both_logs_say_interrupted(tmp_path):
    import signal
    import time

    run = tmp_path / "ddp-stop"
    cmd = [str(Path(sys.executable).with_name("tunescope")), "train"]
    cmd += [str(REPO / "fixtures" / "configs" / "lora.yaml"), "--nproc", "2"]
    for s in (f"output_dir={run}", "max_steps=100000", "batch_size=4", "seq_len=64"):
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until both ranks are training
        logs = [run / "events" / f"rank-{r}.jsonl" for r in (0, 1)]
        if all(p.exists() and p.read_text().count('"kind":"step"') >= 2 for p in logs):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends this process
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert len(err.strip().splitlines()) <= 2, err
    assert "interrupted" in err
    for rank in (0, 1):
        ev = events(run, rank)
        assert ev[-1]["kind"] == "run_end" and ev[-1]["status"] == "interrupted"
