"""Speed of the across-run detectors (TS501 sibling-gap, TS502 capacity-hint) on
one large sweep, against the same analysis with both ignored.

The sweep is one sibling group (one model, one dataset, LoRA): ``--runs`` runs
(default 1,000) of ``--ranks`` ranks x ``--steps`` steps (default 4 x 1,000),
over a grid of the learning rate (10 values), the LoRA rank with
``lora_alpha = 2r`` (5), the target modules (5) and the seed (4, the
replicates that measure the group's noise), the seed varying fastest: the
first 100 runs hold one learning rate, the first 1,000 all ten. The final
loss depends on every setting, so TS501 names many runs. The runs are written
by the detector-case generator (``tests/helpers/detector_cases.py``, the
event writer's lines written directly) under ``--dir`` and kept for the
next time.

For each size of ``--sizes`` (runs taken from the front of the grid): the
runs are ingested once, then ``tunescope analyze --format json`` (every
detector) and the baseline, the same command with ``ignore = ["TS501",
"TS502"]`` in its configuration, run in this process interleaved
``--repeat`` times each on the warm store; it prints the best and median of
each, their ratio, and the time of TS501 alone (best of the same repeats,
over a fresh context that loads the loss curves). Target: ``analyze`` of
1,000 runs under 5 s.

    .venv/bin/python bench/siblings.py [--sizes 100,200,400,1000] [--steps 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "helpers"))  # the case generator

from detector_cases import write_case  # noqa: E402

from tunescope.cli import main as main_cli  # noqa: E402
from tunescope.detectors import sibling_gap  # noqa: E402
from tunescope.detectors.base import Context  # noqa: E402
from tunescope.ingest.store.database import Store  # noqa: E402

LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
RANKS_R = (2, 4, 8, 16, 32)
TARGETS = ("q_proj,v_proj", "k_proj,q_proj,v_proj", "all-linear", "o_proj,q_proj", "v_proj")
SEEDS = 4


def grid(i: int) -> tuple[float, int, str, int]:
    """The settings of run ``i``: (learning rate, rank, targets, seed)."""
    seed = i % SEEDS
    target = TARGETS[(i // SEEDS) % len(TARGETS)]
    r = RANKS_R[(i // (SEEDS * len(TARGETS))) % len(RANKS_R)]
    lr = LRS[(i // (SEEDS * len(TARGETS) * len(RANKS_R))) % len(LRS)]
    return lr, r, target, seed


def run_spec(i: int, ranks: int, steps: int) -> dict[str, Any]:
    lr, r, target, seed = grid(i)
    # the best lr is 2e-4; a larger rank and more targets end lower
    final = (
        1.2
        + 0.08 * abs(LRS.index(lr) - LRS.index(2e-4))
        + 0.05 * (len(RANKS_R) - 1 - RANKS_R.index(r))
        + 0.03 * TARGETS.index(target)
    )
    start = {
        "kind": "run_start",
        "world_size": ranks,
        "model": "tiny-llama",
        "finetuning_type": "lora",
        "lora_r": r,
        "lora_alpha": 2 * r,
        "total_steps": steps,
        "warmup_steps": steps // 20,
        "config": {"dataset": "alpaca.jsonl", "learning_rate": lr, "lora_target": target,
                   "seed": seed, "run_name": f"run-{i:04d}"},
    }  # fmt: skip
    block = {
        "generate": "steps",
        "from": 1,
        "to": steps,
        "seed": i,
        "loss": {"start": 2.6, "end": final, "tau": steps / 5, "log_noise": 0.02},
        "lr": {"warmup": steps // 20, "peak": lr, "decay": "cosine"},
        "grad_norm": {"value": 0.8, "log_noise": 0.2},
    }
    end = {"kind": "run_end", "status": "completed"}
    return {"ranks": {f"0-{ranks - 1}": [start, block, end]}}


def make_sweep(pool: Path, root: Path, runs: int, ranks: int, steps: int) -> None:
    """The first ``runs`` runs of the grid under ``root``: written once into
    ``pool``, then linked (hard links: no copy) into ``root``, one root a size
    since the across-run detectors judge every run of a store."""
    for i in range(runs):
        name = f"run-{i:04d}"
        if not (pool / name / "done").exists():  # a killed bench leaves whole runs
            write_case({"runs": {name: run_spec(i, ranks, steps)}}, pool, fast=True)
            (pool / name / "done").touch()
        if not (root / name).exists():
            (root / name / "events").mkdir(parents=True)
            for f in (pool / name / "events").iterdir():
                os.link(f, root / name / "events" / f.name)


def timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def cli_analyze(root: Path, out: Path, config: Path | None) -> tuple[float, list[str]]:
    """``tunescope analyze ROOT --format json`` in this process: its time and
    the detector of each finding."""
    argv = ["analyze", str(root), "--format", "json", "-o", str(out), "--exit-zero"]
    argv += ["--config", str(config)] if config else []
    with contextlib.redirect_stderr(io.StringIO()):
        t, code = timed(lambda: main_cli(argv))
    assert code == 0, f"{argv}: exit {code}"
    return t, [f["detector"] for f in json.loads(out.read_text())["findings"]]


def measure(root: Path, runs: int, repeat: int) -> None:
    with contextlib.redirect_stderr(io.StringIO()):
        t_ingest, store = timed(lambda: Store.open(root))
    assert len(store.run_ids()) == runs, f"{root}: {len(store.run_ids())} runs, not {runs}"
    tmp = Path(tempfile.mkdtemp(prefix="tunescope-bench-siblings-"))
    config = tmp / "tunescope.toml"  # the baseline: both detectors off in the configuration
    config.write_text('ignore = ["TS501", "TS502"]\n')
    full, base, alone = [], [], []
    found: list[str] = []
    found_base: list[str] = []
    for _ in range(repeat):  # interleaved: load from other work hits both alike
        t, found = cli_analyze(root, tmp / "full.json", None)
        full.append(t)
        t, found_base = cli_analyze(root, tmp / "base.json", config)
        base.append(t)
        t, _ = timed(lambda: sibling_gap.run(Context(store, None), sibling_gap.Options()))
        alone.append(t)
    store.close()
    size = (tmp / "full.json").stat().st_size
    shutil.rmtree(tmp)
    best, med = min(full), statistics.median(full)
    bbest, bmed = min(base), statistics.median(base)
    print(
        f"{runs} runs: analyze {best:.2f}s best, {med:.2f}s median ({len(found)} findings, "
        f"{found.count('TS501')} TS501, {found.count('TS502')} TS502; JSON {size / 1e6:.1f} MB); "
        f"baseline with TS501 and TS502 off {bbest:.2f}s best, {bmed:.2f}s median "
        f"({len(found_base)} findings); ratio {best / bbest:.2f}x best, {med / bmed:.2f}x median; "
        f"TS501 alone {min(alone):.2f}s (loading its curves included); ingest {t_ingest:.1f}s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,200,400,1000", help="runs per sweep, comma-separated")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="where the sweeps live (kept)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    base = args.dir or Path(tempfile.gettempdir()) / "tunescope-bench-siblings"
    print(f"sweep: {args.ranks} ranks x {args.steps} steps a run ({base})")
    for n in sizes:
        pool = base / f"pool-{args.ranks}x{args.steps}"
        root = base / f"{n}-runs-{args.ranks}x{args.steps}"
        t = time.perf_counter()
        make_sweep(pool, root, n, args.ranks, args.steps)
        t = time.perf_counter() - t
        if t > 1:
            print(f"  {n} runs written in {t:.1f}s")
        measure(root, n, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
