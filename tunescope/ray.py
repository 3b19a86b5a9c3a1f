"""Ray: analyse runs as Ray tasks, one task per path (or per group of paths).

``analyze(paths)`` returns the Arrow table :func:`tunescope.analyze_runs`
returns for the same paths, rows in the same order: each task calls
``analyze_runs`` on its group and hands its table back through Ray's object
store. Ray is started locally (``ray.init``) when no cluster is connected
yet; connect first (``ray.init(address=...)``) to use one.

Caches follow ``analyze_runs`` (one per path; see ``tunescope.spark`` for why
a cache shared by two tasks at once is safe). A group that cannot be analysed
raises its error on the driver, as its class with its one-line message.

ray is the optional extra ``[scale]``; nothing else in tunescope imports this
module.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from tunescope.errors import UsageError
from tunescope.fanout import findings_schema
from tunescope.tasks import Groups, as_groups, options, raise_error, run_group


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("tunescope.ray needs ray: pip install 'tunescope[scale]'") from None
    return ray


@cache
def _remote() -> Any:
    """``run_group`` as a Ray task of one CPU (registered once per process)."""
    return _ray().remote(num_cpus=1)(run_group)


def analyze(
    paths: Groups,
    *,
    cache_dir: str | Path | None = None,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    num_cpus: int | None = None,
) -> pa.Table:
    """The findings of every path (an item may also be a list of paths: one
    task for the group), as one Arrow table in ``analyze_runs``'s schema and
    order. ``num_cpus``: for the local Ray this starts when none is running
    (default: every CPU); ignored when Ray is already initialised."""
    ray = _ray()
    todo = as_groups(paths)
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    opts = options(cache_dir, select, ignore)
    results = ray.get([_remote().remote(group, opts) for group in todo])
    tables = []
    for table, error in results:
        if error is not None:
            raise_error(error)
        tables.append(table)
    return pa.concat_tables(tables) if tables else findings_schema().empty_table()
