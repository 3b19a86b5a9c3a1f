"""Spark and Ray against analyze_groups: the same groups of runs, in one process.

    python bench/scale_out.py [--runs 80] [--steps 2000] [--repeats 3] [--quick]

Writes a corpus with EventWriter (bench/ingest.py's generator, cached in
bench/out/): ``--runs`` runs of one rank, ten to a folder, and in each folder
a copy of one labelled faulty run of fixtures/runs (so there are findings to
compare); each folder is a path and a group (a sweep, as TS501 wants it). Starts a Spark session
(``local[2]``) and a local Ray (``num_cpus=2``) once, and reports those
starts as fixed costs. Then, interleaved ``--repeats`` times, each from an
empty cache (every run ingested and analysed):

1. baseline: ``analyze_groups(groups, workers=2)``, a process per group;
2. ``tunescope.spark.analyze(spark, groups)``, a Spark task per group;
3. ``tunescope.ray.analyze(groups)``, a Ray task per group;

and prints the first call, best and median of each, and each engine's ratio
to the baseline (time / baseline time: above 1x is slower). The first call
of Spark and Ray also starts their Python workers, which they keep for the
later calls; analyze_groups starts its processes on every call. All three must find the same
rows; the script stops if they do not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tunescope.ray
import tunescope.spark
from ingest import make_corpus  # bench/ingest.py: the same corpus generator
from tunescope.fanout import analyze_groups

OUT = Path(__file__).resolve().parent / "out"
FAULTS = ["fault-nan", "fault-lr-spike", "fault-straggler-2rank", "fault-leak", "fault-bad-batch"]
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "runs"


def canonical(table) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=80)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="40 runs x 500 steps, 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.steps, args.repeats = 40, 500, 2

    corpus = OUT / f"scale-{args.runs}x{args.steps}"
    make_corpus(corpus, args.runs, 1, args.steps)
    folders = sorted(p for p in corpus.iterdir() if p.is_dir())
    for i, folder in enumerate(folders):
        fault = FAULTS[i % len(FAULTS)]
        if not (folder / fault).exists():
            shutil.copytree(FIXTURES / fault, folder / fault, ignore=shutil.ignore_patterns(".*"))
    groups = [[str(p)] for p in folders]
    print(f"corpus: {args.runs} runs x {args.steps} steps in {len(groups)} groups (folders)")

    started = time.perf_counter()
    spark = tunescope.spark.session("local[2]", app_name="tunescope-bench")
    spark_start = time.perf_counter() - started
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    print(f"fixed costs: Spark session (JVM) {spark_start:.1f}s, ray.init {ray_start:.1f}s")

    tmp = Path(tempfile.mkdtemp(prefix="tunescope-scalebench-"))
    engines: dict[str, Callable[[Path], object]] = {
        "analyze_groups": lambda c: analyze_groups(groups, workers=2, cache_dir=c),
        "spark": lambda c: tunescope.spark.analyze(spark, groups, cache_dir=c),
        "ray": lambda c: tunescope.ray.analyze(groups, cache_dir=c),
    }
    times: dict[str, list[float]] = {name: [] for name in engines}
    found: dict[str, list[str]] = {}
    try:
        for _ in range(args.repeats):
            for name, run in engines.items():
                cache = tmp / name
                shutil.rmtree(cache, ignore_errors=True)
                started = time.perf_counter()
                table = run(cache)
                times[name].append(time.perf_counter() - started)
                found.setdefault(name, canonical(table))
        if not found["spark"] == found["ray"] == found["analyze_groups"]:
            sys.exit("the engines found different findings")
        print(f"findings: {len(found['spark'])} rows, equal in all three")
        base_best = min(times["analyze_groups"])
        base_median = statistics.median(times["analyze_groups"])
        base_first = times["analyze_groups"][0]
        for name, ts in times.items():
            best, median = min(ts), statistics.median(ts)
            line = f"{name:15s} first {ts[0]:6.2f}s  best {best:6.2f}s  median {median:6.2f}s"
            if name != "analyze_groups":
                line += (
                    f"  ratio to analyze_groups: {ts[0] / base_first:.2f}x first, "
                    f"{best / base_best:.2f}x best, {median / base_median:.2f}x median"
                )
            print(line)
    finally:
        spark.stop()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
