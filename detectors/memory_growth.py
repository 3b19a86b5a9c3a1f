"""TS401 memory-growth: the allocated-memory floor keeps rising (a leak), with
an out-of-memory forecast; reserved memory far above allocated and rising
(fragmentation).

What it flags:
    Per run and rank, the step-boundary floor of ``mem_allocated_mb`` (the
    minimum over short blocks of steps, so eval spikes, variable sequence
    lengths and gradient-accumulation sawtooth do not count) rising steadily
    once the one-time allocations are done: after the first optimizer steps
    (optimizer state is allocated lazily), the first eval and the first
    checkpoint, with eval and checkpoint steps (and the steps after a
    resume) left out. A window is flagged when Kendall's tau is positive with
    p < 0.01 (the variance inflated for the lag-1 autocorrelation of the
    residuals, since memory series wander), the 99% Theil-Sen lower bound of
    the slope is above 0, the growth over the window exceeds 1% of the level
    (and a few MiB), and the rise is spread over the window rather than one
    jump (a torch.compile recompile or a CUDA-graph pool is a level shift,
    not a leak); a leak must show in two overlapping windows (or the whole
    of a short run). A floor that rose and then stayed flat over the last
    fifth of the run is reported as info (settled at a higher level).
    Windows of several sizes (200, 1000, 4000 logged
    points, and the whole run when it is shorter) catch fast and slow leaks.
    With the device capacity known (``device_memory_mb`` in ``run_start``, or
    per-device ``memory_mb`` in ``devices``), the peak's slope gives the
    steps and wall time left before out-of-memory: an error when that comes
    before the planned end of the run (or within an hour), else a warning.
    Separately, reserved memory well above allocated (over 30% of reserved,
    or 20% of the device) and still rising at the end of the run is flagged
    as allocator fragmentation. On CPU runs ``mem_allocated_mb`` is the
    process RSS and is judged the same way.

    Not a leak: reserved memory growing and then levelling off (the caching
    allocator keeps what it reserved, by design), a peak statistic that only
    rises by definition, one-time step-ups.

Why it matters:
    A leak (a loss kept with its graph, metric lists of tensors, caches that
    never clear) ends in an out-of-memory crash hours into a run; catching
    the slope early saves the run and says how long is left.

Example:
    ``every rank: the allocated-memory floor grew 7.9 MiB/step from step 300
    to 1,500 (about 9,475 MiB on top of 19,999 MiB; Kendall p=8.5e-30 on a
    1480-point window). At this rate the peak reaches the 81,920 MiB device
    in about 5,566 steps (1.4 h), before the planned end (8,500 steps
    left).``

Suggestion:
    Log scalars with ``.item()``/``.detach()`` (never accumulate a loss
    tensor), clear lists of tensors, then take a memory snapshot
    (``torch.cuda.memory._record_memory_history()`` and
    ``_dump_snapshot()``) to find the allocation that grows. For
    fragmentation: ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``, or
    pad batches to a few bucketed lengths.

Options:
    See the ``Options`` fields below (``[tool.tunescope.TS401]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tunescope.detectors import stats
from tunescope.detectors.rankwise import (
    collapse_ranks,
    finding,
    first_event_step,
    ranks_from_slices,
    run_ended,
    special_steps,
    steps_slices,
    trend1,
)
from tunescope.findings import Finding, Severity
from tunescope.numbers import grouped as fmt

if TYPE_CHECKING:
    from tunescope.detectors.base import Context

ID = "TS401"
NAME = "memory-growth"
GUARD_ACTIONS = ("checkpoint",)  # what the training guard may do about it (train/guard.py)


@dataclass
class Options:
    skip_steps: int = 20
    """Logged steps after the first optimizer step left out (lazy optimizer
    state, allocator warm-up)."""
    windows: list[int] = field(default_factory=lambda: [200, 1000, 4000])
    """Window sizes of the trend test, in logged points; the whole run is
    also tested when it is shorter than the largest."""
    min_points: int = 50
    """Fewest logged points (after exclusions) for any verdict."""
    points_per_window: int = 64
    """Each window is reduced to this many block minima (the floor) before
    the trend test."""
    p_value: float = 0.01
    """Kendall / Mann-Kendall p-value below which a rise is significant."""
    confidence: float = 0.99
    """Confidence of the Theil-Sen slope bound that must be above 0."""
    min_growth: float = 0.01
    """Growth over a window must exceed this fraction of the memory level."""
    min_growth_mb: float = 16.0
    """... and this many MiB."""
    max_jump_share: float = 0.75
    """At most this share of the rise may happen between two adjacent
    quarters of the window (above: a one-time level shift, not a leak)."""
    headroom: float = 0.02
    """Fraction of device memory kept as headroom in the out-of-memory forecast."""
    oom_error_hours: float = 1.0
    """A forecast out-of-memory within this many hours of wall time is an error."""
    frag_ratio: float = 0.3
    """Fragmentation: reserved minus allocated above this fraction of reserved ..."""
    frag_capacity_ratio: float = 0.2
    """... or above this fraction of the device (when its capacity is known)."""
    frag_window: int = 200
    """Fragmentation is judged on the last this many logged points."""

    def __post_init__(self) -> None:
        if self.min_points < 10:
            raise ValueError(f"min_points must be >= 10, got {self.min_points}")
        if not self.windows or min(self.windows) < 10:
            raise ValueError(f"windows must be sizes >= 10, got {self.windows}")
        if not 8 <= self.points_per_window <= 400:
            raise ValueError(f"points_per_window must be 8..400, got {self.points_per_window}")
        if not 0 < self.p_value < 1 or not 0.5 < self.confidence < 1:
            raise ValueError("p_value must be in (0, 1) and confidence in (0.5, 1)")


def capacity_mb(payload: dict[str, Any], rank: int) -> float | None:
    """Device memory in MiB from a run_start payload: ``device_memory_mb`` (a
    number or one per local rank), or ``memory_mb``/``total_memory_mb`` in the
    ``devices`` entries."""

    def pick(v: Any) -> float | None:
        if isinstance(v, list) and v:
            v = v[rank % len(v)]
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return float(v)
        return None

    cfg = payload.get("config") if isinstance(payload.get("config"), dict) else {}
    for src in (payload, cfg):
        got = pick(src.get("device_memory_mb"))
        if got:
            return got
    devices = payload.get("devices")
    if isinstance(devices, list) and devices:
        d = devices[rank % len(devices)]
        if isinstance(d, dict):
            for k in ("memory_mb", "total_memory_mb", "device_memory_mb"):
                got = pick(d.get(k))
                if got:
                    return got
    return None


def _is_cpu(payload: dict[str, Any]) -> bool:
    if str(payload.get("device", "")).lower().startswith("cpu"):
        return True
    devices = payload.get("devices")
    if isinstance(devices, list) and devices:
        d = devices[0]
        name = d.get("name", d.get("type", "")) if isinstance(d, dict) else d
        return str(name).lower().startswith("cpu")
    return False


def _blocks(steps: np.ndarray, y: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimum of ``y`` over consecutive blocks of ``b`` points (aligned to the
    end) and the last step of each block."""
    nb = len(y) // b
    rows = y[len(y) - nb * b :].reshape(nb, b)
    # column by column along the long axis: a reduction over short rows is slow
    ys = rows[:, 0].copy()
    for j in range(1, b):
        np.minimum(ys, rows[:, j], out=ys)
    xs = steps[len(steps) - nb * b :].reshape(nb, b)[:, -1]
    return xs.astype(float), ys


