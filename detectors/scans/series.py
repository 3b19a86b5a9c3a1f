"""Per-run and per-rank series shared by the loss-side detectors.

``rank_series(ctx)`` gives one :class:`Series` per run and rank (rows without a
loss, such as eval-only rows, dropped; NaN/Inf kept: they are signal),
``run_series(ctx)`` one per run with the loss averaged over ranks. Both are
computed once per :class:`~tunescope.detectors.base.Frames` source and shared. ``spikes`` is the shared spike
scan of TS101 (loss) and TS105 (grad norm).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunescope.detectors.base import Frames
from tunescope.findings import Finding

IQR_TO_SIGMA = 1.349  # interquartile range of a normal distribution, in sigmas
DIFF_TO_SIGMA = 1.4826 / np.sqrt(2)  # median |x_t - x_(t-1)| of iid noise -> its sigma


@dataclass
class Series:
    """One loss series: a run and a rank (None: all ranks averaged, or a
    format without per-rank data)."""

    run: str
    rank: int | None
    step: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    epoch: np.ndarray
    sample_ids: list[Any] | None = None
    logging_steps: int = 1
    per_rank: bool = True
    start: dict[str, Any] = field(default_factory=dict)
    gn_logged: np.ndarray | None = None
    """True where grad_norm was written (NaN there is a real NaN)."""

    def samples_at(self, i: int) -> list[Any] | None:
        if self.sample_ids is None or i < 0 or i >= len(self.sample_ids):
            return None
        raw = self.sample_ids[i]
        if raw is None:
            return None
        try:
            ids = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return None
        return ids if isinstance(ids, list) else [ids]


def _logging_steps(start: dict[str, Any]) -> int:
    try:
        n = int(start.get("logging_steps") or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


def _dedup_last(step: np.ndarray) -> np.ndarray:
    """Indices keeping the last row of each step (rows are sorted by step)."""
    if len(step) < 2:
        return np.arange(len(step))
    last = np.ones(len(step), dtype=bool)
    last[:-1] = step[1:] != step[:-1]
    return np.flatnonzero(last)


def rank_series(ctx: Frames) -> list[Series]:
    """One series per (run, rank) with a logged loss, cached on the context."""
    if "series:rank" in ctx.memo:
        return ctx.memo["series:rank"]
    from tunescope.detectors.scans.rankwise import steps_slices

    # slices of the shared steps frame (sorted by run, rank, step) and its
    # numpy columns, converted once per context
    df = ctx.steps()
    out: list[Series] = []
    if df.height:
        import polars as pl

        has_loss = ctx.logged("loss")
        step_all = df.get_column("step").to_numpy().astype(np.int64, copy=False)
        cols = {k: ctx.column(k) for k in ("loss", "lr", "grad_norm", "epoch")}
        gn_logged = ctx.logged("grad_norm")
        ids = None
        if "sample_ids" in df.columns and df.get_column("sample_ids").null_count() < df.height:
            ids = df.get_column("sample_ids")
        for run, rank, a, b in steps_slices(ctx):
            rows = a + np.flatnonzero(has_loss[a:b])
            if not len(rows):
                continue
            start = ctx.run_start(run)
            keep = rows[_dedup_last(step_all[rows])]
            gids = ids.gather(pl.Series(keep)) if ids is not None else None
            has_ids = gids is not None and gids.null_count() < len(gids)
            sample_ids = gids.to_list() if gids is not None and has_ids else None
            per_rank = start.get("per_rank", True) is not False
            out.append(
                Series(
                    run=run,
                    rank=rank if per_rank else None,
                    step=step_all[keep],
                    loss=cols["loss"][keep],
                    lr=cols["lr"][keep],
                    grad_norm=cols["grad_norm"][keep],
                    epoch=cols["epoch"][keep],
                    sample_ids=sample_ids,
                    logging_steps=_logging_steps(start),
                    per_rank=per_rank,
                    start=start,
                    gn_logged=gn_logged[keep],
                )
            )
    out.sort(key=lambda s: (s.run, -1 if s.rank is None else s.rank))
    ctx.memo["series:rank"] = out
    return out


def run_series(ctx: Frames) -> list[Series]:
    """One series per run: loss and grad norm averaged over ranks per step
    (a NaN on any rank stays NaN), lr and epoch from the first rank."""
    if "series:run" in ctx.memo:
        return ctx.memo["series:run"]
    by_run: dict[str, list[Series]] = {}
    for s in rank_series(ctx):
        by_run.setdefault(s.run, []).append(s)
    out = []
    for run, parts in by_run.items():
        p = parts[0]
        if len(parts) == 1:
            out.append(
                Series(
                    run,
                    None,
                    p.step,
                    p.loss,
                    p.lr,
                    p.grad_norm,
                    p.epoch,
                    p.sample_ids,
                    p.logging_steps,
                    p.per_rank,
                    p.start,
                    p.gn_logged,
                )
            )
            continue
        if all(len(q.step) == len(p.step) and np.array_equal(q.step, p.step) for q in parts):
            steps = p.step  # the usual case: every rank logged the same steps
            loss = np.mean([q.loss for q in parts], axis=0)  # a NaN on any rank stays NaN
            gn = np.mean([q.grad_norm for q in parts], axis=0)
            lr, epoch = p.lr, p.epoch
        else:
            steps = np.unique(np.concatenate([q.step for q in parts]))
            m = len(steps)
            acc = {k: np.zeros(m) for k in ("loss", "grad_norm")}
            cnt = np.zeros(m)
            lr = np.full(m, np.nan)
            epoch = np.full(m, np.nan)
            for q in parts:
                idx = np.searchsorted(steps, q.step)
                acc["loss"][idx] += q.loss
                acc["grad_norm"][idx] += q.grad_norm
                cnt[idx] += 1
                fill = np.isnan(lr[idx])
                lr[idx[fill]] = q.lr[fill]
                efill = np.isnan(epoch[idx])
                epoch[idx[efill]] = q.epoch[efill]
            loss = acc["loss"] / cnt
            gn = acc["grad_norm"] / cnt
        out.append(
            Series(
                run, None, steps, loss, lr, gn, epoch, None, p.logging_steps, p.per_rank, p.start
            )
        )
    ctx.memo["series:run"] = out
    return out


def epoch_boundaries(s: Series) -> np.ndarray:
    """Steps at which a new whole epoch starts (the logged ``epoch`` crosses an
    integer); empty when epochs are not logged."""
    ep = s.epoch
    ok = np.isfinite(ep)
    if ok.sum() < 2:
        return np.array([], dtype=np.int64)
    e = np.floor(ep[ok] + 1e-6)
    st = s.step[ok]
    return st[1:][e[1:] > e[:-1]]


def near_boundary(s: Series, i: int, bounds: np.ndarray, points: int = 3) -> int | None:
    """The epoch boundary at or up to ``points`` logged points before index
    ``i``, if any."""
    if not len(bounds):
        return None
    lo = int(s.step[max(0, i - points)])
    hit = bounds[(bounds >= lo) & (bounds <= int(s.step[i]))]
    return int(hit[-1]) if len(hit) else None


def early_level(y: np.ndarray, n: int = 10) -> float:
    """Median of the first ``n`` finite values: the run's own early scale."""
    v = y[np.isfinite(y)][:n]
    return float(np.median(v)) if len(v) else float("nan")


