"""TS105 grad-norm explosion: the gradient norm jumps by an order of magnitude.

What it flags:
    A grad norm far above the robust baseline of the previous ~100 points
    (log space, z >= 6, or z >= 4 on two consecutive points) that is also at
    least 10x the run's median grad norm. A grad-norm spike followed within
    20 steps by a loss spike is reported once, by TS101, as one incident.
    Transient (back under 2x the baseline within 50 steps): warning; a norm
    that stays high: error. Grad norms that are all 0 (not measured) are
    ignored; NaN/Inf belong to TS001.

    At the start of training and during lr warmup a spike is info (large
    updates are common there), unless it is an explosion: at least 20x its
    running median with the loss lifted above its own noise band (3 robust
    sigmas of log-loss, judged on the points before it; at the
    very start: fewer than 5 points before it, there is no band and a spike
    stays info) within the next 3 logged points. Warmup explains noise, not
    a 20x gradient that moves the loss; long Megatron-style warmups (thousands
    of iterations) would otherwise hide every early explosion.

    Blips: an isolated spike by the same z-test at 5x to 10x the run's own
    median is info (a hint; often one odd batch). No history: a grad norm at
    least 1000x the median of the points logged after it (the scale the
    series settles at) is a warning wherever it is, even at the first
    iteration of a short run: no initialisation or warmup explains three
    orders of magnitude.

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
from tunescope.detectors.base import Frames
from tunescope.detectors.scans.series import (
    Series,
    SpikeScan,
    merge_ranks,
    rank_series,
    samples_note,
    spikes,
)
from tunescope.detectors.scans.stats import incidents, warmup_mask
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

    blip_ratio: float = 5.0
    """A spike (same z-test) at least this many times the run's median, but
    under ``min_ratio``, is an info blip (none when at or above ``min_ratio``)."""
    warmup_ratio: float = 20.0
    """In lr warmup (or at the start), a spike this many times its running
    median that lifts the loss above its noise band is a warning, not info."""
    loss_band_sigmas: float = 3.0
    """The loss's noise band: this many robust sigmas of log-loss above its median."""
    loss_lift_points: int = 3
    """Logged points from the spike on in which the loss must leave its band."""
    enormous_ratio: float = 1000.0
    """A grad norm this many times the median of the points after it is a
    warning with no history needed (the first iteration of a short run)."""

    def __post_init__(self) -> None:
        if self.blip_ratio <= 1 or self.warmup_ratio <= 1 or self.enormous_ratio <= 1:
            raise ValueError("blip_ratio, warmup_ratio and enormous_ratio must be > 1")
        if self.loss_band_sigmas <= 0 or self.loss_lift_points < 1:
            raise ValueError("loss_band_sigmas must be > 0 and loss_lift_points >= 1")
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
    lift: float | None = None
    """How far the loss rose above its noise band's centre right after (x), when it left the band."""
    enormous: bool = False
    """``enormous_ratio`` x the scale the series reaches later (no history needed)."""


def _enormous(gn: np.ndarray, ok: np.ndarray, opts: Options) -> np.ndarray:
    """True where a grad norm with almost no history (among the first
    ``min_points`` logged ones) is ``enormous_ratio`` x the median of the
    next ``window`` logged points (at least 2): the scale the series reaches
    right after, so no earlier history is needed. Judged against the points
    just after, not the end of the run, whose grad norms may have fallen by
    orders of magnitude as a run memorises its data."""
    out = np.zeros(len(gn), dtype=bool)
    idx = np.flatnonzero(ok)
    for k in range(min(opts.min_points, len(idx) - 2)):
        after = gn[idx[k + 1 : k + 1 + opts.window]]
        if gn[idx[k]] >= opts.enormous_ratio * float(np.median(after)):
            out[idx[k]] = True
    return out


def _scan(s: Series, opts: Options, screen: bool = True) -> list[GradIncident]:
    gn = s.grad_norm
    logged = s.gn_logged if s.gn_logged is not None else ~np.isnan(gn)
    ok = logged & np.isfinite(gn) & (gn > 0)
    enormous = _enormous(gn, ok, opts)
    if ok.sum() <= opts.min_points and not enormous.any():
        return []
    med = float(np.median(gn[ok]))
    y = np.where(ok, np.log(np.where(ok, gn, 1.0)), np.nan)
    if not (y[ok] >= np.log(opts.blip_ratio * med)).any() and not enormous.any():
        return []  # nothing reaches blip_ratio x the run's median: no spike can be big enough
    out = _explosions(s, opts, ok, y, med, enormous, screen)
    return out + _blips(s, opts, ok, y, med, out, screen)


