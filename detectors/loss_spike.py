"""TS101 loss spike: the loss jumps far above its recent level and comes back.

What it flags:
    A logged loss far above its recent baseline: the median of the previous
    10 log-losses, with the noise taken from the MAD of the point-to-point
    differences over the previous ~100 points (the current point and earlier
    spikes excluded). It must reach z >= 6, or z >= 4 on two consecutive
    points, be at least 1.3x the baseline, and be large against the run's own
    scale (the excess is at least 10% of the run's early loss level). One
    finding per incident: consecutive spiking points are one incident. A
    spike back within 5% of the baseline within 50 steps is a warning (one
    back later too, as a slow recovery); one that never comes back is
    reported by TS102 (divergence) instead.

Why it matters:
    A spike is a bad batch meeting a fragile optimizer state, or a learning
    rate too high for the current phase. Single spikes are often harmless;
    repeated spikes come before divergence.

Example:
    ``loss rose to 3.1x its running median (6.2 vs 2.0, z=14) at step 1840;
    back within 5% after 4 steps. Samples in that batch: 4411, 9023.``
    A loss of 1e-3 jumping to 0.05 late in a memorised run is large against
    the recent median but tiny against the run's scale: not flagged.

Suggestion:
    Inspect (or skip) the batch named in the finding; clip gradients at 1.0;
    lower the peak learning rate; switch fp16 to bf16.

Options:
    The fields of ``Options`` (listed by ``tunescope explain``), set per detector
    in the configuration file. When the log averages the loss over
    ``logging_steps`` (HF-style formats), the ratio and excess needed are divided
    by that number and the message says the spike was diluted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunescope.detectors.base import Context
from tunescope.detectors.series import (
    Series,
    early_level,
    epoch_boundaries,
    fmt,
    may_rise_by,
    merge_ranks,
    near_boundary,
    rank_series,
    samples_note,
    spikes,
)
from tunescope.detectors.stats import incidents
from tunescope.findings import Finding, Severity

ID = "TS101"
NAME = "loss-spike"


@dataclass
class Options:
    window: int = 100
    """Previous points (current excluded) whose point-to-point noise scales the z-score."""
    level_points: int = 10
    """Previous points whose median is the baseline level (short: a falling
    curve makes a long median stale)."""
    min_points: int = 5
    """No verdict before this many earlier finite points."""
    z: float = 6.0
    """Robust z-score (log space) that flags a single point."""
    z_consecutive: float = 4.0
    """Robust z-score that flags two consecutive points."""
    min_ratio: float = 1.3
    """The loss must be at least this multiple of the baseline (batch-to-batch
    noise below it is never a spike); diluted by ``logging_steps`` when the log
    averages the loss."""
    min_excess: float = 0.1
    """The excess over the baseline must be at least this fraction of the
    run's early loss level (median of its first 10 points)."""
    sigma_floor: float = 0.02
    """Floor of the baseline's spread in log units (2%): flat curves are not
    noise-free."""
    recover_steps: int = 50
    """A spike back within this many steps (at least 3 logging intervals) is
    transient; one back later is reported as a slow recovery; one never back
    is a divergence (TS102)."""
    recover_within: float = 0.05
    """Back when within this fraction of the pre-spike baseline."""
    gap: int = 3
    """Spiking points separated by at most this many points are one incident."""
    linked_grad_steps: int = 20
    """A grad-norm spike up to this many steps earlier belongs to the incident."""

    def __post_init__(self) -> None:
        if self.window < 5 or self.min_points < 2:
            raise ValueError("window must be >= 5 and min_points >= 2")
        if self.z <= 0 or self.z_consecutive <= 0:
            raise ValueError("z thresholds must be positive")


@dataclass
class Incident:
    """One spike incident of one series (indices into the series)."""

    series: Series
    a: int
    b: int
    peak: int
    base: float  # baseline loss (linear units)
    z: float
    recovered: bool | None  # False: never back (TS102); None: the log ends too soon
    recover_step: int | None
    space: str
    slow: bool = False  # back, but only after the recovery horizon


