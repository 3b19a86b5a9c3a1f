"""Ingest speed, measured against DuckDB's own JSON reader in the same run.

    python bench/ingest.py [--runs 100] [--ranks 4] [--steps 5000]

Writes a corpus with EventWriter (cached in bench/out/ between runs), then
measures in one process:

1. baseline: DuckDB ``read_json`` of the same files into a table;
2. full ingest (fresh cache) -> ratio of throughputs (target >= 0.5x), the
   two interleaved ``--repeats`` times with the page cache warm, best of each;
3. re-ingest of the unchanged corpus (target < 5% of the full ingest);
4. loading the store and a group-by over all steps (target < 1 s for 2 M rows);
5. many small files against fewer large ones holding as many rows
   (``--small-runs`` runs of 200 steps against a fifth as many runs of 1,000
   steps, one rank each): the ratio of their rows/s (target about 1x),
   interleaved ``--repeats`` times, best of each. ``--small-only`` runs just this.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import duckdb

from tunescope.ingest.store.cache import Cache
from tunescope.ingest.store.database import Store
from tunescope.train.events import EventWriter

OUT = Path(__file__).resolve().parent / "out"


def make_corpus(root: Path, runs: int, ranks: int, steps: int) -> None:
    marker = root / f".complete-{runs}x{ranks}x{steps}"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(0)
    started = time.perf_counter()
    for r in range(runs):
        for rank in range(ranks):
            w = EventWriter(root / f"exp{r // 10}" / f"run-{r:03d}", rank=rank, queue_size=100_000)
            w.run_start(
                model="tiny-llama",
                finetuning_type="lora",
                lora_r=8,
                world_size=ranks,
                total_steps=steps,
            )
            ts = 1.7e9
            for s in range(1, steps + 1):
                ts += 0.4
                loss = 2.5 * math.exp(-s / 2000) + 0.8 + rng.gauss(0, 0.02)
                w.step(
                    step=s,
                    ts=ts,
                    loss=loss,
                    lr=1e-4,
                    grad_norm=abs(rng.gauss(1, 0.1)),
                    grad_norm_adapter=0.9,
                    mem_allocated_mb=18000.0,
                    step_time_s=0.4,
                    compute_time_s=0.35 + rng.random() * 0.01,
                    tokens=8192,
                    epoch=s / steps,
                    grad_norm_lora_A=0.3,
                    grad_norm_lora_B=0.6,
                )
            w.run_end("completed")
            w.close()
        print(f"\rwriting corpus: {r + 1}/{runs} runs", end="", file=sys.stderr)
    print(f"\rcorpus written in {time.perf_counter() - started:.0f}s" + " " * 20, file=sys.stderr)
    for p in root.rglob("*.parquet"):  # keep the bench about JSONL ingest
        p.unlink()
    marker.touch()


def small_vs_large(runs: int, repeats: int) -> None:
    """Rows/s of a first ingest of ``runs`` runs of 200 steps against ``runs / 5``
    runs of 1,000 steps (the same rows in a fifth as many files)."""
    sides = {
        "small": (OUT / "ingest-small", runs, 200),
        "large": (OUT / "ingest-large", max(runs // 5, 1), 1000),
    }
    for root, n, steps in sides.values():
        make_corpus(root, n, 1, steps)
        for f in root.rglob("rank-*.jsonl"):
            f.read_bytes()  # both sides read from the page cache
    best = dict.fromkeys(sides, math.inf)
    for _ in range(repeats):
        for name, (root, _n, _steps) in sides.items():
            cache = OUT / f"ingest-{name}-cache"
            shutil.rmtree(cache, ignore_errors=True)
            t = time.perf_counter()
            report = Cache(root, cache).ingest()
            best[name] = min(best[name], time.perf_counter() - t)
            assert not report.problems, report.problems[:3]
    rate = {}
    for name, (_root, n, steps) in sides.items():
        rows = n * (steps + 2)
        rate[name] = rows / best[name]
        print(
            f"{name:5} files: {n:5,} runs x {steps:5,} steps  {best[name]:6.2f} s  "
            f"{rate[name] / 1e6:5.2f} M rows/s  ({1e6 / rate[name]:.1f} us a row)"
        )
    print(
        f"  small-file rows/s / large-file rows/s: {rate['small'] / rate['large']:.2f}x "
        f"best of {repeats} each (target about 1x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each side")
    ap.add_argument("--small-runs", type=int, default=5000, help="runs of 200 steps (step 5)")
    ap.add_argument("--small-only", action="store_true", help="only step 5")
    args = ap.parse_args()
    if args.small_only:
        small_vs_large(args.small_runs, args.repeats)
        return
    root = OUT / "ingest-corpus"
    make_corpus(root, args.runs, args.ranks, args.steps)
    files = sorted(str(p) for p in root.rglob("rank-*.jsonl"))
    size = sum(Path(f).stat().st_size for f in files)
    rows = args.runs * args.ranks * (args.steps + 2)

    for f in files:  # both sides read from the page cache, not the disk
        Path(f).read_bytes()
    cache = OUT / "ingest-cache"
    t_raw = t_ingest = math.inf
    raw_rows = 0
    pairs = []
    for _ in range(args.repeats):  # interleaved, so that both see the same machine
        con = duckdb.connect()
        t = time.perf_counter()
        con.execute(
            "CREATE TABLE raw AS SELECT * FROM read_json(?, format='newline_delimited')", [files]
        )
        raw = time.perf_counter() - t
        raw_rows = con.execute("SELECT count(*) FROM raw").fetchone()[0]
        con.close()
        shutil.rmtree(cache, ignore_errors=True)
        t = time.perf_counter()
        report = Cache(root, cache).ingest()
        full = time.perf_counter() - t
        assert not report.problems, report.problems[:3]
        pairs.append(raw / full)
        t_raw, t_ingest = min(t_raw, raw), min(t_ingest, full)

    t = time.perf_counter()
    again = Cache(root, cache).ingest()
    t_again = time.perf_counter() - t
    assert again.changed == 0

    t = time.perf_counter()
    store = Store(root, cache)
    t_load = time.perf_counter() - t
    sql = (
        "SELECT run_id, rank, count(*) AS n, avg(loss), max(grad_norm), "
        "median(compute_time_s) FROM steps GROUP BY run_id, rank"
    )
    t = time.perf_counter()
    groups = store.cursor().execute(sql).fetchall()
    t_query = time.perf_counter() - t
    n_steps = store.cursor().execute("SELECT count(*) FROM steps").fetchone()[0]
    assert len(groups) == args.runs * args.ranks and n_steps == args.runs * args.ranks * args.steps

    mb = size / 1e6
    print(f"corpus: {len(files)} files, {mb:.0f} MB, {rows:,} events ({raw_rows:,} read by DuckDB)")
    print(
        f"DuckDB read_json -> table:   {t_raw:6.2f} s  {rows / t_raw / 1e6:5.2f} M rows/s  "
        f"{mb / t_raw:6.0f} MB/s"
    )
    print(
        f"tunescope full ingest:       {t_ingest:6.2f} s  {rows / t_ingest / 1e6:5.2f} M rows/s  "
        f"{mb / t_ingest:6.0f} MB/s"
    )
    print(
        f"  ratio to DuckDB read_json: {t_raw / t_ingest:6.2f}x best of {args.repeats} each, "
        f"{statistics.median(pairs):.2f}x median of the interleaved pairs (target >= 0.5x; "
        f"pairs: {', '.join(f'{r:.2f}x' for r in pairs)})"
    )
    print(
        f"re-ingest, nothing changed:  {t_again:6.3f} s  = {100 * t_again / t_ingest:.1f}% of full "
        "(target < 5%)"
    )
    print(f"load store ({n_steps:,} steps):  {t_load:6.2f} s")
    print(f"group-by over all steps:     {t_query:6.3f} s  (target < 1 s)")
    small_vs_large(args.small_runs, args.repeats)


if __name__ == "__main__":
    main()
