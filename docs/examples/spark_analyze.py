"""Analyse runs with Spark, one task per path given; print each finding.

    spark-submit --master local[2] docs/examples/spark_analyze.py RUNS [RUNS ...]

Each path is a runs folder, one run's folder or a URL (``s3://bucket/prefix``
with the ``[s3]`` extra). The driver and the workers need tunescope with its
``[scale]`` extra installed; run it with that environment's ``python3`` first on
PATH (or set ``PYSPARK_PYTHON``).
"""

from __future__ import annotations

import sys

import tunescope.spark
from tunescope.errors import TunescopeError


def main(paths: list[str]) -> int:
    spark = tunescope.spark.session(app_name="tunescope-spark-analyze")
    try:
        table = tunescope.spark.analyze(spark, paths)  # a Spark task per path
    except TunescopeError as e:
        print(f"tunescope: error: {e}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    rows = sorted(
        table.to_pylist(), key=lambda r: (r["run_id"], r["step_start"] or 0, r["detector"])
    )
    for r in rows:
        where = "all ranks" if r["rank"] is None else f"rank {r['rank']}"
        print(f"{r['run_id']}: {r['severity']} {r['detector']} {r['name']} ({where})")
    print(f"{len(rows)} findings in {len(paths)} tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
