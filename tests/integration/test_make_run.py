"""``make run`` ends with the one line to use next, and keeps the TUI's exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEXT = "next: source .venv/bin/activate, then: tunescope analyze YOUR_RUNS_DIR"


def make_run(*args: str) -> subprocess.CompletedProcess[str]:
    # -o: the venv is taken as made (no reinstall)
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.core", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_run_prints_the_next_command_after_a_failed_tui(tmp_path: Path) -> None:
    # the real TUI on a folder that does not exist exits at once with its usage error
    r = make_run(f"RUNS={tmp_path / 'nope'}")
    assert "no such directory" in r.stderr
    assert r.stdout.strip().splitlines()[-1] == NEXT
    assert r.returncode != 0  # the TUI's failure is make's failure


def test_make_run_keeps_a_clean_exit(tmp_path: Path) -> None:
    # A full-screen TUI needs a terminal, which a test has not: a stand-in
    # `tunescope` that exits 0 checks that the recipe passes the exit code on.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "tunescope"
    stub.write_text('#!/bin/sh\necho "tui $*"\nexit 0\n')
    stub.chmod(0o755)
    r = make_run(f"BIN={bin_dir}", "RUNS=fixtures/runs")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == ["tui tui fixtures/runs", NEXT]
