"""``tunescope ingest --explain FILE`` and ``--verbose``: what each reader made
of a file, and the general reader's guess at files it refused (a real CLI
subprocess over real files)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "fixtures" / "formats" / "general"
TUNESCOPE = str(Path(sys.executable).with_name("tunescope"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUNESCOPE, *args], capture_output=True, text=True, timeout=120)


def test_explain_names_the_claiming_reader_and_the_inferred_shape():
    out = run("ingest", "--explain", str(GEN / "keras" / "training.log"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "  console: not its format" in lines
    assert "  general: shape table (delimiter ',')" in lines
    assert "      loss -> column loss, high confidence" in lines
    assert "      val_loss -> eval metric eval_loss, high confidence" in lines
    assert "    step from: the epochs, in order" in lines
    assert lines[-2:] == [
        "read by: general",
        "  1 run, 4 step rows, 12 metric points, run dir keras",
    ]


def test_explain_says_why_a_file_is_not_a_run():
    out = run("ingest", "--explain", str(GEN / "negatives" / "dataset.jsonl"))
    assert out.returncode == 0, out.stderr
    assert (
        "    refused: records with a loss but no step, iteration or epoch that rises" in out.stdout
    )
    assert out.stdout.splitlines()[-1].startswith("read by: no reader")


def test_explain_of_a_specific_format_says_which_reader_comes_first():
    real = REPO / "fixtures" / "real" / "megatron-gpt2-finetune" / "finetune.log"
    out = run("ingest", "--explain", str(real))
    assert out.returncode == 0, out.stderr
    assert "  console: claims it" in out.stdout
    assert "read by: console" in out.stdout


def test_explain_of_a_missing_file_is_one_line_and_exit_2(tmp_path):
    out = run("ingest", "--explain", str(tmp_path / "nope.log"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"tunescope: error: {tmp_path / 'nope.log'}: not a file (--explain takes one log file)"
    ]
    assert "Traceback" not in out.stderr


def test_ingest_without_runs_or_explain_is_a_usage_error():
    out = run("ingest")
    assert out.returncode == 2
    assert "ingest needs RUNS" in out.stderr


def test_verbose_gives_the_general_readers_guess_at_refused_files(tmp_path):
    shutil.copy(GEN / "negatives" / "eval_summary.log", tmp_path / "eval_summary.log")
    shutil.copy(GEN / "negatives" / "predictions.csv", tmp_path / "predictions.csv")
    out = run("ingest", str(tmp_path), "--verbose")
    assert out.returncode == 0, out.stderr
    assert (
        "      general reader: lines, 1 record with a loss; refused: only 1 record(s) with a loss"
        " (a log has 3 or more)"
    ) in out.stdout.splitlines()
    assert (
        "      general reader: table, 4 records with a loss; refused: a table without a step,"
        " iteration or epoch column"
    ) in out.stdout.splitlines()


def test_verbose_lists_a_refused_file_inside_a_run_that_was_read(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(GEN / "keras", run_dir)
    shutil.copy(GEN / "negatives" / "dataset.jsonl", run_dir / "dataset.jsonl")
    out = run("ingest", str(tmp_path), "--verbose")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "  not read:  1 file no reader took" in lines
    assert (
        "      general reader: jsonl, 4 records with a loss; refused: records with a loss but"
        " no step, iteration or epoch that rises"
    ) in lines
