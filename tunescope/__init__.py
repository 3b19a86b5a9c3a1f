"""tunescope: find out why a fine-tuning run went wrong."""

from __future__ import annotations

from typing import Any

# The one place the version is written: pyproject.toml reads it from here
# (``dynamic = ["version"]``) and ``tunescope --version`` prints it.
__version__ = "0.1.0"


def analyze_runs(paths: Any, **options: Any) -> Any:
    """Ingest and analyse runs folders, run folders or URLs; the findings as
    one Arrow table (see :func:`tunescope.fanout.analyze_runs`). The entry point
    a Spark, Ray or Dask task calls on its group of runs."""
    from tunescope.fanout import analyze_runs as run

    return run(paths, **options)
