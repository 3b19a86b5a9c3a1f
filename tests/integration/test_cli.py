"""The foundation commands through the installed console script."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from tunescope.train.events import EventWriter

TUNESCOPE = str(Path(sys.executable).parent / "tunescope")


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([TUNESCOPE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for name, lr in (("a", 1e-4), ("b", 3e-4)):
        with EventWriter(root / name) as w:
            w.run_start(model="tiny-llama", finetuning_type="lora", lora_r=8, total_steps=20)
            for s in range(1, 21):
                w.step(step=s, loss=2.0 / s if s != 13 else math.nan, lr=lr, grad_norm=1.0)
            w.eval(step=20, eval_loss=0.5)
            w.run_end("completed")
    return root


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("ingest", "query", "export", "schema"):
        assert cmd in out.stdout


def test_ingest_prints_what_it_read(runs):
    out = run("ingest", str(runs))
    assert out.returncode == 0, out.stderr
    assert "2 runs (2 completed) from 2 files" in out.stdout
    assert "40 step rows" in out.stdout
    assert out.stderr == ""


def test_ingest_strict_fails_on_skipped_lines(runs):
    with open(runs / "a" / "events" / "rank-0.jsonl", "ab") as f:
        f.write(b"{oops\n")
    out = run("ingest", str(runs))
    assert out.returncode == 0
    assert "rank-0.jsonl:24: malformed JSON" in out.stderr
    strict = run("ingest", str(runs), "--strict")
    assert strict.returncode == 2
    assert "skipped" in strict.stderr and "Traceback" not in strict.stderr


def test_query_formats(runs, tmp_path):
    sql = "SELECT run_id, count(*) AS n, max(lr) AS lr FROM steps GROUP BY run_id ORDER BY run_id"
    out = run("query", str(runs), sql)  # not a terminal: csv
    assert out.returncode == 0, out.stderr
    assert list(csv.reader(io.StringIO(out.stdout))) == [
        ["run_id", "n", "lr"],
        ["a", "20", "0.0001"],
        ["b", "20", "0.0003"],
    ]
    out = run(
        "query", str(runs), "SELECT step, loss FROM steps WHERE isnan(loss)", "--format", "json"
    )
    assert json.loads(out.stdout) == [{"step": 13, "loss": "NaN"}, {"step": 13, "loss": "NaN"}]
    out = run("query", str(runs), sql, "--format", "table")
    assert out.stdout.splitlines()[0].split() == ["run_id", "n", "lr"]
    assert "(2 rows)" in out.stdout
    target = tmp_path / "out.parquet"
    out = run("query", str(runs), sql, "--format", "parquet", "--output", str(target))
    assert out.returncode == 0
    assert pq.read_table(target).num_rows == 2
    out = run("query", str(runs), sql, "--format", "parquet")
    assert out.returncode == 2 and "needs --output" in out.stderr


def test_query_is_read_only(runs):
    for sql in (
        "DROP VIEW steps",
        "COPY (SELECT 1) TO 'x.csv'",
        "ATTACH 'x.db'",
        "CREATE TABLE t AS SELECT 1",
        "SELECT 1; DELETE FROM _steps",
        "INSTALL httpfs",
        "SET threads = 1",
        "EXPLAIN ANALYZE COPY (SELECT 42) TO 'pwned.csv'",
        "EXPLAIN ANALYZE DROP VIEW steps",
        "explain analyse (format json) DELETE FROM _steps",
    ):
        out = run("query", str(runs), sql)
        assert out.returncode == 2, sql
        assert "read-only" in out.stderr or "not allowed" in out.stderr
    check = run("query", str(runs), "SELECT count(*) FROM steps")
    assert check.stdout.splitlines()[1] == "40"
    assert not (runs.parent / "pwned.csv").exists()
    explained = run("query", str(runs), "EXPLAIN SELECT count(*) FROM steps")
    assert explained.returncode == 0, explained.stderr


def test_store_is_unchanged_after_a_users_query(runs):
    from tunescope.ingest.store.database import Store

    store = Store.open(runs)
    store.query("SELECT * FROM steps; SELECT count(*) FROM steps")
    # A statement that slipped past the check could not change the rows: they
    # are views over the cache's segment files, which the database cannot write.
    cur = store.cursor()
    with pytest.raises(duckdb.Error):
        cur.execute("DELETE FROM _steps")
    assert store.query("SELECT count(*) AS n FROM steps").to_pylist() == [{"n": 40}]


def test_csv_keeps_full_precision_and_bad_output_paths_are_errors(runs, tmp_path):
    out = run("query", str(runs), "SELECT 1743848592.123::DOUBLE AS ts, 1e-12::DOUBLE AS tiny")
    assert out.stdout.splitlines()[1] == "1743848592.123,1e-12"
    bad = run("query", str(runs), "SELECT 1", "-o", str(tmp_path / "no" / "such" / "x.csv"))
    assert bad.returncode == 2 and "cannot write" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("export", str(runs), "--duckdb", str(tmp_path), "--force")
    assert bad.returncode == 2 and "is a directory" in bad.stderr


def test_python_dash_m_entry_points():
    for mod in ("tunescope", "tunescope.cli"):
        out = subprocess.run(
            [sys.executable, "-m", mod, "--help"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "usage: tunescope" in out.stdout, out.stderr


def test_query_sql_error_prints_duckdbs_message(runs):
    out = run("query", str(runs), "SELECT nope FROM steps")
    assert out.returncode == 2
    assert 'Referenced column "nope" not found' in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_runs_dir_is_a_usage_error(tmp_path):
    out = run("ingest", str(tmp_path / "nope"))
    assert out.returncode == 2
    assert out.stderr.startswith("tunescope: error: ") and "no such directory" in out.stderr


def test_export_writes_a_self_contained_database(runs, tmp_path):
    db = tmp_path / "runs.duckdb"
    out = run("export", str(runs), "--duckdb", str(db))
    assert out.returncode == 0, out.stderr
    con = duckdb.connect(str(db), read_only=True)
    tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    assert tables == {"runs", "steps", "metrics", "events", "findings"}
    assert con.execute("SELECT count(*) FROM steps").fetchone() == (40,)
    assert con.execute("SELECT name FROM metrics").fetchall() == [("eval_loss",)] * 2
    con.close()
    again = run("export", str(runs), "--duckdb", str(db))
    assert again.returncode == 2 and "--force" in again.stderr
    assert run("export", str(runs), "--duckdb", str(db), "--force").returncode == 0


def test_a_failed_export_leaves_nothing_and_the_old_file_whole(runs, tmp_path):
    """A disk that fills mid-write (a file size limit, which Python turns into
    EFBIG): one line, exit 2, no database or .wal left, an earlier export kept."""
    import resource

    db = tmp_path / "out" / "runs.duckdb"
    db.parent.mkdir()
    assert run("ingest", str(runs)).returncode == 0  # the cache is written without the limit

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    args = [sys.executable, "-m", "tunescope", "export", str(runs), "--duckdb", str(db)]
    out = subprocess.run(args, capture_output=True, text=True, preexec_fn=small_files)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and f"cannot write {db}" in out.stderr
    assert "wrote" not in out.stdout + out.stderr
    assert list(db.parent.iterdir()) == []
    # An earlier export survives a failed --force.
    assert run("export", str(runs), "--duckdb", str(db)).returncode == 0
    before = db.read_bytes()
    out = subprocess.run([*args, "--force"], capture_output=True, text=True, preexec_fn=small_files)
    assert out.returncode == 2 and db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["runs.duckdb"]


def test_export_refuses_a_target_that_is_not_a_regular_file(runs, tmp_path):
    """As /dev/full would be (a FIFO here: a failing test must not replace a
    device of the machine that runs it)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = run("export", str(runs), "--duckdb", str(fifo), "--force")
    assert out.returncode == 2 and "not a regular file" in out.stderr, out.stderr
    assert "wrote" not in out.stdout
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "runs"]


