"""The foundation commands through the installed console script."""

from __future__ import annotations

import csv
import io
import json
import math
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
    assert "2 run(s) (2 completed) from 2 file(s)" in out.stdout
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
    from tunescope.ingest.store import Store

    store = Store.open(runs)
    store.query("SELECT * FROM steps; SELECT count(*) FROM steps")
    # A statement that slipped past the check would still be rolled back.
    cur = store.cursor()
    cur.execute("BEGIN TRANSACTION")
    cur.execute("DELETE FROM _steps")
    cur.execute("ROLLBACK")
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
