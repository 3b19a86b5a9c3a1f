"""How a run ended, measured the same way for every sibling.

TS501 and ``tunescope compare`` judge runs at one step count that all of them
reached (:func:`common_step`), by the median loss over the last tenth of the
steps before it (:func:`tail_loss`): a median of many logged points, so that
one noisy batch does not decide which run was better. A run whose loss went
NaN or Inf by then ended at ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MEDIAN_SE = 1.2533  # standard error of a median of n normal values: 1.2533 * sd / sqrt(n)


@dataclass
class Tail:
    """A run's loss at a step: the median over a window, its standard error,
    the points it holds, and the first step whose loss was not finite."""

    value: float
    se: float
    points: int
    bad_step: int | None = None

    @property
    def diverged(self) -> bool:
        return self.bad_step is not None


def first_bad(step: np.ndarray, loss: np.ndarray) -> int | None:
    bad = ~np.isfinite(loss)
    return int(step[np.argmax(bad)]) if bad.any() else None


def common_step(last_steps: Sequence[int], min_share: float = 0.5) -> int | None:
    """The last step every run reached, ignoring runs that stopped before
    ``min_share`` of the longest (they are too short to compare)."""
    if not last_steps:
        return None
    top = max(last_steps)
    kept = [s for s in last_steps if s >= min_share * top]
    return min(kept) if kept else None


def window(at: int, share: float = 0.1, min_steps: int = 5) -> int:
    """Steps of the tail window ending at ``at``."""
    return max(min_steps, round(at * share))


def tail_loss(step: np.ndarray, loss: np.ndarray, at: int, width: int) -> Tail | None:
    """The median loss over steps ``(at - width, at]`` (None: no point there);
    ``inf`` when a loss at or before ``at`` was NaN or Inf."""
    bad = first_bad(step, loss)
    if bad is not None and bad <= at:
        return Tail(math.inf, 0.0, 0, bad)
    sel = (step > at - width) & (step <= at)
    vals = loss[sel]
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return None
    se = MEDIAN_SE * float(np.std(vals, ddof=1)) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
    return Tail(float(np.median(vals)), se, len(vals))


def loss_at(step: np.ndarray, loss: np.ndarray, at: int) -> float | None:
    """The loss logged at ``at`` or the last one before it (None: none)."""
    i = int(np.searchsorted(step, at, side="right")) - 1
    return float(loss[i]) if i >= 0 else None


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties share their mean rank); None for fewer
    than three pairs or a constant side."""
    from scipy.stats import rankdata

    if len(x) < 3 or len(x) != len(y):
        return None
    rx, ry = rankdata(x), rankdata(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def pooled_sd(sets: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The pooled standard deviation of replicate sets, and its degrees of
    freedom (0: no set of two or more finite values)."""
    ss, dof = 0.0, 0
    for vals in sets:
        v = np.asarray([x for x in vals if math.isfinite(x)], dtype=float)
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    return (math.sqrt(ss / dof), dof) if dof else (0.0, 0)