def scan(s: Series, opts: Options) -> list[Incident]:
    """Spike incidents of one series (both transient and unrecovered)."""
    loss = s.loss
    fin = np.isfinite(loss)
    if fin.sum() <= opts.min_points:
        return []
    positive = bool((loss[fin] > 0).all())
    early = early_level(loss)
    dilution = s.logging_steps if s.logging_steps > 1 else 1
    if positive:
        y = np.where(fin, np.log(np.where(fin & (loss > 0), loss, 1.0)), np.nan)
        need = opts.min_excess * abs(early) / dilution
        need_log = np.log1p((opts.min_ratio - 1) / dilution)

        def big(v: np.ndarray, base: np.ndarray) -> np.ndarray:
            return (np.exp(v) - np.exp(base) >= need) & (v - base >= need_log)

        floor, z1, z2 = opts.sigma_floor, opts.z, opts.z_consecutive
    else:
        # losses that can be 0 or negative (preference / RL objectives): linear space,
        # stricter, with the run's spread as its scale
        y = np.where(fin, loss, np.nan)
        q25, q75 = np.percentile(loss[fin], [25, 75])
        spread = max(q75 - q25, 1e-12)
        need = 3 * spread / dilution

        def big(v: np.ndarray, base: np.ndarray) -> np.ndarray:
            return v - base >= need

        floor, z1, z2 = spread * 0.05, opts.z * 1.5, opts.z_consecutive * 1.5
    # a point's baseline is drawn from the 3 windows before it: when nothing
    # rises that far above their minimum, no point can be big enough
    if not may_rise_by(y, 3 * opts.window, need_log if positive else need):
        return []
    sc = spikes(
        y,
        window=opts.window,
        level_points=opts.level_points,
        min_points=opts.min_points,
        z_single=z1,
        z_double=z2,
        sigma_floor=floor,
        big_enough=big,
    )
    if not sc.hit.any():
        return []
    out = []
    for a, b in incidents(sc.hit, gap=opts.gap):
        seg = np.arange(a, b + 1)
        seg = seg[np.isfinite(sc.z[seg])]
        peak = int(seg[np.argmax(y[seg])]) if len(seg) else a
        base_y = sc.base[a]
        base = float(np.exp(base_y)) if positive else float(base_y)
        limit = (
            base * (1 + opts.recover_within) if positive else base + opts.recover_within * abs(base)
        )
        end_step = int(s.step[b])
        horizon = max(opts.recover_steps, 3 * s.logging_steps)
        after = np.flatnonzero(s.step > end_step)
        back = after[np.isfinite(loss[after]) & (loss[after] <= limit)]
        long = end_step - int(s.step[a]) > horizon
        slow = False
        if len(back):
            recovered, rstep = True, int(s.step[back[0]])
            slow = long or rstep - end_step > horizon
        elif long or (len(after) and int(s.step[after[-1]]) - end_step >= horizon):
            recovered, rstep = False, None  # never came back: divergence (TS102)
        else:
            recovered, rstep = None, None  # the log ends too soon to tell
        out.append(
            Incident(
                s,
                a,
                b,
                peak,
                base,
                float(sc.z[peak]),
                recovered,
                rstep,
                "log" if positive else "linear",
                slow,
            )
        )
    return out


def scan_all(ctx: Context, opts: Options | None = None) -> list[Incident]:
    """Incidents of every rank series; cached for the default options (TS102
    and TS105 use them)."""
    key = "TS101:incidents"
    if opts is None or opts == Options():
        if key not in ctx._cache:
            ctx._cache[key] = [i for s in rank_series(ctx) for i in scan(s, Options())]
        return ctx._cache[key]
    return [i for s in rank_series(ctx) for i in scan(s, opts)]


def run(ctx: Context, opts: Options) -> list[Finding]:
    from tunescope.detectors import grad_spike

    out = []
    for inc in scan_all(ctx, opts):
        s = inc.series
        boundary = near_boundary(s, inc.a, epoch_boundaries(s))
        if inc.recovered is False and boundary is None:
            continue  # unrecovered: divergence (TS102)
        peak_loss = float(s.loss[inc.peak])
        ratio = peak_loss / inc.base if inc.base > 0 else float("inf")
        step0, step1, pstep = int(s.step[inc.a]), int(s.step[inc.b]), int(s.step[inc.peak])
        ids = s.samples_at(inc.peak)
        grad = grad_spike.grad_before(ctx, s, pstep, opts.linked_grad_steps)
        ev = {
            "peak_step": pstep,
            "peak_loss": peak_loss,
            "baseline_loss": inc.base,
            "ratio": ratio,
            "z": inc.z,
            "early_loss": early_level(s.loss),
            "points": inc.b - inc.a + 1,
            "recovered": inc.recovered,
            "recovered_at": inc.recover_step,
            "slow_recovery": inc.slow,
            "logging_steps": s.logging_steps,
            "space": inc.space,
        }
        if grad:
            ev["grad_norm_spike"] = grad
        if ids:
            ev["sample_ids"] = ids
        if inc.space == "log":
            head = (
                f"loss rose to {fmt(ratio)}x its running median ({fmt(peak_loss)} vs "
                f"{fmt(inc.base)}, z={inc.z:.1f}) at step {pstep}"
            )
        else:
            head = (
                f"loss rose to {fmt(peak_loss)} from a running median of {fmt(inc.base)} "
                f"(z={inc.z:.1f}) at step {pstep}"
            )
        if inc.recovered and inc.slow:
            tail = (
                f"; it stayed high for {inc.recover_step - step0} steps and was back within 5% "
                f"only by step {inc.recover_step}."
            )
        elif inc.recovered:
            tail = f"; back within 5% by step {inc.recover_step}."
        else:
            tail = "; the log ends before a recovery could be seen."
        note = ""
        if grad:
            note += (
                f" The grad norm spiked first ({fmt(grad['value'])} at step {grad['step']}, "
                f"{fmt(grad['ratio'])}x its median)."
            )
        if s.logging_steps > 1:
            note += (
                f" The loss is averaged over {s.logging_steps} steps, so one step's loss "
                f"was up to {s.logging_steps}x further above the baseline."
            )
        sev = Severity.WARNING
        if boundary is not None:
            # a new epoch reorders the data: a jump there is expected, not an alarm
            sev = Severity.INFO
            ev["epoch_boundary"] = boundary
            if inc.recovered is False:
                tail = f"; the loss level changed at the epoch boundary (step {boundary})."
            else:
                note += f" It came at the start of a new epoch (step {boundary})."
        msg = head + tail + note + samples_note(ids)
        sug = (
            "Inspect or skip the batch at that step; clip gradients at max_norm 1.0; if spikes "
            "repeat, lower the peak learning rate or use bf16 instead of fp16."
        )
        out.append(Finding(s.run, ID, NAME, sev, step0, step1, msg, sug, rank=s.rank, evidence=ev))
    return merge_ranks(out)
