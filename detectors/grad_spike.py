"""TS105 grad-norm explosion: the gradient norm jumps by an order of magnitude.

What it flags:
    A grad norm far above the robust baseline of the previous ~100 points
    (log space, z >= 6, or z >= 4 on two consecutive points) that is also at
    least 10x the run's median grad norm. A grad-norm spike followed within
    20 steps by a loss spike is reported once, by TS101, as one incident.
    Transient (back under 2x the baseline within 50 steps): warning; a norm
    that stays high: error. Grad norms that are all 0 (not measured) are
    ignored; NaN/Inf belong to TS001.

Why it matters:
    Exploding gradients come before loss spikes and divergence: the update
    that follows a 30x gradient moves the weights far from where the
    optimizer's statistics were collected.

Example:
    ``grad_norm rose to 41.2 (38x its running median, 12x the run's median)
    at step 620; back under 2x the baseline by step 624.``

Suggestion:
    Clip gradients (max_norm 1.0) or use adaptive clipping; lower the learning
    rate; lower Adam's beta2 (0.999 -> 0.95); inspect the batch.

Options:
    Listed below with their defaults; set them per detector in the
    configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tunescope.detectors.advice import clipping
from tunescope.detectors.base import Context
from tunescope.detectors.series import Series, merge_ranks, rank_series, samples_note, spikes
from tunescope.detectors.stats import incidents, warmup_mask
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt

ID = "TS105"
NAME = "grad-norm-explosion"


@dataclass
class Options:
    window: int = 100
    """Previous points (current excluded) whose point-to-point noise scales the z-score."""
    level_points: int = 20
    """Previous points whose median is the baseline level."""
    min_points: int = 5
    """No verdict before this many earlier grad norms."""
    z: float = 6.0
    """Robust z-score (log space) that flags a single point."""
    z_consecutive: float = 4.0
    """Robust z-score that flags two consecutive points."""
    min_ratio: float = 10.0
    """The grad norm must be at least this many times the run's median."""
    sigma_floor: float = 0.05
    """Floor of the baseline's spread in log units."""
    recover_steps: int = 50
    """A spike must return under ``recover_factor`` x the baseline within this many steps."""
    recover_factor: float = 2.0
    """Back when below this multiple of the baseline."""
    gap: int = 3
    """Spiking points separated by at most this many points are one incident."""
    scale_ratio: float = 50.0
    """A grad norm at least this many times the run's median is an explosion
    without a recent baseline (early points, a noisy stretch before it)."""
    start_points: int = 3
    """Spikes within the run's first logged points (or in lr warmup) are info."""
    tail_fraction: float = 0.02
    """A grad norm past ``scale_ratio`` is not an explosion when at least this
    fraction of the run's points after the start (and at least 3) reach half
    of its excess over the median (log scale): such excursions are the run's
    own tail."""

    def __post_init__(self) -> None:
        if self.window < 5 or self.min_points < 2 or self.min_ratio <= 0:
            raise ValueError("window must be >= 5, min_points >= 2, min_ratio > 0")
        if self.scale_ratio < self.min_ratio or self.start_points < 0:
            raise ValueError("scale_ratio must be >= min_ratio and start_points >= 0")


@dataclass
class GradIncident:
    series: Series
    a: int
    b: int
    peak: int
    base: float
    median: float
    z: float
    recovered: bool | None
    recover_step: int | None
    early: bool = False
    """At the start of training or in lr warmup (info)."""


