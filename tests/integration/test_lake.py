"""``tunescope export --parquet``: the lake layout read back by other engines
(DuckDB's hive_partitioning and pyarrow.dataset here; Spark SQL in
test_scale_out.py) with the same counts and values as the store's views."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from tunescope.cli import main
from tunescope.ingest.store.database import Store
from tunescope.ingest.store.lake import TABLES

FIXTURES = Path(__file__).parents[2] / "fixtures" / "runs"
# a nested run id with a space and a slash: percent-encoded in the folder names
NESTED = "team a/fault-nan"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lake")
    runs = tmp / "runs"
    for name in ("healthy-lora-s0", "fault-straggler-2rank", "resumed"):
        shutil.copytree(FIXTURES / name, runs / name)
    shutil.copytree(FIXTURES / "fault-nan", runs / NESTED)
    cache = tmp / "cache"
    assert main(["analyze", str(runs), "--cache-dir", str(cache), "--format", "json"]) == 1
    lake = tmp / "lake"
    assert main(["export", str(runs), "--parquet", str(lake), "--cache-dir", str(cache)]) == 0
    store = Store(runs, cache)
    views = {t: store.query(f"SELECT * FROM {t}") for t in TABLES}
    store.close()
    return lake, views, runs, cache


def canonical(table: pa.Table, columns: list[str]) -> list[tuple]:
    """Rows as tuples in a fixed column order, sorted (NaN compared as text)."""
    rows = table.select(columns).to_pylist()
    return sorted((tuple(repr(r[c]) for c in columns) for r in rows), key=str)


def test_layout_and_schema_json(exported):
    lake, views, _, _ = exported
    doc = json.loads((lake / "_schema.json").read_text())
    assert doc["partitioning"]["columns"][0]["name"] == "run_id"
    for t in TABLES:
        assert doc["tables"][t]["rows"] == views[t].num_rows
        names = [c["name"] for c in doc["tables"][t]["columns"]]
        assert names == [n for n in views[t].column_names if n != "run_id"]
    assert views["findings"].num_rows > 0
    folders = sorted(p.name for p in (lake / "steps").iterdir())
    assert "run_id=team%20a%2Ffault-nan" in folders and "run_id=resumed" in folders


def test_duckdb_hive_partitioning_reads_the_same_rows(exported):
    lake, views, _, _ = exported
    con = duckdb.connect()
    for t in TABLES:
        got = con.sql(
            f"SELECT * FROM read_parquet('{lake}/{t}/**/*.parquet', hive_partitioning = true, "
            "hive_types = {'run_id': VARCHAR})"
        ).arrow()
        if hasattr(got, "read_all"):
            got = got.read_all()
        cols = views[t].column_names
        assert got.num_rows == views[t].num_rows
        assert canonical(got, cols) == canonical(views[t], cols), t
    runs = con.sql(
        f"SELECT DISTINCT run_id FROM read_parquet('{lake}/steps/**/*.parquet', "
        "hive_partitioning = true) ORDER BY 1"
    ).fetchall()
    assert (NESTED,) in runs


def test_pyarrow_dataset_reads_the_same_rows(exported):
    lake, views, _, _ = exported
    part = ds.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive")
    for t in TABLES:
        got = ds.dataset(lake / t, format="parquet", partitioning=part).to_table()
        cols = views[t].column_names
        assert canonical(got, cols) == canonical(views[t], cols), t


def test_partition_by_date_and_force(exported, tmp_path, capsys):
    _, views, runs, cache = exported
    lake = tmp_path / "by-date"
    args = ["export", str(runs), "--parquet", str(lake), "--cache-dir", str(cache)]
    assert main([*args, "--partition-by", "date"]) == 0
    days = [p.name for p in (lake / "steps").iterdir()]
    assert days and all(d.startswith("date=20") for d in days)  # the runs' start dates
    got = ds.dataset(lake / "steps", format="parquet", partitioning="hive").to_table()
    assert got.num_rows == views["steps"].num_rows
    capsys.readouterr()
    assert main(args) == 2  # not over an earlier export without --force
    assert "pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert sorted(p.name for p in (lake / "steps").iterdir())[0].startswith("run_id=")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["export", str(runs), "--parquet", str(other), "--cache-dir", str(cache)]) == 2
    assert main([*args[:3], str(other), "--cache-dir", str(cache), "--force"]) == 2
    assert (other / "notes.txt").read_text() == "mine"  # never removed
