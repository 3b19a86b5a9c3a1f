"""Report benchmark: the HTML report's time and size, against ``analyze --format json``.

Two corpora, written once with the event writer (``EventWriter``) under
``--dir`` (default: a folder in the temp dir, kept for the next time):

- 100 runs of 10,000 steps, 4 ranks each: five kinds of run (healthy, a loss
  spike, a straggler rank, divergence, a memory leak), each written once and
  copied 20 times (the Parquet copies the writer compacts to; the JSONL is
  dropped so the copies ingest fast);
- one run of 100,000 steps, 2 ranks, with a spike.

For each corpus, in the same process and on the same ingested cache, it times
``tunescope analyze --format json`` (the baseline) and ``tunescope report``
(interleaved, best of ``--repeat`` each), and prints the ratio and the file sizes. Targets:
100 runs under 5 s and 5 MB, the 100k-step run under 1 s.

Usage: python bench/report.py [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

KINDS = ("healthy", "spike", "straggler", "diverge", "leak")


def write_run(run_dir: Path, kind: str, steps: int, ranks: int, seed: int) -> None:
    from tunescope.train.events import EventWriter

    for rank in range(ranks):
        rng = random.Random(seed * 100 + rank)
        w = EventWriter(run_dir, rank=rank, block_when_full=True)
        if rank == 0:
            w.run_start(
                model="tiny-llama",
                finetuning_type="lora",
                lora_r=8 if kind != "diverge" else 16,
                world_size=ranks,
                total_steps=steps,
                warmup_steps=steps // 50,
                config={"lr": 3e-4 if kind != "diverge" else 3e-3, "seed": seed, "kind": kind},
            )
        for s in range(1, steps + 1):
            loss = 2.0 * math.exp(-s / (steps / 5)) + 0.5 + rng.gauss(0, 0.02)
            if kind == "spike" and s == steps // 2:
                loss *= 8
            if kind == "diverge" and s > steps * 0.7:
                loss += (s - steps * 0.7) / steps * 20
            compute = 0.30 * (1.4 if kind == "straggler" and rank == ranks - 1 else 1.0)
            mem = 4000 + rank * 10 + (s * 0.5 if kind == "leak" else rng.gauss(0, 2))
            w.step(
                step=s,
                loss=loss,
                lr=3e-4 * min(1.0, s / (steps / 50)),
                grad_norm=1.0 + rng.gauss(0, 0.05),
                grad_norm_adapter=0.9,
                grad_norm_backbone=0.0,
                mem_allocated_mb=mem,
                compute_time_s=compute + rng.gauss(0, 0.005),
                step_time_s=0.5,
                tokens=8192,
            )
        w.run_end("completed")
        w.close()
        (run_dir / "events" / f"rank-{rank}.jsonl").unlink()  # keep the Parquet copy


def make_corpus(root: Path, runs: int, steps: int, ranks: int) -> None:
    templates = root.parent / f"{root.name}-templates"
    for i, kind in enumerate(KINDS[: min(runs, len(KINDS))]):
        if not (templates / kind).exists():
            write_run(templates / kind, kind, steps, ranks, seed=i)
    for i in range(runs):
        kind = KINDS[i % len(KINDS)]
        shutil.copytree(templates / kind, root / f"run-{i:03d}-{kind}")


def timed(argv: list[str]) -> float:
    from tunescope.cli import main

    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    assert code in (0, 1), f"{argv}: exit {code}"
    return time.perf_counter() - t


def measure(label: str, root: Path, out: Path, repeat: int, target_s: float) -> None:
    from tunescope.cli import main

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        main(["ingest", str(root)])  # the cache is warm for both
    js, page = out / f"{root.name}.json", out / f"{root.name}.html"
    # Interleaved, best of each: load from other work hits both alike.
    bases, reps = [], []
    for _ in range(repeat):
        bases.append(timed(["analyze", str(root), "--format", "json", "-o", str(js)]))
        reps.append(timed(["report", str(root), "-o", str(page)]))
    base, rep = min(bases), min(reps)
    size = page.stat().st_size
    print(
        f"{label}: report {rep:.2f}s (target < {target_s:g}s), {size / 1e6:.2f} MB "
        f"(target < 5 MB); baseline analyze --format json {base:.2f}s, "
        f"{js.stat().st_size / 1e6:.2f} MB; ratio {rep / base:.2f}x time, "
        f"{size / js.stat().st_size:.1f}x size"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="where the corpora live (kept)")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.gettempdir()) / "tunescope-bench-report"
    many, long_root = base / "many", base / "long"
    t = time.perf_counter()
    if not many.exists():
        make_corpus(many, 100, 10_000, 4)
    if not long_root.exists():
        make_corpus(long_root, 1, 100_000, 2)
    print(f"corpora ready in {time.perf_counter() - t:.1f}s ({base})")
    out = Path(tempfile.mkdtemp(prefix="tunescope-report-out-"))
    measure("100 runs x 10k steps x 4 ranks", many, out, args.repeat, 5.0)
    measure("1 run x 100k steps x 2 ranks", long_root, out, args.repeat, 1.0)
    shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