def _scan(s: Series, opts: Options, screen: bool = True) -> list[GradIncident]:
    gn = s.grad_norm
    logged = s.gn_logged if s.gn_logged is not None else ~np.isnan(gn)
    ok = logged & np.isfinite(gn) & (gn > 0)
    if ok.sum() <= opts.min_points:
        return []
    med = float(np.median(gn[ok]))
    y = np.where(ok, np.log(np.where(ok, gn, 1.0)), np.nan)
    need = np.log(opts.min_ratio * med)

    def big(v: np.ndarray, base: np.ndarray) -> np.ndarray:
        return v >= need

    if not (y[ok] >= need).any():
        return []  # nothing reaches min_ratio x the run's median: no spike can be big enough
    sc = spikes(
        y,
        window=opts.window,
        level_points=opts.level_points,
        min_points=opts.min_points,
        z_single=opts.z,
        z_double=opts.z_consecutive,
        sigma_floor=opts.sigma_floor,
        big_enough=big,
        screen=screen,
    )
    # the run's own scale: far above the run's median needs no recent baseline,
    # unless such excursions are common in the run (late-epoch hard batches of a
    # memorised run): then at least ``tail_fraction`` of the points past the start
    # (and 3) reach half of its excess over the median
    scale = ok & (y >= np.log(opts.scale_ratio * med))
    hit = sc.hit | scale
    if not hit.any():
        return []
    early = early_mask(s, opts)
    if scale.any():
        excess = y - np.log(med)
        pop = np.sort(excess[ok & ~early])
        for i in np.flatnonzero(scale):
            count = len(pop) - int(np.searchsorted(pop, excess[i] / 2, side="left"))
            count -= int(not early[i])  # the point itself
            if count >= max(3, opts.tail_fraction * len(pop)):
                scale[i] = False
        hit = sc.hit | scale
    base_all = np.where(np.isfinite(sc.base), sc.base, np.log(med))
    out = []
    for a, b in incidents(hit, gap=opts.gap):
        seg = np.arange(a, b + 1)
        seg = seg[ok[seg]]
        peak = int(seg[np.argmax(y[seg])]) if len(seg) else a
        base = float(np.exp(base_all[a]))
        end = int(s.step[b])
        after = np.flatnonzero(ok & (s.step > end) & (s.step <= end + opts.recover_steps))
        back = after[gn[after] <= opts.recover_factor * base]
        later = np.flatnonzero(ok & (s.step > end + opts.recover_steps))
        if len(back):
            rec, rstep = True, int(s.step[back[0]])
        elif len(after) or len(later):
            rec, rstep = False, None
        else:
            rec, rstep = None, None
        z = float(sc.z[peak]) if np.isfinite(sc.z[peak]) else float("nan")
        out.append(GradIncident(s, a, b, peak, base, med, z, rec, rstep, bool(early[peak])))
    return out


def scan_all(ctx: Context, opts: Options) -> list[GradIncident]:
    """Incidents of every rank series, scanned once per options."""
    key = ("grad-incidents", repr(opts))
    if key not in ctx.memo:
        ctx.memo[key] = [i for s in rank_series(ctx) for i in _scan(s, opts)]
    return ctx.memo[key]


def early_mask(s: Series, opts: Options) -> np.ndarray:
    """True at the very start of training and while the lr is still warming up."""
    n = len(s.step)
    mask = np.arange(n) < opts.start_points
    lr = s.lr
    if np.isfinite(lr).sum() >= 2:
        mask |= warmup_mask(np.where(np.isfinite(lr), lr, np.nan))
    return mask


def run(ctx: Context, opts: Options) -> list[Finding]:
    out = []
    for g in scan_all(ctx, opts):
        s = g.series
        gstep = int(s.step[g.peak])
        value = float(s.grad_norm[g.peak])
        ids = s.samples_at(g.peak)
        ev: dict[str, Any] = {
            "peak_step": gstep,
            "grad_norm": value,
            "baseline": g.base,
            "run_median": g.median,
            "ratio_to_baseline": value / g.base,
            "ratio_to_median": value / g.median,
            "z": g.z,
            "recovered": g.recovered,
            "recovered_at": g.recover_step,
        }
        if ids:
            ev["sample_ids"] = ids
        zt = f", z={g.z:.1f}" if np.isfinite(g.z) else ""
        head = (
            f"grad_norm rose to {fmt(value)} ({fmt(value / g.base)}x its running median, "
            f"{fmt(value / g.median)}x the run's median{zt}) at step {gstep}"
        )
        if g.recovered:
            tail, sev = (
                f"; back under {opts.recover_factor:g}x the baseline by step {g.recover_step}.",
                Severity.WARNING,
            )
        elif g.recovered is None:
            tail, sev = "; the log ends right after.", Severity.WARNING
        else:
            tail, sev = (
                f"; still above {opts.recover_factor:g}x the baseline {opts.recover_steps} steps later.",
                Severity.ERROR,
            )
        if g.early:
            sev = Severity.INFO
            tail += " It came at the start of training (or during lr warmup), where large updates are common."
        clip = clipping(s.start)
        sug = (
            f"{clip[0].upper()}{clip[1:]} (or use adaptive clipping); lower the learning rate; "
            "lower Adam's beta2 to 0.95; inspect the batch at that step."
        )
        out.append(
            Finding(
                s.run,
                ID,
                NAME,
                sev,
                int(s.step[g.a]),
                int(s.step[g.b]),
                head + tail + samples_note(ids),
                sug,
                rank=s.rank,
                evidence=ev,
            )
        )
    return merge_ranks(out)
