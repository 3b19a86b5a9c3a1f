"""Arguments several commands share, and the one way they load the detectors'
configuration (``analyze``, ``report``, ``watch`` and ``tui`` alike)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunescope.config import Config


def runs_arg(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument(
        "runs",
        metavar="RUNS",
        nargs="?" if optional else None,
        help="directory or URL (s3://bucket/prefix) holding runs",
    )
    cache_arg(p)


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="detector thresholds: a tunescope.toml or pyproject.toml "
        "(default: found by walking up from RUNS)",
    )


def cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where ingested segments live (default: RUNS/.tunescope, else the user cache dir)",
    )


def select_args(p: argparse.ArgumentParser) -> None:
    """``--select`` and ``--ignore``, as a linter's: detector ids or id prefixes,
    comma-separated or repeated (read them with :func:`split_ids`)."""
    p.add_argument(
        "--select",
        action="append",
        metavar="IDS",
        help="only these detectors: ids or prefixes (TS1 = every TS1xx), comma-separated "
        "or repeated; replaces the config's select",
    )
    p.add_argument(
        "--ignore",
        action="append",
        metavar="IDS",
        help="skip these detectors: ids or prefixes, comma-separated or repeated; "
        "adds to the config's ignore",
    )


def split_ids(values: list[str] | None) -> list[str] | None:
    """Detector ids from repeated options, each of which may be comma-separated."""
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


def detector_config(
    explicit: str | None,
    roots: Iterable[str | Path],
    select: Iterable[str] | str | None = None,
    ignore: Iterable[str] | str | None = None,
    *,
    check_ids: bool = True,
) -> Config:
    """The detectors' configuration: ``--config``, else the ``tunescope.toml`` or
    ``pyproject.toml`` found walking up from the runs. Checked before any
    ingest: unknown detector tables, bad options and (``check_ids``) unknown
    ``--select``/``--ignore`` ids are a ConfigError or UsageError naming them."""
    from tunescope.config import load_config
    from tunescope.detectors.selection import select_detectors, validate_config
    from tunescope.ingest.store.remote import is_url

    # the config file is looked for beside local runs only; a URL's is --config
    starts = [Path(r) for r in roots if not is_url(str(r))]
    cfg = load_config(explicit, starts=starts)
    validate_config(cfg)
    if check_ids:
        select_detectors(select, ignore, cfg)
    return cfg
