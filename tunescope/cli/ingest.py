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
from tunescope.say import error, say
from tunescope.words import count

if TYPE_CHECKING:
    from tunescope.ingest.store.cache import IngestReport
    from tunescope.ingest.store.database import Store


def add(sub: Any) -> None:
    p = sub.add_parser(
        "ingest",
        help="read new log lines into the cache and say what was read",
        description="Read every log under RUNS (only what is new since last time) "
        "and print what was read and what was skipped.",
    )
    runs_arg(p, optional=True)
    p.add_argument(
        "--explain",
        metavar="FILE",
        help="say what each reader makes of FILE (which claims it, or why each refused; "
        "the general reader's inferred shape, names and step) and read nothing into the cache",
    )
    p.add_argument("--strict", action="store_true", help="exit 2 if any line or file was skipped")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also list the files no reader took, with a hint for those that look like logs",
    )
    p.set_defaults(handler=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from tunescope.ingest.store.database import Store

    if getattr(args, "explain", None):
        return _explain(Path(args.explain))
    if args.runs is None:
        error("ingest needs RUNS (a folder or URL), or --explain FILE")
        return ExitCode.USAGE

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
            guess = general_guess(path)
            if guess:
                print(f"      {guess}")
    for p in report.problems:  # the list under the summary line, as it prints on stdout
        print(f"  skipped {p}", file=sys.stderr)
    if report.skipped > len(report.problems):
        unlisted = report.skipped - len(report.problems)
        print(f"  ... and {unlisted:,} more skipped, not listed", file=sys.stderr)
    if report.problems:
        say(skipped_note(report))
        if args.strict:
            return ExitCode.USAGE
    return ExitCode.OK


def skipped_note(report: IngestReport) -> str:
    """The closing line about what was skipped. It speaks of good lines kept
    around the bad ones only when every skip was one line: a whole file (or
    run) that could not be read has no neighbours that were kept."""
    every_one_a_line = report.skipped == len(report.problems) and all(
        p.line is not None for p in report.problems
    )
    if every_one_a_line:
        return f"{count(report.skipped, 'line')} skipped (good lines around them were kept)"
    what = count(report.skipped, "line or file", "lines or files")
    return f"{what} skipped (listed above); the rest was read"


def general_guess(path: Path) -> str | None:
    """The general reader's best guess at a file it refused, when the file
    holds names and numbers (None for files it did not even parse)."""
    from tunescope.ingest.readers.general import shape_of

    shape = shape_of(path)
    if shape.kind == "none" or shape.reason is None:
        return None
    step = f", step from {shape.step!r}" if shape.step else ""
    return (
        f"general reader: {shape.kind}, {count(shape.records, 'record')} with a loss{step}; "
        f"refused: {shape.reason}"
    )


def _explain(path: Path) -> int:
    from tunescope.ingest.readers.explain import explain

    if not path.is_file():
        error(f"{path}: not a file (--explain takes one log file)")
        return ExitCode.USAGE
    print("\n".join(explain(path)))
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
