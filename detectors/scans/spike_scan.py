"""Loss spike incidents of one series: the scan TS101 (loss spike) and TS102
(divergence: a spike that never comes back) each run with their own options.

A detector never calls another: both build :class:`LossSpikeParams` from
their own ``Options`` and call :func:`loss_incidents`, which caches the scan on
the context keyed by the parameters, so equal settings scan once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from tunescope.detectors.base import Frames
from tunescope.detectors.scans.series import (
    DIFF_TO_SIGMA,
    IQR_TO_SIGMA,
    Series,
    early_level,
    rank_series,
    spikes,
)
from tunescope.detectors.scans.stats import incidents


@dataclass(frozen=True)
class LossSpikeParams:
    """What makes a loss spike (the meaning of each field: TS101's ``Options``).

    The one place these defaults are written: TS101's ``Options`` and TS102's
    ``spike_*`` options take theirs from :data:`SPIKE_DEFAULTS`."""

    window: int = 100
    level_points: int = 10
    min_points: int = 5
    z: float = 6.0
    z_consecutive: float = 4.0
    min_ratio: float = 1.3
    min_excess: float = 0.1
    sigma_floor: float = 0.02
    recover_steps: int = 50
    recover_within: float = 0.05
    gap: int = 3
    tail_fraction: float = 0.02


SPIKE_DEFAULTS = LossSpikeParams()
"""The spike scan's defaults, for the detectors' ``Options``."""


@dataclass
class Incident:
    """One spike incident of one series (indices into the series)."""

    series: Series
    a: int
    b: int
    peak: int
    base: float  # baseline loss (linear units)
    z: float
    recovered: bool | None  # False: never back; None: the log ends too soon
    recover_step: int | None
    space: str
    slow: bool = False  # back, but only after the recovery horizon
    early: bool = False  # inside the grace period: judged by its size alone (:func:`early_jumps`)
    signed: bool = False  # the series crosses zero (:func:`crosses_zero`): no ratio to judge by
    beyond_range: bool = False  # the peak lies a whole range above everything before it
    ramp: bool = False  # reached by steady steps, not a jump (:func:`is_ramp`)


SIGNED_SHARE = 0.1
"""A series crosses zero when at least this share of its finite points lies on
each side of 0 (and its median is within its interquartile range of 0)."""


def crosses_zero(y: np.ndarray) -> bool:
    """True for a signed objective that oscillates around 0 (a policy-gradient
    loss, a critic's, an objective with signed terms): at least
    :data:`SIGNED_SHARE` of the finite points on each side of 0, and a median
    no further from 0 than the interquartile range. Such a series has no level
    to take a ratio against: a rise from -0.5 to 1.5 is a swing, not a 3x jump."""
    v = y[np.isfinite(y)]
    if len(v) < 3:
        return False
    if (v < 0).mean() < SIGNED_SHARE or (v > 0).mean() < SIGNED_SHARE:
        return False
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return bool(abs(q50) <= q75 - q25)


def is_ramp(y: np.ndarray, a: int, base: float) -> bool:
    """True when the first point of an incident at ``a`` stands above the
    baseline ``base`` mostly by the steps before it: its own jump from the
    point before is under half its excess. A curve that climbs steadily
    outruns a trailing median without any one step jumping; a spike is the
    jump itself."""
    before = np.flatnonzero(np.isfinite(y[:a]))
    if not len(before) or not np.isfinite(y[a]):
        return False
    rise = float(y[a] - base)
    return rise > 0 and float(y[a] - y[before[-1]]) < 0.5 * rise


def diff_spread(v: np.ndarray) -> float:
    """The interquartile range that iid noise with the point-to-point
    differences of ``v`` would have: robust to a level shift, which moves one
    difference, where the quartiles of ``v`` would take the new level in."""
    d = np.diff(v)
    if not len(d):
        return 0.0
    mad = float(np.median(np.abs(d - np.median(d))))
    return IQR_TO_SIGMA * DIFF_TO_SIGMA * mad


def beyond_range(y: np.ndarray, a: int, peak: float) -> bool:
    """True when ``peak`` lies above every point before index ``a`` by more
    than their whole range (max - min): unlike anything the run did before,
    even for a series without a ratio scale."""
    before = y[:a][np.isfinite(y[:a])]
    if len(before) < 2:
        return False
    hi, lo = float(before.max()), float(before.min())
    return peak > hi + (hi - lo)


def loss_incidents(ctx: Frames, p: LossSpikeParams) -> list[Incident]:
    """Spike incidents of every rank series, scanned once per parameters."""
    key = ("loss-incidents", p)
    if key not in ctx.memo:
        ctx.memo[key] = [i for s in rank_series(ctx) for i in scan(s, p)]
    return ctx.memo[key]


def trailing_excess(y: np.ndarray, k: int) -> np.ndarray:
    """Each finite point's excess over the median of the ``k`` finite points
    before it (NaN where fewer than 2 come before)."""
    out = np.full(len(y), np.nan)
    ok = np.flatnonzero(np.isfinite(y))
    c = y[ok]
    m = len(c)
    if m < 3:
        return out
    pad = np.concatenate((np.full(k, np.nan), c))
    win = np.lib.stride_tricks.sliding_window_view(pad, k)[:m]  # the k points before each
    with warnings.catch_warnings():  # the first windows are all NaN: "All-NaN slice"
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(win, axis=1)
    med[:2] = np.nan
    out[ok] = c - med
    return out


def scan(s: Series, p: LossSpikeParams, screen: bool = True) -> list[Incident]:
    """Spike incidents of one series, transient and unrecovered alike.

    The size needed is set by two references: the recent baseline (robust z
    and ``min_ratio``) and the run's own scale (``min_excess`` of its early
    level). A third keeps heavy-tailed losses (per-step preference or RL
    objectives, tiny batches) from raising their own tail: an excursion is
    not a spike when at least ``tail_fraction`` of the run's other points
    (and at least 3) rise half as far above their own trailing baseline."""
    loss = s.loss
    fin = np.isfinite(loss)
    jumps = early_jumps(s, p)
    if fin.sum() <= p.min_points:
        return jumps
    positive = bool((loss[fin] > 0).all())
    early = early_level(loss, 5)  # where the run started: its own scale
    dilution = s.logging_steps if s.logging_steps > 1 else 1
    if positive:
        y = np.where(fin, np.log(np.where(fin & (loss > 0), loss, 1.0)), np.nan)
        need = p.min_excess * abs(early) / dilution
        need_log = np.log1p((p.min_ratio - 1) / dilution)

        def big(v: np.ndarray, base: np.ndarray) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):
                return (np.exp(v) - np.exp(base) >= need) & (v - base >= need_log)

        floor, z1, z2 = p.sigma_floor, p.z, p.z_consecutive
    else:
        # losses that can be 0 or negative (preference / RL objectives): linear space,
        # stricter, with the run's spread as its scale
        y = np.where(fin, loss, np.nan)
        q25, q75 = np.percentile(loss[fin], [25, 75])
        spread = max(q75 - q25, 1e-12)
        signed = crosses_zero(loss)
        if signed:
            # around 0 a jump to a new level would widen the run's quartiles
            # itself: the spread of a signed series is its step-to-step noise
            spread = max(min(spread, diff_spread(loss[fin])), 1e-12)
        need = 3 * spread / dilution

        def big(v: np.ndarray, base: np.ndarray) -> np.ndarray:
            return v - base >= need

        floor, z1, z2 = spread * 0.05, p.z * 1.5, p.z_consecutive * 1.5
    sc = spikes(
        y,
        window=p.window,
        level_points=p.level_points,
        min_points=p.min_points,
        z_single=z1,
        z_double=z2,
        sigma_floor=floor,
        big_enough=big,
        screen=screen,
    )
    if not sc.hit.any():
        return jumps
    excess = trailing_excess(y, p.level_points) if p.tail_fraction > 0 else None
    out = list(jumps)
    for a, b in incidents(sc.hit, gap=p.gap):
        if jumps and a <= jumps[-1].b:
            continue  # the grace period's jump, still going on
        seg = np.arange(a, b + 1)
        seg = seg[np.isfinite(sc.z[seg])]
        peak = int(seg[np.argmax(y[seg])]) if len(seg) else a
        base_y = sc.base[a]
        if excess is not None and _in_tail(excess, y[peak] - base_y, a, b, p.tail_fraction):
            continue
        base = float(np.exp(base_y)) if positive else float(base_y)
        # a linear series has no ratio: back when within its spread of the baseline
        tol = 0.0 if positive else spread
        recovered, rstep, slow = _recovery(s, p, a, b, base, positive, tol)
        space = "log" if positive else "linear"
        inc = Incident(s, a, b, peak, base, float(sc.z[peak]), recovered, rstep, space, slow)
        if not positive and signed:
            inc.signed = True
            inc.beyond_range = beyond_range(y, a, float(y[peak]))
        inc.ramp = is_ramp(y, a, base_y)
        out.append(inc)
    return out


def _recovery(
    s: Series, p: LossSpikeParams, a: int, b: int, base: float, positive: bool, tol: float = 0.0
) -> tuple[bool | None, int | None, bool]:
    """Whether the loss came back within ``recover_within`` of ``base`` (or
    within ``tol`` of it in linear space, where a fraction of a baseline near 0
    means nothing) after the incident ``a..b`` (None: the log ends too soon to
    tell), the step it did, and whether that took longer than the recovery
    horizon."""
    loss = s.loss
    if positive:
        limit = base * (1 + p.recover_within)
    else:
        limit = base + max(p.recover_within * abs(base), tol)
    end_step = int(s.step[b])
    horizon = max(p.recover_steps, 3 * s.logging_steps)
    after = np.flatnonzero(s.step > end_step)
    back = after[np.isfinite(loss[after]) & (loss[after] <= limit)]
    long = end_step - int(s.step[a]) > horizon
    if len(back):
        rstep = int(s.step[back[0]])
        return True, rstep, long or rstep - end_step > horizon
    if long or (len(after) and int(s.step[after[-1]]) - end_step >= horizon):
        return False, None, False  # never came back
    return None, None, False


EARLY_RATIO = 3.0
"""How far above the median of the points before it a loss inside the grace
period must be (see :func:`early_jumps`)."""
EARLY_HELD = 2.0
"""How far above that median the next point must still be, when there is one."""


def early_jumps(s: Series, p: LossSpikeParams) -> list[Incident]:
    """Jumps inside the grace period, where no noise estimate exists yet.

    The z-scan gives no verdict on the first ``min_points`` finite points:
    there is no noise to scale by. A jump there is judged by its size alone,
    so the bar is high: a positive loss at least :data:`EARLY_RATIO` times
    the median of the (at least two) points before it, held at
    :data:`EARLY_HELD` times on the next point when the log has one. The
    first losses of a run are its highest (a model starts untrained, or
    from a checkpoint, and falls): batch-to-batch noise in the first steps
    moves them by tens of percent, a fine-tune's first losses by up to about
    2x on tiny batches, never by 3x held over two points. A language model
    that starts near ln(vocabulary) (10-12) and then triples has left even
    the untrained level behind: the update blew up. Losses that can be zero
    or negative (preference and RL objectives) have no such level and are
    left to the z-scan."""
    loss = s.loss
    ok = np.flatnonzero(np.isfinite(loss))
    c = loss[ok]
    if len(c) < 3 or not (c > 0).all():
        return []
    out = []
    i = 2
    while i < min(p.min_points, len(c)):
        base = float(np.median(c[:i]))
        held = i + 1 >= len(c) or c[i + 1] >= EARLY_HELD * base
        if c[i] >= EARLY_RATIO * base and held:
            j = i
            while j + 1 < len(c) and c[j + 1] >= EARLY_HELD * base:
                j += 1
            a, b = int(ok[i]), int(ok[j])
            peak = int(ok[i + int(np.argmax(c[i : j + 1]))])
            recovered, rstep, slow = _recovery(s, p, a, b, base, True)
            out.append(
                Incident(s, a, b, peak, base, float("nan"), recovered, rstep, "log", slow, True)
            )
            break  # later points are the z-scan's (the jump is in their history)
        i += 1
    return out


def _in_tail(excess: np.ndarray, rise: float, a: int, b: int, fraction: float) -> bool:
    """True when the run's other points reach half of ``rise`` often enough
    that this excursion is part of the run's own spread."""
    if not np.isfinite(rise) or rise <= 0:
        return False
    others = np.concatenate((excess[:a], excess[b + 1 :]))
    others = others[np.isfinite(others)]
    if not len(others):
        return False
    count = int((others >= rise / 2).sum())
    return count >= max(3, fraction * len(others))
