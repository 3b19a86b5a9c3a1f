"""Detector quality and speed.

    python bench/detectors.py            # everything
    python bench/detectors.py --quick    # a smaller generated corpus, 500k-row speed run

Quality, per detector: precision, recall, detection delay (steps from the
labelled fault onset to the step at which the finding could first be made:
``evidence.detected_at`` when the detector records it, else ``step_start``)
and false alarms (warnings and errors) per 10,000 steps of healthy runs. On:

1. ``fixtures/runs/`` with ``LABELS.json`` (trainer-made runs), when present;
2. a generated corpus: many seeds of healthy runs (noise levels, schedules,
   warmup bumps, epoch boundaries, memorised phases, preference-style noisy
   losses, HF-style averaged logs, unmeasured grad norms) and runs with one
   synthetic fault injected at a known step;
3. ``fixtures/real/`` (real public logs; ``bench/real_logs.py`` scores them
   against their labels): ``tunescope analyze`` run by run.

A finding counts as a true positive when it overlaps a labelled fault of its
own detector, or of a detector that reports the same incident (a NaN that
persists is also a divergence: TS102 on a TS001 label is not a false alarm).

Speed: every registered detector over 2 M step rows (4 runs x 8 ranks x
62,500 steps) in an in-memory DuckDB, against a baseline measured in the same
run (loading the steps frame sorted in SQL plus one polars rolling median per
run and rank); best of 3 interleaved runs, each run's time printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REAL_LOGS = REPO / "fixtures" / "real"

# A finding of detector K overlapping a fault labelled L is the same incident
# when L is in SAME_INCIDENT[K].
SAME_INCIDENT = {
    "TS102": {"TS001", "TS101", "TS105", "TS106"},
    "TS101": {"TS102", "TS106"},
    "TS105": {"TS101", "TS102", "TS001"},
    "TS001": {"TS102"},
}
TOLERANCE = 5  # steps a finding may start before the labelled onset


# ---- generated corpus -----------------------------------------------------------


def _curve(rng: np.random.Generator, n: int, kind: str) -> dict[str, Any]:
    t = np.arange(1, n + 1, dtype=float)
    warm = int(rng.choice([0, 10, int(0.03 * n), int(0.06 * n)]))
    peak = float(10 ** rng.uniform(-5, -3))
    sched = rng.choice(["cosine", "linear", "constant"])
    frac = np.clip((t - warm) / max(n - warm, 1), 0, 1)
    base = {"cosine": 0.5 * (1 + np.cos(np.pi * frac)), "linear": 1 - frac}.get(
        str(sched), np.ones(n)
    )
    lr = peak * np.where(t <= warm, t / max(warm, 1), base)
    start = float(rng.uniform(1.5, 3.5))
    end = start * float(rng.uniform(0.3, 0.8))
    tau = float(rng.uniform(0.05, 0.4) * n)
    noise = float(rng.uniform(0.01, 0.06))
    loss = end + (start - end) * np.exp(-(t - 1) / tau)
    if kind == "dpo":
        loss = 0.69 - 0.15 * (1 - np.exp(-(t - 1) / tau))
        noise = 0.25
    if kind == "memorised":
        loss = 0.001 + (start - 0.001) * np.exp(-(t - 1) / (0.05 * n))
        noise = 0.2
    if kind == "heavy-tail":
        # heavy-tailed batch noise (Student t, 4 dof), short of spike size (1.3x)
        loss = loss * np.exp(np.clip(0.02 * rng.standard_t(4, n), -0.26, 0.26))
    else:
        loss = loss * np.exp(rng.normal(0, noise, n))
    gn = float(rng.uniform(0.3, 3)) * np.exp(rng.normal(0, rng.uniform(0.1, 0.35), n))
    if kind == "warmup-bump":
        warm = int(0.5 * n)
        lr = peak * np.minimum(t / warm, 1)
        a = int(0.3 * n)
        b = a + int(0.1 * n)
        loss[a:b] *= np.exp(np.linspace(0, np.log(1.3), b - a))
        loss[(t > 0.4 * n) & (t <= warm)] *= np.exp(
            rng.normal(0, 0.08, int(np.sum((t > 0.4 * n) & (t <= warm))))
        )
    epochs = 3 if kind == "epochs" else 1
    if kind == "epochs":
        # a drop at the first epoch boundary, a jump (data ordered by length) at the second
        a, b = int(n / 3), int(2 * n / 3)
        loss[a:] *= float(rng.uniform(0.7, 0.9))
        loss[b:] *= 1 + float(rng.uniform(0.2, 0.4)) * np.exp(-np.arange(n - b) / (0.1 * n))
    if kind == "memorised":
        for at in rng.integers(int(0.6 * n), n, 3):
            loss[at] *= float(rng.uniform(20, 60))
    if kind == "grad-unmeasured":
        gn = np.zeros(n)
    return {"loss": loss, "lr": lr, "grad_norm": gn, "warmup": warm, "epoch": t / n * epochs}


def corpus(seeds: int) -> list[dict[str, Any]]:
    """Run specs: name, series, events, labels."""
    runs = []
    clean_kinds = [
        "plain",
        "plain2",
        "epochs",
        "memorised",
        "dpo",
        "warmup-bump",
        "grad-unmeasured",
        "hf-averaged",
        "heavy-tail",
        "multirank",
    ]
    faults = [
        "nan",
        "overflow",
        "spike",
        "grad-spike",
        "divergence",
        "plateau",
        "overfit",
        "resume-jump",
        "spike-small",
        "divergence-slow",
        "nan-hf",
        "nan-rank",
        "spike-hf",
    ]
    for seed in range(seeds):
        for kind in clean_kinds:
            rng = np.random.default_rng(zlib.crc32(f"{seed}-{kind}".encode()))
            n = int(rng.choice([60, 300, 1000, 2500]))
            plain = kind in ("hf-averaged", "plain2", "multirank")
            c = _curve(rng, n, "plain" if plain else kind)
            log_every = 10 if kind == "hf-averaged" else 1
            spec = _spec(f"clean-{kind}-{seed}", c, n, [], log_every=log_every)
            if kind == "multirank":
                spec["ranks"] = [c] + [_rank_copy(c, rng) for _ in range(3)]
            runs.append(spec)
        for kind in faults:
            rng = np.random.default_rng(zlib.crc32(f"{seed}-{kind}-fault".encode()))
            n = int(rng.choice([300, 1000, 2000]))
            c = _curve(rng, n, "plain")
            runs.append(_inject(f"fault-{kind}-{seed}", c, n, kind, rng))
    return runs


def _spec(name, c, n, labels, events=(), log_every=1):
    return {
        "name": name,
        "c": c,
        "n": n,
        "labels": labels,
        "events": list(events),
        "log_every": log_every,
        "ranks": [c],
    }


def _rank_copy(c: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Another rank of the same run: same curve, its own batch noise."""
    n = len(c["loss"])
    return {
        **c,
        "loss": c["loss"] * np.exp(rng.normal(0, 0.03, n)),
        "grad_norm": c["grad_norm"] * np.exp(rng.normal(0, 0.1, n)),
    }


