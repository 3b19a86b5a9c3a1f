"""Detector cases as data: one YAML format, its generator and its checker.

Case files live in ``tests/unit/cases/`` and its subfolders (``*.yaml``,
``*.yml`` or ``*.json``); ``tests/unit/test_detector_cases.py`` runs every one:
it writes the runs with EventWriter, ingests them with ``Store.open``, runs
``analyze`` (the case's ``select`` and ``config``) and checks the findings.
``bench/systems_detectors.py`` builds its corpus from the same items. Format::

    description: a loss spike at step 300 that recovers   # required, one line
    select: [TS1]            # optional: detectors to run (ids or prefixes); default all
    config:                  # optional: detector options, as in tunescope.toml
      TS101: {z: 6.0}
    runs:                    # run directory name -> ranks -> items, written in order
      run:
        ranks:
          "0,1":             # one item list for several ranks ("0-3" and 0 work too)
            - {kind: run_start, world_size: 2, total_steps: 400, warmup_steps: 30}
            - generate: steps            # a block of step events
              from: 1
              to: 400
              seed: 7                    # rank r draws its noise from seed + 1000 * r
              loss: {start: 2.7, end: 1.2, tau: 150, log_noise: 0.03,
                     scale: {from: 300, to: 300, by: 3}}
              lr: {warmup: 30, peak: 3.0e-4, decay: cosine}
              grad_norm: {value: 0.8, log_noise: 0.2}
            - {kind: eval, step: 100, eval_loss: 1.3}
            - {generate: events, kind: checkpoint, every: 100, from: 100, to: 400}
            - {kind: run_end, status: completed}
    expect:                  # findings that must appear, each matched by its own finding
      - {detector: TS101, severity: warning, run: run, rank: null, step: 300}
    allow: [TS105]           # detectors whose other warnings and errors are tolerated
    check_info: true         # optional: info findings must be expected too

An item is an event (``kind`` and its fields; ``ts`` defaults to the time of
the last step at or before its ``step``, a checkpoint's ``path`` to
``ckpt/step-N``), or a generated block:

- ``generate: steps``: step events ``from``..``to`` (every ``every``-th step
  from ``from``); ``sample_ids: true`` adds ``[2*step, 2*step+1]``; ``t0`` and
  ``dt`` (a metric spec, default ``step_time_s`` or 1 s per logged step) set
  the timestamps, which go on from the previous block;
- ``generate: events``: one event of ``kind`` every ``every`` steps (default
  100) from ``from`` (default ``every``) to ``to``; other keys are its fields.

Every other key of a step block is a metric (any name, extras included):

- a number: constant; ``null``: not logged; ``"nan"``, ``"inf"``: that value;
- ``{value: v, slope: d}`` (v + d per step), ``{values: [...]}`` (repeated if
  short), ``{start: a, end: b}`` (linear over the block; ``shape: exp`` for a
  geometric curve; ``tau: T`` for ``b + (a - b) exp(-(step - from) / T)``);
- ``{warmup: W, peak: p, decay: cosine|linear|constant, final: f, total: N}``:
  a learning rate (``total`` defaults to the block's last step);
- noise: ``log_noise`` (lognormal sigma, multiplicative), ``noise`` (relative
  sd), ``abs_noise`` (absolute sd; shares its draws with ``noise``), ``ar``
  (AR(1) coefficient of that noise), ``positive: true`` (clip at 0);
- modifiers, applied in the order written, each over ``from``..``to``
  (default: the whole block), a list of one kind in turn:
  ``scale: {by: f}``; ``add: {value: x}``; ``set: {value: v}`` (v may be null:
  not logged, or "nan"); ``ramp: {per_step: x}`` (+x per step after ``from``)
  or ``ramp: {rate: r}`` (times exp(r * (step - from))); ``periodic: {period:
  P, width: K, phase: 0, by: f}`` (times f while (step - phase) mod P < K);
  ``every: {n: N, by: f, add: x}`` (at multiples of N); ``spikes: {prob: p,
  by: f, add: x}`` (random outliers); ``cummax: true`` (a running maximum);
  ``log_every: k`` (logged at multiples of k only).

Expectations: ``detector`` and any of ``severity``, ``run``, ``rank`` (null:
a run-wide finding; omitted: any), ``step`` and ``step_end`` (one step or a
``[lo, hi]`` range for the finding's first and last step), ``kind`` (the
evidence's kind), ``message`` and ``suggestion`` (text they must contain).
Any warning or error that no expectation matches fails the case unless its
detector is in ``allow``; info findings too with ``check_info``. A case with
``expect: []`` is a clean run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

CASES_DIR = Path(__file__).resolve().parents[1] / "unit" / "cases"
T0 = 1_750_000_000.0
MODIFIERS = ("scale", "add", "set", "ramp", "periodic", "every", "spikes", "cummax", "log_every")
BLOCK_KEYS = {"generate", "from", "to", "seed", "every", "t0", "dt", "kind", "sample_ids"}


def load_case(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def case_files() -> list[Path]:
    return sorted(p for p in CASES_DIR.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))


def rank_keys(key: Any) -> list[int]:
    """``0``, ``"0,1"``, ``"0-3"`` -> list of ranks."""
    out: list[int] = []
    for part in str(key).split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def _num(v: Any) -> float | None:
    return None if v is None else float(v)  # strings: "nan", "inf", "-inf", "1e-4"


# ---- generation ---------------------------------------------------------------


def _base(spec: dict[str, Any], s: np.ndarray) -> np.ndarray:
    n = len(s)
    lo, hi = s[0], s[-1]
    if "values" in spec:
        return np.resize(np.array([_num(v) for v in spec["values"]], dtype=float), n)
    if "warmup" in spec or "peak" in spec:
        peak = float(spec.get("peak", 1e-4))
        warm = float(spec.get("warmup", 0))
        final = float(spec.get("final", 0.0))
        total = float(spec.get("total", hi))
        decay = spec.get("decay", "cosine")
        y = np.full(n, peak)
        if warm > 0:
            y = np.where(s <= warm, peak * s / warm, y)
        prog = np.clip((s - warm) / max(total - warm, 1.0), 0, 1)
        if decay == "cosine":
            dec = final + (peak - final) * 0.5 * (1 + np.cos(np.pi * prog))
        elif decay == "linear":
            dec = peak + (final - peak) * prog
        elif decay == "constant":
            dec = np.full(n, peak)
        else:
            raise ValueError(f"unknown decay {decay!r}")
        return np.where(s > warm, dec, y)
    if "start" in spec:
        a, b = float(spec["start"]), float(spec.get("end", spec["start"]))
        if "tau" in spec:
            return b + (a - b) * np.exp(-(s - lo) / float(spec["tau"]))
        frac = (s - lo) / (hi - lo) if hi > lo else np.zeros(n)
        if spec.get("shape") == "exp" and a > 0 and b > 0:
            return a * (b / a) ** frac
        return a + (b - a) * frac
    return float(spec.get("value", 0.0)) + float(spec.get("slope", 0.0)) * (s - lo)


def _noise(spec: dict[str, Any], y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(y)
    if spec.get("log_noise"):
        y = y * np.exp(rng.normal(0, float(spec["log_noise"]), n))
    rel, ab = float(spec.get("noise", 0)), float(spec.get("abs_noise", 0))
    if rel or ab:
        e = rng.standard_normal(n)
        phi = float(spec.get("ar", 0))
        if phi:
            z = np.empty(n)
            z[0] = e[0]
            scale = math.sqrt(1 - phi * phi)
            for i in range(1, n):
                z[i] = phi * z[i - 1] + scale * e[i]
            e = z
        y = y * (1 + rel * e) + ab * e
    if spec.get("positive"):
        y = np.maximum(y, 0.0)
    return y


def _modify(
    kind: str, m: Any, s: np.ndarray, y: np.ndarray, gone: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One modifier over its range; ``gone`` (not logged) is updated in place."""
    if kind == "cummax":
        return np.fmax.accumulate(y) if m else y
    if kind == "log_every":
        gone |= (s % int(m)) != 0
        return y
    a = float(m.get("from", s[0]))
    on = (s >= a) & (s <= float(m.get("to", s[-1])))
    if kind == "scale":
        return np.where(on, y * float(m["by"]), y)
    if kind == "add":
        return np.where(on, y + float(m["value"]), y)
    if kind == "set":
        if m.get("value") is None:  # not logged over that range
            gone[on] = True
            return y
        gone[on] = False
        return np.where(on, float(m["value"]), y)
    if kind == "ramp":
        if "rate" in m:
            return np.where(on, y * np.exp(float(m["rate"]) * (s - a)), y)
        return np.where(on, y + float(m["per_step"]) * (s - a), y)
    if kind == "periodic":
        hit = on & (((s - float(m.get("phase", 0))) % float(m["period"])) < float(m["width"]))
        return np.where(hit, y * float(m.get("by", 1)), y)
    if kind == "every":
        hit = on & ((s % float(m["n"])) == 0)
        return np.where(hit, y * float(m.get("by", 1)) + float(m.get("add", 0)), y)
    if kind == "spikes":  # random outliers: GC pauses, slow batches
        hit = on & (rng.random(len(s)) < float(m.get("prob", 0.01)))
        return np.where(hit, y * float(m.get("by", 1)) + float(m.get("add", 0)), y)
    raise ValueError(f"unknown modifier {kind!r}")


