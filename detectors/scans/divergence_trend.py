"""The statistics behind TS102's trend rule: a cheap least-squares screen
for windows worth testing, Kendall's test of a rise, and the check that tells
a step (a spike recovering slowly, a level shift) from a trend."""

from __future__ import annotations

import numpy as np

from tunescope.detectors.scans.stats import trend_np as trend


def screen_sums(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """The cumulative sums :func:`_screen` works from (shared by every window size)."""
    xc = x - x[0]
    return [np.concatenate(([0.0], np.cumsum(v))) for v in (xc, y, xc * xc, xc * y, y * y)]


def screen(
    x: np.ndarray, y: np.ndarray, w: int, need: float, cs: list[np.ndarray] | None = None
) -> np.ndarray:
    """Window ends (indices) worth a full trend test: the least-squares rise
    over the window is at least half the needed rise with a t-statistic above
    2.5. O(n) with cumulative sums; the Kendall/Theil-Sen test runs only there."""
    m = len(y)
    if m < w:
        return np.array([], dtype=int)
    if cs is None:
        cs = screen_sums(x, y)
    ends = np.arange(w - 1, m)
    cx, cy, cxx, cxy, cyy = cs
    sx, sy, sxx, sxy = (c[w:] - c[:-w] for c in (cx, cy, cxx, cxy))
    vx = sxx - sx * sx / w
    vxy = sxy - sx * sy / w
    span = x[w - 1 :] - x[: m - w + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = vxy / vx
        # the rise first (most windows fail it); the t-statistic only where it holds
        rising = np.flatnonzero(slope * span >= need * 0.5)
        slope, vx, vxy, sy = slope[rising], vx[rising], vxy[rising], sy[rising]
        e = ends[rising]
        syy = cyy[e + 1] - cyy[e + 1 - w]
        vy = syy - sy * sy / w
        resid = np.maximum(vy - slope * vxy, 0.0) / max(w - 2, 1)
        se = np.sqrt(resid / vx)
        t = slope / se
    ok = (t >= 2.5) | ~np.isfinite(t) & (slope > 0)
    return e[ok]


def kendall_rises(x: np.ndarray, y: np.ndarray, p_max: float) -> bool:
    """``tau > 0 and p < p_max`` of :func:`stats.trend_np` on the same points,
    without its Theil-Sen part (most screened windows fail here)."""
    from tunescope.detectors.scans.stats import kendall_np

    tau, p = kendall_np(x, y)
    return tau > 0 and p < p_max


def looks_like_step(x: np.ndarray, y: np.ndarray, min_side: int = 10, min_f: float = 100.0) -> bool:
    """True when a window's rise is one jump to a level that then stays flat
    or falls (a spike recovering slowly, a level shift), not a trend: two
    flat levels split at the best change point fit far better than a line
    (residual sum of squares lower by ``min_f`` times the residual variance), and
    the points after that change point rise (Theil-Sen) by less than a
    quarter of the jump between the two levels. O(n) but for one Theil-Sen
    fit of the later part."""
    m = len(y)
    if m < 2 * min_side:
        return False
    c1 = np.cumsum(y)
    c2 = np.cumsum(y * y)
    k = np.arange(min_side, m - min_side + 1)  # size of the left part
    left = c2[k - 1] - c1[k - 1] ** 2 / k
    right = (c2[-1] - c2[k - 1]) - (c1[-1] - c1[k - 1]) ** 2 / (m - k)
    sse_step = left + right
    best = int(np.argmin(sse_step))
    xc = x - x.mean()
    vx = float(np.dot(xc, xc))
    yc = y - y.mean()
    sse_line = float(np.dot(yc, yc)) - (float(np.dot(xc, yc)) ** 2 / vx if vx > 0 else 0.0)
    # the two levels must fit far better than the line (an F-like ratio; the
    # change point is searched, so noise alone reaches ~10-20 on a ramp)
    if sse_line - sse_step[best] < min_f * max(sse_step[best], 1e-12) / (m - 3):
        return False
    cut = int(k[best])
    jump = (c1[-1] - c1[cut - 1]) / (m - cut) - c1[cut - 1] / cut
    after = trend(x[cut:], y[cut:], alpha=0.99)
    # a ramp split anywhere keeps rising after the split by about as much as
    # the jump between the two levels; a step stays flat or falls back
    return bool(after.slope * (x[-1] - x[cut]) < 0.25 * jump)
