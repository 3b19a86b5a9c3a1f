"""``tunescope export``: every view into a DuckDB file, or a Parquet lake."""

from __future__ import annotations

import argparse
from typing import Any

from tunescope.cli.args import runs_arg
from tunescope.errors import ExitCode
from tunescope.opening import open_store
from tunescope.words import count


def add(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write all views into a DuckDB file, or a Parquet lake other engines read",
        description="Ingest RUNS and write runs, steps, metrics, events and findings as "
        "tables of a new DuckDB database (--duckdb), or as Hive-partitioned Parquet "
        "datasets with a _schema.json (--parquet) for Spark, Trino, Athena and DuckDB.",
    )
    runs_arg(p)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--duckdb", metavar="FILE", help="database file to write")
    out.add_argument("--parquet", metavar="DEST", help="folder or URL to write the lake into")
    p.add_argument(
        "--partition-by",
        choices=("run", "date"),
        default="run",
        help="--parquet folders: run_id=..., or date=.../run_id=... for large corpora",
    )
    p.add_argument("--force", action="store_true", help="replace FILE (or an earlier export)")
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    store = open_store(args.runs, args.cache_dir)
    if args.parquet:
        from tunescope.cli.args import detector_config
        from tunescope.fanout import ensure_findings
        from tunescope.ingest.store.lake import export_lake

        # runs never analysed get their findings in the lake too (analyze's thresholds)
        ensure_findings(store, detector_config(None, [args.runs]))
        rows = export_lake(store, args.parquet, args.partition_by, overwrite=args.force)
        tables = ", ".join(f"{t} {n:,}" for t, n in rows.items())
        print(f"wrote {args.parquet}: {count(rows['runs'], 'run')}; rows: {tables}")
        return ExitCode.OK
    store.export(args.duckdb, overwrite=args.force)
    n = store.cursor().execute("SELECT count(*) FROM runs").fetchall()[0][0]
    print(f"wrote {args.duckdb}: {count(n, 'run')}; tables runs, steps, metrics, events, findings")
    return ExitCode.OK
