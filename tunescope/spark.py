"""Spark: analyse groups of runs as Spark tasks, and read the lake with Spark SQL.

``session()`` starts (or finds) a Spark session set up for this: local mode
on 127.0.0.1 by default, no UI, UTC, few shuffle partitions, and the Python
workers on this interpreter. ``findings(spark, groups)`` is one Spark task per
group of runs (``mapInArrow``): each task calls :func:`tunescope.analyze_runs`
on its group (folders, run folders or URLs such as ``s3://``, read by the
task itself through fsspec, not by Hadoop) and streams the findings back as
Arrow batches. ``analyze(spark, groups)`` collects them into the same Arrow
table ``analyze_runs`` returns, and raises a group's error as one line.
``read_lake(spark, LAKE)`` registers the five tables of ``tunescope export
--parquet`` as temporary views for Spark SQL.

Caches: each path is ingested into its own cache (``cache_dir/<path slug>``,
or the path's default cache), as ``analyze_runs`` does. Two tasks that reach
the same path at once (the same path in two groups, or two jobs) share that
cache safely: every write to a cache (an ingest, saving findings) holds the
cache's file lock, and segments are written whole, then renamed into place.

pyspark is the optional extra ``[scale]``; nothing else in tunescope imports
this module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tunescope.errors import InputError, UsageError
from tunescope.fanout import findings_schema
from tunescope.tasks import Groups, as_groups, options, raise_error, run_group

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# a local session for a small machine: no web UI or progress bars, no host name
# lookups, times in UTC, and 2 shuffle partitions (Spark's 200 would be 200 tiny
# tasks here)
LOCAL_CONF = {
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "2",
    "spark.ui.showConsoleProgress": "false",
}
ERROR = pa.field("error", pa.string())


def _pyspark() -> Any:
    try:
        import pyspark
    except ImportError:
        raise UsageError(
            "tunescope.spark needs pyspark and a Java runtime (17 or newer): "
            "pip install 'tunescope[scale]'"
        ) from None
    return pyspark


def session(
    master: str | None = None, app_name: str = "tunescope", conf: dict[str, str] | None = None
) -> SparkSession:
    """The active Spark session, or a new one. ``master``: by default the one
    ``spark-submit --master`` gave, else ``local[2]``. A local master gets
    :data:`LOCAL_CONF`, and its Python workers run this interpreter
    (``PYSPARK_PYTHON`` is set to it, and ``SPARK_LOCAL_IP`` to 127.0.0.1,
    unless already set). ``conf`` adds or overrides settings."""
    _pyspark()
    from pyspark.sql import SparkSession

    master = master or _submitted_master() or "local[2]"
    settings: dict[str, str] = {}
    if master.startswith("local"):
        settings.update(LOCAL_CONF)
        # read when the context starts: the workers' interpreter (else python3
        # from PATH) and the address to bind (else the host name's, looked up)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings.update(conf or {})
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _submitted_master() -> str | None:
    """The ``--master`` of the ``spark-submit`` that started this process, if any."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # set by spark-submit for its driver
        return None
    from pyspark import SparkConf

    master: str | None = SparkConf().get("spark.master", None)
    return master


def frame_schema() -> pa.Schema:
    """What ``findings`` holds: the columns of ``analyze_runs``'s table, then
    ``error`` (set, with nothing else, on the one row of a group that could
    not be analysed)."""
    return findings_schema().append(ERROR)


def findings(
    spark: SparkSession,
    groups: Groups,
    *,
    cache_dir: str | Path | None = None,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> DataFrame:
    """A DataFrame of the findings of every group, one Spark task per group
    (lazy: the tasks run when an action asks for rows). A group is a list of
    paths or one path. A group that cannot be analysed (a path that does not
    exist, a bucket that cannot be read) gives one row whose ``error`` says
    why, in one line, and its task succeeds: the other groups' findings stand."""
    _pyspark()
    from pyspark.sql.pandas.types import from_arrow_schema

    todo = as_groups(groups)
    opts = options(cache_dir, select, ignore)

    def task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column("id").to_pylist():
                yield from _batches(todo[index], opts)

    ids = spark.range(0, len(todo), 1, numPartitions=len(todo))  # a partition per group
    return ids.mapInArrow(task, from_arrow_schema(frame_schema()))


def analyze(
    spark: SparkSession,
    groups: Groups,
    *,
    cache_dir: str | Path | None = None,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> pa.Table:
    """Run :func:`findings` and collect it: the findings of every group as the
    Arrow table :func:`tunescope.analyze_runs` returns (its schema, the groups'
    rows in group order). A group that could not be analysed raises its error
    (the class and the one-line message ``analyze_runs`` would raise)."""
    frame = findings(spark, groups, cache_dir=cache_dir, select=select, ignore=ignore)
    table = frame.toArrow()
    failed = [e for e in table.column("error").to_pylist() if e]
    if failed:
        raise_error(failed[0])
    return table.select(findings_schema().names).cast(findings_schema())


def read_lake(spark: SparkSession, lake: str | Path) -> dict[str, DataFrame]:
    """The five tables of a lake written by ``tunescope export --parquet``, as
    DataFrames, each registered as a temporary view of its name (``runs``,
    ``steps``, ``metrics``, ``events``, ``findings``). The partition columns
    (``run_id``, and ``date`` with ``--partition-by date``) are read as
    strings: a run named ``1234`` stays a name."""
    _pyspark()
    from tunescope.ingest.store.lake import TABLES
    from tunescope.ingest.store.remote import is_url

    base = str(lake).rstrip("/")
    if not is_url(base) and not (Path(base) / "_schema.json").is_file():
        raise InputError(
            f"{base}: not a tunescope lake (no _schema.json); "
            "write one with: tunescope export RUNS --parquet LAKE"
        )
    key = "spark.sql.sources.partitionColumnTypeInference.enabled"
    before = spark.conf.get(key)
    spark.conf.set(key, "false")  # read when the files are listed, below
    try:
        frames = {t: spark.read.parquet(f"{base}/{t}") for t in TABLES}
    finally:
        spark.conf.set(key, before)
    for name, frame in frames.items():
        frame.createOrReplaceTempView(name)
    return frames


def _batches(paths: list[str], opts: dict[str, Any]) -> Iterator[pa.RecordBatch]:
    """One task: the group's findings as batches of :func:`frame_schema`, or
    one row holding its error."""
    schema = frame_schema()
    table, error = run_group(paths, opts)
    if table is None:
        row: dict[str, Any] = {f.name: None for f in schema}
        row["error"] = error
        yield pa.RecordBatch.from_pylist([row], schema=schema)
        return
    yield from table.append_column(ERROR, pa.nulls(table.num_rows, pa.string())).to_batches()
