"""What the HTML report draws, read while a store is open: per run its
downsampled curves (:func:`tunescope.report.curves.bucket_runs`), the
compute-time grids by rank and step window and its config; and the runs'
loss curves on one step axis for the comparison chart. Plain data, no HTML:
:mod:`tunescope.report.html` writes the page."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from tunescope.detectors.scans.siblings import flatten
from tunescope.findings import Finding
from tunescope.report.curves import (
    RUN_PLOTS,
    Series,
    bucket_columns,
    bucket_runs,
    rank_grids,
    smooth_window,
    spec_source,
)

# Characters of curve data that the runs with findings share; each run's charts
# get as many buckets as fit, between MIN_BUCKETS and MAX_BUCKETS.
CURVE_CHARS = 3_000_000
CHARS_PER_BUCKET = 270  # measured: 5 charts, up to 14 series x (min, max), and the steps
MIN_BUCKETS, MAX_BUCKETS = 100, 600
COMPARE_BUCKETS = 300  # buckets of each overlaid loss curve
RANK_WINDOWS = 60  # step windows of the rank heatmap
SIG = 5  # significant digits kept in the file


def nums(a: np.ndarray, sig: int = SIG) -> list[float | None]:
    return [float(f"{v:.{sig}g}") if math.isfinite(v) else None for v in a.tolist()]


def align(
    found: dict[tuple[str, str], Series],
    run: str,
    labels: list[str],
    lo: float,
    span: float,
    n: int,
) -> dict[str, Any] | None:
    """The series of one chart on one bucket grid: x (mean step of each bucket
    that holds data) and per series min, max and the NaN/Inf count."""
    mine = [(label, found[(run, label)]) for label in labels if (run, label) in found]
    if not mine:
        return None
    xs = np.full(n, np.nan)
    cols = []
    for label, s in mine:
        b = np.clip(np.floor((s.x - lo) * n / max(span, 1e-9)), 0, n - 1).astype(int)
        xs[b] = np.where(np.isnan(xs[b]), s.x, xs[b])
        lo_a, hi_a, bad = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n)
        lo_a[b], hi_a[b], bad[b] = s.lo, s.hi, s.bad
        cols.append((label, lo_a, hi_a, bad))
    keep = ~np.isnan(xs)
    out: dict[str, Any] = {"x": nums(xs[keep], 9), "series": []}
    for label, lo_a, hi_a, bad in cols:
        item: dict[str, Any] = {"label": label, "lo": nums(lo_a[keep]), "hi": nums(hi_a[keep])}
        k = bad[keep]
        if k.any():
            item["bad"] = [[int(i), int(c)] for i, c in enumerate(k) if c]
        out["series"].append(item)
    return out


def plot_series(cur: Any, runs: list[str], n: int) -> dict[str, dict[tuple[str, str], Series]]:
    """Per plot of :data:`RUN_PLOTS`, its series keyed by (run, label): the loss
    (a mean over ranks) from its own query, the per-rank and first-rank plots
    from one scan (:func:`bucket_columns`)."""
    out: dict[str, dict[tuple[str, str], Series]] = {}
    wide_specs = [spec for spec in RUN_PLOTS if spec.ranks in ("each", "first")]
    columns = {f"{spec.id}:{label}": expr for spec in wide_specs for label, expr in spec.columns}
    wide = bucket_columns(cur, runs, columns, buckets=n)
    first: dict[str, int] = {}
    for run, rank in wide:
        first[run] = min(rank, first.get(run, rank))
    for spec in RUN_PLOTS:
        if spec not in wide_specs:
            out[spec.id] = bucket_runs(cur, spec_source(spec, many=True), runs, buckets=n)
            continue
        found: dict[tuple[str, str], Series] = {}
        for (run, rank), series in wide.items():
            if spec.ranks == "first" and rank != first[run]:
                continue
            for label, _ in spec.columns:
                s = series.get(f"{spec.id}:{label}")
                if s is not None:
                    name = f"rank {rank}" if spec.ranks == "each" else label
                    found[(run, name)] = Series(name, s.x, s.lo, s.hi, s.bad)
        out[spec.id] = found
    return out


def collect(store: Any, findings: list[Finding], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the page draws for the runs of one store (call while it is open):
    per run its step range, config, the loss curve for the comparison, and for
    runs with findings every curve and the rank grid."""
    ids = [r["run"] for r in runs]
    with_findings = {f.run for f in findings}
    detail = [r for r in ids if r in with_findings]
    cur = store.cursor()
    try:
        extents = {
            rid: (float(lo), float(hi))
            for rid, lo, hi in cur.execute(
                "SELECT run_id, min(step), max(step) FROM steps WHERE list_contains($1, run_id) "
                "GROUP BY run_id",
                [ids],
            ).fetchall()
        }
        configs: dict[str, Any] = {}
        for rid, payload in cur.execute(
            "SELECT run_id, payload::VARCHAR FROM events "
            "WHERE kind = 'run_start' AND list_contains($1, run_id) "
            "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY rank, ts) = 1",
            [ids],
        ).fetchall():
            try:
                start = json.loads(payload) if payload else {}
            except ValueError:
                start = {}
            configs[rid] = flatten(start.get("config", start)) if isinstance(start, dict) else {}
        detail = [r for r in detail if r in extents]
        n = max(
            MIN_BUCKETS, min(MAX_BUCKETS, CURVE_CHARS // (CHARS_PER_BUCKET * max(1, len(detail))))
        )
        per_spec = plot_series(cur, detail, n)
        # Smoothing over about 1/60 of each run: one query per distinct window.
        smoothed: dict[tuple[str, str], Series] = {}
        by_window: dict[int, list[str]] = {}
        for rid in detail:
            by_window.setdefault(smooth_window(extents[rid]), []).append(rid)
        loss_spec = RUN_PLOTS[0]
        for window, rids in by_window.items():
            found = bucket_runs(
                cur, spec_source(loss_spec, many=True), rids, buckets=n, smooth=window
            )
            smoothed.update({(r, "smoothed"): s for (r, _), s in found.items()})
        compare = bucket_runs(
            cur,
            spec_source(loss_spec, many=True),
            list(extents),
            buckets=COMPARE_BUCKETS,
        )
        grids = rank_grids(cur, detail, RANK_WINDOWS)
    finally:
        cur.close()

    out: dict[str, Any] = {}
    for rid in ids:
        rec: dict[str, Any] = {"extent": extents.get(rid), "config": configs.get(rid, {})}
        s = compare.get((rid, "loss"))
        if s is not None:
            rec["loss"] = {"x": s.x, "lo": s.lo, "hi": s.hi}
        if rid in detail:
            lo, hi = extents[rid]
            charts = []
            for spec in RUN_PLOTS:
                found = dict(per_spec[spec.id])
                labels = sorted(
                    {label for (r, label) in found if r == rid},
                    key=lambda x: (int(x[5:]) if x.startswith("rank ") else -1, x),
                )
                if spec.id == "loss":
                    found.update(smoothed)
                    labels = [*labels, "smoothed"]
                elif spec.ranks != "each":
                    order = [label for label, _ in spec.columns]
                    labels = [x for x in order if x in labels]
                chart = align(found, rid, labels, lo, hi - lo, n)
                if chart is None:
                    continue
                chart.update(id=spec.id, title=spec.title)
                if spec.id == "loss":
                    values = [v for s_ in chart["series"] for v in s_["lo"] if v is not None]
                    chart["log"] = bool(values) and min(values) > 0
                charts.append(chart)
            rec["charts"] = charts
            rec["ranks"] = grids.get(rid)
        out[rid] = rec
    return out


# ---- writing the page ------------------------------------------------------------------


def compare(collected: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Every run's loss re-binned onto one step grid (min of mins, max of maxes),
    so the runs share an x axis."""
    have = {r: c["loss"] for r, c in collected.items() if c.get("loss")}
    if not have:
        return None
    lo = min(c["extent"][0] for r, c in collected.items() if r in have)
    hi = max(c["extent"][1] for r, c in collected.items() if r in have)
    n, span = COMPARE_BUCKETS, max(hi - lo, 1e-9)
    centres = lo + (np.arange(n) + 0.5) * span / n
    series = []
    used = np.zeros(n, dtype=bool)
    for run, s in have.items():
        b = np.clip(np.floor((s["x"] - lo) * n / span), 0, n - 1).astype(int)
        a_lo, a_hi = np.full(n, np.nan), np.full(n, np.nan)
        np.fmin.at(a_lo, b, s["lo"])
        np.fmax.at(a_hi, b, s["hi"])
        used[b] = True
        series.append((run, a_lo, a_hi))
    return {
        "x": nums(centres[used], 9),
        "series": [
            {"label": run, "lo": nums(a[used]), "hi": nums(z[used])} for run, a, z in series
        ],
    }
