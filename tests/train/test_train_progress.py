"""Progress of `tunescope train`: rich's bar on a terminal (steps, loss, time
left), nothing but the summary line in a pipe or in CI, and never transformers'
own tqdm bar."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest

from tunescope.train.config import REPO

pytestmark = pytest.mark.slow


def _cmd(out) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "tunescope.train",
        str(REPO / "fixtures" / "configs" / "lora.yaml"),
    ]
    for s in (f"output_dir={out}", "max_steps=8", "batch_size=4", "seq_len=64"):
        cmd += ["--set", s]
    return cmd


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return {**env, "OMP_NUM_THREADS": "1", "COLUMNS": "100", "TERM": "xterm"}


def test_a_terminal_gets_one_bar_with_steps_and_loss(tmp_path):
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        _cmd(tmp_path / "tty"),
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    bar, _, summary = text.partition("tunescope: trained tiny-llama (lora) for 8 steps")
    assert summary  # the summary line comes after the bar
    assert re.search(r"train\b.*\d/8.*loss \d\.\d{3}", bar), bar[-500:]
    assert "it/s]" not in text  # transformers' tqdm stayed off


def test_a_pipe_gets_only_the_summary_line(tmp_path):
    proc = subprocess.run(
        _cmd(tmp_path / "pipe"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunescope: trained tiny-llama"), lines
