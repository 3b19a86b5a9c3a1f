"""TensorBoard scalars: tunescope's reader against the tensorboard package.

Writes one event file of 300,000 scalar points with PyTorch's SummaryWriter
(three tags, as the Trainer logs them), then reads it with
``EventAccumulator(size_guidance={"scalars": 0})`` (keep every point) and with
tunescope's ``read_scalars`` and reader, interleaved (one run of each per
round), and prints the best and median times, the ratios against the
accumulator in the same rounds and whether both returned the same points.

``--commit REV`` (repeatable) also times ``read_scalars`` and the reader as
``ingest/readers/tensorboard.py`` was at that commit (``git show``), in the same
rounds: a regression shows as a ratio against that older copy rather than as
a figure from another day.

    python bench/tensorboard.py [--points 300000] [--rounds 5] [--commit REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def ours_points(path: Path) -> list[tuple[str, int, float | None, float]]:
    from tunescope.ingest.readers.tensorboard import read_scalars

    return read_scalars(path)


def ours_rows(path: Path) -> int:
    from tunescope.ingest.readers.tensorboard import TensorBoardReader

    result = TensorBoardReader().read(path, None)
    return int(result.steps.num_rows)


def at_commit(rev: str) -> tuple[Callable[[Path], Any], Callable[[Path], Any]]:
    """``read_scalars`` and the reader of ``ingest/readers/tensorboard.py`` as it was
    at ``rev``."""
    root = _HERE.parent
    source = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:ingest/readers/tensorboard.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    tmp = Path(tempfile.mkdtemp()) / f"tensorboard_at_{rev}.py"
    tmp.write_text(source)
    spec = importlib.util.spec_from_file_location(tmp.stem, tmp)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[tmp.stem] = module
    spec.loader.exec_module(module)

    def rows(path: Path) -> int:
        return int(module.TensorBoardReader().read(path, None).steps.num_rows)

    return module.read_scalars, rows


def same(a: list[Any], b: list[Any]) -> bool:
    def key(p: Any) -> tuple[str, int, float]:
        return (p[0], p[1], p[2])

    if len(a) != len(b):
        return False
    for x, y in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
        if x[:3] != y[:3]:
            return False
        if not (x[3] == y[3] or (math.isnan(x[3]) and math.isnan(y[3]))):
            return False
    return True


def timed(fn: Callable[[Path], Any], path: Path) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn(path)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs of each")
    ap.add_argument(
        "--commit",
        action="append",
        default=[],
        help="also time read_scalars and the reader as they were at this commit (repeatable)",
    )
    args = ap.parse_args()
    contenders: dict[str, Callable[[Path], Any]] = {
        "EventAccumulator (scalars=0)": baseline,
        "tunescope read_scalars": ours_points,
        "tunescope reader (Arrow rows)": ours_rows,
    }
    for rev in args.commit:
        contenders[f"read_scalars at {rev}"], contenders[f"reader at {rev}"] = at_commit(rev)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = write_file(Path(tmp), args.points)
        size = path.stat().st_size
        print(
            f"wrote {args.points:,} points ({size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f}s"
        )
        times: dict[str, list[float]] = {name: [] for name in contenders}
        outs: dict[str, Any] = {}
        for r in range(args.rounds):
            for name, fn in contenders.items():
                dt, outs[name] = timed(fn, path)
                times[name].append(dt)
            line = ", ".join(f"{name} {ts[-1]:.3f}s" for name, ts in times.items())
            print(f"round {r + 1}: {line}", flush=True)
        base = times["EventAccumulator (scalars=0)"]
        for name, ts in times.items():
            ratios = [b / x for b, x in zip(base, ts, strict=True)]
            print(
                f"{name:32} best {min(ts):.3f}s median {statistics.median(ts):.3f}s"
                f"  speed-up: {min(base) / min(ts):.1f}x best,"
                f" {statistics.median(ratios):.1f}x median of rounds"
            )
        theirs = outs["EventAccumulator (scalars=0)"]
        print(f"points: {len(theirs):,}; step rows: {outs['tunescope reader (Arrow rows)']:,}")
        print(f"same points: {same(theirs, outs['tunescope read_scalars'])}")
        for rev in args.commit:
            print(f"same points at {rev}: {same(theirs, outs[f'read_scalars at {rev}'])}")


if __name__ == "__main__":
    main()
