"""Peak memory of `analyze` and of a re-ingest, against the corpus size.

    python bench/memory.py            # 1,000 runs x 4,000 steps (4 M step rows)
    python bench/memory.py --quick    # 200 runs x 2,000 steps

Each command runs in its own process (`os.wait4` gives that process's peak
resident memory). The baseline, measured in the same run, is the same command
over a tenth of the runs: when memory follows the largest batch or run and not
the corpus, the ratio stays near 1 while the corpus is 10x larger.

Targets: `analyze` over 4 M rows in 1,000 runs under 500 MB; a re-ingest of
the unchanged corpus under 200 MB.

    python bench/memory.py --one-file 100   # one rank file of 100 MB

One rank file with a string field on every line (each line an event row as
well as a step row): the peak of a first `ingest` against the file's size,
and against the same file at a tenth of the size (the baseline). The reader
decodes a bounded part of a file at a time, so the ratio stays near 1.
Target: under 500 MB for a 405 MB file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TUNESCOPE = str(Path(sys.executable).with_name("tunescope"))


def write_corpus(root: Path, runs: int, steps: int, seed: int = 0) -> None:
    """Native event logs written directly (the event writer's format)."""
    rnd = random.Random(seed)
    for r in range(runs):
        d = root / f"run-{r:04d}" / "events"
        d.mkdir(parents=True)
        start = {"v": 1, "kind": "run_start", "run": f"run-{r:04d}", "rank": 0, "ts": 1.7e9}
        start.update(world_size=1, total_steps=steps, warmup_steps=50, device_memory_mb=81920)
        lines = [json.dumps(start)]
        lr_peak = 10 ** rnd.uniform(-5, -3)
        for s in range(1, steps + 1):
            loss = 1.0 + 1.5 * math.exp(-s / (steps / 4)) + rnd.gauss(0, 0.02)
            lines.append(
                f'{{"v":1,"kind":"step","run":"run-{r:04d}","rank":0,"step":{s},'
                f'"ts":{1.7e9 + s * 0.5},"loss":{loss:.5f},"lr":{lr_peak * min(1, s / 50):.3e},'
                f'"grad_norm":{0.8 + rnd.random() * 0.2:.4f},"mem_allocated_mb":{20000 + rnd.random():.2f},'
                f'"step_time_s":{0.5 + rnd.random() * 0.01:.4f},"tokens":8192}}'
            )
        lines.append(
            json.dumps(
                {
                    "v": 1,
                    "kind": "run_end",
                    "run": f"run-{r:04d}",
                    "rank": 0,
                    "ts": 1.7e9 + steps,
                    "status": "completed",
                }
            )
        )
        (d / "rank-0.jsonl").write_text("\n".join(lines) + "\n")


def write_one_file(root: Path, mb: float, seed: int = 0) -> int:
    """One run with one rank file of about ``mb`` MB, a string on every line;
    returns its size in bytes."""
    rnd = random.Random(seed)
    d = root / "run-big" / "events"
    d.mkdir(parents=True)
    path = d / "rank-0.jsonl"
    target = int(mb * 1e6)
    with open(path, "w") as f:
        f.write('{"v":1,"kind":"run_start","run":"run-big","rank":0,"ts":1.7e9}\n')
        step = size = 0
        while size < target:
            lines = []
            for _ in range(10_000):
                step += 1
                lines.append(
                    f'{{"v":1,"kind":"step","step":{step},"ts":{1.7e9 + step:.1f},'
                    f'"loss":{1 + rnd.random():.5f},"lr":0.0001,'
                    f'"note":"batch-{rnd.getrandbits(32):08x}"}}\n'
                )
            chunk = "".join(lines)
            f.write(chunk)
            size += len(chunk)
    return path.stat().st_size


def one_large_file(mb: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ts-mem-"))
    try:
        results = {}
        for label, size_mb in (("baseline (a tenth)", mb / 10), ("file", mb)):
            root = tmp / label.split()[0]
            size = write_one_file(root, size_mb)
            peak, dt = peak_mb("ingest", str(root), "--cache-dir", str(tmp / f"cache-{label[:4]}"))
            results[label] = (size, peak)
            print(
                f"{label}: one rank file of {size / 1e6:.0f} MB, first ingest peak "
                f"{peak:.0f} MB ({peak * 1e6 / size:.2f}x the file) in {dt:.1f}s"
            )
        (bsize, bpeak), (fsize, fpeak) = results["baseline (a tenth)"], results["file"]
        print(
            f"peak memory, {fsize / 1e6:.0f} MB file / a tenth of it: {fpeak / bpeak:.2f}x "
            f"(the file is {fsize / bsize:.1f}x larger); +{fpeak - bpeak:.0f} MB for "
            f"+{(fsize - bsize) / 1e6:.0f} MB of log"
        )
        per_mb = (fpeak - bpeak) * 1e6 / (fsize - bsize)
        scaled = fpeak + per_mb * (405e6 - fsize) / 1e6
        print(f"target: a 405 MB file under 500 MB (this growth scaled: {scaled:.0f} MB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def peak_mb(*args: str) -> tuple[float, float]:
    """Peak resident memory (MB) and wall time (s) of one tunescope command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([TUNESCOPE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"tunescope {' '.join(args)} failed: {err}")
    return usage.ru_maxrss / 1024, dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/memory.py")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--one-file", type=float, metavar="MB", help="one rank file of MB megabytes")
    a = p.parse_args(argv)
    if a.one_file:
        one_large_file(a.one_file)
        return 0
    runs, steps = (200, 2000) if a.quick else (1000, 4000)
    tmp = Path(tempfile.mkdtemp(prefix="ts-mem-"))
    try:
        results = {}
        for label, n in (("baseline (a tenth)", runs // 10), ("corpus", runs)):
            root = tmp / label.split()[0]
            t0 = time.perf_counter()
            write_corpus(root, n, steps)
            first, t_first = peak_mb("ingest", str(root))
            again, t_again = peak_mb("ingest", str(root))
            analyze, t_an = peak_mb(
                "analyze",
                str(root),
                "--exit-zero",
                "--format",
                "json",
                "-o",
                str(tmp / "report.json"),
            )
            results[label] = (n, first, again, analyze)
            print(
                f"{label}: {n} runs x {steps} steps = {n * steps:,} step rows "
                f"(written in {time.perf_counter() - t0 - t_first - t_again - t_an:.0f}s)\n"
                f"  first ingest {first:.0f} MB ({t_first:.1f}s), re-ingest unchanged "
                f"{again:.0f} MB ({t_again:.1f}s), analyze {analyze:.0f} MB ({t_an:.1f}s)"
            )
        base, full = results["baseline (a tenth)"], results["corpus"]
        print(
            f"peak memory, corpus / a tenth of it (10x the rows): re-ingest "
            f"{full[2] / base[2]:.2f}x, analyze {full[3] / base[3]:.2f}x"
        )
        print(
            f"targets: analyze {full[3]:.0f} MB (< 500 MB), re-ingest {full[2]:.0f} MB (< 200 MB)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
