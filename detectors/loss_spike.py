"""TS101 loss spike: the loss jumps far above its recent level.

What it flags:
    A logged loss far above its recent baseline: the median of the previous
    10 log-losses, with the noise taken from the MAD of the point-to-point
    differences over the previous ~100 points (the current point and earlier
    spikes excluded). It must reach z >= 6, or z >= 4 on two consecutive
    points, be at least 1.3x the baseline, and be large against the run's own
    scale (the excess is at least 10% of the run's early loss level). One
    finding per incident: consecutive spiking points are one incident.
    The first ``min_points`` points have no noise level yet (the grace
    period): a jump there is judged by its size alone, at least 3x the median
    of the points before it, held at 2x on the next point (the reasoning is
    in ``spike_scan.early_jumps``).
    A heavy-tailed loss (per-step preference or RL objectives, tiny batches)
    is judged against its own spread: an excursion that 2% of the run's other
    points reach half of is not a spike. Every spike is a warning, whether it
    came back within 5% of the baseline within 50 steps, came back later (a
    slow recovery) or never came back (TS102 then judges the divergence, and
    the engine keeps its one finding for the incident). A jump judged against
    a baseline from before an epoch boundary (within 20 points after one) is
    info: the data order changed, not the run. Blips are info when the run
    has many of them: a one- or two-point rise under 2x that is back within
    5% within three points, in a run with at least 3 such blips spread over a
    third of its steps or more, is that run's per-batch noise (hard batches in a
    per-step log), not a change of state; a cluster of them stays a warning.
    A lone small blip, under 1.5x and back within three points, in a series
    of at least ``window`` points with fewer than 3 blips in all, is info: a
    batch that hard now and then is a long per-step log's noise; a blip of
    1.5x or more alone stays a warning.
    A rise reached in steady steps (the first point of the incident jumped
    from the point before it by less than half its excess over the baseline)
    is a curve climbing faster than the trailing median follows, not a jump:
    info, and TS102 judges whether it is a divergence.
    A loss that crosses zero (at least 10% of its points on each side of 0,
    its median within its interquartile range of 0: a policy-gradient or
    critic loss, an objective with signed terms) has no level to take a ratio
    against: its excursions are judged in linear space against its
    step-to-step spread (which a jump to a new level does not widen), count as
    back once within that spread of the baseline, and are info unless
    the peak lies above every earlier point by more than their whole range.

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
    Listed below with their defaults; set them per detector in the
    configuration file. When the log averages the loss over
    ``logging_steps`` (HF-style formats), the ratio and excess needed are divided
    by that number and the message says the spike was diluted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tunescope.detectors.advice import clipping
from tunescope.detectors.base import Frames
from tunescope.detectors.scans.series import (
    early_level,
    epoch_boundaries,
    merge_ranks,
    near_boundary,
    samples_note,
)
from tunescope.detectors.scans.spike_scan import (
    SPIKE_DEFAULTS,
    Incident,
    LossSpikeParams,
    loss_incidents,
)
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt

ID = "TS101"
NAME = "loss-spike"


@dataclass
class Options:
    window: int = SPIKE_DEFAULTS.window
    """Previous points (current excluded) whose point-to-point noise scales the z-score."""
    level_points: int = SPIKE_DEFAULTS.level_points
    """Previous points whose median is the baseline level (short: a falling
    curve makes a long median stale)."""
    min_points: int = SPIKE_DEFAULTS.min_points
    """No verdict before this many earlier finite points."""
    z: float = SPIKE_DEFAULTS.z
    """Robust z-score (log space) that flags a single point."""
    z_consecutive: float = SPIKE_DEFAULTS.z_consecutive
    """Robust z-score that flags two consecutive points."""
    min_ratio: float = SPIKE_DEFAULTS.min_ratio
    """The loss must be at least this multiple of the baseline (batch-to-batch
    noise below it is never a spike); diluted by ``logging_steps`` when the log
    averages the loss."""
    min_excess: float = SPIKE_DEFAULTS.min_excess
    """The excess over the baseline must be at least this fraction of the
    run's early loss level (median of its first 5 points)."""
    sigma_floor: float = SPIKE_DEFAULTS.sigma_floor
    """Floor of the baseline's spread in log units (2%): flat curves are not
    noise-free."""
    recover_steps: int = SPIKE_DEFAULTS.recover_steps
    """A spike back within this many steps (at least 3 logging intervals) is
    transient; one back later is reported as a slow recovery; one never back
    is reported as such (TS102 judges whether it is a divergence)."""
    recover_within: float = SPIKE_DEFAULTS.recover_within
    """Back when within this fraction of the pre-spike baseline."""
    gap: int = SPIKE_DEFAULTS.gap
    """Spiking points separated by at most this many points are one incident."""
    tail_fraction: float = SPIKE_DEFAULTS.tail_fraction
    """Heavy tails: an excursion is not a spike when at least this fraction of
    the run's other points (and at least 3) rise half as far above their own
    trailing baseline (per-step preference or RL losses, tiny batches). 0
    turns the check off."""

    recurring_blips: int = 3
    """A run with at least this many blips (a rise under ``blip_ratio`` over at
    most two points, back within three points) spread over a third of its steps
    has them as its noise: they are info. 0 turns the check off."""
    blip_ratio: float = 2.0
    """What counts as a blip: the peak under this multiple of the baseline."""
    small_blip_ratio: float = 1.5
    """A small blip, its peak under this multiple of the baseline, is info in a
    series of at least ``window`` points unless it is one of ``recurring_blips``
    or more (a cluster stays a warning): one batch that hard now and then is a
    long per-step log's noise. Diluted by ``logging_steps`` as ``min_ratio`` is.
    0 turns the check off."""

    def __post_init__(self) -> None:
        if self.window < 5 or self.min_points < 2:
            raise ValueError("window must be >= 5 and min_points >= 2")
        if self.z <= 0 or self.z_consecutive <= 0:
            raise ValueError("z thresholds must be positive")


