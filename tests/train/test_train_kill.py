"""A run killed with SIGKILL leaves a log that ingests cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from train_helpers import steps

from tunescope.train.trainer import REPO

pytestmark = pytest.mark.slow
CONFIG = str(REPO / "fixtures" / "configs" / "lora.yaml")


def _cmd(out, *extra):
    cmd = [sys.executable, "-m", "tunescope.train", CONFIG]
    for s in (f"output_dir={out}", "batch_size=4", "seq_len=64", "cpu_threads=1", *extra):
        cmd += ["--set", s]
    return cmd


def _step_lines(path):
    try:
        return path.read_bytes().count(b'"kind":"step"')
    except FileNotFoundError:
        return 0


def test_kill_9_mid_run_ingests_cleanly(tmp_path):
    from tunescope.ingest.store.database import Store

    run = tmp_path / "killed"
    log = run / "events" / "rank-0.jsonl"
    proc = subprocess.Popen(_cmd(run, "max_steps=5000"), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while _step_lines(log) < 4:
            assert proc.poll() is None, "training exited early"
            assert time.monotonic() < deadline, "no steps logged in time"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = steps(run)
    assert len(written) >= 4
    store = Store.open(tmp_path)
    cur = store.cursor()
    n, last = cur.execute("SELECT count(*), max(step) FROM steps").fetchone()
    assert n == len(written) and last == written[-1]["step"]
    status = cur.execute("SELECT status FROM runs").fetchone()[0]
    assert status != "completed"


def test_torn_last_line_is_skipped_and_the_rest_kept(tmp_path):
    """kill@STEP dies while writing step STEP's line: a torn last line."""
    from tunescope.ingest.store.database import Store

    run = tmp_path / "torn"
    rc = subprocess.run(
        [*_cmd(run, "max_steps=50"), "--inject", "kill@5"], stderr=subprocess.DEVNULL
    ).returncode
    assert rc == -signal.SIGKILL
    raw = (run / "events" / "rank-0.jsonl").read_bytes()
    assert not raw.endswith(b"\n") and raw.rsplit(b"\n", 1)[-1].startswith(b'{"v":1')
    store = Store.open(tmp_path)
    rows = store.cursor().execute("SELECT step FROM steps ORDER BY step").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4]
