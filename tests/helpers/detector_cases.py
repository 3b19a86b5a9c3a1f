"""Detector cases as data: load a case file, write its runs, check the verdict.

Case files live in ``tests/unit/cases/`` (``*.yaml``, ``*.yml`` or ``*.json``);
``tests/unit/test_detector_cases.py`` runs every one of them. Format::

    description: a loss spike at step 200 that recovers   # what the case shows
    select: [TS1]            # optional: detectors to run (ids or prefixes); default all
    config:                  # optional: detector options, as in tunescope.toml
      TS101: {z: 6.0}
    runs:                    # one or more runs, written with EventWriter
      - name: run            # run directory name (default "run")
        ranks: 1             # number of ranks (rank-N.jsonl files), default 1
        run_start: {total_steps: 300, warmup_steps: 30}   # run_start fields (optional)
        end: completed       # run_end status; null writes no run_end
        generate:            # synthetic per-step metrics (optional)
          steps: 300         # steps 1..steps
          seed: 0
          log_every: 1       # write every k-th step only
          sample_ids: true   # write sample_ids [2*step, 2*step+1] on each step
          metrics:
            loss: {start: 2.7, end: 1.2, tau: 150, noise: 0.03}  # exp decay, lognormal noise
            lr: {peak: 3.0e-4, warmup: 30, schedule: cosine}     # constant | linear | cosine
            grad_norm: {level: 0.8, noise: 0.2}                  # level (+ slope per step)
            compute_time_s: {level: 0.3, noise: 0.02}
          ranks:             # per-rank overrides of metric specs (merged into the above)
            1: {compute_time_s: {level: 0.4}}
          inject:            # changes applied after generation, in order
            - {metric: loss, at: 200, kind: mul, factor: 3}        # one step x3
            - {metric: loss, at: 250, until: end, kind: set, value: nan}
            - {metric: loss, at: 300, until: end, kind: ramp, rate: 0.004}  # x exp(rate*(t-at))
            - {metric: grad_norm, at: 90, kind: add, value: 5.0, rank: 0}
        events:              # explicit events written after the generated steps (optional)
          - {kind: eval, step: 100, eval_loss: 1.3}
          - {kind: resume, step: 150, checkpoint: ckpt-150}
          - {kind: step, step: 151, loss: 2.0, rank: 0}
    expect:                  # findings that must appear
      - {detector: TS101, severity: warning, step: [195, 205], run: run, rank: 0}
    allow: [TS105]           # detectors whose extra warnings/errors are tolerated

An expectation may also give ``message`` or ``suggestion``: text the finding's
message or suggestion must contain.

``step`` is the range in which the finding's ``step_start`` must lie (or one
integer). ``rank`` may be omitted (any) or null (a run-wide finding). Any
warning or error that no expectation matches fails the case unless its
detector is in ``allow``; info findings are ignored unless expected. A case
with ``expect: []`` is a clean run: no warning or error at all.

Metric specs: ``start``/``end``/``tau`` (exponential decay), or ``level``
with optional ``slope``; ``noise`` is a lognormal sigma (multiplicative;
``noise_add`` adds Gaussian noise instead); ``values`` gives the series
explicitly (repeated if short). ``lr`` uses ``peak``, ``warmup`` and
``schedule``. Values ``nan``, ``inf`` and ``-inf`` may be written as strings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

CASES_DIR = Path(__file__).resolve().parents[1] / "unit" / "cases"


def load_case(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def case_files() -> list[Path]:
    return sorted(p for p in CASES_DIR.glob("*") if p.suffix in (".yaml", ".yml", ".json"))


def _num(v: Any) -> float:
    if isinstance(v, str):
        return float(v)  # "nan", "inf", "-inf"
    return float(v)


def _curve(spec: dict[str, Any], t: np.ndarray, rng: np.random.Generator, total: int) -> np.ndarray:
    n = len(t)
    if "values" in spec:
        vals = [_num(v) for v in spec["values"]]
        return np.resize(np.array(vals, dtype=float), n)
    if "peak" in spec:  # learning rate
        peak = float(spec["peak"])
        warm = int(spec.get("warmup", 0))
        sched = spec.get("schedule", "constant")
        frac = np.clip((t - warm) / max(total - warm, 1), 0, 1)
        if sched == "cosine":
            base = 0.5 * (1 + np.cos(np.pi * frac))
        elif sched == "linear":
            base = 1 - frac
        else:
            base = np.ones(n)
        up = np.minimum(t / warm, 1.0) if warm > 0 else np.ones(n)
        return peak * np.where(t <= warm, up, base)
    if "start" in spec:
        start, end = float(spec["start"]), float(spec.get("end", spec["start"]))
        tau = float(spec.get("tau", max(total / 4, 1)))
        y = end + (start - end) * np.exp(-(t - 1) / tau)
    else:
        y = float(spec.get("level", 0.0)) + float(spec.get("slope", 0.0)) * (t - 1)
    if spec.get("noise"):
        y = y * np.exp(rng.normal(0, float(spec["noise"]), n))
    if spec.get("noise_add"):
        y = y + rng.normal(0, float(spec["noise_add"]), n)
    return y


def _inject(series: dict[str, np.ndarray], t: np.ndarray, inj: dict[str, Any]) -> None:
    name = inj["metric"]
    if name not in series:
        series[name] = np.full(len(t), np.nan)
    y = series[name]
    at = int(inj["at"])
    until = inj.get("until", at)
    sel = (t >= at) & ((t <= int(until)) if until != "end" else True)
    kind = inj.get("kind", "set")
    if kind == "mul":
        y[sel] *= float(inj["factor"])
    elif kind == "add":
        y[sel] += _num(inj["value"])
    elif kind == "set":
        y[sel] = _num(inj["value"])
    elif kind == "ramp":
        y[sel] *= np.exp(float(inj["rate"]) * (t[sel] - at))
    else:
        raise ValueError(f"unknown injection kind {kind!r}")


def generate_rows(gen: dict[str, Any], rank: int) -> list[dict[str, Any]]:
    steps = int(gen["steps"])
    seed = int(gen.get("seed", 0))
    rng = np.random.default_rng(seed * 1000 + rank)
    t = np.arange(1, steps + 1, dtype=float)
    specs = {k: dict(v) for k, v in gen.get("metrics", {}).items()}
    for k, v in (
        (gen.get("ranks") or {}).get(rank, (gen.get("ranks") or {}).get(str(rank), {})).items()
    ):
        specs[k] = {**specs.get(k, {}), **v}
    series = {name: _curve(spec, t, rng, steps) for name, spec in specs.items()}
    for inj in gen.get("inject", []):
        if "rank" in inj and int(inj["rank"]) != rank:
            continue
        _inject(series, t, inj)
    every = int(gen.get("log_every", 1))
    rows = []
    for i, step in enumerate(t.astype(int)):
        if step % every and step != steps:
            continue
        row: dict[str, Any] = {"step": int(step)}
        for name, y in series.items():
            if not (
                isinstance(y[i], float) and math.isnan(y[i]) and name not in gen.get("metrics", {})
            ):
                row[name] = float(y[i])
        if gen.get("sample_ids"):
            row["sample_ids"] = [int(step) * 2, int(step) * 2 + 1]
        rows.append(row)
    return rows


def write_case(case: dict[str, Any], root: Path) -> None:
    """Write every run of ``case`` under ``root`` with EventWriter."""
    from tunescope.train.events import EventWriter

    for spec in case.get("runs", []):
        name = spec.get("name", "run")
        ranks = int(spec.get("ranks", 1))
        for rank in range(ranks):
            w = EventWriter(root / name, rank=rank, block_when_full=True)
            start = dict(spec.get("run_start") or {})
            start.setdefault("world_size", ranks)
            w.run_start(**start)
            ts = 1_700_000_000.0
            if spec.get("generate"):
                for row in generate_rows(spec["generate"], rank):
                    step = row.pop("step")
                    w.step(step=step, ts=ts + step, **row)
            for ev in spec.get("events") or []:
                ev = dict(ev)
                kind = ev.pop("kind")
                if int(ev.get("rank", rank)) != rank:
                    continue
                ev.pop("rank", None)
                ev.setdefault("ts", ts + float(ev.get("step", 0)) + 0.5)
                for k, v in list(ev.items()):
                    if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf"):
                        ev[k] = float(v)
                w.emit(kind, **ev)
            end = spec.get("end", "completed")
            if end:
                w.run_end(end)
            w.close()


def _matches(f: Any, exp: dict[str, Any]) -> bool:
    if f.detector != exp["detector"]:
        return False
    if "severity" in exp and f.severity.value != exp["severity"]:
        return False
    if "run" in exp and f.run != exp["run"]:
        return False
    if "rank" in exp and f.rank != exp["rank"]:
        return False
    if "step" in exp:
        rng = exp["step"]
        lo, hi = (rng, rng) if isinstance(rng, int) else (rng[0], rng[1])
        if f.step_start is None or not lo <= f.step_start <= hi:
            return False
    for key in ("message", "suggestion"):
        if key in exp and exp[key] not in getattr(f, key):
            return False
    return True


def check_case(case: dict[str, Any], findings: list[Any]) -> list[str]:
    """Problems with ``findings`` against the case's expectations (empty: pass)."""
    problems = []
    used: set[int] = set()
    for exp in case.get("expect") or []:
        hit = next((i for i, f in enumerate(findings) if i not in used and _matches(f, exp)), None)
        if hit is None:
            problems.append(f"missing {exp}")
        else:
            used.add(hit)
    allow = set(case.get("allow") or [])
    for i, f in enumerate(findings):
        if i in used or f.severity.value == "info" or f.detector in allow:
            continue
        problems.append(
            f"unexpected {f.severity.value} {f.detector} run={f.run} rank={f.rank} "
            f"steps {f.step_start}-{f.step_end}: {f.message}"
        )
    return problems
