"""tunescope: find out why a fine-tuning run went wrong."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

from tunescope.version import __version__ as __version__


def analyze_runs(paths: Iterable[str | os.PathLike[str]], **options: Any) -> pa.Table:
    """Ingest and analyse runs folders, run folders or URLs; the findings as
    one Arrow table (see :func:`tunescope.fanout.analyze_runs`). The entry point
    a Spark, Ray or Dask task calls on its group of runs."""
    from tunescope.fanout import analyze_runs as run

    return run(paths, **options)
