"""Where TS401 (memory growth) sees memory rising: windows of several
scales in which a rank's allocated memory trends up (Kendall's tau with an
autocorrelation-aware p-value), grows by more than noise, and rises as a line
rather than one step; then merged into spans. Score first, decide second:
:mod:`tunescope.detectors.memory_growth` judges them."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tunescope.detectors.scans import stats


class WindowOptions(Protocol):
    """The options the window scan reads (TS401's ``Options`` has them)."""

    points_per_window: int
    p_value: float
    confidence: float
    min_growth: float
    min_growth_mb: float
    max_jump_share: float


def blocks(steps: np.ndarray, y: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
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


def spread_ok(yw: np.ndarray, max_share: float) -> np.ndarray:
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


def line_beats_step(xw: np.ndarray, yw: np.ndarray) -> np.ndarray:
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
    steps: np.ndarray, y: np.ndarray, opts: WindowOptions, scales: list[int]
) -> list[dict[str, float]]:
    """Windows (at every scale) in which the floor of ``y`` rises significantly."""
    out: list[dict[str, float]] = []
    n = len(y)
    for w in scales:
        m = min(opts.points_per_window, w)
        b = max(1, w // m)
        xs, ys = blocks(steps, y, b)
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
        p = autocorrelated_p(wx, wy, t.tau, ols[cand])
        ok = (t.tau > 0) & (p < opts.p_value) & (t.lo > 0) & (growth > need)
        if ok.any():
            ok &= spread_ok(wy, opts.max_jump_share) & line_beats_step(wx, wy)
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


def autocorrelated_p(
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


def merge_windows(windows: list[dict[str, float]]) -> list[list[dict[str, float]]]:
    groups: list[list[dict[str, float]]] = []
    for w in sorted(windows, key=lambda d: (d["start"], d["end"])):
        if groups and w["start"] <= max(g["end"] for g in groups[-1]):
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups
