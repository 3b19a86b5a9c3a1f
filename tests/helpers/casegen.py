"""Detector cases as data: expand a YAML case into event logs, and check findings.

A case file (``tests/unit/cases/systems/ts401_leak.yaml``)::

    description: one line
    runs:                          # run dir name -> ranks -> events
      run-a:
        ranks:
          "0,1":                   # one list for several ranks ("0-3" also works);
            - {kind: run_start, world_size: 2, trainable_params: 100000}
            - generate: steps      # a block of step events
              from: 1
              to: 300
              seed: 1              # noise seed (rank r uses seed + 1000 * r)
              loss: {start: 2.0, end: 1.0, noise: 0.02}
              lr: {warmup: 20, peak: 1e-4}
              compute_time_s: 0.1
            - {kind: eval, step: 100, loss: 1.2}
            - {generate: events, kind: checkpoint, every: 100, from: 100, to: 300}
            - {kind: run_end, status: completed}
    config: {TS401: {min_points: 50}}   # optional Options overrides per detector
    expect:                        # findings that must appear
      - {detector: TS401, severity: error, run: run-a, rank: 0, step_start: [100, 200]}
    forbid: [warning, error]       # no other findings at or above these severities

Metric specs inside ``generate: steps`` (any metric name, extras included):

- a number: constant; ``null``: not logged; ``"nan"``/``"inf"``: that value;
- ``{value: v}`` or ``{start: a, end: b, shape: linear|exp}``: level over the block;
- ``{warmup: W, peak: p, decay: cosine|linear|constant, final: f}``: a learning rate;
- noise: ``noise`` (relative sd), ``abs_noise`` (absolute sd), ``ar`` (AR(1)
  coefficient of the noise), ``positive: true`` (clip at 0);
- modifiers applied in this order: ``ramp: {from: S, per_step: x}`` (linear
  growth after S) or ``ramp: {from: S, rate: r}`` (times (1+r)^(s-S));
  ``step_up: {at: S, add: x}``; ``periodic: {period: P, width: K, phase: 0, by: f}``
  (times f while (s - phase) mod P < K); ``every: {n: N, by: f}`` or
  ``{n: N, add: x}`` (at multiples of N); ``spikes: {prob: p, by: f}`` (random
  outliers); ``scale: {from: S, to: E, by: f}``;
  ``set: {from: S, to: E, value: v}`` (overwrite; v may be null or "nan");
  ``cummax: true`` (a running maximum, like a peak that never resets);
  ``log_every: k`` (the metric is only logged at multiples of k).
  A list of modifiers of one kind is applied in turn.
- ``every: k`` on the block logs every k-th step only; ``t0`` and ``dt`` (a
  metric spec, default ``step_time_s`` or 1.0 s) set the timestamps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tunescope.findings import Finding, Severity

T0 = 1_750_000_000.0


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


def _const(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        return float(v)  # "nan", "inf", "-inf", "1e-4"
    return float(v)


def series(spec: Any, steps: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Values of one metric spec at ``steps`` (NaN marks 'not logged' only via set: null)."""
    n = len(steps)
    if not isinstance(spec, dict):
        c = _const(spec)
        return None if c is None else np.full(n, c)
    s = steps.astype(float)
    lo, hi = s[0], s[-1]
    frac = (s - lo) / (hi - lo) if hi > lo else np.zeros(n)
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
        else:
            dec = np.full(n, peak)
        y = np.where(s > warm, dec, y)
    elif "start" in spec:
        a, b = float(spec["start"]), float(spec.get("end", spec["start"]))
        if spec.get("shape") == "exp" and a > 0 and b > 0:
            y = a * (b / a) ** frac
        else:
            y = a + (b - a) * frac
    else:
        y = np.full(n, float(spec.get("value", 0.0)))
    # noise
    rel, ab, ar = float(spec.get("noise", 0)), float(spec.get("abs_noise", 0)), spec.get("ar", 0)
    if rel or ab:
        e = rng.standard_normal(n)
        if ar:
            phi = float(ar)
            z = np.empty(n)
            z[0] = e[0]
            scale = math.sqrt(1 - phi * phi)
            for i in range(1, n):
                z[i] = phi * z[i - 1] + scale * e[i]
            e = z
        y = y * (1 + rel * e) + ab * e
    if spec.get("positive"):
        y = np.maximum(y, 0.0)

    def listed(key: str) -> list[dict[str, Any]]:
        v = spec.get(key)
        return [] if v is None else (v if isinstance(v, list) else [v])

    for r in listed("ramp"):
        start = float(r.get("from", lo))
        d = np.clip(s - start, 0, None)
        rate = r.get("rate")
        y = y * (1 + float(rate)) ** d if rate is not None else y + float(r.get("per_step", 0)) * d
    for u in listed("step_up"):
        y = np.where(s >= float(u["at"]), y + float(u.get("add", 0)), y)
    for p in listed("periodic"):
        on = ((s - float(p.get("phase", 0))) % float(p["period"])) < float(p["width"])
        y = np.where(on, y * float(p.get("by", 1)), y)
    for e in listed("every"):
        hit = (s % float(e["n"])) == 0
        y = np.where(hit, y * float(e.get("by", 1)) + float(e.get("add", 0)), y)
    for k in listed("spikes"):  # random outliers: GC pauses, slow batches
        hit = rng.random(n) < float(k.get("prob", 0.01))
        y = np.where(hit, y * float(k.get("by", 1)) + float(k.get("add", 0)), y)
    for c in listed("scale"):
        m = (s >= float(c.get("from", lo))) & (s <= float(c.get("to", hi)))
        y = np.where(m, y * float(c["by"]), y)
    for c in listed("set"):
        a, b = float(c.get("from", lo)), float(c.get("to", hi))
        m = (s >= a) & (s <= b)
        if c.get("value") is None:  # not logged over that range
            y = np.where(m, np.nan, y)
            spec.setdefault("_missing", []).append((a, b))
        else:
            y = np.where(m, _const(c["value"]), y)
    if spec.get("cummax"):
        y = np.fmax.accumulate(y)
    return y


