"""``tunescope compare RUNS... [--by KEY,...]``: arguments and output.

The comparison itself is :mod:`tunescope.report.compare`; this module
turns the paths given into run ids of one store and prints the result.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tunescope.cli.args import cache_arg, config_arg, detector_config
from tunescope.errors import ExitCode, UsageError
from tunescope.suggest import did_you_mean


def add(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="compare runs: config differences, loss at matched steps, what tracks the outcome",
        description="Ingest RUNS and print the settings that differ between the runs, their "
        "loss at matched steps and at the step all reached, tokens seen, time per step, peak "
        "memory, and each differing setting's rank correlation with the final loss.",
        epilog="example: tunescope compare fixtures/sweeps/grid --by lora_r,learning_rate",
    )
    p.add_argument(
        "runs",
        metavar="RUNS",
        nargs="+",
        help="a directory of runs (compare them all), or two or more run directories",
    )
    p.add_argument(
        "--by",
        metavar="KEY,...",
        help="the settings to show and correlate with the loss, e.g. lora_r,learning_rate "
        "(default: every setting that differs)",
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    config_arg(p)
    cache_arg(p)
    p.set_defaults(handler=cmd_compare)


def chosen_runs(paths: list[str], run_ids: list[str]) -> tuple[Path, list[str]]:
    """The root (the paths' common folder) and the run ids under the paths."""
    for p in paths:
        if not Path(p).is_dir():
            what = "not a directory" if Path(p).exists() else "no such directory"
            raise UsageError(f"{p}: {what}; pass run folders, or the folder that holds them")
    full = [os.path.abspath(p) for p in paths]
    root = Path(os.path.commonpath(full))
    return root, [r for r in run_ids if _under(r, [os.path.relpath(f, root) for f in full])]


def _under(run: str, rels: list[str]) -> bool:
    for rel in rels:
        rel = rel.replace(os.sep, "/")
        if rel == "." or run == rel or run.startswith(rel + "/"):
            return True
    return False


def cmd_compare(args: argparse.Namespace) -> int:
    from tunescope.detectors.base import Context
    from tunescope.detectors.scans.siblings import run_settings
    from tunescope.opening import open_store
    from tunescope.report.compare import as_json, compare, text

    root, _ = chosen_runs(args.runs, [])
    cfg = detector_config(args.config, [root], check_ids=False)
    store = open_store(root, args.cache_dir)
    ctx = Context(store, None, groups=cfg.groups)
    _, runs = chosen_runs(args.runs, store.run_ids())
    if len(runs) < 2:
        raise UsageError(f"compare needs two or more runs; {', '.join(args.runs)} held {len(runs)}")
    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    if by:
        known = sorted({k for r in runs for k in run_settings(ctx).get(r, {})})
        for k in by:
            if k not in known:
                raise UsageError(f"--by {k}: no run logged this setting{did_you_mean(k, known)}")
    result = compare(ctx, runs, by)
    print(as_json(result) if args.format == "json" else text(result), end="")
    return ExitCode.OK