def series(
    spec: Any, steps: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """Values of one metric spec at ``steps`` and where it is not logged
    (None: the metric is not logged at all)."""
    n = len(steps)
    if not isinstance(spec, dict):
        c = _num(spec)
        return None if c is None else (np.full(n, c), np.zeros(n, dtype=bool))
    s = steps.astype(float)
    y = _noise(spec, _base(spec, s), rng)
    gone = np.zeros(n, dtype=bool)
    for kind, value in spec.items():
        if kind in MODIFIERS:
            for m in value if isinstance(value, list) else [value]:
                y = _modify(kind, m, s, y, gone, rng)
    return y, gone


def _step_block(item: dict[str, Any], rank: int, ts: float) -> dict[str, Any]:
    """A ``generate: steps`` item as arrays: step, ts, cols and their 'not logged' masks."""
    a, b = int(item["from"]), int(item["to"])
    steps = np.arange(a, b + 1, int(item.get("every", 1)))
    rng = np.random.default_rng(int(item.get("seed", 0)) + 1000 * rank)
    cols: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {}
    for name, spec in item.items():
        if name in BLOCK_KEYS:
            continue
        got = series(spec, steps, rng)
        if got is not None:
            cols[name], missing[name] = got
    if "dt" in item:
        got = series(item["dt"], steps, rng)
        dt = got[0] if got else np.ones(len(steps))
    elif "step_time_s" in cols:
        dt = np.nan_to_num(cols["step_time_s"], nan=1.0)
    else:
        dt = np.ones(len(steps))
    stamps = float(item.get("t0", ts)) + np.cumsum(dt)
    return {"kind": "_block", "step": steps, "ts": stamps, "cols": cols, "missing": missing}


def expand_rank(
    items: list[dict[str, Any]], rank: int, blocks: bool = False
) -> list[dict[str, Any]]:
    """The events of one rank, in order, each a dict with ``kind`` and fields
    (``blocks``: a step block stays one ``{"kind": "_block", ...}`` item of arrays)."""
    out: list[dict[str, Any]] = []
    ts = T0
    last: list[tuple[int, float]] = []  # (step, ts) of every step, for the events' times

    def ts_at(step: Any) -> float:
        if step is None:
            return max([ts, *(e["ts"] for e in out if e["kind"] != "_block")])
        return max((t for st, t in last if st <= step), default=ts)

    for item in items:
        gen = item.get("generate")
        if gen == "steps":
            block = _step_block(item, rank, ts)
            if len(block["ts"]):
                ts = float(block["ts"][-1])
            last.extend(zip(block["step"].tolist(), block["ts"].tolist(), strict=True))
            if blocks:
                out.append(block)
                continue
            for i, st in enumerate(block["step"]):
                ev: dict[str, Any] = {"kind": "step", "step": int(st), "ts": float(block["ts"][i])}
                for name, y in block["cols"].items():
                    if not block["missing"][name][i]:
                        ev[name] = float(y[i])
                if item.get("sample_ids"):
                    ev["sample_ids"] = [2 * int(st), 2 * int(st) + 1]
                out.append(ev)
        elif gen == "events":
            every = int(item.get("every", 100))
            for st in range(int(item.get("from", every)), int(item["to"]) + 1, every):
                ev = {"kind": item["kind"], "step": st, "ts": ts_at(st)}
                if item["kind"] == "checkpoint":
                    ev["path"] = f"ckpt/step-{st}"
                ev.update({k: v for k, v in item.items() if k not in BLOCK_KEYS})
                out.append(ev)
        else:
            ev = {k: (_num(v) if _is_special(v) else v) for k, v in item.items()}
            ev.setdefault("ts", ts_at(ev.get("step")))
            if ev["kind"] == "step":
                last.append((int(ev["step"]), float(ev["ts"])))
            if ev["kind"] == "checkpoint":
                ev.setdefault("path", f"ckpt/step-{ev.get('step')}")
            out.append(ev)
    return out


def _is_special(v: Any) -> bool:
    return isinstance(v, str) and v.lower() in ("nan", "inf", "-inf")


def expand_case(
    case: dict[str, Any], blocks: bool = False
) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """run name -> rank -> events."""
    out: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for run, spec in case["runs"].items():
        ranks: dict[int, list[dict[str, Any]]] = {}
        for key, items in spec["ranks"].items():
            for r in rank_keys(key):
                ranks[r] = expand_rank(items, r, blocks)
        out[str(run)] = ranks
    return out


def write_case(case: dict[str, Any], root: Path, fast: bool = False) -> None:
    """Write every run of ``case`` under ``root`` with EventWriter (``fast``:
    write the same lines directly, for the bench's large generated corpora)."""
    from tunescope.eventlog import dumps
    from tunescope.train.events import EventWriter

    for run, ranks in expand_case(case, blocks=fast).items():
        for rank, events in ranks.items():
            if fast:
                d = root / run / "events"
                d.mkdir(parents=True, exist_ok=True)
                with open(d / f"rank-{rank}.jsonl", "wb") as f:
                    for ev in events:
                        if ev["kind"] == "_block":
                            _write_block(f, ev, run, rank)
                            continue
                        line = {"v": 1, "kind": ev["kind"], "run": run, "rank": rank}
                        line.update({k: v for k, v in ev.items() if k != "kind"})
                        f.write((dumps(line) + "\n").encode())
                continue
            w = EventWriter(root / run, run=run, rank=rank, block_when_full=True)
            for ev in events:
                w.emit(ev["kind"], **{k: v for k, v in ev.items() if k != "kind"})
            w.close()


CURVE: dict[
    str, dict[str, Any]
] = {  # a healthy fine-tuning run: a decaying loss, a cosine LR after warmup
    "loss": {"start": 2.7, "end": 1.2, "tau": 150, "log_noise": 0.03},
    "lr": {"warmup": 30, "peak": 3.0e-4, "decay": "cosine"},
    "grad_norm": {"value": 0.8, "log_noise": 0.2},
}


def one_rank_run(
    steps: int, seed: int, metrics: dict[str, Any] | None = None, **modifiers: dict[str, Any]
) -> dict[str, Any]:
    """A completed one-rank run of ``steps`` generated steps (``metrics``,
    default CURVE), for a case's ``runs``; ``modifiers`` adds modifiers to a
    metric's spec: ``one_rank_run(400, 2, loss={"scale": {"from": 300, "to": 300, "by": 3}})``."""
    block: dict[str, Any] = {"generate": "steps", "from": 1, "to": steps, "seed": seed}
    for name, spec in (CURVE if metrics is None else metrics).items():
        block[name] = {**spec, **modifiers.get(name, {})}
    start = {"kind": "run_start", "world_size": 1, "total_steps": steps, "warmup_steps": 30}
    return {"ranks": {0: [start, block, {"kind": "run_end", "status": "completed"}]}}


def _write_block(f: Any, block: dict[str, Any], run: str, rank: int) -> None:
    """Step events of one block as JSON lines, written by polars (NaN or Inf
    values, which JSON writers disagree on, go through ``dumps`` instead)."""
    import polars as pl

    from tunescope.eventlog import dumps

    cols = block["cols"]
    finite = all(np.isfinite(y[~block["missing"][k]]).all() for k, y in cols.items())
    n = len(block["step"])
    if not finite:
        for i in range(n):
            line = {"v": 1, "kind": "step", "run": run, "rank": rank}
            line.update({"step": int(block["step"][i]), "ts": float(block["ts"][i])})
            for k, y in cols.items():
                if not block["missing"][k][i]:
                    line[k] = float(y[i])
            f.write((dumps(line) + "\n").encode())
        return
    data: dict[str, Any] = {
        "v": np.ones(n, dtype=np.int64),
        "kind": ["step"] * n,
        "run": [run] * n,
        "rank": np.full(n, rank, dtype=np.int64),
        "step": block["step"].astype(np.int64),
        "ts": block["ts"],
    }
    df = pl.DataFrame(data)
    for k, y in cols.items():
        df = df.with_columns(pl.Series(k, np.where(block["missing"][k], np.nan, y)).fill_nan(None))
    df.write_ndjson(f)


# ---- expectations -------------------------------------------------------------


def _in(value: int | None, want: Any) -> bool:
    lo, hi = (want, want) if isinstance(want, int) else (want[0], want[1])
    return value is not None and int(lo) <= value <= int(hi)


def matches(f: Any, want: dict[str, Any]) -> bool:
    if f.detector != want["detector"]:
        return False
    if "severity" in want and f.severity.value != want["severity"]:
        return False
    if "run" in want and f.run != str(want["run"]):
        return False
    if "rank" in want and f.rank != want["rank"]:
        return False
    if "kind" in want and f.evidence.get("kind") != want["kind"]:
        return False
    if "step" in want and not _in(f.step_start, want["step"]):
        return False
    if "step_end" in want and not _in(f.step_end, want["step_end"]):
        return False
    return all(key not in want or want[key] in getattr(f, key) for key in ("message", "suggestion"))


def check_case(case: dict[str, Any], findings: list[Any]) -> list[str]:
    """Problems with ``findings`` against the case's expectations (empty: pass)."""
    problems = []
    used: set[int] = set()
    for want in case.get("expect") or []:
        hit = next((i for i, f in enumerate(findings) if i not in used and matches(f, want)), None)
        if hit is None:
            problems.append(f"missing {want}")
        else:
            used.add(hit)
    allow = set(case.get("allow") or [])
    quiet = () if case.get("check_info") else ("info",)
    for i, f in enumerate(findings):
        if i in used or f.severity.value in quiet or f.detector in allow:
            continue
        problems.append(
            f"unexpected {f.severity.value} {f.detector} run={f.run} rank={f.rank} "
            f"steps {f.step_start}-{f.step_end}: {f.message}"
        )
    return problems