def _label(det: str, a: int, b: int, note: str) -> dict[str, Any]:
    return {"detector": det, "rank": None, "first_step": a, "last_step": b, "note": note}


def _inject(name, c, n, kind, rng):
    loss, gn = c["loss"], c["grad_norm"]
    post = max(c["warmup"] + 20, int(0.3 * n))
    at = int(rng.integers(post, int(0.8 * n)))
    events: list[dict[str, Any]] = []
    if kind == "nan":
        loss[at - 1 :] = np.nan
        gn[at - 1 :] = np.nan
        lab = [_label("TS001", at, n, "loss NaN from onset")]
    elif kind == "overflow":
        gn[at - 1] = np.inf
        lab = [_label("TS001", at, at, "one skipped fp16 overflow")]
    elif kind == "spike":
        loss[at - 1] *= float(rng.uniform(1.8, 4))
        lab = [_label("TS101", at, at, "one bad batch")]
    elif kind == "grad-spike":
        gn[at - 1] *= float(rng.uniform(20, 60))
        lab = [_label("TS105", at, at, "one exploding gradient")]
    elif kind == "divergence":
        rate = float(rng.uniform(0.002, 0.01))
        loss[at - 1 :] *= np.exp(rate * np.arange(n - at + 1))
        lab = [_label("TS102", at, n, f"exponential rise {rate:.3f}/step")]
    elif kind == "plateau":
        loss[:] = float(rng.uniform(1.5, 3)) * np.exp(rng.normal(0, 0.01, n))
        lab = [_label("TS103", 1, n, "loss never moves")]
    elif kind == "overfit":
        evs = np.linspace(n / 10, n, 10).astype(int)
        best = evs[4]
        base = float(np.median(loss[-50:])) * 1.3
        for e in evs:
            val = base * (1 + 0.04 * max(0, (e - best)) / (n / 10))
            val = val if e >= best else base * (1 + 0.1 * (best - e) / n)
            events.append({"kind": "eval", "step": int(e), "eval_loss": float(val)})
        lab = [_label("TS104", int(best), n, "eval loss rises after its minimum")]
    elif kind == "resume-jump":
        loss[at:] *= float(rng.uniform(1.5, 2.5))
        events.append(
            {"kind": "resume", "step": at, "checkpoint": f"checkpoint-{at}", "from_step": at}
        )
        lab = [_label("TS106", at, at + 10, "optimizer state not restored")]
    elif kind == "spike-small":
        loss[at - 1] *= float(rng.uniform(1.5, 2.0))
        lab = [_label("TS101", at, at, "a 1.5-2x bad batch")]
    elif kind == "divergence-slow":
        rate = float(rng.uniform(0.001, 0.002))
        loss[at - 1 :] *= np.exp(rate * np.arange(n - at + 1))
        lab = [_label("TS102", at, n, f"slow exponential rise {rate:.4f}/step")]
    elif kind == "nan-hf":
        # HF's logging_nan_inf_filter keeps the logged loss finite; grad_norm shows NaN
        gn[at - 1 :] = np.nan
        at_logged = int(np.ceil(at / 10) * 10)
        spec = _spec(
            name, c, n, [_label("TS001", at, n, "NaN hidden by the loss filter")], log_every=10
        )
        spec["labels"][0]["first_step"] = at_logged
        return spec
    elif kind == "spike-hf":
        loss[at - 1] *= float(rng.uniform(6, 12))
        at_logged = int(np.ceil(at / 10) * 10)
        return _spec(
            name, c, n, [_label("TS101", at_logged, at_logged, "diluted spike")], log_every=10
        )
    elif kind == "nan-rank":
        ranks = [c] + [_rank_copy(c, rng) for _ in range(3)]
        bad = {
            **ranks[2],
            "loss": ranks[2]["loss"].copy(),
            "grad_norm": ranks[2]["grad_norm"].copy(),
        }
        bad["loss"][at - 1 :] = np.nan
        bad["grad_norm"][at - 1 :] = np.nan
        ranks[2] = bad
        spec = _spec(name, c, n, [{**_label("TS001", at, n, "NaN on rank 2"), "rank": 2}])
        spec["ranks"] = ranks
        return spec
    else:
        raise ValueError(kind)
    return _spec(name, c, n, lab, events)


