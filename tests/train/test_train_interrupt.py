"""Ctrl-C during `tunescope train` says what was kept, and a second run into the
same output_dir is refused unless it resumes or overwrites."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import events, kinds

from tunescope.errors import ExitCode, TrainError
from tunescope.train.trainer import REPO

pytestmark = pytest.mark.slow
CONFIG = str(REPO / "fixtures" / "configs" / "lora.yaml")
TUNESCOPE = str(Path(sys.executable).parent / "tunescope")


def _cmd(out: Path, *extra: str) -> list[str]:
    cmd = [TUNESCOPE, "train", CONFIG]
    for s in (f"output_dir={out}", "batch_size=4", "seq_len=64", "cpu_threads=1"):
        cmd += ["--set", s]
    return [*cmd, *extra]


def _step_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b'"kind":"step"')
    except FileNotFoundError:
        return 0


def test_ctrl_c_keeps_the_log_and_a_rerun_must_resume_or_overwrite(tmp_path: Path) -> None:
    run = tmp_path / "run"
    log = run / "events" / "rank-0.jsonl"
    proc = subprocess.Popen(_cmd(run, "--set", "max_steps=5000"), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while _step_lines(log) < 3:
            assert proc.poll() is None, "training exited early"
            assert time.monotonic() < deadline, "no steps logged in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.INTERRUPTED
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "interrupted" in x]
    assert "interrupted at step" in line
    assert f"the log was kept ({run / 'events'}/) and the run marked interrupted" in line
    assert "no checkpoint was saved: --overwrite starts it again" in line
    assert events(run)[-1]["kind"] == "run_end" and events(run)[-1]["status"] == "interrupted"
    before = log.read_bytes()

    again = subprocess.run(
        _cmd(run, "--set", "max_steps=3"), capture_output=True, text=True, timeout=240
    )
    assert again.returncode == TrainError.exit_code
    (said,) = again.stderr.strip().splitlines()
    assert "already holds a run's log" in said and "--resume" in said and "--overwrite" in said
    assert log.read_bytes() == before  # nothing appended to the old run

    fresh = subprocess.run(
        _cmd(run, "--set", "max_steps=3", "--overwrite"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert f"overwrote {run}: removed its events/" in fresh.stderr
    assert kinds(run).count("run_start") == 1 and kinds(run)[-1] == "run_end"