def _spread_ok(yw: np.ndarray, max_share: float) -> np.ndarray:
    """Per window row: the rise is spread out (no single jump between adjacent
    quarter medians carries more than ``max_share`` of it)."""
    q = yw.shape[1] // 4
    if q < 1:
        return np.ones(yw.shape[0], dtype=bool)
    meds = np.stack([np.median(yw[:, k * q : (k + 1) * q], axis=1) for k in range(4)], axis=1)
    jumps = np.diff(meds, axis=1)
    total = meds[:, 3] - meds[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = jumps.max(axis=1) / total
    return (total > 0) & (share <= max_share)


def _line_beats_step(xw: np.ndarray, yw: np.ndarray) -> np.ndarray:
    """Per window row: a straight line fits better than one level shift (the
    best single break between two constant levels). A leak is a slope; a
    recompile, a CUDA-graph pool or a new buffer is a step."""
    m = yw.shape[1]
    xc = xw - xw.mean(axis=1, keepdims=True)
    yc = yw - yw.mean(axis=1, keepdims=True)
    syy = (yc * yc).sum(axis=1)
    sxy = (xc * yc).sum(axis=1)
    sxx = (xc * xc).sum(axis=1)
    sse_line = syy - np.where(sxx > 0, sxy * sxy / np.where(sxx > 0, sxx, 1), 0)
    c1 = np.cumsum(yc, axis=1)[:, :-1]  # sums of the first k points, k = 1..m-1
    k = np.arange(1, m)
    # SSE of two means = syy - k*mean1^2 - (m-k)*mean2^2, with mean2 = -c1/(m-k)
    explained = c1 * c1 / k + c1 * c1 / (m - k)
    sse_step = syy - explained.max(axis=1)
    return sse_line < sse_step


def onset(x: np.ndarray, y: np.ndarray) -> float:
    """Where a flat series turns into a rising one: the break ``c`` of the best
    fit ``a + b * max(0, x - c)`` (b > 0) over the points; ``x[0]`` if none."""
    if len(x) < 8:
        return float(x[0])
    if len(x) > 400:
        idx = np.linspace(0, len(x) - 1, 400).round().astype(int)
        x, y = x[idx], y[idx]
    cands = x[:-4]
    h = np.clip(x[None, :] - cands[:, None], 0, None)  # (candidates, points)
    hc = h - h.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    shh = (hc * hc).sum(axis=1)
    shy = (hc * yc[None, :]).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(shh > 0, shy / shh, 0.0)
        gain = np.where((shh > 0) & (b > 0), shy * shy / shh, -np.inf)
    k = int(np.argmax(gain))
    return float(cands[k]) if np.isfinite(gain[k]) else float(x[0])


def rising_windows(
    steps: np.ndarray, y: np.ndarray, opts: Options, scales: list[int]
) -> list[dict[str, float]]:
    """Windows (at every scale) in which the floor of ``y`` rises significantly."""
    out: list[dict[str, float]] = []
    n = len(y)
    for w in scales:
        m = min(opts.points_per_window, w)
        b = max(1, w // m)
        xs, ys = _blocks(steps, y, b)
        mw = min(len(ys), max(8, w // b))
        if mw < 8:
            continue
        view_x = np.lib.stride_tricks.sliding_window_view(xs, mw)
        view_y = np.lib.stride_tricks.sliding_window_view(ys, mw)
        stride = max(1, mw // 2)
        idx = np.arange(0, view_y.shape[0], stride)
        if idx[-1] != view_y.shape[0] - 1:
            idx = np.append(idx, view_y.shape[0] - 1)
        wx, wy = view_x[idx], view_y[idx]
        # Cheap screen first (least-squares growth over the window); the rank
        # tests run only on windows that could pass the growth threshold.
        xm, ym = wx.mean(axis=1, keepdims=True), wy.mean(axis=1)
        xc = wx - xm
        ols = (xc * (wy - ym[:, None])).sum(axis=1) / np.maximum((xc * xc).sum(axis=1), 1e-12)
        span = wx[:, -1] - wx[:, 0]
        need = np.maximum(opts.min_growth * np.abs(ym), opts.min_growth_mb)
        cand = np.flatnonzero(ols * span > 0.5 * need)
        if len(cand) == 0:
            continue
        wx, wy, span, need = wx[cand], wy[cand], span[cand], need[cand]
        t = stats.trend_windows(wx, wy, alpha=opts.confidence)
        level = np.median(wy, axis=1)
        growth = t.slope * span
        need = np.maximum(opts.min_growth * np.abs(level), opts.min_growth_mb)
        p = _autocorrelated_p(wx, wy, t.tau, ols[cand])
        ok = (t.tau > 0) & (p < opts.p_value) & (t.lo > 0) & (growth > need)
        if ok.any():
            ok &= _spread_ok(wy, opts.max_jump_share) & _line_beats_step(wx, wy)
        for k in np.flatnonzero(ok):
            out.append(
                {
                    "start": float(wx[k, 0]),
                    "end": float(wx[k, -1]),
                    "slope": float(t.slope[k]),
                    "lo": float(t.lo[k]),
                    "p": float(p[k]),
                    "tau": float(t.tau[k]),
                    "level": float(level[k]),
                    "growth": float(growth[k]),
                    "window": int(w if w <= n else n),
                }
            )
    return out


def _autocorrelated_p(
    wx: np.ndarray, wy: np.ndarray, tau: np.ndarray, slope: np.ndarray
) -> np.ndarray:
    """Mann-Kendall p-values with the variance inflated for lag-1
    autocorrelation of the residuals, (1 + r) / (1 - r): memory series are
    autocorrelated and the plain test then sees trends in wandering noise."""
    import math

    m = wy.shape[1]
    resid = (
        wy - wy.mean(axis=1, keepdims=True) - slope[:, None] * (wx - wx.mean(axis=1, keepdims=True))
    )
    den = (resid * resid).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, (resid[:, 1:] * resid[:, :-1]).sum(axis=1) / den, 0.0)
    r = np.clip(r, 0.0, 0.95)
    var = m * (m - 1) * (2 * m + 5) / 18.0 * (1 + r) / (1 - r)
    s = tau * m * (m - 1) / 2
    z = (np.abs(s) - 1) / np.sqrt(var)
    return np.array([math.erfc(max(v, 0.0) / math.sqrt(2.0)) for v in z])


def _merge(windows: list[dict[str, float]]) -> list[list[dict[str, float]]]:
    groups: list[list[dict[str, float]]] = []
    for w in sorted(windows, key=lambda d: (d["start"], d["end"])):
        if groups and w["start"] <= max(g["end"] for g in groups[-1]):
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


def run(ctx: Context, opts: Options) -> list[Finding]:

    cols = ["run_id", "rank", "step", "ts", "mem_allocated_mb", "mem_reserved_mb", "mem_peak_mb"]
    df = ctx.steps()
    if df.height == 0 or not ctx.logged("mem_allocated_mb").any():
        return []
    special = special_steps(ctx)
    resumed = special_steps(ctx, after=opts.skip_steps, kinds=("resume",))
    first_eval = first_event_step(ctx, "eval")
    first_ckpt = first_event_step(ctx, "checkpoint")
    ended = run_ended(ctx)
    runs = {r["run_id"]: r for r in ctx.runs().iter_rows(named=True)}
    arrays = {c: ctx.column(c) for c in cols[2:]}
    slices = steps_slices(ctx)
    findings: list[Finding] = []
    for run_id, rank, a, b in slices:
        part = {c: v[a:b] for c, v in arrays.items()}
        findings.extend(
            _judge_rank(
                ctx,
                opts,
                str(run_id),
                int(rank),
                part,
                _union(special.get(str(run_id)), resumed.get(str(run_id))),
                first_eval.get(str(run_id)),
                first_ckpt.get(str(run_id)),
                ended,
                runs.get(str(run_id), {}),
            )
        )
    return collapse_ranks(findings, ranks_from_slices(slices))


def _judge_rank(
    ctx: Context,
    opts: Options,
    run_id: str,
    rank: int,
    part: dict[str, np.ndarray],
    special: np.ndarray | None,
    first_eval: int | None,
    first_ckpt: int | None,
    ended: dict[tuple[str, int], str],
    run_row: dict[str, Any],
) -> list[Finding]:
    steps_all = part["step"]
    alloc_all = part["mem_allocated_mb"]
    first = int(steps_all.min())
    # Start after the one-time allocations: optimizer state, first eval, first
    # checkpoint (when waiting for them still leaves enough points).
    start = first + opts.skip_steps
    for s in (first_eval, first_ckpt):
        if s is not None and np.count_nonzero(steps_all > s + 1) >= opts.min_points:
            start = max(start, s + 2)
    keep = (steps_all >= start) & np.isfinite(alloc_all)
    if special is not None and len(special):
        keep &= ~np.isin(steps_all, special)
    n = int(keep.sum())
    if n < opts.min_points:
        return []
    steps = steps_all[keep].astype(float)
    alloc = alloc_all[keep]
    scales = sorted({w for w in opts.windows if w <= n} | ({n} if n < max(opts.windows) else set()))
    payload = ctx.run_start(run_id)
    cap = capacity_mb(payload, rank)
    cpu = _is_cpu(payload)
    what = "process RSS (CPU run)" if cpu else "allocated-memory floor"
    out: list[Finding] = []

    for group in _merge(rising_windows(steps, alloc, opts, scales)):
        # One window alone is not enough (wandering noise); a leak shows in the
        # overlapping windows around it. A short run has one whole-run window.
        if len(group) < 2 and group[0]["window"] < n:
            continue
        best = max(group, key=lambda d: d["growth"] / max(d["level"], 1.0))
        s0, s1 = int(min(d["start"] for d in group)), int(max(d["end"] for d in group))
        span = (steps >= s0) & (steps <= s1)
        s0 = max(s0, int(onset(steps[span], alloc[span])))
        detected_at = int(min(d["end"] for d in group))
        ev: dict[str, Any] = {
            "kind": "leak",
            "series": "mem_allocated_mb",
            "slope_mb_per_step": best["slope"],
            "slope_lower_bound": best["lo"],
            "kendall_tau": best["tau"],
            "p_value": best["p"],
            "growth_mb": best["growth"],
            "level_mb": best["level"],
            "window_points": best["window"],
            "windows_flagged": len(group),
            "detected_at_step": detected_at,
            "cpu_rss": cpu,
        }
        # A floor that rose and then levelled off is not a leak: the last part
        # of the run has a slope confidently far below the rise's.
        tail_n = max(opts.min_points, n // 5)
        if steps[n - tail_n] > s0 + (s1 - s0) // 4:
            tt = trend1(steps[n - tail_n :], alloc[n - tail_n :], alpha=opts.confidence)
            if tt.hi < 0.25 * best["slope"]:
                out.append(_plateaued(run_id, rank, what, s0, steps, alloc, tail_n, tt, best, ev))
                continue
        sev, forecast = _forecast(opts, part, steps_all, s0, s1, best, cap, run_id, rank, ended)
        sev, tail = _forecast_text(sev, forecast, cap, run_row, ev, opts, cpu)
        rise = best["slope"] * (s1 - s0)
        base = float(np.median(alloc[span][: max(5, int(span.sum()) // 10)])) if span.any() else 0
        ev["rise_mb"] = rise
        msg = (
            f"rank {rank}: the {what} grew {fmt(best['slope'])} MiB/step from step {s0:,} to "
            f"{s1:,} (about {fmt(rise)} MiB on top of {fmt(base)} MiB; Kendall p="
            f"{best['p']:.1e} on a {best['window']}-point window). " + tail
        )
        sugg = (
            "Look for tensors kept alive across steps: log scalars with .item() or .detach() "
            "(never accumulate a loss tensor), clear lists of tensors and caches; then record "
            "a memory snapshot (torch.cuda.memory._record_memory_history(), _dump_snapshot()) "
            "to find the allocation that grows."
        )
        out.append(finding(run_id, ID, NAME, sev, s0, s1, msg, sugg, rank=rank, evidence=ev))

    frag = _fragmentation(opts, part, steps_all, keep, cap, rank, run_id)
    if frag is not None:
        out.append(frag)
    return out


def _plateaued(
    run_id: str,
    rank: int,
    what: str,
    s0: int,
    steps: np.ndarray,
    alloc: np.ndarray,
    tail_n: int,
    tt: Any,
    best: dict[str, float],
    ev: dict[str, Any],
) -> Finding:
    t0 = int(steps[-tail_n])
    before = float(np.median(alloc[steps <= s0][-20:])) if (steps <= s0).any() else float(alloc[0])
    after = float(np.median(alloc[-tail_n:]))
    ev.update(
        {
            "kind": "growth_plateaued",
            "flat_from_step": t0,
            "tail_slope_mb_per_step": tt.slope,
            "tail_slope_upper_bound": tt.hi,
            "level_before_mb": before,
            "level_after_mb": after,
        }
    )
    msg = (
        f"rank {rank}: the {what} rose from about {fmt(before)} to {fmt(after)} MiB after "
        f"step {s0:,} (up to {fmt(best['slope'])} MiB/step) and then levelled off: flat over "
        f"the last {tail_n} logged steps (from step {t0:,}, slope at most {fmt(tt.hi)} "
        "MiB/step). Not a leak; memory settled at a higher level."
    )
    sugg = (
        "Nothing to fix if the new level leaves headroom; a one-time growth is usually a "
        "cache, compiled kernels for new shapes or optimizer state."
    )
    return finding(
        run_id, ID, NAME, Severity.INFO, s0, int(steps[-1]), msg, sugg, rank=rank, evidence=ev
    )


def _forecast(
    opts: Options,
    part: dict[str, np.ndarray],
    steps_all: np.ndarray,
    s0: int,
    s1: int,
    best: dict[str, float],
    cap: float | None,
    run_id: str,
    rank: int,
    ended: dict[tuple[str, int], str],
) -> tuple[Severity, dict[str, Any] | None]:
    if cap is None:
        return Severity.WARNING, None
    peak = part["mem_peak_mb"]
    alloc = part["mem_allocated_mb"]
    ts = part["ts"]
    has_peak = np.isfinite(peak).sum() >= max(10, len(peak) // 2)
    series = peak if has_peak else alloc
    fin = np.isfinite(series)
    # A running maximum only rises by definition: its slope says nothing, so
    # the floor's slope is projected from the current peak instead.
    cumulative = has_peak and bool(np.all(np.diff(peak[fin]) >= 0))
    sel = fin & (steps_all >= s0) & (steps_all <= s1)
    slope = best["slope"]
    if has_peak and not cumulative and sel.sum() >= 10:
        t = trend1(steps_all[sel], series[sel], alpha=opts.confidence)
        if t.slope > 0:
            slope = t.slope
    current = float(np.nanmax(series[fin][-50:])) if fin.any() else float("nan")
    limit = cap * (1 - opts.headroom)
    eta_steps = max(0.0, (limit - current) / slope) if slope > 0 else float("inf")
    d_ts, d_st = np.diff(ts), np.diff(steps_all)
    ok = np.isfinite(d_ts) & (d_st > 0) & (d_ts > 0)
    step_s = float(np.median(d_ts[ok] / d_st[ok])) if ok.any() else float("nan")
    eta_h = eta_steps * step_s / 3600 if np.isfinite(step_s) else float("nan")
    info = {
        "capacity_mb": cap,
        "peak_mb": current,
        "peak_slope_mb_per_step": slope,
        "peak_is_running_max": cumulative,
        "eta_steps": eta_steps,
        "eta_hours": eta_h,
        "seconds_per_step": step_s,
        "run_status": ended.get((run_id, rank), ""),
    }
    return Severity.WARNING, info


def _forecast_text(
    sev: Severity,
    fc: dict[str, Any] | None,
    cap: float | None,
    run_row: dict[str, Any],
    ev: dict[str, Any],
    opts: Options,
    cpu: bool = False,
) -> tuple[Severity, str]:
    if fc is None:
        ev["forecast"] = None
        if cpu:
            return sev, (
                "The host's memory size is not in run_start (device_memory_mb), so there is "
                "no out-of-memory forecast."
            )
        return sev, (
            "The device capacity is unknown (no device_memory_mb in run_start), so there "
            "is no out-of-memory forecast."
        )
    ev["forecast"] = fc
    total = run_row.get("total_steps")
    last = run_row.get("last_step")
    status = fc.get("run_status") or ""
    remaining = (int(total) - int(last)) if total and last is not None else None
    ev["forecast"]["steps_left_in_run"] = remaining
    eta, hours = fc["eta_steps"], fc["eta_hours"]
    if eta == 0:
        text = (
            f"The peak ({fmt(fc['peak_mb'])} MiB) is already at the {fmt(cap)} MiB device "
            "limit (less headroom)."
        )
        return (Severity.ERROR if status != "completed" else sev), text
    if not np.isfinite(eta):
        return sev, f"The peak is not rising; the device has {fmt(cap)} MiB."
    when = f"about {fmt(eta)} steps" + (f" ({hours:.1f} h)" if np.isfinite(hours) else "")
    text = f"At this rate the peak reaches the {fmt(cap)} MiB device in {when}"
    running = status not in ("completed",)
    if remaining is not None and remaining > 0 and eta < remaining and running:
        return Severity.ERROR, text + f", before the planned end ({remaining:,} steps left)."
    if running and remaining is None and np.isfinite(hours) and hours < opts.oom_error_hours:
        return Severity.ERROR, text + "."
    if remaining is not None and remaining > 0:
        return sev, text + f"; the run has {remaining:,} steps left."
    return sev, text + "."


def _fragmentation(
    opts: Options,
    part: dict[str, np.ndarray],
    steps_all: np.ndarray,
    keep: np.ndarray,
    cap: float | None,
    rank: int,
    run_id: str,
) -> Finding | None:
    res = part["mem_reserved_mb"]
    alloc = part["mem_allocated_mb"]
    ok = keep & np.isfinite(res) & np.isfinite(alloc)
    if ok.sum() < opts.min_points:
        return None
    tail = np.flatnonzero(ok)[-opts.frag_window :]  # only the last window is judged
    steps = steps_all[tail].astype(float)
    gap = res[tail] - alloc[tail]
    reserved = res[tail]
    end_gap = float(np.median(gap[-10:]))
    end_res = float(np.median(reserved[-10:]))
    far = end_gap > opts.frag_ratio * end_res or (
        cap is not None and end_gap > opts.frag_capacity_ratio * cap
    )
    if not far or len(gap) < opts.min_points:
        return None
    found = rising_windows(steps, gap, opts, [len(gap)])
    if not found:
        return None
    w = found[-1]
    if w["growth"] < opts.min_growth * end_res:
        return None
    ev = {
        "kind": "fragmentation",
        "reserved_mb": end_res,
        "allocated_mb": float(np.median(alloc[np.flatnonzero(ok)[-10:]])),
        "gap_mb": end_gap,
        "gap_slope_mb_per_step": w["slope"],
        "p_value": w["p"],
        "capacity_mb": cap,
    }
    msg = (
        f"rank {rank}: reserved memory is {fmt(end_res)} MiB against {fmt(ev['allocated_mb'])} "
        f"MiB allocated ({100 * end_gap / max(end_res, 1e-9):.0f}% of it cached but unused) "
        f"and the gap is still rising ({fmt(w['slope'])} MiB/step over steps "
        f"{int(w['start']):,}-{int(w['end']):,}): the allocator is fragmenting."
    )
    sugg = (
        "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (or max_split_size_mb), "
        "and pad batches to a few bucketed sequence lengths."
    )
    return finding(
        run_id,
        ID,
        NAME,
        Severity.WARNING,
        int(w["start"]),
        int(w["end"]),
        msg,
        sugg,
        rank=rank,
        evidence=ev,
    )


def _union(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return a if b is None else b
    return np.union1d(a, b)