@dataclass
class SpikeScan:
    """Scores of a spike scan over one series (indices into the series)."""

    hit: np.ndarray  # bool per point
    z: np.ndarray  # robust z against the recent baseline (NaN: not scored)
    base: np.ndarray  # baseline (median of the previous window), in the scan's space


def spikes(
    y: np.ndarray,
    *,
    window: int,
    min_points: int,
    z_single: float,
    z_double: float,
    sigma_floor: float,
    big_enough: Any,
    level_points: int = 20,
    screen: bool = True,
) -> SpikeScan:
    """Upward spikes of ``y`` (already in the scan's space, e.g. log loss).

    Each finite point is scored against the median of the previous
    ``level_points`` finite points (a short window: a falling curve makes a
    long median stale) and the noise of the previous ``window`` points (the
    MAD of point-to-point differences around their median, which a steady
    trend does not inflate) that were not themselves spiking (the
    current point excluded; sigma floored at ``sigma_floor``); a point is a
    hit when ``big_enough(value, baseline)`` holds and ``z >= z_single``, or
    ``z >= z_double`` on two consecutive points. No verdicts before
    ``min_points`` earlier points.

    Only points that pass a necessary condition are scored (the exact
    baseline costs a sort per point): a baseline is a median of earlier
    points, so it is never below their minimum, and sigma is never below
    ``sigma_floor``; a point that is not ``big_enough`` over that minimum, or
    not ``z_double * sigma_floor`` above it, cannot be a hit, and a point that
    cannot be a hit never changes a later baseline. The screen therefore never
    changes the result (a property test holds it to the unscreened scan).
    ``screen=False`` scores every point.
    """
    n = len(y)
    hit = np.zeros(n, dtype=bool)
    zs = np.full(n, np.nan)
    base = np.full(n, np.nan)
    ok = np.flatnonzero(np.isfinite(y))
    c = y[ok]
    m = len(c)
    if m <= min_points:
        return SpikeScan(hit, zs, base)
    if screen:
        floor = floor_before(c, 3 * window)
        cand = c - floor >= z_double * sigma_floor
        near = np.flatnonzero(cand)  # big_enough (exp, logs) only where that passes
        cand[near] = big_enough(c[near], floor[near])
    else:
        cand = np.ones(m, dtype=bool)
    cand[:min_points] = False
    idx = np.flatnonzero(cand)
    if len(idx) == 0:
        return SpikeScan(hit, zs, base)
    excluded = np.zeros(m, dtype=bool)  # kept out of later baselines
    flagged = np.zeros(m, dtype=bool)  # z >= z_double and big enough
    zc = np.full(m, np.nan)
    mc = np.full(m, np.nan)
    ci = 0  # next candidate
    i = -1
    follow = 0  # consecutive flagged points just scored: score the next point too
    while True:
        if follow:
            i += 1
        else:
            while ci < len(idx) and idx[ci] <= i:
                ci += 1
            if ci == len(idx):
                break
            i = int(idx[ci])
        if i >= m:
            break
        lo = max(0, i - 3 * window)
        hist = c[lo:i][~excluded[lo:i]][-window:]
        if len(hist) < min_points:
            follow = 0
            continue
        q50 = _median(hist[-level_points:])
        # noise from point-to-point differences: robust to the curve's own trend
        # (a falling loss inflates a window's IQR); widened for short histories
        d = np.diff(hist)
        d = np.abs(d - _median(d)) if len(d) else d  # centred: a steady trend is not noise
        sigma = DIFF_TO_SIGMA * _median(d) * (1 + 4 / len(hist)) if len(d) else 0.0
        sigma = max(sigma, sigma_floor)
        z = (c[i] - q50) / sigma
        zc[i], mc[i] = z, q50
        if z >= z_double and big_enough(c[i], q50):
            excluded[i] = flagged[i] = True
            follow += 1
            if follow >= window:
                # high for a whole window: the new level enters the baseline (one incident)
                excluded[i - follow + 1 : i + 1] = False
                follow = 0
        else:
            follow = 0
    strong = flagged & (zc >= z_single)
    pair = flagged.copy()
    double = pair.copy()
    double[1:] &= pair[:-1]
    both = double.copy()
    both[:-1] |= double[1:]
    hc = strong | both
    # a level shift: once spiking for a whole window, it is the new level (still one incident)
    hit[ok] = hc
    zs[ok] = zc
    base[ok] = mc
    return SpikeScan(hit, zs, base)