def params(opts: Options) -> LossSpikeParams:
    """The shared scan's parameters for these options."""
    return LossSpikeParams(
        window=opts.window,
        level_points=opts.level_points,
        min_points=opts.min_points,
        z=opts.z,
        z_consecutive=opts.z_consecutive,
        min_ratio=opts.min_ratio,
        min_excess=opts.min_excess,
        sigma_floor=opts.sigma_floor,
        recover_steps=opts.recover_steps,
        recover_within=opts.recover_within,
        gap=opts.gap,
        tail_fraction=opts.tail_fraction,
    )


def _is_blip(inc: Incident, opts: Options) -> bool:
    """A brief rise that was over at once: one or two points under
    ``blip_ratio`` x the baseline, back within ``recover_within`` at most three
    points after."""
    s = inc.series
    if inc.early or inc.space != "log" or not inc.recovered or inc.slow or inc.b - inc.a > 1:
        return False
    if inc.base <= 0 or float(s.loss[inc.peak]) >= opts.blip_ratio * inc.base:
        return False
    back = inc.recover_step
    return back is not None and back <= int(s.step[min(inc.b + 3, len(s.step) - 1)])


def _blips(incs: list[Incident], opts: Options) -> list[list[Incident]]:
    """The blips of each series (see :func:`_is_blip`), one list per series."""
    by_series: dict[int, list[Incident]] = {}
    for inc in incs:
        if _is_blip(inc, opts):
            by_series.setdefault(id(inc.series), []).append(inc)
    return list(by_series.values())


def _recurring(groups: list[list[Incident]], opts: Options) -> set[int]:
    """The ids of blips that recur through their series: at least
    ``recurring_blips`` of them spread over a third of its steps or more."""
    if opts.recurring_blips <= 0:
        return set()
    out: set[int] = set()
    for blips in groups:
        s = blips[0].series
        span = float(s.step[-1] - s.step[0]) if len(s.step) > 1 else 0.0
        steps = [int(s.step[i.peak]) for i in blips]
        if len(blips) >= opts.recurring_blips and span > 0 and max(steps) - min(steps) >= span / 3:
            out.update(id(i) for i in blips)
    return out


def _small_limit(logging_steps: int, opts: Options) -> float:
    """``small_blip_ratio``, diluted when the log averages the loss over
    ``logging_steps`` (one step's rise is then spread over the average)."""
    return 1 + (opts.small_blip_ratio - 1) / max(logging_steps, 1)


def _lone_small(groups: list[list[Incident]], opts: Options) -> set[int]:
    """The ids of small blips (peak under ``small_blip_ratio`` x the baseline)
    in a series of at least ``window`` finite points that has fewer than
    ``recurring_blips`` blips of any size (more of them: a cluster, or the
    run's noise, judged by :func:`_recurring`)."""
    if opts.small_blip_ratio <= 1:
        return set()
    out: set[int] = set()
    for blips in groups:
        s = blips[0].series
        few = opts.recurring_blips <= 0 or len(blips) < opts.recurring_blips
        if few and int(np.isfinite(s.loss).sum()) >= opts.window:
            limit = _small_limit(s.logging_steps, opts)
            out.update(id(i) for i in blips if float(s.loss[i.peak]) < limit * i.base)
    return out


