"""``tunescope tui``: the terminal UI over the runs."""

from __future__ import annotations

import argparse
from typing import Any

from tunescope.cli.args import config_arg, detector_config, runs_arg
from tunescope.errors import ExitCode, UsageError
from tunescope.opening import open_store


def add(sub: Any) -> None:
    p = sub.add_parser(
        "tui",
        help="explore runs, curves, findings and fixes in the terminal",
        description="Ingest RUNS and open the terminal UI: the runs list, each run's curves "
        "and findings with their suggestions, per-rank times, comparisons and SQL. Runs "
        "that are still being written update on their own.",
    )
    runs_arg(p)
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between live ingests of new log lines (default: 2)",
    )
    p.add_argument("--no-live", action="store_true", help="do not watch for new log lines")
    p.add_argument(
        "--no-analyze",
        action="store_true",
        help="show the stored findings only; do not run the detectors",
    )
    config_arg(p)
    p.set_defaults(handler=cmd_tui)


def cmd_tui(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval must be positive, got {args.interval}")
    cfg = detector_config(args.config, [args.runs])  # the same thresholds as analyze
    store = open_store(args.runs, args.cache_dir)
    from tunescope.tui.app import TunescopeApp

    TunescopeApp(
        store,
        live=not args.no_live,
        interval=args.interval,
        analyze=not args.no_analyze,
        detector_config=cfg,
    ).run()
    return ExitCode.OK
