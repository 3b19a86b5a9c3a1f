"""The store as a lake: Hive-partitioned Parquet datasets that Spark, Trino,
Athena, DuckDB and pyarrow read as they are.

Layout of ``tunescope export RUNS --parquet DEST`` (DEST a folder or a URL)::

    DEST/_schema.json                     tables, columns, types, partitioning, row counts
    DEST/runs/run_id=<id>/part-0.parquet
    DEST/steps/run_id=<id>/part-0.parquet
    DEST/metrics/...  DEST/events/...  DEST/findings/...

or, with ``partition_by="date"`` (large corpora: a query for last week's runs
opens last week's folders only), ``DEST/steps/date=2025-04-05/run_id=<id>/...``
where the date is the day the run started (UTC; ``unknown`` when no run_start
says it). The columns are the store's views (the SQL surface users learn),
in the same order; the partition columns live in the folder names, as Hive
lays them out, and a value that is not safe in a path (``/`` in a nested run
id) is percent-encoded. Writing goes through ``pyarrow.dataset`` (and fsspec
for a URL), one table at a time, streamed a batch at a time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tunescope.errors import StoreError, UsageError

if TYPE_CHECKING:
    from tunescope.ingest.store.database import Store

LAKE_VERSION = 1
TABLES = ("runs", "steps", "metrics", "events", "findings")
ORDER = {  # rows sorted by these, so each run's folder is written in one go
    "runs": "run_id",
    "steps": "run_id, rank, step",
    "metrics": "run_id, rank, step, name",
    "events": "run_id, rank, step, ts, kind",
    "findings": "run_id, detector, step_start, rank",
}
PARTITIONS = {"run": ["run_id"], "date": ["date", "run_id"]}
BATCH_ROWS = 256 * 1024


def export_lake(
    store: Store, dest: str | Path, partition_by: str = "run", overwrite: bool = False
) -> dict[str, int]:
    """Write every view under ``dest`` as a Hive-partitioned Parquet dataset
    and ``_schema.json``; returns the rows written per table."""
    import pyarrow.dataset as ds

    if partition_by not in PARTITIONS:
        raise UsageError(f"--partition-by must be run or date, got {partition_by!r}")
    fs, base = _filesystem(str(dest))
    _clear(fs, base, dest, overwrite)
    keys = PARTITIONS[partition_by]
    partitioning = ds.partitioning(pa.schema([(k, pa.string()) for k in keys]), flavor="hive")
    cur = store.cursor()
    rows: dict[str, int] = {}
    schemas: dict[str, pa.Schema] = {}
    for table in TABLES:
        date = (
            ", coalesce(strftime(r.started_at AT TIME ZONE 'UTC', '%Y-%m-%d'), 'unknown') AS date"
            if partition_by == "date"
            else ""
        )
        join = " LEFT JOIN (SELECT run_id, started_at FROM runs) r USING (run_id)" if date else ""
        sql = f"SELECT t.*{date} FROM {table} t{join} ORDER BY {ORDER[table]}"
        rel = cur.sql(sql)  # streamed: DuckDB 2.x and 1.x spell it differently
        result = (getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch)(BATCH_ROWS)
        schemas[table] = result.schema
        counted = _Counter(result)
        try:
            ds.write_dataset(
                counted.reader(),
                f"{base}/{table}",
                format="parquet",
                partitioning=partitioning,
                filesystem=fs,
                basename_template="part-{i}.parquet",
                existing_data_behavior="overwrite_or_ignore",
                max_partitions=1 << 30,
                file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
            )
        except (OSError, pa.ArrowException) as e:
            raise StoreError(f"cannot write {dest}/{table}: {_first_line(e)}") from None
        rows[table] = counted.rows
    source = getattr(store.cache, "url", None) or str(store.root)  # a URL root by its URL
    doc = schema_doc(schemas, rows, keys, source)
    try:
        with fs.open_output_stream(f"{base}/_schema.json") as f:
            f.write(json.dumps(doc, indent=2).encode())
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"cannot write {dest}/_schema.json: {_first_line(e)}") from None
    return rows


def schema_doc(
    schemas: dict[str, pa.Schema], rows: dict[str, int], keys: list[str], source: str
) -> dict[str, Any]:
    """``_schema.json``: what each table holds, for people and for DDL."""
    tables = {}
    for name, schema in schemas.items():
        tables[name] = {
            "path": f"{name}/",
            "rows": rows.get(name, 0),
            "columns": [
                {"name": f.name, "type": str(f.type), "sql": _sql_type(f.type)}
                for f in schema
                if f.name not in keys
            ],
        }
    return {
        "format": "tunescope-lake",
        "version": LAKE_VERSION,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "partitioning": {
            "flavor": "hive",
            "columns": [{"name": k, "type": "string", "sql": "VARCHAR"} for k in keys],
            "encoding": "percent-encoded values (RFC 3986), as pyarrow and Spark write them",
        },
        "tables": tables,
    }


class _Counter:
    """A record batch reader that counts the rows it hands on."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        self._reader = reader
        self.rows = 0

    def reader(self) -> pa.RecordBatchReader:
        def batches() -> Any:
            for batch in self._reader:
                self.rows += batch.num_rows
                yield batch

        return pa.RecordBatchReader.from_batches(self._reader.schema, batches())


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP WITH TIME ZONE" if t.tz else "TIMESTAMP"
    return str(t).upper()


def _filesystem(dest: str) -> tuple[Any, str]:
    """A pyarrow filesystem for ``dest`` (fsspec's for a URL) and the path on it."""
    from tunescope.ingest.store.remote import Remote, is_url

    if is_url(dest):
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        remote = Remote(dest)
        return PyFileSystem(FSSpecHandler(remote.fs)), remote.path
    from pyarrow.fs import LocalFileSystem

    path = Path(dest).absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{dest} is a file; name a folder (or a URL) to write the lake into")
    return LocalFileSystem(), path.as_posix()


def _clear(fs: Any, base: str, dest: Any, overwrite: bool) -> None:
    """Refuse a non-empty destination unless ``overwrite``; then remove what an
    earlier export wrote there (nothing else)."""
    from pyarrow.fs import FileType

    info = fs.get_file_info(base)
    if info.type == FileType.NotFound:
        return
    from pyarrow.fs import FileSelector

    entries = fs.get_file_info(FileSelector(base, allow_not_found=True))
    if not entries:
        return
    if not overwrite:
        raise UsageError(f"{dest} is not empty; pass --force to replace an earlier export")
    names = {Path(e.path).name: e for e in entries}
    if "_schema.json" not in names:
        raise UsageError(f"{dest} holds files that are not a tunescope export; name another folder")
    for name in (*TABLES, "_schema.json"):
        e = names.get(name)
        if e is None:
            continue
        if e.type == FileType.Directory:
            fs.delete_dir(e.path)
        else:
            fs.delete_file(e.path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
