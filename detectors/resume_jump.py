"""TS106 loss jump after resume: training state not restored.

What it flags:
    At a ``resume`` event, the median loss of the first points after the
    resume is at least 20% above the median of the last points before it,
    far outside the pre-resume noise (robust z >= 4) and large against the
    run's scale (at least 5% of its early loss level). Steps re-logged after
    the resume replace the old ones, so the comparison uses what the resumed
    run wrote. A learning rate that restarts lower or higher is named.

Why it matters:
    A resumed run should continue where it stopped. A jump means the
    optimizer state (Adam moments), the learning-rate scheduler, the loss
    scaler, the data position or the adapter weights were not restored:
    the run silently redoes (part of) its training, or worse.

Example:
    ``loss jumped 1.9x at the resume from step 500 (0.82 before, 1.56 after;
    lr 3e-05 before, 1e-06 after: the scheduler restarted).``

Suggestion:
    Resume with the optimizer, scheduler and scaler state
    (``resume_from_checkpoint`` with the whole checkpoint directory, not only
    the adapter weights); load the adapter with ``is_trainable=True``; restore
    the data sampler position.

Options:
    Listed below with their defaults; set them per detector in the
    configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunescope.detectors.base import Frames
from tunescope.detectors.scans.series import IQR_TO_SIGMA, early_level, event_payload, run_series
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt

ID = "TS106"
NAME = "resume-loss-jump"
SUPERSEDES = ("TS101",)  # the jump at a resume is one incident: the resume's


@dataclass
class Options:
    pre_points: int = 10
    """Logged points before the resume that form the reference."""
    post_points: int = 5
    """Logged points after the resume that are compared."""
    min_jump: float = 0.2
    """The post-resume median must be at least this fraction above the pre-resume one."""
    z: float = 4.0
    """...and this many robust sigmas of the pre-resume log-loss above it."""
    sigma_floor: float = 0.02
    """Floor of the pre-resume spread (log units)."""
    min_excess: float = 0.05
    """...and the jump at least this fraction of the run's early loss level."""

    def __post_init__(self) -> None:
        if self.pre_points < 3 or self.post_points < 1 or self.min_jump <= 0:
            raise ValueError("pre_points >= 3, post_points >= 1, min_jump > 0")


def resumes(ctx: Frames) -> dict[str, list[tuple[int, str]]]:
    """Per run: (step resumed from, checkpoint) of each resume event."""
    out: dict[str, list[tuple[int, str]]] = {}
    for row in ctx.events(["resume"]).iter_rows(named=True):
        payload = event_payload(row["payload"]) or {}
        step = payload.get("from_step", row["step"])
        if isinstance(step, int | float):
            item = (int(step), str(payload.get("checkpoint", "")))
            if item not in out.setdefault(row["run_id"], []):
                out[row["run_id"]].append(item)
    return out


def run(ctx: Frames, opts: Options) -> list[Finding]:
    found = resumes(ctx)
    if not found:
        return []
    out = []
    for s in run_series(ctx):
        for at, ckpt in sorted(found.get(s.run, [])):
            fin = np.isfinite(s.loss) & (s.loss > 0)
            pre = np.flatnonzero(fin & (s.step <= at))[-opts.pre_points :]
            post = np.flatnonzero(fin & (s.step > at))[: opts.post_points]
            if len(pre) < 3 or len(post) < 1:
                continue
            ypre, ypost = np.log(s.loss[pre]), np.log(s.loss[post])
            mpre, mpost = float(np.median(ypre)), float(np.median(ypost))
            q25, q75 = np.percentile(ypre, [25, 75])
            sigma = max((q75 - q25) / IQR_TO_SIGMA, opts.sigma_floor)
            z = (mpost - mpre) / sigma
            before, after = float(np.exp(mpre)), float(np.exp(mpost))
            excess_ok = after - before >= opts.min_excess * early_level(s.loss)
            if after < before * (1 + opts.min_jump) or z < opts.z or not excess_ok:
                continue
            lr_before = s.lr[pre][np.isfinite(s.lr[pre])]
            lr_after = s.lr[post][np.isfinite(s.lr[post])]
            lr_note = ""
            ev = {
                "resume_step": at,
                "checkpoint": ckpt,
                "loss_before": before,
                "loss_after": after,
                "ratio": after / before,
                "z": z,
            }
            if len(lr_before) and len(lr_after):
                lb, la = float(lr_before[-1]), float(lr_after[0])
                ev.update({"lr_before": lb, "lr_after": la})
                if lb > 0 and not 0.5 <= la / lb <= 2:
                    lr_note = f"; lr {fmt(lb)} before, {fmt(la)} after: the scheduler restarted"
            out.append(
                Finding(
                    s.run,
                    ID,
                    NAME,
                    Severity.WARNING,
                    at,
                    int(s.step[post[-1]]),
                    f"loss jumped {fmt(after / before)}x at the resume from step {at} "
                    f"({fmt(before)} before, {fmt(after)} after, z={z:.1f}{lr_note}).",
                    "Resume with the optimizer, scheduler and loss-scaler state (the whole "
                    "checkpoint directory, not only the adapter weights); load the adapter with "
                    "is_trainable=True; restore the data sampler position.",
                    rank=None,
                    evidence=ev,
                )
            )
    return out
