"""Quality and speed of the systems detectors: TS201 adapter gradients, TS301
stragglers, TS302 throughput drop, TS401 memory growth.

Quality: a generated corpus (``--seeds`` seeds x clean and faulty scenarios,
written as real event logs and ingested into a real store). Per detector:
precision and recall over warning/error findings, detection delay (steps
from the injected fault to the step at which the finding's rule was met),
and false alarms per 10,000 step rows of clean runs.

Speed: ~2 M step rows (4 runs x 8 ranks x 62,500 steps, all canonical
metrics), ingested once; then the four detectors on a fresh context (which
loads the shared ``steps`` frame once), against a baseline measured in the
same run: one DuckDB group-by with medians over the same rows.

    .venv/bin/python bench/systems_detectors.py [--seeds 10] [--rows 2000000]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "helpers"))  # the case generator

from detector_cases import write_case  # noqa: E402

from tunescope.detectors.base import Context  # noqa: E402
from tunescope.findings import Severity  # noqa: E402
from tunescope.ingest.store.database import Store  # noqa: E402

MODULES = {
    "TS201": "tunescope.detectors.adapter_grads",
    "TS301": "tunescope.detectors.straggler",
    "TS302": "tunescope.detectors.throughput",
    "TS401": "tunescope.detectors.memory_growth",
}


# ---- scenarios ---------------------------------------------------------------


def block(n: int, seed: int, **over: Any) -> dict[str, Any]:
    """A healthy LoRA step block with every metric the detectors read."""
    b: dict[str, Any] = {
        "generate": "steps",
        "from": 1,
        "to": n,
        "seed": seed,
        "loss": {"start": 2.2, "end": 1.3, "noise": 0.03},
        "lr": {"warmup": max(5, n // 20), "peak": 2e-4, "final": 2e-5},
        "grad_norm_adapter": {"value": 0.7, "noise": 0.3, "positive": True},
        "grad_norm_backbone": 0.0,
        "grad_norm_lora_A": {
            "value": 0.3,
            "noise": 0.3,
            "positive": True,
            "set": {"to": 1, "value": 0},
        },
        "grad_norm_lora_B": {"value": 0.6, "noise": 0.3, "positive": True},
        "compute_time_s": {"value": 0.30, "noise": 0.06, "positive": True},
        "data_time_s": {"value": 0.01, "noise": 0.4, "positive": True},
        "step_time_s": {"value": 0.36, "noise": 0.04},
        "tokens": {"value": 8192, "noise": 0.05},
        "mem_allocated_mb": {"value": 20000, "abs_noise": 40, "ar": 0.5},
        "mem_reserved_mb": {"value": 24000},
        "mem_peak_mb": {"value": 23000, "abs_noise": 150},
    }
    b.update(over)
    return b


def start(world: int, n: int, **kw: Any) -> dict[str, Any]:
    return {
        "kind": "run_start",
        "world_size": world,
        "finetuning_type": "lora",
        "lora_r": 16,
        "lora_alpha": 32,
        "trainable_params": 8_000_000,
        "total_steps": n,
        **kw,
    }


def evals(n: int, every: int) -> list[dict[str, Any]]:
    return [
        {"generate": "events", "kind": "eval", "every": every, "to": n},
        {"generate": "events", "kind": "checkpoint", "every": 2 * every, "to": n},
    ]


def scenarios(seed: int) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(run name, run spec, label) for one seed; label None = clean."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []

    def add(name: str, ranks: dict[Any, list[dict[str, Any]]], label: dict | None) -> None:
        out.append((f"s{seed}-{name}", {"ranks": ranks}, label))

    def n_steps(lo: int = 600, hi: int = 2500) -> int:
        return int(rng.integers(lo, hi))

    # clean runs
    n = n_steps()
    add("clean-1rank", {0: [start(1, n), block(n, seed)]}, None)
    n = n_steps()
    add("clean-2rank-evals", {"0,1": [start(2, n), block(n, seed), *evals(n, 100)]}, None)
    n = n_steps()
    r0 = block(n, seed, compute_time_s={"value": 0.3, "noise": 0.06, "every": {"n": 100, "by": 4}})
    add(
        "clean-rank0-eval-work",
        {0: [start(2, n), r0, *evals(n, 100)], 1: [start(2, n), block(n, seed)]},
        None,
    )
    n = n_steps()
    noisy = block(
        n,
        seed,
        compute_time_s={"value": 0.3, "noise": 0.12, "positive": True},
        data_time_s={"value": 0.02, "noise": 0.8, "positive": True},
        mem_allocated_mb={"value": 20000, "abs_noise": 60, "ar": 0.9},
    )
    add("clean-4rank-noisy", {"0-3": [start(4, n), noisy]}, None)
    n = n_steps()
    plateau = block(
        n,
        seed,
        mem_reserved_mb={
            "value": 22000,
            "ramp": {"from": 1, "per_step": 15},
            "set": {"from": 300, "value": 26500},
        },
    )
    add("clean-reserved-plateau", {"0,1": [start(2, n, device_memory_mb=81920), plateau]}, None)
    n = n_steps()
    cm = block(n, seed, mem_peak_mb={"value": 23000, "abs_noise": 600, "cummax": True})
    add("clean-peak-running-max", {0: [start(1, n, device_memory_mb=40960), cm]}, None)
    n = n_steps()
    shift = block(
        n,
        seed,
        mem_allocated_mb={
            "value": 20000,
            "abs_noise": 40,
            "ar": 0.5,
            "add": [
                {"from": int(rng.integers(200, n - 100)), "value": float(rng.uniform(300, 1500))}
            ],
        },
    )
    add("clean-level-shift", {"0,1": [start(2, n), shift, *evals(n, 250)]}, None)
    n = n_steps(800, 2500)
    rot = [
        block(
            n,
            seed,
            compute_time_s={
                "value": 0.3,
                "noise": 0.06,
                "periodic": {"period": 200, "width": 100, "phase": 1 + 100 * r, "by": 1.25},
            },
        )
        for r in range(2)
    ]
    add("clean-rotating", {0: [start(2, n), rot[0]], 1: [start(2, n), rot[1]]}, None)
    n = n_steps()
    nm = {
        "generate": "steps",
        "from": 10,
        "to": 10 * (n // 10),
        "every": 10,
        "seed": seed,
        "loss": {"start": 2.2, "end": 1.2, "noise": 0.02},
        "lr": {"warmup": 100, "peak": 1e-4},
        "grad_norm": 0.0,
        "dt": {"value": 4.0, "noise": 0.05},
    }
    add(
        "clean-not-measured",
        {
            0: [
                {
                    "kind": "run_start",
                    "format": "foreign",
                    "finetuning_type": "lora",
                    "per_rank": False,
                    "world_size": 1,
                    "logging_steps": 10,
                },
                nm,
            ]
        },
        None,
    )
    n = int(rng.integers(100, 250))
    add("clean-short", {"0,1": [start(2, n), block(n, seed)]}, None)
    n = n_steps()
    lr0 = block(
        n,
        seed,
        lr={"warmup": 50, "peak": 2e-4, "set": {"to": 5, "value": 0}},
        grad_norm_lora_A={
            "value": 0.3,
            "noise": 0.3,
            "positive": True,
            "set": {"to": 6, "value": 0},
        },
    )
    add("clean-lr0-start", {0: [start(1, n), lr0]}, None)

    n = n_steps(1500, 4000)
    dyn = block(
        n,
        seed,
        step_time_s={"value": 0.36, "noise": 0.15, "spikes": {"prob": 0.01, "by": 6}},
        compute_time_s={
            "value": 0.3,
            "noise": 0.15,
            "positive": True,
            "spikes": {"prob": 0.01, "by": 4},
        },
        tokens={"value": 8192, "noise": 0.3, "positive": True},
        mem_allocated_mb={"value": 20000, "abs_noise": 400, "ar": 0.9},
        mem_peak_mb={"value": 30000, "abs_noise": 2500},
        mem_reserved_mb={
            "value": 26000,
            "ramp": {"from": 1, "per_step": 10},
            "set": {"from": 500, "value": 31000},
        },
    )
    add(
        "clean-dynamic-shapes",
        {"0-3": [start(4, n, device_memory_mb=81920), dyn, *evals(n, 250)]},
        None,
    )
    n = n_steps(2000, 4000)
    k = int(rng.integers(50, 300))
    creep = block(
        n,
        seed,
        mem_allocated_mb={
            "value": 20000,
            "abs_noise": 40,
            "ar": 0.5,
            "ramp": {"from": k, "per_step": 2},
            "set": {"from": k + 500, "value": 21000},
        },
    )
    add("clean-creep-plateau", {"0,1": [start(2, n), creep]}, None)

    # faults
    n = n_steps(800, 2500)
    k = int(rng.integers(100, n // 2))
    dead = block(
        n,
        seed,
        grad_norm_adapter={
            "value": 0.7,
            "noise": 0.3,
            "positive": True,
            "set": {"from": k, "value": 0},
        },
        grad_norm_lora_A={
            "value": 0.3,
            "noise": 0.3,
            "positive": True,
            "set": [{"to": 1, "value": 0}, {"from": k, "value": 0}],
        },
        grad_norm_lora_B={
            "value": 0.6,
            "noise": 0.3,
            "positive": True,
            "set": {"from": k, "value": 0},
        },
        lr={"warmup": 50, "peak": 2e-4, "final": 2e-5},
    )
    add("ts201-dead", {"0,1": [start(2, n), dead]}, {"detector": "TS201", "onset": k, "rank": None})
    n = n_steps(800, 2500)
    k = int(rng.integers(200, n // 2))
    van = block(
        n,
        seed,
        grad_norm_adapter={
            "value": 0.7,
            "noise": 0.3,
            "positive": True,
            "scale": {"from": k, "by": float(10 ** rng.uniform(-5, -3.3))},
        },
    )
    add("ts201-vanishing", {0: [start(1, n), van]}, {"detector": "TS201", "onset": k, "rank": 0})
    n = n_steps(200, 800)
    bfrozen = block(n, seed, grad_norm_lora_A=0.0)
    add(
        "ts201-b-not-updated",
        {0: [start(1, n), bfrozen]},
        {"detector": "TS201", "onset": 2, "rank": 0},
    )

    n = n_steps(800, 2500)
    k = int(rng.integers(100, n // 2))
    world = int(rng.integers(2, 5))
    slow = int(rng.integers(0, world))
    factor = float(rng.uniform(1.2, 2.0))
    ranks: dict[Any, list[dict[str, Any]]] = {}
    for r in range(world):
        comp: dict[str, Any] = {"value": 0.3, "noise": 0.06, "positive": True}
        if r == slow:
            comp["scale"] = {"from": k, "by": factor}
        ranks[r] = [start(world, n), block(n, seed, compute_time_s=comp)]
    add("ts301-compute", ranks, {"detector": "TS301", "onset": k, "rank": slow})
    n = n_steps(800, 2500)
    k = int(rng.integers(100, n // 2))
    extra = float(rng.uniform(0.05, 0.2))
    ranks = {
        0: [start(2, n), block(n, seed)],
        1: [
            start(2, n),
            block(
                n,
                seed,
                data_time_s={
                    "value": 0.01,
                    "noise": 0.4,
                    "positive": True,
                    "add": {"from": k, "value": extra},
                },
            ),
        ],
    }
    add("ts301-data", ranks, {"detector": "TS301", "onset": k, "rank": 1})
    n = n_steps(400, 2000)
    k = int(rng.integers(100, n - 30))
    ranks = {0: [start(2, n), block(n, seed)], 1: [start(2, n), block(k, seed)]}
    add("ts301-hung", ranks, {"detector": "TS301", "onset": k + 1, "rank": 1})

    n = n_steps(1500, 4000)
    k = int(rng.integers(100, n // 2))
    slope = float(rng.uniform(0.5, 8.0))
    cap = {"device_memory_mb": 81920} if rng.random() < 0.5 else {}
    leak = block(
        n,
        seed,
        mem_allocated_mb={
            "value": 20000,
            "abs_noise": 40,
            "ar": 0.5,
            "ramp": {"from": k, "per_step": slope},
        },
        mem_peak_mb={"value": 23000, "abs_noise": 150, "ramp": {"from": k, "per_step": slope}},
        mem_reserved_mb={"value": 24000, "ramp": {"from": k, "per_step": slope}},
    )
    add(
        "ts401-leak",
        {"0,1": [start(2, n, **cap), leak, *evals(n, 200)]},
        # time to OOM on an 80 GiB device from the onset, for the delay target
        {"detector": "TS401", "onset": k, "rank": None, "tto": (81920 - 23000) / slope},
    )
    n = n_steps(800, 2000)
    k = int(rng.integers(100, n // 2))
    frag = block(
        n,
        seed,
        mem_reserved_mb={
            "value": 30000,
            "abs_noise": 30,
            "ramp": {"from": k, "per_step": float(rng.uniform(5, 20))},
        },
    )
    add(
        "ts401-fragmentation",
        {0: [start(1, n), frag]},
        {"detector": "TS401", "onset": k, "rank": 0},
    )

    n = n_steps(800, 2500)
    k = int(rng.integers(100, n - 200))
    factor = float(rng.uniform(1.3, 2.0))
    drop = block(
        n, seed, step_time_s={"value": 0.36, "noise": 0.04, "scale": {"from": k, "by": factor}}
    )
    add(
        "ts302-drop",
        {"0,1": [start(2, n), drop, *evals(n, 100)]},
        {"detector": "TS302", "onset": k, "rank": None},
    )
    return out


# ---- quality -----------------------------------------------------------------


def quality(seeds: int, workdir: Path) -> None:
    root = workdir / "corpus"
    labels: dict[str, dict[str, Any] | None] = {}
    t0 = time.perf_counter()
    runs: dict[str, Any] = {}
    for seed in range(seeds):
        for name, spec, label in scenarios(seed):
            runs[name] = spec
            labels[name] = label
    write_case({"runs": runs}, root, fast=True)
    t1 = time.perf_counter()
    store = Store.open(root, cache_dir=workdir / "cache-q")
    t2 = time.perf_counter()
    ctx = Context(store)
    steps = ctx.steps()
    rows_by_run = dict(steps.group_by("run_id").len().iter_rows())
    findings = []
    for modname in MODULES.values():
        mod = importlib.import_module(modname)
        findings.extend(mod.run(ctx, mod.Options()))
    t3 = time.perf_counter()
    print(
        f"quality corpus: {len(runs)} runs ({seeds} seeds), {steps.height:,} step rows; "
        f"generate {t1 - t0:.1f} s, ingest {t2 - t1:.1f} s, detect {t3 - t2:.2f} s"
    )
    clean_rows = sum(rows_by_run.get(r, 0) for r, lab in labels.items() if lab is None)
    print()
    print(
        "| detector | fault runs | recall | precision | delay median / p90 (steps) | false alarms per 10k clean steps |"
    )
    print("|---|---|---|---|---|---|")
    oom_frac: dict[str, list[float]] = {}
    for det in MODULES:
        faults = [r for r, lab in labels.items() if lab and lab["detector"] == det]
        fs = [
            f for f in findings if f.detector == det and f.severity.level >= Severity.WARNING.level
        ]
        tp_runs, delays, fp, tp = set(), [], 0, 0
        for f in fs:
            lab = labels.get(f.run)
            ok = (
                lab is not None
                and lab["detector"] == det
                and (lab["rank"] is None or f.rank is None or f.rank == lab["rank"])
            )
            if ok:
                tp += 1
                if f.run not in tp_runs and lab["onset"] is not None:
                    at = f.evidence.get("detected_at_step", f.step_start)
                    if at is not None:
                        delays.append(int(at) - int(lab["onset"]))
                        if lab.get("tto"):
                            oom_frac.setdefault(det, []).append(delays[-1] / lab["tto"])
                tp_runs.add(f.run)
            else:
                fp += 1
        clean_fa = sum(1 for f in fs if labels.get(f.run) is None)
        recall = len(tp_runs) / len(faults) if faults else float("nan")
        precision = tp / (tp + fp) if tp + fp else float("nan")
        d = np.array(delays) if delays else np.array([np.nan])
        print(
            f"| {det} | {len(faults)} | {recall:.3f} | {precision:.3f} | "
            f"{np.nanmedian(d):.0f} / {np.nanpercentile(d, 90):.0f} | "
            f"{1e4 * clean_fa / max(clean_rows, 1):.2f} |"
        )
        if oom_frac.get(det):
            fr = np.array(oom_frac[det])
            print(
                f"|  | leak delay as a share of the time to OOM (80 GiB): median "
                f"{100 * np.median(fr):.1f}%, max {100 * fr.max():.1f}% |  |  |  |  |"
            )
        for f in fs:
            lab = labels.get(f.run)
            if lab is None or lab["detector"] != det:
                print(f"    false alarm: {f.run} rank={f.rank}: {f.message[:160]}", file=sys.stderr)
        for r in faults:
            if r not in tp_runs:
                print(f"    missed: {r} {labels[r]}", file=sys.stderr)
    infos = [f for f in findings if f.severity is Severity.INFO]
    print(
        f"\ninfo findings: {len(infos)} (e.g. rotating slowest rank, not measured, no per-rank data)"
    )
    print(f"clean step rows: {clean_rows:,}")
    store.close()


# ---- speed -------------------------------------------------------------------


def speed_corpus(root: Path, rows: int) -> int:
    """Runs x 8 ranks x steps of every canonical metric, as JSONL written with polars."""
    import polars as pl

    runs, ranks = 4, 8
    n = rows // (runs * ranks)
    rng = np.random.default_rng(0)
    steps = np.arange(1, n + 1)
    for r in range(runs):
        for k in range(ranks):
            d = root / f"speed-{r}" / "events"
            d.mkdir(parents=True, exist_ok=True)
            st = 0.36 * (1 + 0.04 * rng.standard_normal(n))
            df = pl.DataFrame(
                {
                    "v": np.ones(n, dtype=np.int64),
                    "kind": ["step"] * n,
                    "run": [f"speed-{r}"] * n,
                    "rank": np.full(n, k),
                    "step": steps,
                    "ts": 1.75e9 + np.cumsum(st),
                    "loss": 2.0 * np.exp(-steps / n) + 0.03 * rng.standard_normal(n),
                    "lr": np.minimum(steps / 500, 1.0) * 2e-4,
                    "grad_norm": 0.7 * np.exp(0.3 * rng.standard_normal(n)),
                    "grad_norm_adapter": 0.7 * np.exp(0.3 * rng.standard_normal(n)),
                    "grad_norm_backbone": np.zeros(n),
                    "mem_allocated_mb": 20000 + 40 * rng.standard_normal(n),
                    "mem_reserved_mb": np.full(n, 24000.0),
                    "mem_peak_mb": 23000 + 150 * rng.standard_normal(n),
                    "step_time_s": st,
                    "data_time_s": np.abs(0.01 * (1 + 0.4 * rng.standard_normal(n))),
                    "compute_time_s": 0.3 * (1 + 0.06 * rng.standard_normal(n)),
                    "tokens": 8192 * (1 + 0.05 * rng.standard_normal(n)),
                    "epoch": steps / n,
                }
            )
            start = (
                json.dumps(
                    {
                        "v": 1,
                        "kind": "run_start",
                        "run": f"speed-{r}",
                        "rank": k,
                        "step": 0,
                        "ts": 1.75e9,
                        "world_size": 8,
                        "finetuning_type": "lora",
                        "trainable_params": 8_000_000,
                        "device_memory_mb": 81920,
                        "total_steps": n,
                    }
                )
                + "\n"
            )
            path = d / f"rank-{k}.jsonl"
            path.write_text(start)
            with open(path, "ab") as f:
                df.write_ndjson(f)
    return runs * ranks * n


def speed(rows: int, workdir: Path, repeat: int) -> None:
    root = workdir / f"speed-{rows}"
    t0 = time.perf_counter()
    reuse = (workdir / f"cache-s-{rows}").exists()
    if not reuse:
        speed_corpus(root, rows)
    t1 = time.perf_counter()
    store = Store.open(root, cache_dir=workdir / f"cache-s-{rows}")
    t2 = time.perf_counter()
    total = store.cursor().execute("SELECT count(*) FROM steps").fetchone()[0]
    how = "reused" if reuse else f"write {t1 - t0:.1f} s, ingest {t2 - t1:.1f} s"
    print(f"\nspeed corpus: {total:,} step rows ({how})")
    cur = store.cursor()
    base = []
    for _ in range(repeat):
        t = time.perf_counter()
        cur.execute(
            "SELECT run_id, rank, median(compute_time_s), median(mem_allocated_mb), "
            "median(step_time_s), median(grad_norm_adapter) FROM steps GROUP BY ALL"
        ).fetchall()
        base.append(time.perf_counter() - t)
    baseline = min(base)
    best: dict[str, float] = {}
    totals = []
    for _ in range(repeat):
        ctx = Context(store)
        t = time.perf_counter()
        ctx.steps()
        ctx.metrics(["grad_norm_lora_A", "grad_norm_lora_B"])
        ctx.events(["eval", "checkpoint"])
        load = time.perf_counter() - t
        best["load frames"] = min(best.get("load frames", 1e9), load)
        for det, modname in MODULES.items():
            mod = importlib.import_module(modname)
            t = time.perf_counter()
            mod.run(ctx, mod.Options())
            best[det] = min(best.get(det, 1e9), time.perf_counter() - t)
        totals.append(load + sum(best[d] for d in MODULES))
    all_t = min(totals)
    print(f"baseline (DuckDB group-by with 4 medians over all rows): {baseline:.3f} s")
    print("\n| part | seconds | rows/s | x baseline |")
    print("|---|---|---|---|")
    for part, sec in best.items():
        print(f"| {part} | {sec:.3f} | {total / sec / 1e6:.1f} M | {sec / baseline:.1f} |")
    print(
        f"| all four with loading | {all_t:.3f} | {total / all_t / 1e6:.1f} M | {all_t / baseline:.1f} |"
    )
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--workdir", type=Path, help="keep the speed corpus and its cache here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if not args.skip_quality:
            quality(args.seeds, work)
        if not args.skip_speed:
            speed(args.rows, args.workdir or work, args.repeat)


if __name__ == "__main__":
    main()