def _blips(
    s: Series,
    opts: Options,
    ok: np.ndarray,
    y: np.ndarray,
    med: float,
    explosions: list[GradIncident],
    screen: bool,
) -> list[GradIncident]:
    """Isolated spikes of ``blip_ratio`` to ``min_ratio`` x the run's median
    (info), by their own scan: a lower bar changes which points count as
    spiking in the baselines, so the explosions' scan stays as it was."""
    low, high = np.log(opts.blip_ratio * med), np.log(opts.min_ratio * med)
    if opts.blip_ratio >= opts.min_ratio or not ((y[ok] >= low) & (y[ok] < high)).any():
        return []
    sc = _log_spikes(y, opts, lambda v, base: v >= low, screen)
    taken = np.zeros(len(y), dtype=bool)
    for g in explosions:
        taken[max(0, g.a - opts.gap) : g.b + opts.gap + 1] = True
    early = early_mask(s, opts)
    out = []
    for a, b in incidents(sc.hit, gap=opts.gap):
        seg = np.arange(a, b + 1)
        seg = seg[ok[seg]]
        if not len(seg) or taken[a : b + 1].any() or (y[seg] >= high).any():
            continue
        peak = int(seg[np.argmax(y[seg])])
        base = float(np.exp(sc.base[a])) if np.isfinite(sc.base[a]) else med
        end = int(s.step[b])
        after = np.flatnonzero(ok & (s.step > end) & (s.step <= end + opts.recover_steps))
        back = after[s.grad_norm[after] <= opts.recover_factor * base]
        if not len(back):
            continue  # a level that stays up is no blip
        z = float(sc.z[peak]) if np.isfinite(sc.z[peak]) else float("nan")
        out.append(
            GradIncident(s, a, b, peak, base, med, z, True, int(s.step[back[0]]), bool(early[peak]))
        )
    return out


def _log_spikes(y: np.ndarray, opts: Options, big_enough: Any, screen: bool) -> SpikeScan:
    """The spike scan of the log grad norms ``y`` with TS105's options; a
    spike must also be ``big_enough`` (its value and baseline, in logs)."""
    return spikes(
        y,
        window=opts.window,
        level_points=opts.level_points,
        min_points=opts.min_points,
        z_single=opts.z,
        z_double=opts.z_consecutive,
        sigma_floor=opts.sigma_floor,
        big_enough=big_enough,
        screen=screen,
    )


def _explosions(
    s: Series,
    opts: Options,
    ok: np.ndarray,
    y: np.ndarray,
    med: float,
    enormous: np.ndarray,
    screen: bool,
) -> list[GradIncident]:
    """Spikes of at least ``min_ratio`` x the run's median (or ``scale_ratio``
    anywhere, or enormous with no history)."""
    gn = s.grad_norm
    need = np.log(opts.min_ratio * med)

    def big(v: np.ndarray, base: np.ndarray) -> np.ndarray:
        return v >= need

    if not (y[ok] >= need).any() and not enormous.any():
        return []
    sc = _log_spikes(y, opts, big, screen)
    # the run's own scale: far above the run's median needs no recent baseline,
    # unless such excursions are common in the run (late-epoch hard batches of a
    # memorised run): then at least ``tail_fraction`` of the points past the start
    # (and 3) reach half of its excess over the median
    scale = ok & (y >= np.log(opts.scale_ratio * med))
    hit = sc.hit | scale | enormous
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
        hit = sc.hit | scale | enormous
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
        inc = GradIncident(s, a, b, peak, base, med, z, rec, rstep, bool(early[peak]))
        inc.enormous = bool(enormous[a : b + 1].any())
        if inc.early and gn[peak] >= opts.warmup_ratio * base:
            inc.lift = loss_lift(s.loss, peak, opts)
        out.append(inc)
    return out


def loss_lift(loss: np.ndarray, i: int, opts: Options, ref_points: int = 50) -> float | None:
    """How far the loss rose (x its band's centre) within ``loss_lift_points``
    logged points from ``i`` when it left its noise band there, else None.
    The band is judged on the points before ``i`` (at least 5); with fewer
    (the very start of a run) there is no band: a loss falls fast from its
    first value, so the points after would make any start look lifted."""
    ok = np.isfinite(loss) & (loss > 0)
    before = np.flatnonzero(ok[:i])[-ref_points:]
    window = np.arange(i, min(len(loss), i + opts.loss_lift_points))
    window = window[ok[window]]
    if not len(window):
        return None
    ref = before
    if len(ref) < 5:
        return None
    y = np.log(loss[ref])
    centre = float(np.median(y))
    sigma = max(1.4826 * float(np.median(np.abs(y - centre))), 0.02)
    top = float(np.max(np.log(loss[window])))
    if top <= centre + opts.loss_band_sigmas * sigma:
        return None
    return float(np.exp(top - centre))


def scan_all(ctx: Frames, opts: Options) -> list[GradIncident]:
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


def run(ctx: Frames, opts: Options) -> list[Finding]:
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
        ratio = value / g.median
        if g.enormous:
            sev = max(sev, Severity.WARNING, key=lambda v: v.level)
            tail += (
                f" That is over {opts.enormous_ratio:g}x the scale the series settles at later: "
                "no initialisation or warmup explains it."
            )
            ev["enormous"] = True
        elif g.early and g.lift is not None:
            sev = max(sev, Severity.WARNING, key=lambda v: v.level)
            tail += (
                " It came at the start of training (or during lr warmup), but at "
                f"{fmt(value / g.base)}x its running median with the loss lifted to "
                f"{fmt(g.lift)}x its noise band's centre: warmup does not explain an explosion "
                "this size."
            )
            ev["loss_lift"] = g.lift
        elif g.early:
            sev = Severity.INFO
            tail += " It came at the start of training (or during lr warmup), where large updates are common."
        elif ratio < opts.min_ratio and not g.enormous:
            sev = Severity.INFO
            tail += (
                f" A blip: {fmt(ratio)}x the run's median, under the {opts.min_ratio:g}x of an "
                "explosion; one odd batch, worth a look if it repeats."
            )
            ev["blip"] = True
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