def _median(v: np.ndarray) -> float:
    """Median of a short array (np.median's per-call overhead dominates here)."""
    v = np.sort(v)
    n = len(v)
    return float(v[n // 2]) if n % 2 else float((v[n // 2 - 1] + v[n // 2]) / 2)


def floor_before(c: np.ndarray, lookback: int, block: int = 25) -> np.ndarray:
    """A lower bound, per point of ``c`` (finite values), of the minimum of
    the ``lookback`` points before it: the minimum over whole blocks that
    cover that range (a superset of it, so never above the true minimum).
    O(n); ``+inf`` where nothing comes before."""
    m = len(c)
    out = np.full(m, np.inf)
    if m < 2:
        return out
    nb = -(-m // block)
    pad = np.full(nb * block, np.inf)
    pad[:m] = c
    bmin = pad.reshape(nb, block).min(axis=1)
    k = lookback // block + 2  # blocks covering [i - lookback, i] for any i
    padded = np.concatenate((np.full(k - 1, np.inf), bmin))
    floor = np.lib.stride_tricks.sliding_window_view(padded, k).min(axis=1)  # per block
    out[1:] = floor[np.arange(1, m) // block]
    return out


def merge_ranks(findings: list[Finding]) -> list[Finding]:
    """Findings of one detector in one run that start at the same step on
    several ranks become one finding for all ranks (rank None)."""
    groups: dict[tuple[str, str, int | None], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.run, f.detector, f.step_start), []).append(f)
    out = []
    for group in groups.values():
        if len(group) == 1 or any(f.rank is None for f in group):
            out.extend(group)
            continue
        first = max(group, key=lambda f: f.severity.level)
        ranks = sorted(f.rank for f in group if f.rank is not None)
        ev = dict(first.evidence)
        ev["ranks"] = ranks
        out.append(
            Finding(
                run=first.run,
                detector=first.detector,
                name=first.name,
                severity=first.severity,
                step_start=first.step_start,
                step_end=max((f.step_end or 0) for f in group),
                message=f"on {len(ranks)} ranks ({_ranks(ranks)}): {first.message}",
                suggestion=first.suggestion,
                rank=None,
                evidence=ev,
            )
        )
    return out


def _ranks(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in ranks[:8]) + (", ..." if len(ranks) > 8 else "")


def samples_note(ids: list[Any] | None, limit: int = 8) -> str:
    if not ids:
        return ""
    shown = ", ".join(str(i) for i in ids[:limit])
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f" Samples in that batch: {shown}{more}."


def event_payload(text: str | None) -> Any:
    """An event's JSON payload decoded; None when it is empty or not JSON."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