def _missing_mask(spec: Any, steps: np.ndarray) -> np.ndarray:
    m = np.zeros(len(steps), dtype=bool)
    if isinstance(spec, dict):
        for a, b in spec.get("_missing", []):
            m |= (steps >= a) & (steps <= b)
        if spec.get("log_every"):
            m |= (steps % int(spec["log_every"])) != 0
    return m


_BLOCK_KEYS = {"generate", "from", "to", "seed", "every", "t0", "dt", "kind"}


def expand_rank(
    items: list[dict[str, Any]], rank: int, blocks: bool = False
) -> list[dict[str, Any]]:
    """The events of one rank, in order, each a dict with ``kind`` and fields
    (``blocks``: a step block stays one ``{"kind": "_block", ...}`` item of arrays)."""
    out: list[dict[str, Any]] = []
    ts = T0
    for item in items:
        item = dict(item)
        gen = item.get("generate")
        if gen == "steps":
            a, b = int(item["from"]), int(item["to"])
            steps = np.arange(a, b + 1, int(item.get("every", 1)))
            rng = np.random.default_rng(int(item.get("seed", 0)) + 1000 * rank)
            cols: dict[str, np.ndarray] = {}
            missing: dict[str, np.ndarray] = {}
            for name, spec in item.items():
                if name in _BLOCK_KEYS:
                    continue
                spec = dict(spec) if isinstance(spec, dict) else spec
                y = series(spec, steps, rng)
                if y is not None:
                    cols[name] = y
                    missing[name] = _missing_mask(spec, steps)
            if "dt" in item:
                dt = series(
                    dict(item["dt"]) if isinstance(item["dt"], dict) else item["dt"], steps, rng
                )
            elif "step_time_s" in cols:
                dt = np.nan_to_num(cols["step_time_s"], nan=1.0)
            else:
                dt = np.ones(len(steps))
            assert dt is not None
            if "t0" in item:
                ts = float(item["t0"])
            stamps = ts + np.cumsum(dt)
            ts = float(stamps[-1]) if len(stamps) else ts
            if blocks:
                out.append(
                    {
                        "kind": "_block",
                        "step": steps,
                        "ts": stamps,
                        "cols": cols,
                        "missing": missing,
                    }
                )
                continue
            for i, st in enumerate(steps):
                ev: dict[str, Any] = {"kind": "step", "step": int(st), "ts": float(stamps[i])}
                for name, y in cols.items():
                    if not missing[name][i]:
                        ev[name] = float(y[i])
                out.append(ev)
        elif gen == "events":
            kind = item["kind"]
            every = int(item.get("every", 100))
            for st in range(int(item.get("from", every)), int(item["to"]) + 1, every):
                ev = {"kind": kind, "step": st, "ts": _ts_at(out, st, ts)}
                if kind == "checkpoint":
                    ev["path"] = f"ckpt/step-{st}"
                ev.update({k: v for k, v in item.items() if k not in _BLOCK_KEYS})
                out.append(ev)
        else:
            ev = dict(item)
            ev.setdefault("ts", _ts_at(out, ev.get("step"), ts))
            if ev["kind"] == "checkpoint":
                ev.setdefault("path", f"ckpt/step-{ev.get('step')}")
            out.append(ev)
    return out


def _ts_at(events: list[dict[str, Any]], step: Any, default: float) -> float:
    if step is None:
        return max((e["ts"] for e in events), default=default)
    prior = [e["ts"] for e in events if e.get("kind") == "step" and e["step"] <= step]
    return max(prior, default=default)


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
    """Write every run of a case under ``root`` with :class:`EventWriter`
    (``fast``: write the same lines directly, for large generated corpora)."""
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
            w = EventWriter(root / run, run=run, rank=rank)
            for ev in events:
                fields = {k: v for k, v in ev.items() if k != "kind"}
                w.emit(ev["kind"], **fields)
            w.close()


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


# ---- expectations ------------------------------------------------------------


def _in(value: int | None, want: Any) -> bool:
    if isinstance(want, list):
        return value is not None and int(want[0]) <= value <= int(want[1])
    return value == want


def matches(f: Finding, want: dict[str, Any]) -> bool:
    if f.detector != want["detector"]:
        return False
    if "severity" in want and f.severity != Severity(want["severity"]):
        return False
    if "run" in want and f.run != str(want["run"]):
        return False
    if "rank" in want and f.rank != want["rank"]:
        return False
    if "kind" in want and f.evidence.get("kind") != want["kind"]:
        return False
    for key in ("step_start", "step_end"):
        if key in want and not _in(getattr(f, key), want[key]):
            return False
    return True


def check(case: dict[str, Any], findings: list[Finding]) -> list[str]:
    """Problems with ``findings`` against the case's ``expect`` and ``forbid``."""
    problems: list[str] = []
    matched: set[int] = set()
    for want in case.get("expect", []) or []:
        hits = [i for i, f in enumerate(findings) if matches(f, want)]
        if not hits:
            problems.append(f"expected {want}, not found")
        matched.update(hits)
    forbid = {Severity(s) for s in case.get("forbid", []) or []}
    for i, f in enumerate(findings):
        if i not in matched and f.severity in forbid:
            problems.append(
                f"unexpected {f.severity.value} {f.detector} rank={f.rank}: {f.message}"
            )
    return problems