def test_export_replaces_a_link_not_what_it_points_to(runs, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "runs.duckdb"
    link.symlink_to(victim)
    assert run("export", str(runs), "--duckdb", str(link)).returncode == 2  # exists: --force
    assert run("export", str(runs), "--duckdb", str(link), "--force").returncode == 0
    assert victim.read_text() == "keep me" and not link.is_symlink()


@pytest.mark.parametrize("command", ["report", "analyze", "query"])
def test_output_through_a_link_replaces_the_link_not_its_target(runs, tmp_path, command):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    args = {
        "report": ["report", str(runs)],
        "analyze": ["analyze", str(runs), "--format", "json", "--exit-zero"],
        "query": ["query", str(runs), "SELECT 1 AS one"],
    }[command]
    out = run(*args, "-o", str(link))
    assert out.returncode == 0, out.stderr
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and link.stat().st_size > 0


def test_schema_json_is_a_json_schema():
    out = run("schema", "--json")
    doc = json.loads(out.stdout)
    assert doc["$schema"].startswith("https://json-schema.org/")
    assert doc["properties"]["kind"]["enum"] == sorted(
        ["run_start", "step", "eval", "checkpoint", "resume", "run_end", "intervention"]
    )
    rule = next(r for r in doc["allOf"] if r["if"]["properties"]["kind"]["const"] == "intervention")
    assert rule["then"]["required"] == ["step", "action"]
    assert {"finding", "steps", "checkpoint"} <= set(rule["then"]["properties"])
    step_rule = next(r for r in doc["allOf"] if r["if"]["properties"]["kind"]["const"] == "step")
    assert "compute_time_s" in step_rule["then"]["properties"]
    text = run("schema")
    assert "compute_time_s" in text.stdout and text.returncode == 0
    assert "intervention (the guard):" in text.stdout


def test_did_you_mean_for_commands_options_and_config_keys(tmp_path):
    r = run("analize", str(tmp_path))
    assert r.returncode == 2 and "did you mean 'analyze'?" in r.stderr
    r = run("analyze", "--formt", "json", str(tmp_path))
    assert r.returncode == 2 and "did you mean '--format'?" in r.stderr
    assert "usage: tunescope analyze" in r.stderr  # the command's usage, not the top level
    cfg = tmp_path / "tunescope.toml"
    cfg.write_text("fail_on = 'warning'\n")
    r = run("analyze", str(tmp_path), "--config", str(cfg))
    assert r.returncode == 2 and "fail_on: unknown key (did you mean 'fail-on'?)" in r.stderr
    cfg.write_text("[TS101]\nmin_ratoi = 2\n")
    r = run("analyze", str(tmp_path), "--config", str(cfg))
    assert r.returncode == 2 and "did you mean 'min-ratio'?" in r.stderr
    assert "min_excess" not in r.stderr and "min-excess" in r.stderr  # kebab-case, as documented
    assert "Traceback" not in r.stderr


def test_explain_lists_whole_sentences_names_and_options():
    from tunescope.detectors.registry import DETECTORS

    r = run("explain")
    assert r.returncode == 0
    out = r.stdout
    assert "``" not in out
    for det in DETECTORS:
        assert f"{det.ID}  {det.NAME} " in out
    joined = " ".join(out.split())
    assert (
        "not receiving gradients, receiving vanishing ones, or whose B matrix is never updated."
        in joined
    )
    assert "options: window, level-points" in joined
    assert all(len(line) <= 79 for line in out.splitlines())
    detail = run("explain", "TS101").stdout
    assert "``" not in detail and "Listed below with their defaults" in detail


def _pty_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a command with stderr on a pseudo-terminal; what it wrote there."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")


