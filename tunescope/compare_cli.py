"""The ``tunescope compare RUNS... [--by KEY,...]`` command: arguments and output.

The comparison itself is :mod:`tunescope.detectors.compare`; this module
turns the paths given into run ids of one store and prints the result.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tunescope.errors import UsageError
from tunescope.suggest import did_you_mean


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a tunescope.toml or pyproject.toml ([tool.tunescope.groups]; "
        "default: found by walking up from RUNS)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where ingested segments live (default: ROOT/.tunescope, else the user cache dir)",
    )


def chosen_runs(paths: list[str], run_ids: list[str]) -> tuple[Path, list[str]]:
    """The root (the paths' common folder) and the run ids under the paths."""
    for p in paths:
        if not Path(p).is_dir():
            raise UsageError(f"{p}: not a directory")
    full = [os.path.abspath(p) for p in paths]
    root = Path(os.path.commonpath(full))
    return root, [r for r in run_ids if _under(r, [os.path.relpath(f, root) for f in full])]


def _under(run: str, rels: list[str]) -> bool:
    for rel in rels:
        rel = rel.replace(os.sep, "/")
        if rel == "." or run == rel or run.startswith(rel + "/"):
            return True
    return False


def run(args: argparse.Namespace) -> int:
    from tunescope.config import load_config
    from tunescope.detectors.base import Context
    from tunescope.detectors.compare import as_json, compare, text
    from tunescope.detectors.siblings import run_settings
    from tunescope.errors import ExitCode
    from tunescope.opening import open_store

    root, _ = chosen_runs(args.runs, [])
    cfg = load_config(args.config, starts=[root])
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
