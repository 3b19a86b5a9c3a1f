"""StepRecorder, the one recorder behind the loggers for other trainers: a
framework's metric dicts in, this rank's events out (real files, and a real
child process for the exits)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from train_helpers import events, steps

from tunescope.train.integrations.recorder import StepRecorder, scalar


def test_a_step_logged_in_several_calls_is_one_event(tmp_path):
    r = StepRecorder(tmp_path / "run")
    r.log({"lr-AdamW": 0.1}, step=1)  # what a learning-rate monitor logs first
    r.log({"train_loss": 2.0, "grad_norm": 0.5}, step=1)
    r.log({"train_loss": 1.5}, step=2)
    r.log({"train_loss": 1.4}, step=2)  # a later value for the same step wins
    r.finish()
    rows = steps(tmp_path / "run")
    assert [(s["step"], s.get("lr"), s["loss"], s.get("grad_norm")) for s in rows] == [
        (1, 0.1, 2.0, 0.5),
        (2, None, 1.4, None),
    ]
    assert rows[1]["step_time_s"] >= 0 and rows[1]["mem_allocated_mb"] > 0
    kinds = [e["kind"] for e in events(tmp_path / "run")]
    assert kinds == ["run_start", "step", "step", "run_end"]


def test_an_evaluation_between_two_calls_for_a_step_does_not_split_it(tmp_path):
    r = StepRecorder(tmp_path / "run")
    r.log({"loss": 2.0}, step=4)
    r.log({"val_loss": 2.2}, step=3)  # an evaluation logged late, under its own step
    r.log({"lr": 0.1}, step=4)
    r.finish()
    ev = events(tmp_path / "run")
    assert [(e["kind"], e.get("step")) for e in ev[1:-1]] == [("eval", 3), ("step", 4)]
    assert ev[2]["loss"] == 2.0 and ev[2]["lr"] == 0.1


def test_names_go_through_the_vocabulary(tmp_path):
    r = StepRecorder(tmp_path / "run")
    r.log(
        {
            "train/loss": 2.5,
            "learning_rate": 1e-4,
            "it/s": 4.0,  # a rate: inverted into seconds per step
            "tokens_per_second": 900.0,
            "epoch": 0.5,
            "val_loss": 2.7,  # an evaluation: its own event
            "reward_mean": 0.25,  # unknown: kept under its own name
            "step": 7,  # a counter, not a metric
            "note": "text is skipped",
        },
        step=3,
    )
    r.finish()
    (row,) = steps(tmp_path / "run")
    assert row["loss"] == 2.5 and row["lr"] == 1e-4 and row["epoch"] == 0.5
    assert row["step_time_s"] == pytest.approx(0.25)
    assert row["tokens_per_s"] == 900.0 and row["reward_mean"] == 0.25
    assert row["step"] == 3 and "note" not in row and "val_loss" not in row
    (ev,) = [e for e in events(tmp_path / "run") if e["kind"] == "eval"]
    assert ev["step"] == 3 and ev["eval_loss"] == 2.7


def test_an_exact_canonical_name_beats_an_alias_and_overrides_beat_both(tmp_path):
    r = StepRecorder(tmp_path / "run", names={"peak_gib": ("mem_peak_mb", 1024), "obj": "loss"})
    r.log({"train_loss": 1.0, "loss": 2.0, "peak_gib": 1.5}, step=1)
    r.log({"obj": 3.0, "train_loss": 4.0}, step=2)
    r.finish()
    a, b = steps(tmp_path / "run")
    assert a["loss"] == 2.0 and a["train_loss"] == 1.0  # the alias kept under its own name
    assert a["mem_peak_mb"] == 1536.0
    assert b["loss"] == 3.0 and b["train_loss"] == 4.0


def test_tensors_numpy_and_non_finite_values_are_written_as_they_are(tmp_path):
    assert scalar(torch.tensor(2.5)) == 2.5 and scalar(np.float32(0.5)) == 0.5
    assert scalar(torch.ones(3)) is None and scalar("2.5") is None and scalar(None) is None
    r = StepRecorder(tmp_path / "run")
    r.log({"loss": torch.tensor(float("nan")), "grad_norm": np.float64("inf")})
    r.log({"loss": 1.0})  # no step given: one after the last
    r.finish("failed", "boom")
    rows = steps(tmp_path / "run")
    assert [s["step"] for s in rows] == [1, 2]
    assert math.isnan(rows[0]["loss"]) and rows[0]["grad_norm"] == math.inf
    end = events(tmp_path / "run")[-1]
    assert (end["kind"], end["status"], end["error"]) == ("run_end", "failed", "boom")


def test_configuration_goes_into_run_start(tmp_path):
    r = StepRecorder(tmp_path / "run", run_start={"model": "tiny", "total_steps": 4})
    r.config({"lr": 0.1, "opt": {"name": "adamw", "betas": (0.9, 0.99)}, "fn": print})
    r.config({"late": True})  # after run_start: too late, dropped
    r.log({"loss": 1.0}, step=1)
    r.finish()
    start = events(tmp_path / "run")[0]
    assert start["kind"] == "run_start" and start["model"] == "tiny" and start["total_steps"] == 4
    assert start["config"]["opt"] == {"name": "adamw", "betas": [0.9, 0.99]}
    assert start["config"]["fn"] == str(print) and "late" not in start["config"]
    assert start["per_rank"] is True and start["host"]


def _child(tmp_path, body: str) -> subprocess.CompletedProcess[str]:
    code = "from tunescope.train.integrations.recorder import StepRecorder\n"
    code += f"r = StepRecorder({str(tmp_path / 'run')!r}, rank=2)\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_loop_that_never_finishes_is_ended_at_exit(tmp_path):
    proc = _child(tmp_path, "r.log({'loss': 1.0}, 1)\nr.log({'loss': 0.9}, 2)\n")
    assert proc.returncode == 0, proc.stderr
    ev = events(tmp_path / "run", rank=2)
    assert [e["kind"] for e in ev] == ["run_start", "step", "step", "run_end"]
    assert ev[-1]["status"] == "interrupted" and ev[2]["loss"] == 0.9  # the pending step too


def test_a_loop_that_raises_is_ended_as_failed_with_the_error(tmp_path):
    proc = _child(tmp_path, "r.log({'loss': 1.0}, 1)\nraise ValueError('bad batch')\n")
    assert proc.returncode == 1 and "bad batch" in proc.stderr
    end = events(tmp_path / "run", rank=2)[-1]
    assert (end["status"], end["error"]) == ("failed", "ValueError: bad batch")
