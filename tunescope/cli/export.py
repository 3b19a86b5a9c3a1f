"""``tunescope export``: every view into a self-contained DuckDB file."""

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
        help="write all views into a self-contained DuckDB file",
        description="Ingest RUNS and write runs, steps, metrics, events and findings as "
        "tables of a new DuckDB database.",
    )
    runs_arg(p)
    p.add_argument("--duckdb", metavar="FILE", required=True, help="database file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    store = open_store(args.runs, args.cache_dir)
    store.export(args.duckdb, overwrite=args.force)
    n = store.cursor().execute("SELECT count(*) FROM runs").fetchone()[0]
    print(f"wrote {args.duckdb}: {count(n, 'run')}; tables runs, steps, metrics, events, findings")
    return ExitCode.OK
