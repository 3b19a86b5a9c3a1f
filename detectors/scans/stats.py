"""Statistics shared by detectors: trend tests, incidents, the warmup mask.

All functions take numpy arrays and are vectorised; detectors call them per
run and rank on the columns of the ``steps`` frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Trend:
    """Mann-Kendall / Theil-Sen trend of ``y`` against ``x``.

    ``slope`` is the Theil-Sen slope (units of y per unit of x), ``lo`` and
    ``hi`` its confidence bounds, ``tau`` and ``p`` Kendall's tau and its
    p-value (two-sided), ``n`` the number of points used.
    """

    tau: float
    p: float
    slope: float
    lo: float
    hi: float
    n: int


def trend(x: np.ndarray, y: np.ndarray, alpha: float = 0.99, max_points: int = 400) -> Trend:
    """Trend test on finite points, subsampled evenly to ``max_points``
    (Theil-Sen is O(n^2)). ``alpha`` is the confidence of ``lo``/``hi``."""
    from scipy import stats

    x, y, flat = _trend_points(x, y, max_points)
    if flat is not None:
        return flat
    tau, p = stats.kendalltau(x, y)
    slope, _, lo, hi = stats.theilslopes(y, x, alpha=alpha)
    tau = 0.0 if not np.isfinite(tau) else float(tau)
    p = 1.0 if not np.isfinite(p) else float(p)
    return Trend(tau, p, float(slope), float(lo), float(hi), len(x))


def incidents(mask: np.ndarray, gap: int = 0) -> list[tuple[int, int]]:
    """Index ranges ``(first, last)`` of consecutive True values in ``mask``;
    runs separated by at most ``gap`` False values are merged into one."""
    idx = np.flatnonzero(np.asarray(mask, dtype=bool))
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) > gap + 1)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]]))
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def warmup_mask(lr: np.ndarray, rel_tol: float = 1e-6) -> np.ndarray:
    """True while the learning rate is still rising: each point up to the last
    step at which ``lr`` was above its previous value (allowing float noise).
    A later rise (a re-warmup after a resume, a cyclic schedule) is also marked."""
    lr = np.asarray(lr, dtype=float)
    n = len(lr)
    out = np.zeros(n, dtype=bool)
    if n < 2:
        return out
    prev = np.concatenate(([np.nan], lr[:-1]))
    rising = np.isfinite(lr) & np.isfinite(prev) & (lr > prev * (1 + rel_tol) + 1e-30)
    out[rising] = True
    # The first point of a warmup (before the first rise) also belongs to it.
    first = np.flatnonzero(rising)
    if len(first) and first[0] > 0:
        out[first[0] - 1] = True
    return out


@dataclass(frozen=True)
class Trends:
    """Mann-Kendall / Theil-Sen trends of many equal-length windows at once
    (arrays with one value per window; fields as in :class:`Trend`)."""

    tau: np.ndarray
    p: np.ndarray
    slope: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: int


def trend_windows(x: np.ndarray, y: np.ndarray, alpha: float = 0.99) -> Trends:
    """Vectorised trend test over the rows of ``x`` and ``y`` (shape
    ``(windows, n)``, finite values, ``x`` increasing along each row).

    Kendall's tau and the Mann-Kendall p-value (normal approximation with
    continuity correction, no tie correction, so slightly conservative), the
    Theil-Sen slope and its ``alpha`` confidence bounds (Sen 1968, the same
    construction as ``scipy.stats.theilslopes``). O(windows * n^2) memory:
    keep ``n`` at a few hundred at most.
    """
    import math
    from statistics import NormalDist

    x = np.atleast_2d(np.asarray(x, dtype=float))
    y = np.atleast_2d(np.asarray(y, dtype=float))
    w, n = y.shape
    if n < 3 or w == 0:
        z = np.zeros(w)
        return Trends(z, np.ones(w), z, z, z, n)
    i, j = pairs(n)
    dx = x[:, j] - x[:, i]
    dy = y[:, j] - y[:, i]
    s = np.sign(dx * dy).sum(axis=1)
    npairs = len(i)
    var = n * (n - 1) * (2 * n + 5) / 18.0
    zs = (s - np.sign(s)) / np.sqrt(var)
    p = np.array([math.erfc(abs(v) / math.sqrt(2.0)) for v in zs], dtype=float)
    tau = s / npairs
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.where(dx > 0, dy / dx, np.nan)
    # Pairs with equal x (none when x is strictly increasing) sort last as NaN.
    zcrit = NormalDist().inv_cdf(0.5 + alpha / 2.0)
    sigma = np.sqrt(var)
    k_lo = int(max(round((npairs - zcrit * sigma) / 2.0) - 1, 0))
    k_hi = int(min(round((npairs + zcrit * sigma) / 2.0), npairs - 1))
    k_mid = sorted({(npairs - 1) // 2, npairs // 2})
    part = np.partition(slopes, sorted({k_lo, k_hi, *k_mid}), axis=1)
    slope = part[:, k_mid].mean(axis=1)
    return Trends(tau, p, slope, part[:, k_lo], part[:, k_hi], n)


def trend_np(x: np.ndarray, y: np.ndarray, alpha: float = 0.99, max_points: int = 400) -> Trend:
    """:func:`trend` in numpy only (no scipy import, which costs a noticeable
    part of a second at startup): Kendall's tau-b with the normal-approximation
    p-value (tie-corrected; the exact small-sample test that scipy uses for
    n <= 50 without ties gives smaller p-values, so this is conservative) and
    the Theil-Sen slope with Sen's confidence bounds, computed as scipy does."""
    import math
    from statistics import NormalDist

    x, y, flat = _trend_points(x, y, max_points)
    if flat is not None:
        return flat
    n = len(x)
    i, j = pairs(n)
    dx = x[j] - x[i]
    dy = y[j] - y[i]
    tau, p, var = _kendall(x, y, dx, dy)
    keep = dx != 0
    slopes = dy[keep] / dx[keep]
    nt = len(slopes)
    if nt == 0:
        return Trend(tau, p, 0.0, 0.0, 0.0, n)
    conf = alpha if alpha > 0.5 else 1 - alpha
    z = NormalDist().inv_cdf((1 - conf) / 2)
    sigma = math.sqrt(max(var, 0.0))
    ru = min(round((nt - z * sigma) / 2.0), nt - 1)
    rl = max(round((nt + z * sigma) / 2.0) - 1, 0)
    # the four order statistics needed, in place of a sort of every slope (a
    # sort still when -0.0 and 0.0 both occur: which of them lands where is the sort's)
    if np.signbit(slopes[slopes == 0]).any():
        part = np.sort(slopes)
    else:
        part = np.partition(slopes, sorted({rl, ru, (nt - 1) // 2, nt // 2}))
    slope = float(np.median(part))
    return Trend(float(tau), float(p), slope, float(part[rl]), float(part[ru]), n)


@lru_cache(maxsize=64)
def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(n, k=1)``, made once per ``n`` (the points of a trend
    test are at most ``max_points``, so few sizes recur); read-only."""
    i, j = np.triu_indices(n, k=1)
    i.flags.writeable = False
    j.flags.writeable = False
    return i, j


def kendall_np(x: np.ndarray, y: np.ndarray, max_points: int = 400) -> tuple[float, float]:
    """Kendall's tau-b and its p-value exactly as :func:`trend_np` computes
    them, without the Theil-Sen slopes (their sort is most of a trend test's
    cost). Returns (0, 1) early when the pairs do not rise on balance."""
    x, y, flat = _trend_points(x, y, max_points)
    if flat is not None:
        return flat.tau, flat.p
    i, j = pairs(len(x))
    tau, p, _ = _kendall(x, y, x[j] - x[i], y[j] - y[i], rising_only=True)
    return tau, p


def _kendall(
    x: np.ndarray, y: np.ndarray, dx: np.ndarray, dy: np.ndarray, rising_only: bool = False
) -> tuple[float, float, float]:
    """Kendall's tau-b, its tie-corrected normal-approximation p-value and the
    variance of S, from the pairwise differences of the points."""
    import math

    s = float(np.sum(np.sign(dx) * np.sign(dy)))
    if rising_only and s <= 0:
        return 0.0, 1.0, 0.0
    n = len(x)
    n0 = n * (n - 1) / 2
    tx, vx = _tie_terms(x)
    ty, vy = _tie_terms(y)
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    tau = s / denom if denom > 0 else 0.0
    var = (n * (n - 1) * (2 * n + 5) - vx - vy) / 18.0
    p = math.erfc(abs(s) / math.sqrt(2 * var)) if var > 0 else 1.0
    return tau, p, var


def _tie_terms(v: np.ndarray) -> tuple[float, float]:
    _, counts = np.unique(v, return_counts=True)
    t = counts[counts > 1].astype(float)
    return float(np.sum(t * (t - 1) / 2)), float(np.sum(t * (t - 1) * (2 * t + 5)))


def _trend_points(
    x: np.ndarray, y: np.ndarray, max_points: int
) -> tuple[np.ndarray, np.ndarray, Trend | None]:
    """The points :func:`trend` and :func:`trend_np` test: the finite pairs,
    subsampled evenly to ``max_points``; with the no-trend answer instead when
    fewer than 3 are left or ``y`` is constant (else None)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 3:
        return x, y, Trend(0.0, 1.0, 0.0, 0.0, 0.0, n)
    if n > max_points:
        idx = np.linspace(0, n - 1, max_points).round().astype(int)
        x, y = x[idx], y[idx]
    if np.all(y == y[0]):
        return x, y, Trend(0.0, 1.0, 0.0, 0.0, 0.0, len(x))
    return x, y, None


def row_median(a: np.ndarray) -> np.ndarray:
    """Median of each row (a sort is faster than np.median for short rows)."""
    srt = np.sort(a, axis=1)
    m = a.shape[1]
    return (srt[:, (m - 1) // 2] + srt[:, m // 2]) / 2


def rolling_median(x: np.ndarray, k: int, min_k: int) -> np.ndarray:
    """Trailing median over ``k`` values (NaN before ``min_k`` are available)."""
    out = np.full(len(x), np.nan)
    if len(x) >= k:
        out[k - 1 :] = row_median(np.lib.stride_tricks.sliding_window_view(x, k))
    head = x[: min(k - 1, len(x))]
    if len(head) >= min_k and np.isfinite(head).all():
        # medians of the growing prefixes, from one sort each (np.median's
        # per-call overhead dominates on a few dozen values)
        for i in range(min_k - 1, len(head)):
            srt = np.sort(head[: i + 1])
            out[i] = (srt[i // 2] + srt[(i + 1) // 2]) / 2
    else:
        for i in range(min_k - 1, len(head)):
            out[i] = np.median(x[: i + 1])
    return out
