"""Regenerate the labelled fixture corpus: ``python -m tunescope.train.fixtures fixtures/runs``.

Every run is a real training run of the built-in tiny model on the bundled
dataset (seeded), some with an injected fault. ``LABELS.json`` holds the
ground truth derived from the faults, in the shape the detector benchmark reads::

    {"runs": {"<run dir>": {"healthy": bool, "faults": [{"detector": "TS102",
      "rank": null, "first_step": 120, "last_step": 300, "note": "..."}]}}}

Each run is its own process (as a user's would be), so that memory and
timings of one run do not leak into the next. Only the event logs are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunescope.say import say
from tunescope.train.config import REPO

CONFIGS = REPO / "fixtures" / "configs"
STEPS = 300


@dataclass
class Spec:
    """One fixture run: how to make it and what a detector should find in it."""

    name: str
    config: str = "lora.yaml"
    sets: list[str] = field(default_factory=list)
    inject: list[str] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    nproc: int = 1
    resume_at: int = 0  # stop at this step, then resume from the latest checkpoint
    killed: bool = False  # the run SIGKILLs itself (kill@STEP)

    @property
    def healthy(self) -> bool:
        return not self.labels


def label(
    detector: str,
    first: int,
    last: int,
    note: str,
    rank: int | None = None,
    required: bool = True,
) -> dict:
    """One labelled fault. ``required=False`` marks a side effect that depends
    on the machine that made the run (a timing effect of the CPU): a finding
    there is correct, and its absence is not a miss."""
    return {
        "detector": detector,
        "rank": rank,
        "first_step": first,
        "last_step": last,
        "note": note,
        "required": required,
    }


SPECS: list[Spec] = [
    Spec("healthy-lora-s0", sets=["seed=0", "lr=3e-3"]),
    Spec("healthy-lora-s1", sets=["seed=1", "lr=5e-3"]),
    Spec("healthy-full-s2", config="full.yaml", sets=["seed=2", "lr=3e-3"]),
    Spec(
        "fault-lr-spike",
        sets=["seed=3", "schedule=constant"],
        inject=["lr_spike@120:30"],
        labels=[
            label(
                "TS102",
                120,
                STEPS,
                "lr x30 from step 120: the loss jumps ~10x and stays ~3x higher",
            ),
            label(
                "TS302",
                120,
                STEPS,
                "the diverged weights make CPU math slower: ~0.7x throughput from step 120"
                " on the CPU that made it (a side effect: not every CPU slows down)",
                required=False,
            ),
        ],
    ),
    Spec(
        "fault-bad-batch",
        sets=["seed=4"],
        inject=["bad_batch@150"],
        labels=[label("TS101", 150, 150, "random-token batch at step 150, then recovers")],
    ),
    Spec(
        "fault-nan",
        sets=["seed=5"],
        inject=["nan@200"],
        labels=[label("TS001", 200, STEPS, "NaN loss at step 200 poisons the weights")],
    ),
    Spec(
        "fault-freeze-adapter",
        sets=["seed=6"],
        inject=["freeze_adapter"],
        labels=[
            label(
                "TS201",
                1,
                STEPS,
                "adapter gradients zeroed before every update (embeddings/head still train)",
            )
        ],
    ),
    Spec(
        "fault-leak",
        sets=["seed=7"],
        inject=["leak:1"],
        labels=[label("TS401", 1, STEPS, "1 MiB of tensors kept alive per step: RSS grows")],
    ),
    Spec(
        "warmup-noise",
        sets=["seed=8", "warmup_steps=40"],
        inject=["warmup_noise:3"],
    ),
    Spec(
        "fault-straggler-2rank",
        sets=["seed=9", "max_steps=200", "lr=3e-3"],
        # a slowness relative to the rank's own forward time: the same skew
        # whether the machine is idle or busy with other work
        inject=["straggler:1:x5"],
        nproc=2,
        labels=[
            label(
                "TS301",
                1,
                200,
                "rank 1's forward takes 5x as long (it sleeps 4x its own forward time)",
                rank=1,
            )
        ],
    ),
    Spec("resumed", sets=["seed=10", "save_steps=50"], resume_at=170),
    Spec("killed", sets=["seed=11", "lr=3e-3"], inject=["kill@180"], killed=True),
]


def command(spec: Spec, out: Path, extra_sets: Sequence[str] = ()) -> list[str]:
    sets = [
        f"output_dir={out}",
        f"run_name={spec.name}",
        f"max_steps={STEPS}",
        "cpu_threads=1",
        "progress=false",
        *spec.sets,
        *extra_sets,
    ]
    if spec.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={spec.nproc}", "-m", "tunescope.train"]
    else:
        cmd = [sys.executable, "-m", "tunescope.train"]
    cmd.append(str(CONFIGS / spec.config))
    for s in sets:
        cmd += ["--set", s]
    for f in spec.inject:
        cmd += ["--inject", f]
    return cmd


def run_one(spec: Spec, root: Path) -> float:
    """Train one fixture run into ``root/NAME``; the seconds it took."""
    out = root / spec.name
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    t0 = time.time()
    parts = [[f"stop_at_step={spec.resume_at}"], ["resume_from_checkpoint=latest"]]
    for extra in parts if spec.resume_at else [[]]:
        # each run's own summary line would break the bar: shown only on failure
        proc = subprocess.run(command(spec, out, extra), env=env, capture_output=True, text=True)
        if proc.returncode != 0 and not spec.killed:
            raise SystemExit(
                f"fixture run {spec.name} failed with exit code {proc.returncode}:\n"
                + proc.stderr[-2000:]
            )
    for ckpt in out.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    (out / "config.json").unlink(missing_ok=True)  # the config is in run_start
    return time.time() - t0


def labels() -> dict:
    return {
        "runs": {
            s.name: {"healthy": s.healthy, "faults": s.labels}
            for s in sorted(SPECS, key=lambda s: s.name)
        }
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tunescope.train.fixtures")
    p.add_argument("root", nargs="?", default=str(REPO / "fixtures" / "runs"))
    p.add_argument("--only", action="append", help="regenerate only these runs")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs to train at the same time (faster; but runs then slow each other down, "
        "which shows in their step times)",
    )
    a = p.parse_args(argv)
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    todo = [s for s in SPECS if not a.only or s.name in a.only]
    from concurrent.futures import ThreadPoolExecutor

    from tunescope.progress import Progress

    # one bar over the runs on a terminal; elsewhere (make in CI, a pipe) a line per run
    with (
        ThreadPoolExecutor(max(1, a.jobs)) as pool,
        Progress("fixtures", "{task.fields[run]}") as bar,
    ):
        bar.update(0, len(todo), run="")
        runs = pool.map(lambda s: (s.name, run_one(s, root)), todo)
        for done, (name, seconds) in enumerate(runs, 1):
            bar.update(done, len(todo), run=f"{name} {seconds:.0f}s")
            if not bar.enabled:
                say(f"fixture {name}: {seconds:.0f}s ({done}/{len(todo)})")
    (root / "LABELS.json").write_text(json.dumps(labels(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
