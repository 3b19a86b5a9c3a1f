"""TS102 divergence: the loss rises for good (not warmup noise).

What it flags:
    Hard rules, in any phase and at any run length (a 10-point run counts):
    a non-finite loss that persists; a loss risen to >= 3x its first logged
    level that never comes back below 2x; a loss frozen at one value above 5
    for >= 5 points (outputs collapsed towards uniform: ln of the vocabulary
    size); a loss spike that does not come back (from TS101's scan). After
    warmup (the logged learning rate has stopped rising, or past the
    configured ``warmup_steps``), a trend test on log-loss at several window
    sizes, down to the whole post-warmup run when it is short: Kendall's tau
    > 0 with p < 1e-3 (divided by the number of independent windows),
    confirmed by the window a few points later, and a rise over the window of
    at least 5% even at the 99% Theil-Sen lower bound of the slope (many
    windows are tested, so the size of the rise must be certain, not only its
    sign).

    Severity means lasting evidence: the hard rules are lasting by nature.
    A trend or an unrecovered spike is a divergence only when the loss at the
    end of the log is still above the run's normal band at the onset (the
    level there plus half the 5% rise and 2 standard errors of the two
    levels): an incident that came back is TS101's and TS105's to report.
    A loss that crosses zero (a policy-gradient loss: see TS101) has no level
    to diverge from: its unrecovered excursions count only when they rose
    above every earlier point by more than their whole range.
    A rising training loss (a trend, a rise to 3x, an unrecovered spike) is
    not a divergence when the run logs evaluations and every eval set fell
    over the same steps (at least 2% from the eval at the start of the rise
    to the last one, over 2 or more later evals, none of them 5% above it):
    the training objective changed (a curriculum, a data mix), not the model;
    an info finding says so.
    A trend found where the learning rate has decayed below 10% of its peak
    is data-order drift at the end of a schedule, not a divergence. One
    finding per run, at the earliest detection.

Why it matters:
    A diverged run only burns compute from there on; the earlier it is
    stopped and rewound, the less is lost. This is what ``tunescope analyze``
    fails CI on by default (severity error).

    Not divergence: noise and bumps while the learning rate is still rising,
    the drop and jump at epoch boundaries, a learning-rate re-warmup after a
    resume, flattening in the decay phase, spikes that recover (TS101), even
    slowly: a window whose rise is one jump to a level that then stays flat or
    falls back is not taken for a trend.

Example:
    ``loss rose 31% over steps 1800-2050 after warmup (tau=0.52, p=3e-12)
    and ends at 2.9, 1.4x its post-warmup minimum.``

Suggestion:
    Rewind to a checkpoint ~100 steps before the onset, lower the learning
    rate 2-10x, clip gradients at 1.0; diverging during warmup: lengthen the
    warmup or lower the peak learning rate.

Options:
    Listed below with their defaults; set them per detector in the
    configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tunescope.detectors.advice import clipping
from tunescope.detectors.base import Frames
from tunescope.detectors.resume_jump import resumes
from tunescope.detectors.scans.divergence_rules import Hit, hard_rules
from tunescope.detectors.scans.divergence_trend import (
    kendall_rises,
    looks_like_step,
    screen,
    screen_sums,
)
from tunescope.detectors.scans.evals import eval_fell, eval_losses
from tunescope.detectors.scans.series import (
    DIFF_TO_SIGMA,
    Series,
    epoch_boundaries,
    near_boundary,
    run_series,
)
from tunescope.detectors.scans.spike_scan import SPIKE_DEFAULTS, LossSpikeParams, loss_incidents
from tunescope.detectors.scans.stats import trend_np as trend
from tunescope.detectors.scans.stats import warmup_mask
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt

ID = "TS102"
NAME = "divergence"
GUARD_ACTIONS = ("stop", "rewind")  # what the training guard may do about it (train/guard.py)
SUPERSEDES = ("TS101", "TS105")  # spikes inside a divergence are the same incident


@dataclass
class Options:
    windows: list[int] = field(default_factory=lambda: [20, 50, 100, 200, 1000])
    """Trend-test window sizes in logged points (post-warmup only)."""
    min_points: int = 8
    """Shortest post-warmup stretch tested as a whole when it is below the smallest window."""
    p_value: float = 1e-3
    """Kendall-tau p-value needed for a rising trend."""
    min_rise: float = 0.05
    """The rise over the window at the 99% Theil-Sen lower bound must be at least
    this fraction (5%)."""
    rise_factor: float = 3.0
    """Hard rule: loss at this multiple of its first logged level..."""
    stay_factor: float = 2.0
    """...that never comes back below this multiple."""
    frozen_level: float = 5.0
    """Hard rule: a loss frozen above this value (near ln of a vocabulary size)..."""
    frozen_points: int = 5
    """...for at least this many consecutive points."""
    nonfinite_points: int = 2
    """Hard rule: a non-finite loss for this many consecutive points (or until the log ends)."""
    no_lr_warmup_fraction: float = 0.05
    """Without a logged learning rate or warmup_steps, this fraction of the run is warmup."""
    min_lr_fraction: float = 0.1
    """A trend detected where the lr is below this fraction of its peak is not a divergence."""
    band_sigmas: float = 2.0
    """The normal band at the onset: its level (median of 10 points) plus half
    of ``min_rise`` plus this many standard errors of the two medians; a trend
    or unrecovered spike whose end level (median of the last 5 points) is back
    inside it is not a divergence."""
    spike_z: float = SPIKE_DEFAULTS.z
    """Unrecovered spikes: the robust z that flags a single point (as TS101's ``z``)."""
    spike_min_ratio: float = SPIKE_DEFAULTS.min_ratio
    """Unrecovered spikes: the multiple of the baseline needed (as TS101's ``min-ratio``)."""
    spike_recover_steps: int = SPIKE_DEFAULTS.recover_steps
    """Unrecovered spikes: not back within 5% of the baseline after this many steps."""
    eval_fall: float = 0.02
    """A training loss that rises (a trend, a rise to 3x, an unrecovered spike)
    while every eval set over the same steps fell by at least this fraction is
    not a divergence: the objective changed (a curriculum, a data mix), not the
    model. Info, not an error. 0 turns the check off."""
    eval_max_rise: float = 0.05
    """...as long as no eval on the way rose more than this fraction above the
    eval at the onset."""

    def __post_init__(self) -> None:
        if not self.windows or min(self.windows) < 5:
            raise ValueError("windows must be a non-empty list of sizes >= 5")
        if not 0 < self.p_value < 1 or self.min_rise <= 0:
            raise ValueError("p_value must be in (0, 1) and min_rise > 0")
        if self.stay_factor > self.rise_factor:
            raise ValueError("stay_factor must be <= rise_factor")


SOFT_RULES = ("trend", "unrecovered-spike")  # need a level that stays high


def back_in_band(s: Series, hit: Hit, opts: Options) -> bool:
    """A soft rule's incident came back: the end level of the log (median of
    the last 5 points) is inside the normal band at the onset (the level of
    the 10 points there, plus half of ``min_rise`` and ``band_sigmas``
    standard errors of the two medians). False with too little to judge."""
    loss, step = s.loss, s.step
    fin = np.isfinite(loss) & (loss > 0)
    at = int(np.searchsorted(step, hit.onset, side="right"))  # points up to the onset
    det = int(np.searchsorted(step, hit.detected, side="left"))
    pre = np.flatnonzero(fin[:at])[-50:]
    post = np.flatnonzero(fin[det:]) + det
    if len(pre) < 5 or not len(post):
        return False
    y = np.log(loss[pre])
    level_pts, end_pts = y[-10:], np.log(loss[post[-5:]])
    d = np.diff(y)
    sigma = max(float(DIFF_TO_SIGMA * np.median(np.abs(d - np.median(d)))), 0.01)
    # the standard error of the two medians (1.25 sigma / sqrt(n) each), and half the rise
    se = 1.25 * sigma * np.sqrt(1 / len(level_pts) + 1 / len(end_pts))
    top = float(np.median(level_pts)) + opts.band_sigmas * se + np.log1p(opts.min_rise) / 2
    return float(np.median(end_pts)) <= top


def lasting(s: Series, hit: Hit, opts: Options) -> bool:
    """A soft rule's hit is a divergence: the lr had not decayed to ~0 (for a
    trend) and the end level stays above the normal band."""
    if hit.rule == "trend" and lr_decayed(s, hit, opts):
        return False
    return not back_in_band(s, hit, opts)


def lr_decayed(s: Series, hit: Hit, opts: Options) -> bool:
    """The lr at detection is below ``min_lr_fraction`` of its peak."""
    lr = s.lr
    ok = np.isfinite(lr)
    if ok.sum() < 2 or np.nanmax(lr) <= 0:
        return False
    i = min(int(np.searchsorted(s.step, hit.detected, side="left")), len(lr) - 1)
    prior = np.flatnonzero(ok[: i + 1])
    if not len(prior):
        return False
    return float(lr[prior[-1]] / np.nanmax(lr)) < opts.min_lr_fraction


def warmup_of(s: Series, opts: Options) -> np.ndarray:
    """True for points inside a warmup (lr still rising, or before the
    configured warmup_steps, or the first few percent without a logged lr)."""
    n = len(s.step)
    lr = s.lr
    mask = np.zeros(n, dtype=bool)
    if np.isfinite(lr).sum() >= 2:
        mask |= warmup_mask(np.where(np.isfinite(lr), lr, np.nan))
        # the first point before a rise starting at index 0 is marked by warmup_mask
    ws = s.start.get("warmup_steps")
    if ws is None and isinstance(s.start.get("config"), dict):
        ws = s.start["config"].get("warmup_steps")
    if isinstance(ws, int | float) and ws > 0:
        mask |= s.step <= ws
    if not np.isfinite(lr).any() and not (isinstance(ws, int | float) and ws > 0):
        total = s.start.get("total_steps") or (int(s.step[-1]) if n else 0)
        mask |= s.step <= max(opts.no_lr_warmup_fraction * total, 0)
    return mask


def _trend_hits(
    s: Series, opts: Options, warm: np.ndarray, resumed: list[int] | None = None
) -> list[Hit]:
    loss, step = s.loss, s.step
    fin = np.isfinite(loss)
    if not (fin.any() and (loss[fin] > 0).all()):
        return []
    ok = fin & ~warm
    # contiguous post-warmup stretches (a re-warmup splits the run)
    idx = np.flatnonzero(~warm)
    if len(idx) == 0:
        return []
    # a resume also splits it: the restored state is a new start (TS106 judges the jump)
    cut = np.zeros(len(idx), dtype=bool)
    cut[1:] = np.diff(idx) > 1
    # ...and so does a new epoch: the loss drops or jumps there by design
    for at in [*(resumed or []), *(int(b) - 1 for b in epoch_boundaries(s))]:
        cut[1:] |= (step[idx[:-1]] <= at) & (step[idx[1:]] > at)
    segs = np.split(idx, np.flatnonzero(cut))
    need = np.log1p(opts.min_rise)
    best: Hit | None = None
    for seg in segs:
        seg = seg[ok[seg]]
        m = len(seg)
        if m < opts.min_points:
            continue
        y = np.log(loss[seg])
        x = step[seg].astype(float)
        sizes = sorted({w for w in opts.windows if w <= m} or {m})
        sums = screen_sums(x, y)
        for w in sizes:
            cand = screen(x, y, w, need, sums)
            stride = max(w // 10, 1)
            last_tested = -(10**9)
            for e in cand:
                if e - last_tested < stride and e != cand[-1]:
                    continue
                last_tested = e
                lo = e - w + 1
                p_max = opts.p_value * min(1.0, w / m)  # about m/w independent windows
                if not kendall_rises(x[lo : e + 1], y[lo : e + 1], p_max):
                    continue  # the full test would fail on tau / p: skip its Theil-Sen part
                t = trend(x[lo : e + 1], y[lo : e + 1], alpha=0.99)
                span = x[e] - x[lo]
                if t.tau > 0 and t.p < p_max and t.lo * span >= need / 2 and t.slope * span >= need:
                    # confirmed by the window a few points later (noise does not persist)
                    e2 = min(e + max(stride, 2), m - 1)
                    if e2 > e:
                        t2 = trend(x[e2 - w + 1 : e2 + 1], y[e2 - w + 1 : e2 + 1], alpha=0.99)
                        span2 = x[e2] - x[e2 - w + 1]
                        if not (
                            t2.tau > 0
                            and t2.p < p_max
                            and t2.lo * span2 >= need / 2
                            and t2.slope * span2 >= need
                        ):
                            continue
                        e = e2
                        lo = e - w + 1
                        t, span = t2, span2
                    if looks_like_step(x[lo : e + 1], y[lo : e + 1]):
                        continue  # a jump to a new level, not a rise (TS101 / the hard rules)
                    det = int(step[seg[e]])
                    if best is not None and det >= best.detected:
                        break
                    onset_i = lo + int(np.argmin(y[lo : e + 1]))
                    post_min = float(np.exp(y[: e + 1].min()))
                    rise = float(np.expm1(t.slope * span))
                    best = Hit(
                        "trend",
                        int(step[seg[onset_i]]),
                        det,
                        f"loss rose {rise * 100:.0f}% over steps {int(x[lo])}-{det} after "
                        f"warmup (Kendall tau={t.tau:.2f}, p={t.p:.1g}; at least "
                        f"{np.expm1(t.lo * span) * 100:.0f}% at 99% confidence) to {fmt(float(loss[seg[e]]))}, "
                        f"{fmt(float(loss[seg[e]]) / post_min)}x its post-warmup minimum",
                        {
                            "window_points": int(w),
                            "tau": t.tau,
                            "p": t.p,
                            "slope_per_step": t.slope,
                            "rise": rise,
                            "window": [int(x[lo]), det],
                        },
                        since=int(x[lo]),
                    )
                    break
    return [best] if best else []


def spike_params(opts: Options) -> LossSpikeParams:
    """The shared spike scan with this detector's own spike settings."""
    return LossSpikeParams(
        z=opts.spike_z, min_ratio=opts.spike_min_ratio, recover_steps=opts.spike_recover_steps
    )


def _spike_hits(ctx: Frames, s: Series, resumed: list[int], opts: Options) -> list[Hit]:
    p = spike_params(opts)
    hits = []
    for inc in loss_incidents(ctx, p):
        if inc.series.run != s.run or inc.recovered is not False:
            continue
        if inc.signed and not inc.beyond_range:
            continue  # a loss around 0 swinging inside its own range: no level to diverge from
        r = inc.series
        a = int(r.step[inc.a])
        if any(at < a <= at + 5 * r.logging_steps for at in resumed):
            continue  # a jump right after a resume: TS106's finding
        if near_boundary(r, inc.a, epoch_boundaries(r), 2 * p.level_points) is not None:
            continue  # a level change at a new epoch (TS101 notes it)
        peak = float(r.loss[inc.peak])
        jump = float(r.loss[inc.a])
        rank = "" if r.rank is None else f" on rank {r.rank}"
        hits.append(
            Hit(
                "unrecovered-spike",
                a,
                a + p.recover_steps,
                f"loss jumped to {fmt(jump / inc.base)}x its running median ({fmt(jump)} vs "
                f"{fmt(inc.base)}) at step {a}{rank}"
                + (f", peaked at {fmt(peak)}" if peak > jump * 1.05 else "")
                + " and never came back",
                {"baseline_loss": inc.base, "peak_loss": peak, "rank": r.rank},
            )
        )
    return hits


EVAL_JUDGED = ("trend", "rise", "unrecovered-spike")  # a rising level the evals can contradict


def _eval_judged(
    ctx: Frames, s: Series, hits: list[Hit], opts: Options
) -> tuple[list[Hit], Finding | None]:
    """The hits left once those whose rise the eval loss contradicts (it fell
    over the same steps: :func:`eval_fell`) are taken out, and an info finding
    saying so when that leaves none."""
    sets = eval_losses(ctx).get(s.run, {}) if opts.eval_fall > 0 and hits else {}
    if not sets:
        return hits, None
    end = int(s.step[-1])
    kept, gone = [], []
    for h in hits:
        since = h.onset if h.since is None else min(h.since, h.onset)
        fell = None
        if h.rule in EVAL_JUDGED:
            fell = eval_fell(sets, since, end, opts.eval_fall, opts.eval_max_rise)
        if fell is None:
            kept.append(h)
        else:
            gone.append((h, since, fell))
    if kept or not gone:
        return kept, None
    h, since, fell = min(gone, key=lambda g: g[1])
    label = "the eval loss" if not fell.eval_set else f"the eval loss of {fell.eval_set!r}"
    msg = (
        f"The training loss rose from step {since} ({h.message}), but {label} fell "
        f"{(1 - fell.last / fell.first) * 100:.0f}% over the same steps ({fmt(fell.first)} at "
        f"step {fell.first_step} to {fmt(fell.last)} at step {fell.last_step}, {fell.evals} "
        "evaluations): the training objective changed (a curriculum, a data mix, a loss "
        "weight schedule), not the model's quality; not a divergence."
    )
    sug = (
        "Nothing to fix if the objective is meant to change: compare checkpoints and runs on "
        "the eval loss. If it is not, check the terms and weights of the training loss."
    )
    ev = {
        "kind": "eval-fell",
        "rule": h.rule,
        "onset": h.onset,
        "since": since,
        "eval_set": fell.eval_set,
        "eval_first": fell.first,
        "eval_last": fell.last,
        "evals": fell.evals,
    }
    note = Finding(s.run, ID, NAME, Severity.INFO, since, end, msg, sug, rank=None, evidence=ev)
    return kept, note


def run(ctx: Frames, opts: Options) -> list[Finding]:
    out = []
    for s in run_series(ctx):
        if len(s.step) < 2:
            continue
        warm = warmup_of(s, opts)
        resumed = [at for at, _ in resumes(ctx).get(s.run, [])]
        hits = (
            hard_rules(s, opts, warm)
            + _trend_hits(s, opts, warm, resumed)
            + _spike_hits(ctx, s, resumed, opts)
        )
        hits = [h for h in hits if h.rule not in SOFT_RULES or lasting(s, h, opts)]
        hits, eval_note = _eval_judged(ctx, s, hits, opts)
        if not hits:
            if eval_note is not None:
                out.append(eval_note)
            continue
        first = min(hits, key=lambda h: (h.detected, h.onset))
        # a jump that never came back marks where the incident began, even when
        # a trend test confirmed the divergence sooner than the spike rule could
        earliest = min(hits, key=lambda h: (h.onset, h.detected))
        onset, message = first.onset, first.message
        if earliest.onset < first.onset and earliest.rule == "unrecovered-spike":
            onset = earliest.onset
            message += f"; it began at step {onset}: {earliest.message}"
        rules = sorted({h.rule for h in hits})
        ev = dict(first.evidence)
        ev.update(
            {
                "rule": first.rule,
                "rules": rules,
                "detected_at": first.detected,
                "in_warmup": first.in_warmup,
                "last_loss": float(s.loss[-1]),
                "onset": onset,
            }
        )
        if first.in_warmup:
            sug = (
                "Diverged during warmup: lengthen the warmup or lower the peak learning rate; "
                f"{clipping(s.start)}."
            )
        else:
            sug = (
                "Rewind to a checkpoint about 100 steps before the onset and lower the learning "
                f"rate 2-10x; {clipping(s.start)}; check loss scaling if using fp16."
            )
        out.append(
            Finding(
                s.run,
                ID,
                NAME,
                Severity.ERROR,
                onset,
                int(s.step[-1]),
                message + ".",
                sug,
                rank=None,
                evidence=ev,
            )
        )
    return out
