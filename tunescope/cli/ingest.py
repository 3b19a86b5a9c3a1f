"""``tunescope ingest``: read new log lines into the cache and say what was read."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunescope.cli.args import runs_arg
from tunescope.errors import ExitCode
from tunescope.opening import ingest_progress, unread_files
from tunescope.say import say
from tunescope.words import count

if TYPE_CHECKING:
    from tunescope.ingest.cache import IngestReport
    from tunescope.ingest.store import Store


def add(sub: Any) -> None:
    p = sub.add_parser(
        "ingest",
        help="read new log lines into the cache and say what was read",
        description="Read every log under RUNS (only what is new since last time) "
        "and print what was read and what was skipped.",
    )
    runs_arg(p)
    p.add_argument("--strict", action="store_true", help="exit 2 if any line or file was skipped")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also list the files no reader took, with a hint for those that look like logs",
    )
    p.set_defaults(handler=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from tunescope.ingest.store import Store

    with ingest_progress() as bar:
        store = Store.open(args.runs, args.cache_dir, progress=bar.update)
    report = store.last_report
    assert report is not None
    print(ingest_summary(report, store))
    verbose = getattr(args, "verbose", False)
    if not verbose and not store.run_ids():
        say(f"no runs found: {unread_files(report, args.runs) or 'no files to read'}")
    if verbose:
        root = Path(args.runs)
        print(f"  not read:  {count(len(report.unclaimed), 'file')} no reader took")
        for path, why in report.unclaimed:
            rel = os.path.relpath(path, root)
            print(f"    {rel}: {why}" if why else f"    {rel}")
    for p in report.problems:  # the list under the summary line, as it prints on stdout
        print(f"  skipped {p}", file=sys.stderr)
    if report.skipped > len(report.problems):
        unlisted = report.skipped - len(report.problems)
        print(f"  ... and {unlisted:,} more skipped, not listed", file=sys.stderr)
    if report.problems:
        say(
            f"{count(report.skipped, 'line or file', 'lines or files')} skipped "
            "(good lines around them were kept)"
        )
        if args.strict:
            return ExitCode.USAGE
    return ExitCode.OK


def ingest_summary(report: IngestReport, store: Store) -> str:
    cur = store.cursor()
    runs, steps, metrics, events = cur.execute(
        "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM steps), "
        "(SELECT count(*) FROM metrics), (SELECT count(*) FROM events)"
    ).fetchall()[0]
    by_status = cur.execute(
        "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status"
    ).fetchall()
    status = ", ".join(f"{n} {s}" for s, n in by_status) or "none"
    new = report.rows
    lines = [
        f"{report.root}: {count(runs, 'run')} ({status}) from {count(report.sources, 'file')}",
        f"  read now:  {count(report.changed, 'changed file')}, {new['steps']:,} step rows, "
        f"{new['metrics']:,} metric points, {new['events']:,} events in {report.seconds:.2f}s",
        f"  in store:  {steps:,} step rows, {metrics:,} metric points, {events:,} events"
        + (
            " (a step written twice, or logged again after a resume, is stored once)"
            if new["steps"] > steps
            else ""
        ),
        f"  skipped:   {count(report.skipped, 'line or file', 'lines or files')}",
        f"  cache:     {store.cache.dir}",
    ]
    return "\n".join(lines)