def run(ctx: Frames, opts: Options) -> list[Finding]:
    out = []
    incs = loss_incidents(ctx, params(opts))
    groups = _blips(incs, opts)
    recurring = _recurring(groups, opts)
    lone_small = _lone_small(groups, opts)
    for inc in incs:
        s = inc.series
        # judged against a baseline from before a new epoch: the data changed, not the run
        boundary = near_boundary(s, inc.a, epoch_boundaries(s), 2 * opts.level_points)
        peak_loss = float(s.loss[inc.peak])
        ratio = peak_loss / inc.base if inc.base > 0 else float("inf")
        step0, step1, pstep = int(s.step[inc.a]), int(s.step[inc.b]), int(s.step[inc.peak])
        ids = s.samples_at(inc.peak)
        ev: dict[str, Any] = {
            "peak_step": pstep,
            "peak_loss": peak_loss,
            "baseline_loss": inc.base,
            "ratio": ratio,
            "z": inc.z,
            "early_loss": early_level(s.loss, 5),
            "points": inc.b - inc.a + 1,
            "recovered": inc.recovered,
            "recovered_at": inc.recover_step,
            "slow_recovery": inc.slow,
            "logging_steps": s.logging_steps,
            "space": inc.space,
        }
        if ids:
            ev["sample_ids"] = ids
        if inc.early:
            ev["early"] = True
            head = (
                f"loss rose to {fmt(ratio)}x the median of the first points ({fmt(peak_loss)} "
                f"vs {fmt(inc.base)}) at step {pstep}, before {opts.min_points} points gave a "
                "noise level (judged by its size alone)"
            )
        elif inc.space == "log":
            head = (
                f"loss rose to {fmt(ratio)}x its running median ({fmt(peak_loss)} vs "
                f"{fmt(inc.base)}, z={inc.z:.1f}) at step {pstep}"
            )
        else:
            head = (
                f"loss rose to {fmt(peak_loss)} from a running median of {fmt(inc.base)} "
                f"(z={inc.z:.1f}) at step {pstep}"
            )
        within = f"{opts.recover_within * 100:g}%"
        if inc.space == "linear":
            within = f"{within} or the loss's own spread"
        if inc.recovered and inc.slow and inc.recover_step is not None:
            tail = (
                f"; it stayed high for {inc.recover_step - step0} steps and was back within "
                f"{within} only by step {inc.recover_step}."
            )
        elif inc.recovered:
            tail = f"; back within {within} by step {inc.recover_step}."
        elif inc.recovered is False:
            tail = f"; it had not come back within {within} by the end of the log."
        else:
            tail = "; the log ends before a recovery could be seen."
        note = ""
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
        if id(inc) in recurring and sev is Severity.WARNING:
            sev = Severity.INFO
            ev["recurring_blips"] = True
            note += (
                " One of many such blips through this run, each over at once: its per-step "
                "loss has hard batches, not a change of state."
            )
        if inc.ramp and sev is Severity.WARNING:
            # a steady climb outran the trailing median: a rise for TS102 to judge
            sev = Severity.INFO
            ev["ramp"] = True
            note += (
                " The loss climbed there in steady steps rather than jumping: a rising "
                "trend (TS102 judges whether it is a divergence), not a spike."
            )
        if inc.signed and not inc.beyond_range and sev is Severity.WARNING:
            # a loss around 0 (a policy-gradient or critic loss): a swing, not a jump
            sev = Severity.INFO
            ev["signed"] = True
            note += (
                " The loss crosses zero (a signed objective such as a policy-gradient loss): "
                "it has no level to take a ratio against, and this excursion stays within "
                "twice the range of the points before it, so it is noted, not alarmed."
            )
        if id(inc) in lone_small and sev is Severity.WARNING:
            sev = Severity.INFO
            ev["small_blip"] = True
            note += (
                f" A rise under {fmt(_small_limit(s.logging_steps, opts))}x, over at once, in a "
                f"series of {int(np.isfinite(s.loss).sum())} points: one hard batch, not a "
                "change of state."
            )
        msg = head + tail + note + samples_note(ids)
        sug = (
            f"Inspect or skip the batch at that step; {clipping(s.start)}; if spikes repeat, "
            "lower the peak learning rate or use bf16 instead of fp16."
        )
        out.append(Finding(s.run, ID, NAME, sev, step0, step1, msg, sug, rank=s.rank, evidence=ev))
    return merge_ranks(out)