def write_corpus(runs: list[dict[str, Any]], root: Path) -> dict[str, Any]:
    labels: dict[str, Any] = {"runs": {}}
    for r in runs:
        d = root / r["name"] / "events"
        d.mkdir(parents=True)
        n, every = r["n"], r["log_every"]
        for rank, c in enumerate(r["ranks"]):
            lines = []
            start = {
                "v": 1,
                "kind": "run_start",
                "run": r["name"],
                "rank": rank,
                "ts": 1.7e9,
                "total_steps": n,
                "world_size": len(r["ranks"]),
            }
            if c["warmup"]:
                start["warmup_steps"] = c["warmup"]
            if every > 1:
                start.update({"logging_steps": every, "per_rank": False})
            lines.append(json.dumps(start))
            ev_at: dict[int, list[dict[str, Any]]] = {}
            for e in r["events"]:
                ev_at.setdefault(int(e["step"]), []).append(e)
            for s in range(1, n + 1):
                if s % every == 0 or s == n:
                    sl = slice(max(0, s - every), s)
                    window = c["loss"][sl]
                    finite = window[np.isfinite(window)]
                    # averaged over the logging interval, NaN-filtered when averaged (HF-style)
                    loss = (
                        float(np.mean(window))
                        if every == 1 or not len(finite)
                        else float(np.mean(finite))
                    )
                    row = {
                        "v": 1,
                        "kind": "step",
                        "run": r["name"],
                        "rank": rank,
                        "step": s,
                        "ts": 1.7e9 + s,
                        "loss": loss,
                        "lr": float(c["lr"][s - 1]),
                        "grad_norm": float(c["grad_norm"][s - 1]),
                        "epoch": float(c["epoch"][s - 1]),
                    }
                    lines.append(json.dumps(row))
                for e in ev_at.get(s, []):
                    lines.append(
                        json.dumps(
                            {"v": 1, "run": r["name"], "rank": rank, "ts": 1.7e9 + s + 0.5, **e}
                        )
                    )
            lines.append(
                json.dumps(
                    {
                        "v": 1,
                        "kind": "run_end",
                        "run": r["name"],
                        "rank": rank,
                        "step": n,
                        "ts": 1.7e9 + n + 1,
                        "status": "completed",
                    }
                )
            )
            (d / f"rank-{rank}.jsonl").write_text("\n".join(lines) + "\n")
        labels["runs"][r["name"]] = {"healthy": not r["labels"], "faults": r["labels"]}
    return labels


