"""`tunescope query` is read-only as a property of the connection.

Two walls: DuckDB's own parser classifies every statement (recursively through
EXPLAIN), and the store's database can open no file but the cache's segments,
with its settings locked. A table of hostile statements is refused, each with
exit 2 and one line, and nothing on disk changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from tunescope.cli import main
from tunescope.errors import QueryError, UsageError
from tunescope.ingest.store.database import Store, check_read_only
from tunescope.train.events import EventWriter

TUNESCOPE = str(Path(sys.executable).parent / "tunescope")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for name in ("runA", "runB"):
        with EventWriter(root / name) as w:
            w.run_start(model="tiny", finetuning_type="lora", lora_r=8, total_steps=10)
            for s in range(1, 11):
                w.step(step=s, loss=2.0 / s if s != 7 else math.nan, lr=1e-4, grad_norm=1.0)
            w.eval(step=10, eval_loss=0.5)
            w.run_end("completed")
    assert main(["ingest", str(root)]) == 0
    return root


def tree_digest(*roots: Path) -> dict[str, str]:
    """Path -> sha256 of every file under ``roots`` (the lock file aside: it is
    an empty marker that filelock may recreate)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.name != "ingest.lock":
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def parses(sql: str) -> bool:
    try:
        duckdb.extract_statements(sql)
    except duckdb.Error:
        return False
    return True


def hostile(runs: Path, outside: Path) -> list[str]:
    """At least 100 statements that must not run, in many disguises."""
    log = runs / "runA" / "events" / "rank-0.jsonl"
    manifest = runs / ".tunescope" / "manifest.json"
    segs = runs / ".tunescope" / "segments"
    base = [
        f"COPY (SELECT 'pwned' AS a) TO '{log}' (FORMAT csv, HEADER false)",
        f"COPY (SELECT 'pwned' AS a) TO '{manifest}' (FORMAT csv, HEADER false)",
        f"COPY (SELECT 1) TO '{segs}/x.parquet' (FORMAT parquet)",
        f"COPY steps TO '{outside}/steps.csv'",
        f"COPY (FROM steps) TO '{outside}/s.json' (FORMAT json)",
        f"COPY _steps FROM '{log}'",
        f"EXPORT DATABASE '{outside}/db'",
        f"IMPORT DATABASE '{outside}/db'",
        f"ATTACH '{outside}/x.duckdb' AS x",
        "ATTACH ':memory:' AS m",
        "DETACH memory",
        "INSTALL httpfs",
        "FORCE INSTALL httpfs",
        "LOAD httpfs",
        "UPDATE EXTENSIONS",
        "SET threads = 1",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET lock_configuration",
        "SET VARIABLE x = 1",
        "USE memory",
        "PRAGMA enable_profiling",
        f"PRAGMA profile_output = '{outside}/profile.json'",
        "PRAGMA threads = 1",
        f"PRAGMA import_database('{outside}/db')",
        "CALL pragma_version()",
        "CALL enable_logging()",
        "CHECKPOINT",
        "INSERT INTO _steps SELECT * FROM _steps",
        "DELETE FROM _steps",
        "UPDATE _steps SET loss = 0",
        "CREATE TABLE t AS SELECT 1",
        "CREATE OR REPLACE VIEW steps AS SELECT 1",
        "CREATE MACRO m(x) AS x",
        "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
        "DROP VIEW steps",
        "ALTER VIEW steps RENAME TO s2",
        "BEGIN TRANSACTION",
        "COMMIT",
        "VACUUM",
        "ANALYZE",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "DEALLOCATE p",
        "COMMENT ON VIEW steps IS 'x'",
        "TRUNCATE _steps",
        "MERGE INTO _steps USING _steps AS s ON false WHEN NOT MATCHED THEN INSERT",
    ]
    disguises = [
        lambda s: s,
        lambda s: "/* x */ " + s,
        lambda s: "-- a comment\n" + s,
        lambda s: "/*+ hint */ " + s,
        lambda s: "SELECT 1; " + s,
        lambda s: s.lower(),
        lambda s: "/* x */ EXPLAIN ANALYZE " + s,
        lambda s: "eXpLaIn AnAlYzE (FORMAT json) " + s,
        lambda s: "EXPLAIN /* c */ ANALYSE\n\t" + s,
    ]
    statements = []
    for i, stmt in enumerate(base):
        # every statement plain, and three more disguises each, rotating; a
        # disguise DuckDB cannot parse (EXPLAIN of an EXPORT) runs nothing and
        # is left out, so that every statement here is one DuckDB would run
        statements.append(stmt)
        for d in (disguises[1 + i % 8], disguises[1 + (i + 3) % 8], disguises[1 + (i + 5) % 8]):
            if parses(d(stmt)):
                statements.append(d(stmt))
    # the reproductions, verbatim in shape
    statements += [
        f"/* x */ EXPLAIN ANALYZE COPY (SELECT 'pwned' AS a) TO '{log}' (FORMAT csv, HEADER false)",
        f"-- x\nEXPLAIN ANALYZE COPY (SELECT 'pwned' AS a) TO '{manifest}' (FORMAT csv)",
        f"/*+ hint */ EXPLAIN ANALYZE COPY (SELECT 1) TO '{log}'",
        f"SELECT 1; COPY (SELECT 'pwned') TO '{log}'",
        "SELECT 1;\nINSTALL httpfs",
        "EXPLAIN ANALYZE INSERT INTO _steps SELECT * FROM _steps",
        "EXPLAIN ANALYZE DELETE FROM _steps",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "EXPLAIN ANALYZE SET threads = 1",
        "EXPLAIN ANALYZE CALL pragma_version()",
        "SeLeCt 1; DrOp ViEw steps; SELECT 2",
        "SELECT 1 /* ; */; ATTACH ':memory:' AS y",
    ]
    return statements


