"""Regenerate the sibling sweeps: ``python -m tunescope.train.sweeps fixtures/sweeps``.

Two roots of real runs of the built-in tiny model (``fixtures/configs/sweep.yaml``):

- ``grid/``: ``lora_r`` in {2, 8, 32} (``lora_alpha`` = 2r, so the adapters'
  scale stays 2 and the rank changes capacity only) x ``lr`` in {1e-4, 1e-3,
  1e-2}, one seed;
- ``seeds/``: one config (r=8, lr=1e-3) trained with three seeds, so that every
  difference between its runs is seed noise.

TS501 and ``tunescope compare`` are checked on them. Each run is its own
process, like the labelled fixtures (:mod:`tunescope.train.fixtures`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tunescope.train.fixtures import Spec, run_one
from tunescope.train.trainer import REPO

STEPS = 150
RANKS = (2, 8, 32)
LRS = ("1e-4", "1e-3", "1e-2")
SEEDS = (0, 1, 2)


def specs() -> dict[str, list[Spec]]:
    """The runs of each root, by root name."""
    base = [f"max_steps={STEPS}"]
    grid = [
        Spec(
            f"r{r}-lr{lr}",
            config="sweep.yaml",
            sets=[*base, f"lora_r={r}", f"lora_alpha={2 * r}", f"lr={lr}"],
        )
        for r in RANKS
        for lr in LRS
    ]
    seeds = [Spec(f"r8-lr1e-3-s{s}", config="sweep.yaml", sets=[*base, f"seed={s}"]) for s in SEEDS]
    return {"grid": grid, "seeds": seeds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tunescope.train.sweeps")
    p.add_argument("root", nargs="?", default=str(REPO / "fixtures" / "sweeps"))
    p.add_argument("--jobs", type=int, default=1, help="runs to train at the same time")
    a = p.parse_args(argv)
    from concurrent.futures import ThreadPoolExecutor

    todo = [(Path(a.root) / name, s) for name, runs in specs().items() for s in runs]
    t0 = time.time()
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        list(pool.map(lambda item: run_one(item[1], item[0]), todo))
    print(f"{len(todo)} runs in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
