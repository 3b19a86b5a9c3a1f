"""Analysis as a function over run paths, for jobs that fan out over many runs.

``analyze_runs(paths)`` is what one task of a Spark, Ray or Dask job calls on
its group of runs: it ingests each path (a runs folder, one run's folder, or a
URL), runs the detectors, stores the findings in each path's cache (so a later
``export`` or TUI sees them) and returns one Arrow table of findings, with the
path each came from. One path is open at a time, and the detectors analyse a
bounded batch of runs at a time, so memory follows the largest run, not the
number of paths.

``analyze_groups(groups, workers)`` is the same fan-out on one machine (a
process per group, at most ``workers`` at once): the local-mode form of the
map that a cluster job does, and the one the tests run.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tunescope.ingest.store.remote import is_url

if TYPE_CHECKING:
    from tunescope.config import Config
    from tunescope.ingest.store.database import Store


def findings_schema() -> pa.Schema:
    """The findings view's columns, after ``root``: the path they came from."""
    from tunescope.ingest.store.database import FINDINGS_SCHEMA

    return pa.schema([pa.field("root", pa.string()), *FINDINGS_SCHEMA])


def analyze_runs(
    paths: Iterable[str | os.PathLike[str]],
    *,
    cache_dir: str | Path | None = None,
    config: Config | None = None,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> pa.Table:
    """Ingest and analyse each path; the findings of all as one table.

    Each path is analysed on its own, so detectors that judge runs against
    their siblings (TS501) see the runs of that path only: give a sweep's runs
    as one path (their common folder or prefix).

    ``cache_dir``: a folder holding one cache per path (default: each path's
    own, as for the CLI). ``config``: a :class:`tunescope.config.Config`
    (default: the one found from the first local path, else the defaults).
    ``select``/``ignore``: detector ids, as for ``analyze``; the stored
    findings are always those of every enabled detector.
    """
    from tunescope.analysis import analyze_store
    from tunescope.config import load_config
    from tunescope.detectors.engine import finding_rows
    from tunescope.ingest.store.database import Store

    roots = [str(p) for p in paths]
    if config is None:
        config = load_config(None, starts=[Path(r) for r in roots[:1] if not is_url(r)])
    columns: dict[str, list[Any]] = {f.name: [] for f in findings_schema()}
    for root in roots:
        cache = Path(cache_dir) / _slug(root) if cache_dir else None
        store = Store.open(root, cache)
        try:
            analysis = analyze_store(store, config, select=select, ignore=ignore)
            for row in finding_rows(analysis.found):
                columns["root"].append(root)
                for name, value in row.items():
                    if name in columns:
                        columns[name].append(value)
        finally:
            store.close()
    return pa.table(columns, schema=findings_schema())


def ensure_findings(store: Store, config: Config | None = None) -> None:
    """Analyse the store's runs when it holds no stored findings yet (never
    analysed), so that an export carries them; a stored analysis is kept."""
    if store.cache.load_manifest().get("findings"):
        return
    from tunescope.analysis import analyze_store

    analyze_store(store, config)


def analyze_groups(
    groups: Sequence[Sequence[str | Path]],
    *,
    workers: int = 2,
    cache_dir: str | Path | None = None,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
) -> pa.Table:
    """``analyze_runs`` over each group in its own process (``workers`` at a
    time, spawned: DuckDB's threads do not survive a fork), concatenated."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    task = partial(_group_rows, cache_dir=cache_dir, select=select, ignore=ignore)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx) as pool:
        parts = list(pool.map(task, [[str(p) for p in g] for g in groups]))
    schema = findings_schema()
    return pa.concat_tables([pa.Table.from_pylist(rows, schema=schema) for rows in parts])


def _group_rows(paths: list[str], **kw: Any) -> list[dict[str, Any]]:
    """One task: plain rows travel between processes (as they would to Spark)."""
    return analyze_runs(paths, **kw).to_pylist()


def _slug(root: str) -> str:
    """A cache folder name for one path: readable and unique."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", root.rstrip("/").rsplit("/", 1)[-1])[:40]
    return f"{name}-{hashlib.sha1(root.encode()).hexdigest()[:12]}"
