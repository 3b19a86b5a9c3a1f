"""TensorBoard scalars: tunescope's reader against the tensorboard package.

Writes one event file of 300,000 scalar points with PyTorch's SummaryWriter
(three tags, as the Trainer logs them), then reads it with
``EventAccumulator(size_guidance={"scalars": 0})`` (keep every point) and with
tunescope's reader, twice each, and prints the best times, the ratio and
whether both returned the same points.

    python bench/tensorboard.py [--points 300000]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the package it measures: keep its folder off the
# import path so that ``import tensorboard`` finds the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def write_file(directory: Path, points: int) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    tags = ("train/loss", "train/learning_rate", "train/grad_norm")
    steps = points // len(tags)
    for step in range(1, steps + 1):
        writer.add_scalar(tags[0], 2.0 / math.sqrt(step) + (step % 7) * 1e-3, step)
        writer.add_scalar(tags[1], 1e-4 * min(1.0, step / 1000), step)
        writer.add_scalar(tags[2], float("nan") if step == steps // 2 else 1.0 + step % 5, step)
    writer.close()
    return next(directory.glob("events.out.tfevents.*"))


def baseline(path: Path) -> list[tuple[str, int, float, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    return [
        (tag, e.step, e.wall_time, e.value)
        for tag in acc.Tags()["scalars"]
        for e in acc.Scalars(tag)
    ]


def ours_points(path: Path) -> list[tuple[str, int, float, float]]:
    from tunescope.ingest.tensorboard import read_scalars

    return read_scalars(path)


def ours_rows(path: Path) -> int:
    from tunescope.ingest.tensorboard import TensorBoardReader

    result = TensorBoardReader().read(path, None)
    return result.steps.num_rows


def best(fn, path: Path, repeat: int = 2) -> tuple[float, object]:
    times = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(path)
        times.append(time.perf_counter() - t)
    return min(times), out


def same(a: list, b: list) -> bool:
    def key(p):
        return (p[0], p[1], p[2])

    if len(a) != len(b):
        return False
    for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
        if x[:3] != y[:3]:
            return False
        if not (x[3] == y[3] or (math.isnan(x[3]) and math.isnan(y[3]))):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument(
        "--baseline-repeat", type=int, default=1, help="EventAccumulator runs (best of)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = write_file(Path(tmp), args.points)
        size = path.stat().st_size
        print(
            f"wrote {args.points:,} points ({size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f}s"
        )
        t_ours, mine = best(ours_points, path)
        print(
            f"tunescope read_scalars:                    {t_ours:.2f}s, {len(mine):,} points",
            flush=True,
        )
        t_rows, nsteps = best(ours_rows, path)
        print(
            f"tunescope reader (points -> Arrow rows):   {t_rows:.2f}s, {nsteps:,} step rows",
            flush=True,
        )
        t_base, theirs = best(baseline, path, repeat=args.baseline_repeat)
        print(f"EventAccumulator (size_guidance scalars=0): {t_base:.2f}s, {len(theirs):,} points")
        print(f"speed-up, points:      {t_base / t_ours:.1f}x (target >= 3x)")
        print(f"speed-up, reader rows: {t_base / t_rows:.1f}x")
        print(f"same points: {same(theirs, mine)}")


if __name__ == "__main__":
    main()