def test_hostile_statements_are_refused_and_nothing_changes(runs, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = runs / ".tunescope"
    before = tree_digest(runs, tmp_path / "outside")
    statements = hostile(runs, outside)
    assert len(statements) >= 120
    capsys.readouterr()
    for sql in statements:
        code = main(["query", str(runs), sql])
        out, err = capsys.readouterr()
        assert code == 2, sql
        assert out == "", sql
        lines = err.splitlines()
        assert len(lines) == 1, (sql, err)
        assert lines[0].startswith("tunescope: error: refused: "), (sql, err)
        assert "read-only" in lines[0]
    assert tree_digest(runs, tmp_path / "outside") == before
    assert list(outside.iterdir()) == []
    assert (cache / "manifest.json").exists()


def test_the_reproduction_through_the_console_script(runs):
    log = runs / "runA" / "events" / "rank-0.jsonl"
    before = tree_digest(runs)
    sql = (
        f"/* x */ EXPLAIN ANALYZE COPY (SELECT 'pwned' AS a) TO '{log}' (FORMAT csv, HEADER false)"
    )
    out = subprocess.run([TUNESCOPE, "query", str(runs), sql], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "refused: the statement is EXPLAIN of COPY" in out.stderr
    assert tree_digest(runs) == before


LEGIT = [
    ("SELECT count(*) AS n FROM steps", [{"n": 20}]),
    ("WITH x AS (SELECT * FROM steps) SELECT count(*) AS n FROM x", [{"n": 20}]),
    ("FROM runs SELECT count(*) AS n", [{"n": 2}]),
    ("VALUES (1)", None),
    ("/* a comment */ SELECT 1 AS one", [{"one": 1}]),
    ("-- a comment\nSELECT 1 AS one", [{"one": 1}]),
    ("/*+ hint */ SELECT 1 AS one", [{"one": 1}]),
    ("SELECT 1 AS one; SELECT 2 AS two", [{"two": 2}]),
    ("EXPLAIN SELECT * FROM steps", None),
    ("/* x */ EXPLAIN ANALYZE SELECT count(*) FROM steps", None),
    ("explain (format json) SELECT 1", None),
    ("DESCRIBE steps", None),
    ("SHOW TABLES", None),
    ("SUMMARIZE steps", None),
    ("PIVOT steps ON run_id USING count(*) GROUP BY rank", [{"rank": 0, "runA": 10, "runB": 10}]),
    ("UNPIVOT (SELECT 1 AS a, 2 AS b) ON a, b", None),
    ("PRAGMA show_tables", None),
    ("PRAGMA table_info('steps')", None),
    ("SELECT count(*) AS n FROM metrics WHERE name = 'eval_loss'", [{"n": 2}]),
    ("SELECT payload->>'status' AS s FROM events WHERE kind = 'run_end' LIMIT 1", None),
]


@pytest.mark.parametrize(("sql", "rows"), LEGIT, ids=[s for s, _ in LEGIT])
def test_read_queries_still_run(runs, sql, rows):
    store = Store(runs)
    table = store.query(sql)
    assert table.num_columns >= 1
    if rows is not None:
        assert table.to_pylist() == rows
    # a PIVOT's helper type and the rest are rolled back: the catalog is as before
    assert store.query("SELECT count(*) AS n FROM duckdb_types() WHERE NOT internal").num_rows


def test_the_second_wall_holds_without_the_first(runs, tmp_path):
    """Statements run on the store's connection directly (as if the parser
    check had let them through) can open no file but the segments, and can
    not loosen the settings."""
    store = Store(runs)
    cur = store.cursor()
    log = runs / "runA" / "events" / "rank-0.jsonl"
    before = log.read_bytes()
    for sql in (
        f"COPY (SELECT 'pwned') TO '{log}' (FORMAT csv)",
        f"COPY (SELECT 'pwned') TO '{runs / '.tunescope' / 'manifest.json'}' (FORMAT csv)",
        f"SELECT * FROM read_csv('{log}')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        f"SELECT * FROM glob('{runs}/*')",
        f"SELECT * FROM read_text('{runs / '.tunescope' / 'segments'}/../manifest.json')",
        "SELECT * FROM query('COPY (SELECT 1) TO ''" + str(log) + "''')",
        "SELECT * FROM read_json('https://example.com/x.json')",
        f"ATTACH '{tmp_path / 'x.duckdb'}' AS x",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "SET autoinstall_known_extensions = true",
        "SET lock_configuration = false",
    ):
        with pytest.raises(duckdb.Error):
            cur.execute(sql)
    assert log.read_bytes() == before
    assert not (tmp_path / "x.duckdb").exists()
    settings = dict(
        cur.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access',"
            " 'autoinstall_known_extensions', 'autoload_known_extensions', 'lock_configuration')"
        ).fetchall()
    )
    assert settings == {
        "enable_external_access": "false",
        "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false",
        "lock_configuration": "true",
    }
    # the store's own files stay readable: its segments
    seg = next((runs / ".tunescope" / "segments").glob("seg-*-steps.parquet"))
    assert cur.execute("SELECT count(*) FROM read_parquet(?)", [str(seg)]).fetchone() == (20,)


def test_reading_other_files_from_sql_is_refused_with_one_line(runs, capsys):
    for sql in (
        "SELECT * FROM read_csv('/etc/passwd', sep = ':')",
        "SELECT * FROM read_json('https://example.com/x.json')",
    ):
        capsys.readouterr()
        assert main(["query", str(runs), sql]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "refused: a query may read the store's views only" in err


def test_errors_that_were_tracebacks_are_one_line(runs, tmp_path, capsys):
    # a statement type this duckdb's Python API cannot name
    with pytest.raises(UsageError, match="not a query"):
        check_read_only("UPDATE EXTENSIONS")
    # a non-UTF-8 byte in the argument (argv decodes it as a lone surrogate)
    with pytest.raises(UsageError, match="not UTF-8 at character 9"):
        check_read_only("SELECT '\udcff'")
    out = subprocess.run(
        [TUNESCOPE.encode(), b"query", str(runs).encode(), b"SELECT '\xff'"],
        capture_output=True,
    )
    assert out.returncode == 2
    assert out.stderr.count(b"\n") == 1 and b"not UTF-8" in out.stderr
    with pytest.raises(QueryError):
        check_read_only("SELEC 1")


OUT_OF_PYTHON = "SELECT 'infinity'::TIMESTAMP AS ts, DATE '294247-01-10' AS d, 1 AS d"


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_values_python_cannot_hold_are_printed_as_text(runs, tmp_path, fmt):
    out = tmp_path / f"q.{fmt}"
    args = [TUNESCOPE, "query", str(runs), OUT_OF_PYTHON, "--format", fmt]
    proc = subprocess.run([*args, "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1  # "wrote ..."
    if fmt == "parquet":
        got = duckdb.sql(f"SELECT ts::VARCHAR, d::VARCHAR FROM '{out}'").fetchall()
        assert got == [("infinity", "294247-01-10")]
        return
    text = out.read_text(encoding="utf-8")
    assert "infinity" in text, text
    if fmt == "json":  # one key per name: the later column named d wins, as in SQL tools
        assert json.loads(text) == [{"ts": "infinity", "d": 1}]
    else:
        assert "294247-01-10" in text, text
    if fmt == "csv":
        assert text == "ts,d,d\ninfinity,294247-01-10,1\n"  # both columns named d kept


def test_values_python_cannot_hold_in_a_table_on_stdout(runs):
    args = [TUNESCOPE, "query", str(runs), OUT_OF_PYTHON, "--format", "table"]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[2].split() == ["infinity", "294247-01-10", "1"]


def test_a_parser_error_is_one_line_with_its_place(runs):
    proc = subprocess.run(
        [TUNESCOPE, "query", str(runs), "SELECT 1,\n  2 FRM steps WHERE"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert 'syntax error at or near "steps" (line 2, column 9: 2 FRM steps WHERE)' in proc.stderr