# ---- scoring --------------------------------------------------------------------


def score(
    findings: list[Any], labels: dict[str, Any], steps: dict[str, int], detectors: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    by_run: dict[str, list[Any]] = {}
    for f in findings:
        if f.severity.value in ("warning", "error"):
            by_run.setdefault(f.run, []).append(f)
    rows = []
    missed: list[str] = []
    clean_steps = sum(steps.get(r, 0) for r, lab in labels["runs"].items() if lab["healthy"])
    clean_alarms = [
        f for r, lab in labels["runs"].items() if lab["healthy"] for f in by_run.get(r, [])
    ]
    for det in detectors:
        faults = [
            (r, fl)
            for r, lab in labels["runs"].items()
            for fl in lab["faults"]
            if fl["detector"] == det and fl.get("required", True)
        ]
        delays, hits = [], 0
        for r, fl in faults:
            match = [f for f in by_run.get(r, []) if f.detector == det and _overlap(f, fl)]
            if not match:
                missed.append(f"{r}: {det} at {fl['first_step']} ({fl['note']})")
            if match:
                hits += 1
                first = min(match, key=_detected)
                delays.append(max(0, _detected(first) - fl["first_step"]))
        mine = [f for fs in by_run.values() for f in fs if f.detector == det]
        tp = sum(
            any(
                _overlap(f, fl) and fl["detector"] in {det} | SAME_INCIDENT.get(det, set())
                for fl in labels["runs"].get(f.run, {"faults": []})["faults"]
            )
            for f in mine
        )
        rows.append(
            {
                "detector": det,
                "faults": len(faults),
                "recall": hits / len(faults) if faults else None,
                "findings": len(mine),
                "precision": tp / len(mine) if mine else None,
                "delay_median": float(np.median(delays)) if delays else None,
                "delay_max": int(max(delays)) if delays else None,
                "clean_alarms": sum(1 for f in clean_alarms if f.detector == det),
            }
        )
    scen: dict[str, list[Any]] = {}
    for r, lab in labels["runs"].items():
        for fl in lab["faults"]:
            kind = r.rsplit("-", 1)[0]
            match = [
                f for f in by_run.get(r, []) if f.detector == fl["detector"] and _overlap(f, fl)
            ]
            d = max(0, _detected(min(match, key=_detected)) - fl["first_step"]) if match else None
            scen.setdefault(f"{kind} ({fl['detector']})", []).append(d)
    summary = {
        "scenarios": scen,
        "clean_runs": sum(lab["healthy"] for lab in labels["runs"].values()),
        "clean_steps": clean_steps,
        "clean_alarms": len(clean_alarms),
        "per_10k": 1e4 * len(clean_alarms) / clean_steps if clean_steps else None,
        "missed": missed,
        "examples": [
            f"{f.run}: {f.detector} {f.severity.value} @ {f.step_start}: {f.message}"
            for f in clean_alarms[:5]
        ],
    }
    return rows, summary


def _detected(f: Any) -> int:
    d = f.evidence.get("detected_at") if isinstance(f.evidence, dict) else None
    return int(d) if isinstance(d, int | float) else int(f.step_start or 0)


def _overlap(f: Any, fl: dict[str, Any]) -> bool:
    if fl.get("rank") is not None and f.rank is not None and f.rank != fl["rank"]:
        return False
    a = f.step_start if f.step_start is not None else 0
    b = f.step_end if f.step_end is not None else a
    return a <= fl["last_step"] + TOLERANCE and b >= fl["first_step"] - TOLERANCE


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{v:.2f}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def print_table(title: str, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"\n{title}")
    print(
        "| detector | faults | recall | findings | precision | delay median / max (steps) | alarms on clean runs |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["faults"] and not r["findings"]:
            continue
        delay = "-" if r["delay_median"] is None else f"{r['delay_median']:g} / {r['delay_max']}"
        print(
            f"| {r['detector']} | {r['faults']} | {_fmt(r['recall'], True)} | {r['findings']} | "
            f"{_fmt(r['precision'], True)} | {delay} | {r['clean_alarms']} |"
        )
    per = summary["per_10k"]
    print(
        f"healthy runs: {summary['clean_runs']}, {summary['clean_steps']:,} steps, "
        f"{summary['clean_alarms']} warnings/errors = "
        f"{'-' if per is None else f'{per:.2f}'} per 10,000 clean steps"
    )
    for ex in summary["examples"]:
        print(f"  clean-run alarm: {ex}")
    print("per fault scenario: recall, detection delay median / max (steps)")
    for name, ds in sorted(summary["scenarios"].items()):
        got = [d for d in ds if d is not None]
        delay = f"{np.median(got):g} / {max(got)}" if got else "-"
        print(f"  {name}: {len(got)}/{len(ds)}, delay {delay}")
    for ex in summary["missed"][:8]:
        print(f"  missed: {ex}")


def analyse_root(root: Path, cache: Path) -> tuple[list[Any], dict[str, int], float]:
    from tunescope.detectors.engine import analyze
    from tunescope.ingest.store.database import Store

    store = Store.open(root, cache)
    t0 = time.perf_counter()
    findings = analyze(store)
    dt = time.perf_counter() - t0
    steps = {
        r: int(n or 0)
        for r, n in store.cursor().execute("SELECT run_id, steps_logged FROM runs").fetchall()
    }
    return findings, steps, dt


# ---- real logs -------------------------------------------------------------------


def real_logs(tmp: Path) -> None:
    print("\nReal logs (fixtures/real; bench/real_logs.py scores them against LABELS.json)")
    if not REAL_LOGS.is_dir():
        print("  skipped: fixtures/real not found")
        return
    from tunescope.detectors.engine import analyze
    from tunescope.ingest.store.database import Store

    store = Store.open(REAL_LOGS, tmp / "real-cache")
    ids = store.run_ids()
    if not ids:
        print("  no readable runs found")
        return
    findings = analyze(store)
    for run in ids:
        mine = [f for f in findings if f.run == run and f.severity.value != "info"]
        verdict = "ok" if not mine else "; ".join(f"{f.detector} {f.severity.value}" for f in mine)
        print(f"  {run}: {verdict}")


# ---- speed -------------------------------------------------------------------------


class _MemStore:
    """Just enough of a Store for a Context: an in-memory DuckDB with the views."""

    def __init__(self, con: Any) -> None:
        self.con = con

    def cursor(self) -> Any:
        return self.con.cursor()


def speed(rows_target: int, repeat: int = 3) -> None:
    import duckdb
    import polars as pl
    import pyarrow as pa

    from tunescope.detectors.base import Context
    from tunescope.detectors.engine import analyze
    from tunescope.detectors.registry import DETECTORS
    from tunescope.schema import METRIC_NAMES

    runs, ranks = 4, 8
    n = rows_target // (runs * ranks)
    rng = np.random.default_rng(0)
    t = np.arange(1, n + 1, dtype=float)
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("run_id", "rank", "step", "ts", *METRIC_NAMES)
    }
    for r in range(runs):
        for k in range(ranks):
            loss = (1.2 + 1.5 * np.exp(-t / (n / 5))) * np.exp(rng.normal(0, 0.03, n))
            cols["run_id"].append(np.full(n, f"run-{r}"))
            cols["rank"].append(np.full(n, k, dtype=np.int32))
            cols["step"].append(t.astype(np.int64))
            cols["ts"].append(1.7e9 + t)
            vals = {
                "loss": loss,
                "lr": 3e-4 * np.minimum(t / 100, 1),
                "grad_norm": 0.8 * np.exp(rng.normal(0, 0.2, n)),
                "grad_norm_adapter": 0.8 * np.exp(rng.normal(0, 0.2, n)),
                "grad_norm_backbone": np.zeros(n),
                "mem_allocated_mb": 18000 + rng.normal(0, 20, n),
                "mem_reserved_mb": np.full(n, 20480.0),
                "mem_peak_mb": 19000 + rng.normal(0, 20, n),
                "step_time_s": 0.4 + rng.normal(0, 0.01, n),
                "data_time_s": 0.01 + np.abs(rng.normal(0, 0.002, n)),
                "compute_time_s": 0.35 + rng.normal(0, 0.01, n),
                "tokens": np.full(n, 8192.0),
                "epoch": t / n,
            }
            for name in METRIC_NAMES:
                cols[name].append(vals[name])
    table = pa.table({k: np.concatenate(v) for k, v in cols.items()})
    table = table.append_column("sample_ids", pa.nulls(table.num_rows, pa.string()))
    total = table.num_rows
    con = duckdb.connect()
    con.register("_steps_arrow", table)
    con.execute("CREATE TABLE steps AS SELECT * FROM _steps_arrow")
    con.execute("""CREATE TABLE runs AS SELECT run_id, run_id AS name, '' AS path,
        'native' AS format, 'completed' AS status, 8 AS world_size, count(DISTINCT step)
        AS steps_logged, max(step) AS total_steps, max(step) AS last_step FROM steps GROUP BY 1""")
    con.execute(
        "CREATE TABLE events (run_id VARCHAR, rank INTEGER, step BIGINT, ts DOUBLE, "
        "kind VARCHAR, payload VARCHAR)"
    )
    con.execute(
        "INSERT INTO events SELECT run_id, 0, 0, 1.7e9, 'run_start', "
        "'{\"world_size\": 8}' FROM runs"
    )
    con.execute(
        "CREATE TABLE metrics (run_id VARCHAR, rank INTEGER, step BIGINT, ts DOUBLE, "
        "name VARCHAR, value DOUBLE)"
    )
    store = _MemStore(con)

    def baseline() -> float:
        # load the steps frame (sorted in SQL, as Context.steps() did before it learnt
        # to skip the sort; kept fixed so ratios stay comparable between versions) and
        # one rolling median of log-loss per run and rank
        t0 = time.perf_counter()
        df = Context(store).sql("SELECT * FROM steps ORDER BY run_id, rank, step")  # type: ignore[arg-type]
        df.select(pl.col("loss").log().rolling_median(100).over("run_id", "rank"))
        return time.perf_counter() - t0

    analyze(store)  # warm imports and caches of the OS outside the timing
    # best of a few interleaved runs: this machine is shared, and a run that another
    # process slowed down says nothing about the code
    bases, runs_t = [], []
    for _ in range(repeat):
        bases.append(baseline())
        t0 = time.perf_counter()
        found = analyze(store)  # type: ignore[arg-type]
        runs_t.append(time.perf_counter() - t0)
    base, dt = min(bases), min(runs_t)
    print(
        f"\nSpeed: {len(DETECTORS)} registered detectors over {total:,} step rows "
        f"({runs} runs x {ranks} ranks x {n:,} steps); best of {repeat} runs"
    )
    print(
        f"  analyze: {dt:.2f} s = {total / dt / 1e6:.2f} M rows/s "
        f"({len(found)} findings; target < 2 s; all runs: "
        f"{', '.join(f'{t:.2f}' for t in runs_t)} s)"
    )
    print(
        f"  baseline (load steps sorted in SQL + one rolling median per run/rank): "
        f"{base:.2f} s; analyze / baseline = {dt / base:.2f}x"
    )
    per = []
    for det in DETECTORS:
        best = float("inf")
        for _ in range(repeat):
            ctx_t = time.perf_counter()
            analyze(store, select=[det.ID])  # type: ignore[arg-type]
            best = min(best, time.perf_counter() - ctx_t)
        per.append(f"{det.ID} {best:.2f}s")
    print("  alone (each includes loading the frame): " + ", ".join(per))


# ---- main --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/detectors.py")
    p.add_argument("--quick", action="store_true", help="smaller corpus and speed run")
    p.add_argument("--seeds", type=int, help="seeds per scenario in the generated corpus")
    p.add_argument("--no-speed", action="store_true", help="skip the speed run")
    p.add_argument("--speed-only", action="store_true", help="only the speed run")
    a = p.parse_args(argv)
    from tunescope.detectors.registry import DETECTORS

    ids = [d.ID for d in DETECTORS]
    if a.speed_only:
        speed(500_000 if a.quick else 2_000_000)
        return 0
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        fixtures = REPO / "fixtures" / "runs"
        if (fixtures / "LABELS.json").is_file():
            labels = json.loads((fixtures / "LABELS.json").read_text())
            findings, steps, dt = analyse_root(fixtures, tmp / "fx-cache")
            rows, summary = score(findings, labels, steps, ids)
            print_table(
                f"fixtures/runs ({len(labels['runs'])} runs, analyze {dt:.2f}s)", rows, summary
            )
        else:
            print("fixtures/runs/LABELS.json not found: skipping the trainer-made corpus")

        seeds = a.seeds or (5 if a.quick else 25)
        runs = corpus(seeds)
        root = tmp / "gen"
        labels = write_corpus(runs, root)
        findings, steps, dt = analyse_root(root, tmp / "gen-cache")
        rows, summary = score(findings, labels, steps, ids)
        print_table(
            f"Generated corpus ({len(runs)} runs, {sum(steps.values()):,} steps, {seeds} seeds "
            f"per scenario; analyze {dt:.2f}s)",
            rows,
            summary,
        )
        real_logs(tmp)
    if not a.no_speed:
        speed(500_000 if a.quick else 2_000_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
