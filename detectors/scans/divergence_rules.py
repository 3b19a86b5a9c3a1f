"""TS102's hard rules (a non-finite loss that persists, a loss risen to a
multiple of its first level that never comes back, a loss frozen at the
uniform level) and the hit every TS102 rule reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tunescope.detectors.scans.series import Series
from tunescope.detectors.scans.stats import incidents
from tunescope.numbers import number as fmt


class HardRuleOptions(Protocol):
    """The options the hard rules read (TS102's ``Options`` has them)."""

    rise_factor: float
    stay_factor: float
    frozen_level: float
    frozen_points: int
    nonfinite_points: int


@dataclass
class Hit:
    """One rule's evidence of a divergence in one series."""

    rule: str
    onset: int  # step where it began
    detected: int  # step at which the evidence was complete
    message: str
    evidence: dict[str, Any]
    in_warmup: bool = False
    since: int | None = None  # step where the rise began, when before the onset


def hard_rules(s: Series, opts: HardRuleOptions, warm: np.ndarray) -> list[Hit]:
    """The hard rules' hits, each lasting by nature: a non-finite loss that
    persists, a rise to ``rise_factor`` x the first level never back under
    ``stay_factor`` x, a loss frozen above ``frozen_level``."""
    hits: list[Hit] = []
    loss, step = s.loss, s.step
    n = len(loss)
    bad = ~np.isfinite(loss)
    if bad.any():
        for i in np.flatnonzero(bad):
            run_end = i + opts.nonfinite_points
            if bad[i:run_end].all() and (run_end <= n or bad[i:].all()):
                persists = bool(bad[i:].all())
                hits.append(
                    Hit(
                        "nonfinite",
                        int(step[i]),
                        int(step[min(run_end, n) - 1]),
                        f"loss became {fmt(float(loss[i]))} at step {step[i]} and "
                        + (
                            "stayed non-finite to the end of the log"
                            if persists
                            else f"stayed non-finite for {int(bad[i:].argmin() or n - i)} points"
                        ),
                        {"first_nonfinite_step": int(step[i]), "persists": persists},
                        bool(warm[i]),
                    )
                )
                break
    fin = np.isfinite(loss)
    pos = fin & (loss > 0)
    if pos.sum() >= 3 and (loss[fin] > 0).all():
        first = float(np.median(loss[pos][:3]))
        vals = np.where(fin, loss, np.inf)
        suffix_min = np.minimum.accumulate(vals[::-1])[::-1]
        cand = np.flatnonzero(
            fin & (loss >= opts.rise_factor * first) & (suffix_min >= opts.stay_factor * first)
        )
        for i in cand:
            if fin[i:].sum() >= 2:
                later = np.flatnonzero(fin[i + 1 :])
                det = i + 1 + int(later[0])
                # the rise began where the loss last stood under stay_factor x
                low = np.flatnonzero(fin[:i] & (loss[:i] < opts.stay_factor * first))
                since = int(step[low[-1]]) if len(low) else int(step[0])
                hits.append(
                    Hit(
                        "rise",
                        int(step[i]),
                        int(step[det]),
                        f"loss rose to {fmt(float(loss[i]))} at step {step[i]}, "
                        f"{fmt(loss[i] / first)}x its first logged level ({fmt(first)}), and "
                        f"never came back below {opts.stay_factor:g}x",
                        {
                            "first_loss": first,
                            "loss": float(loss[i]),
                            "ratio": float(loss[i] / first),
                        },
                        bool(warm[i]),
                        since,
                    )
                )
                break
    if n >= opts.frozen_points:
        same = np.zeros(n, dtype=bool)
        with np.errstate(invalid="ignore"):
            same[1:] = fin[1:] & fin[:-1] & (np.abs(np.diff(loss)) <= 1e-6 * np.abs(loss[1:]))
        high = fin & (loss > opts.frozen_level)
        # a stretch of k+1 equal points has k "same" flags after its first point
        for a1, b in incidents(same & high):
            if b - a1 + 2 >= opts.frozen_points:
                a = a1 - 1
                end = a + opts.frozen_points - 1
                hits.append(
                    Hit(
                        "frozen",
                        int(step[a]),
                        int(step[end]),
                        f"loss frozen at {fmt(float(loss[end]))} for {b - a + 1} points from step "
                        f"{step[a]}: the model outputs a near-uniform distribution "
                        f"(ln of a 32k vocabulary is 10.4)",
                        {"value": float(loss[end]), "points": int(b - a + 1)},
                        bool(warm[a]),
                    )
                )
                break
    return hits
