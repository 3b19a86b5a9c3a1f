"""The guard: real training runs of the tiny model with injected faults, where
the training process acts on what the detectors find."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import events, steps, tiny_config

from tunescope.train.guard import GuardPolicy
from tunescope.train.rewind import SkipList
from tunescope.train.trainer import REPO, train

pytestmark = pytest.mark.slow


def _interventions(run: Path, rank: int = 0) -> list[dict]:
    return [e for e in events(run, rank) if e["kind"] == "intervention"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunescope.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_policy_shorthands_mappings_and_errors(tmp_path):
    assert not GuardPolicy.parse("report").active
    p = GuardPolicy.parse("rewind")
    assert (p.nonfinite, p.divergence, p.memory) == ("skip", "rewind", "checkpoint")
    p = GuardPolicy.parse({"policy": "skip", "divergence": "stop", "skip_limit": 2})
    assert (p.nonfinite, p.divergence, p.memory, p.skip_limit) == ("skip", "stop", "report", 2)
    with pytest.raises(ValueError, match="guard divergence: expected one of report, stop, rewind"):
        GuardPolicy.parse({"divergence": "retry"})
    with pytest.raises(ValueError, match="unknown key 'nan'"):
        GuardPolicy.parse({"nan": "skip"})
    with pytest.raises(ValueError, match="set save_steps > 0"):
        tiny_config(tmp_path, guard="rewind")
    cfg = tiny_config(tmp_path, guard="{nonfinite: skip, memory: checkpoint}")
    assert GuardPolicy.parse(cfg.guard).memory == "checkpoint"
    # positions of trained batches around skipped ones, across an epoch boundary
    skips = SkipList([(0, 2), (0, 3), (1, 0)])
    assert [skips.position_of(k, 5) for k in (0, 1, 2, 3, 4)] == [
        (0, 0),
        (0, 1),
        (0, 4),
        (1, 1),
        (1, 2),
    ]


def test_skip_a_nan_step_and_finish_healthy(tmp_path):
    run = tmp_path / "nan-skip"
    assert train(tiny_config(run, max_steps=30, inject=["nan@20"], guard="skip")) == 0
    rows = steps(run)
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert math.isnan(rows[19]["loss"])  # the bad step is logged as it was
    assert all(math.isfinite(r["loss"]) for r in rows[20:])  # the weights were not poisoned
    assert rows[-1]["loss"] < rows[0]["loss"] / 2
    (iv,) = _interventions(run)
    assert (iv["step"], iv["action"], iv["finding"], iv["steps"]) == (20, "skip", "TS001", [20, 20])
    assert events(run)[-1] == {**events(run)[-1], "kind": "run_end", "status": "completed"}

    out = _cli("analyze", str(run), "--exit-zero")
    assert "guard: skip at step 20 (TS001)" in out.stdout, out.stdout + out.stderr
    out = _cli(
        "query",
        str(run),
        "SELECT count(*) AS n FROM events WHERE kind = 'intervention' AND payload->>'action' = 'skip'",
        "--format",
        "csv",
    )
    assert out.stdout.split() == ["n", "1"], out.stdout + out.stderr


def test_repeated_non_finite_steps_escalate_to_stop_with_a_checkpoint(tmp_path):
    run = tmp_path / "nan-stop"
    cfg = tiny_config(run, max_steps=20, inject=["nan@5", "nan@6", "nan@7"], guard="skip")
    assert train(cfg) == 1
    acts = [(e["step"], e["action"]) for e in _interventions(run)]
    assert acts == [(5, "skip"), (6, "skip"), (7, "skip"), (7, "stop")]
    assert (run / "checkpoint-7").is_dir()
    end = events(run)[-1]
    assert end["kind"] == "run_end" and end["status"] == "interrupted"
    assert end["guard"]["resume"] == f"resume_from_checkpoint={run / 'checkpoint-7'}"
    assert steps(run)[-1]["step"] == 7


REWIND = {
    "max_steps": 200,
    "batch_size": 8,
    "seq_len": 64,
    "warmup_steps": 20,
    "save_steps": 20,
    "save_total_limit": 10,
}


def _final(run: Path) -> float:
    """The final loss: the mean of the last 10 steps (one step's loss of a
    batch of 8 varies by +-20%)."""
    last = {}
    for r in steps(run):
        last[r["step"]] = r["loss"]  # the newest write of a step wins
    return sum(last[s] for s in sorted(last)[-10:]) / 10


def test_rewind_recovers_from_a_divergence_reproducibly(tmp_path):
    healthy, a, b = tmp_path / "healthy", tmp_path / "rewind-a", tmp_path / "rewind-b"
    assert train(tiny_config(healthy, **REWIND)) == 0
    spike = {**REWIND, "inject": ["lr_spike@120:30"], "guard": "rewind"}
    assert train(tiny_config(a, **spike)) == 0
    (iv,) = _interventions(a)
    assert iv["action"] == "rewind" and iv["finding"] == "TS102"
    first, detected = iv["steps"]
    back = int(Path(iv["checkpoint"]).name.split("-")[1])
    assert back < first <= 121 < detected
    # without the guard the run had diverged by the detection step
    before = {r["step"]: r["loss"] for r in steps(a) if r["ts"] <= iv["ts"]}
    base = {r["step"]: r["loss"] for r in steps(healthy)}
    assert before[detected] > 2 * base[detected]
    # after it: the batches from the onset to the detection were never trained
    # again, the lr is halved, and the run ends near the healthy one
    resumed = [e for e in events(a) if e["kind"] == "resume"]
    assert [e["from_step"] for e in resumed] == [back]
    assert iv["lr_factor"] == 0.5
    skipped = json.loads((a / "guard-skips.json").read_text())["skip"]
    assert len(skipped) == detected - first + 1 == iv["skipped_batches"]
    assert abs(_final(a) - _final(healthy)) < 0.1 * _final(healthy)
    assert events(a)[-1]["status"] == "completed" and steps(a)[-1]["step"] == 200

    # a later plain resume lands on the same batches (the skip list is kept)
    after = {r["step"]: r for r in steps(a) if r["ts"] > iv["ts"]}
    n_before = len(steps(a))
    assert train(tiny_config(a, **REWIND, resume_from_checkpoint=str(a / "checkpoint-180"))) == 0
    redo = steps(a)[n_before:]
    assert [r["step"] for r in redo] == list(range(181, 201))
    for r in redo:
        assert r["sample_ids"] == after[r["step"]]["sample_ids"]
        assert r["loss"] == pytest.approx(after[r["step"]]["loss"], abs=1e-4)

    # the same seed and faults: the same steps skipped, the same final loss
    assert train(tiny_config(b, **spike)) == 0
    assert _interventions(b)[0]["steps"] == iv["steps"]
    assert json.loads((b / "guard-skips.json").read_text())["skip"] == skipped
    assert _final(b) == _final(a)


def test_checkpoint_before_a_forecast_out_of_memory_and_resume_exactly(tmp_path):
    import peft  # noqa: F401
    import psutil
    import torch  # noqa: F401
    import transformers  # noqa: F401

    run = tmp_path / "leak"
    # a leak of 6 MiB per step against a "device" (the process RSS on CPU) that
    # fills up about 120 steps in
    cap = psutil.Process().memory_info().rss / 2**20 + 100 + 6 * 120
    cfg = tiny_config(run, max_steps=160, inject=["leak:6"], guard="stop", device_memory_mb=cap)
    assert train(cfg) == 0
    (iv,) = _interventions(run)
    assert (iv["action"], iv["finding"]) == ("checkpoint", "TS401")
    saved = iv["step"]
    assert (run / f"checkpoint-{saved}").is_dir()
    first = {r["step"]: r for r in steps(run)}
    assert first[saved]["mem_allocated_mb"] < cap  # saved while there was room
    assert "before the planned end" in iv["reason"]

    # resuming from it (the leak fixed) replays the next steps exactly
    resume = tiny_config(
        run, max_steps=160, stop_at_step=saved + 5, resume_from_checkpoint=iv["checkpoint"]
    )
    n_before = len(steps(run))
    assert train(resume) == 0
    redo = steps(run)[n_before:]
    assert [r["step"] for r in redo] == list(range(saved + 1, saved + 6))
    for r in redo:
        assert r["loss"] == pytest.approx(first[r["step"]]["loss"], abs=1e-4)
        assert r["sample_ids"] == first[r["step"]]["sample_ids"]


def test_ddp_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    run = tmp_path / "ddp-nan"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "tunescope.train", str(REPO / "fixtures" / "configs" / "lora.yaml")]
    for s in (f"output_dir={run}", "max_steps=8", "batch_size=4", "seq_len=64", "progress=false"):
        cmd += ["--set", s]
    cmd += ["--inject", "nan@4:1", "--guard", "skip"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a hang (one rank skipping alone) fails here instead of blocking the suite
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        acts = [(e["step"], e["action"]) for e in _interventions(run, rank)]
        assert acts == [(4, "skip")], (rank, acts)
        assert events(run, rank)[-1]["status"] == "completed"
        rows = steps(run, rank)
        assert [r["step"] for r in rows] == list(range(1, 9))
        assert all(math.isfinite(r["loss"]) for r in rows[4:])
    # only rank 1 had the NaN loss; rank 0 skipped with it
    assert math.isnan(steps(run, 1)[3]["loss"]) and math.isfinite(steps(run, 0)[3]["loss"])


HANG = {"hang": "checkpoint", "hang_factor": 4, "hang_min_seconds": 1.5}


def test_a_hung_step_gets_a_checkpoint_and_resume_continues_exactly(tmp_path):
    run = tmp_path / "hang"
    guard = json.dumps(HANG)
    cfg = tiny_config(run, max_steps=14, inject=["hang@8:8"], guard=guard)
    assert train(cfg) == 0  # the hang ends after 8 s; the watchdog acted during it
    (iv,) = _interventions(run)
    assert (iv["step"], iv["action"], iv["finding"]) == (8, "checkpoint", "TS301")
    assert "a rank is hung in step 8" in iv["reason"]
    ckpt = run / "checkpoint-7"
    assert iv["checkpoint"] == str(ckpt)
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 7
    first = {r["step"]: r for r in steps(run)}
    # the intervention was written while step 8 was stuck, before it ended
    assert first[7]["ts"] < iv["ts"] < first[8]["ts"]

    # a resume from the watchdog's checkpoint replays the next steps exactly
    n_before = len(steps(run))
    assert train(tiny_config(run, max_steps=14, resume_from_checkpoint=str(ckpt))) == 0
    redo = steps(run)[n_before:]
    assert [r["step"] for r in redo] == list(range(8, 15))
    for r in redo:
        assert r["sample_ids"] == first[r["step"]]["sample_ids"]
        assert r["loss"] == pytest.approx(first[r["step"]]["loss"], abs=1e-4)


def _torchrun(run: Path, sets: list[str], extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "tunescope.train", str(REPO / "fixtures" / "configs" / "lora.yaml")]
    base = [f"output_dir={run}", "batch_size=4", "seq_len=64", "warmup_steps=2", "progress=false"]
    for s in (*base, *sets):
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a hang (a rank acting alone, a watchdog in a collective) fails here
    # instead of blocking the suite
    return subprocess.run(cmd + extra, env=env, capture_output=True, text=True, timeout=400)


def test_ddp_a_hung_rank_gets_a_checkpoint_from_every_watchdog_without_a_collective(tmp_path):
    run = tmp_path / "ddp-hang"
    proc = _torchrun(run, ["max_steps=12", f"guard={json.dumps(HANG)}"], ["--inject", "hang@6:8:1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 1 slept in step 6; rank 0 waited for it in the gradient all-reduce:
    # both watchdogs saw no progress, rank 0 wrote the checkpoint of step 5
    for rank in (0, 1):
        acts = [(e["step"], e["action"], e["finding"]) for e in _interventions(run, rank)]
        assert acts == [(6, "checkpoint", "TS301")], (rank, acts)
        assert events(run, rank)[-1]["status"] == "completed"
    state = json.loads((run / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    assert (run / "checkpoint-5" / "optimizer.pt").is_file()


def test_ddp_rewind_both_ranks_rewind_at_the_same_step_and_skip_the_same_batches(tmp_path):
    # a short spike confirmation (10 steps) and frequent checks keep the run short
    (tmp_path / "tunescope.toml").write_text("[TS102]\nspike-recover-steps = 10\n")
    run = tmp_path / "ddp-rewind"
    sets = ["max_steps=50", "save_steps=5", "save_total_limit=20"]
    sets.append("guard={policy: rewind, check_every: 5}")
    proc = _torchrun(run, sets, ["--inject", "lr_spike@20:30"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ivs = [_interventions(run, rank) for rank in (0, 1)]
    assert len(ivs[0]) == 1 and ivs[0][0]["action"] == "rewind"
    keys = ("step", "steps", "checkpoint", "skipped_batches", "lr_factor")
    assert [iv[keys[0]] for iv in ivs[1]] == [ivs[0][0]["step"]]
    assert {k: ivs[1][0][k] for k in keys} == {k: ivs[0][0][k] for k in keys}
    first, detected = ivs[0][0]["steps"]
    assert first <= 21 < detected
    skipped = json.loads((run / "guard-skips.json").read_text())["skip"]
    assert len(skipped) == detected - first + 1
    back = int(Path(ivs[0][0]["checkpoint"]).name.split("-")[1])
    for rank in (0, 1):
        assert [e["from_step"] for e in events(run, rank) if e["kind"] == "resume"] == [back]
        assert events(run, rank)[-1]["status"] == "completed"
        assert steps(run, rank)[-1]["step"] == 50
    # every rank trained the same steps after the rewind, none of the skipped samples
    after = [{r["step"]: r for r in steps(run, k) if r["ts"] > ivs[k][0]["ts"]} for k in (0, 1)]
    assert sorted(after[0]) == sorted(after[1]) == list(range(back + 1, 51))
