"""``tunescope query``: read-only SQL over the runs, as a table, CSV, JSON or Parquet."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunescope.cli.args import runs_arg
from tunescope.errors import ExitCode, InputError, UsageError
from tunescope.files import write_output
from tunescope.opening import open_store
from tunescope.say import say
from tunescope.words import count

if TYPE_CHECKING:
    import pyarrow as pa


def add(sub: Any) -> None:
    p = sub.add_parser(
        "query",
        help="run read-only SQL over the runs",
        description="Ingest RUNS, then run SQL against the views runs, steps, metrics, "
        "events and findings.",
        epilog='example: tunescope query runs/ "SELECT run_id, max(loss) FROM steps GROUP BY 1"',
    )
    runs_arg(p)
    p.add_argument("sql", metavar="SQL", help="one or more read-only SQL statements")
    p.add_argument(
        "--format",
        choices=("table", "csv", "json", "parquet"),
        help="output format (default: table on a terminal, csv otherwise)",
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write the result to FILE")
    p.set_defaults(handler=cmd_query)


def cmd_query(args: argparse.Namespace) -> int:
    fmt = args.format or ("table" if sys.stdout.isatty() and not args.output else "csv")
    if fmt == "parquet" and not args.output:
        raise UsageError("--format parquet needs --output FILE")
    from tunescope.ingest.store.database import check_read_only

    check_read_only(args.sql)  # refuse writes before spending time on ingest
    store = open_store(args.runs, args.cache_dir)
    table = store.query(args.sql)
    write_table(table, fmt, args.output)
    if args.output:
        rows, cols = count(table.num_rows, "row"), count(table.num_columns, "column")
        say(f"wrote {args.output}: {rows} x {cols} ({fmt})")
    return ExitCode.OK


def write_table(table: pa.Table, fmt: str, output: str | None) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(table, output)
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{output}: cannot write: {e}") from None
        return
    if fmt == "csv":
        text = _csv(table)
    elif fmt == "json":
        text = json.dumps(_records(table), indent=1, default=str) + "\n"
    else:
        text = format_table(table)
    if output:
        try:
            write_output(Path(output), text)
        except OSError as e:
            raise InputError(f"{output}: cannot write: {e.strerror or e}") from None
    else:
        sys.stdout.write(text)


def _records(table: pa.Table) -> list[dict[str, Any]]:
    from tunescope.findings import jsonable
    from tunescope.ingest.store.duck import python_rows

    names = table.column_names
    return [jsonable(dict(zip(names, row, strict=True))) for row in python_rows(table)]


def _cell(value: Any, exact: bool = False) -> str:
    """A value as text: full precision for files (``exact``), short on a terminal."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value) if exact else f"{value:.6g}"
    return str(value)


def _csv(table: pa.Table) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    from tunescope.ingest.store.duck import python_rows

    w.writerow(table.column_names)
    for row in python_rows(table):
        w.writerow([_cell(v, exact=True) for v in row])
    return buf.getvalue()


def format_table(table: pa.Table, max_width: int = 40) -> str:
    """A plain text table for a terminal."""
    names = table.column_names
    if not names:
        return "(no result)\n"
    from tunescope.ingest.store.duck import python_rows

    rows = [[_cell(v) for v in row] for row in python_rows(table)]
    rows = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in rows]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    import pyarrow.types as pt

    numeric = [
        pt.is_integer(f.type) or pt.is_floating(f.type) or pt.is_decimal(f.type)
        for f in table.schema
    ]

    def line(cells: list[str]) -> str:
        out = []
        for c, w, num in zip(cells, widths, numeric, strict=True):
            out.append(c.rjust(w) if num else c.ljust(w))
        return "  ".join(out).rstrip()

    parts = [line(names), "  ".join("─" * w for w in widths)]
    parts += [line(r) for r in rows]
    parts.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(parts) + "\n"