def test_progress_on_a_terminal_only(tmp_path):
    from tunescope.train.events import EventWriter

    for r in range(30):
        with EventWriter(tmp_path / "runs" / f"r{r}") as w:
            for s in range(1, 301):
                w.step(step=s, loss=1.0 + 1.0 / s, lr=1e-4)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    code, err = _pty_stderr([TUNESCOPE, "ingest", str(tmp_path / "runs")], env)
    assert code == 0 and "ingest" in err and "30/30 files" in err and "rows" in err
    code, err = _pty_stderr([TUNESCOPE, "analyze", str(tmp_path / "runs")], env)
    assert code == 0 and "30/30" in err and "runs" in err
    # piped, or in CI: no bar, stderr stays clean
    piped = run("ingest", str(tmp_path / "other"))
    assert "\x1b[" not in piped.stderr
    code, err = _pty_stderr([TUNESCOPE, "analyze", str(tmp_path / "runs")], {**env, "CI": "true"})
    assert code == 0 and "30/30" not in err


def test_a_folder_without_runs_names_the_files_no_reader_took(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    for i in range(6):
        (root / f"notes-{i}.txt").write_text("nothing a reader takes\n")
    analyze = run("analyze", str(root))
    assert analyze.returncode == 2
    (line,) = analyze.stderr.strip().splitlines()
    assert "no runs found" in line and "6 files no reader took" in line
    assert "notes-0.txt, notes-1.txt, notes-2.txt and 3 more" in line
    assert f"tunescope ingest {root} --verbose" in line
    ingest = run("ingest", str(root))
    assert ingest.returncode == 0
    assert "0 runs (none)" in ingest.stdout
    assert "no runs found: 6 files no reader took (notes-0.txt" in ingest.stderr
    verbose = run("ingest", str(root), "--verbose")
    assert "notes-5.txt" in verbose.stdout and "no runs found" not in verbose.stderr


@pytest.mark.parametrize("command", ["analyze", "report"])
def test_help_says_runs_may_be_urls(command):
    out = run(command, "--help")
    assert out.returncode == 0
    assert "directories or URLs (s3://bucket/prefix" in " ".join(out.stdout.split())
