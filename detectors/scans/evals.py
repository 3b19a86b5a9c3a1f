"""The eval losses of each run, by eval set: what TS104 (overfitting) judges
and what TS102 (divergence) checks a rising training loss against."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tunescope.detectors.base import Frames
from tunescope.detectors.scans.series import event_payload

# the main eval loss under the names trainers use, then named eval sets:
# ``eval_<set>_loss`` (HF with a dict of eval datasets), ``eval/<set>/loss``,
# ``val_<set>_loss`` and the like
MAIN_KEYS = ("eval_loss", "loss", "eval/loss", "val_loss", "validation_loss", "val/loss")
SET_KEY = re.compile(r"^(?:eval|val|valid|validation|test)[_/](.+?)[_/]loss$")


def eval_set(key: str) -> str | None:
    """The eval set a payload key holds the loss of ("" for the main one), or None."""
    if key in MAIN_KEYS:
        return ""
    m = SET_KEY.match(key)
    return m.group(1) if m else None


def eval_losses(ctx: Frames) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per run and eval set ("" for the main one): eval steps and eval losses
    (averaged over ranks per step), computed once per source."""
    if "eval-losses" not in ctx.memo:
        ctx.memo["eval-losses"] = _eval_losses(ctx)
    return ctx.memo["eval-losses"]


def _eval_losses(ctx: Frames) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    ev = ctx.events(["eval"])
    acc: dict[str, dict[str, dict[int, list[float]]]] = {}
    for row in ev.iter_rows(named=True):
        if row["step"] is None:
            continue
        payload = event_payload(row["payload"])
        if not isinstance(payload, dict):
            continue
        main_done = False
        for k, v in payload.items():
            name = eval_set(k)
            if name is None or not isinstance(v, int | float) or isinstance(v, bool):
                continue
            if name == "":
                if main_done:
                    continue  # one main loss per row, in MAIN_KEYS' order of preference
                k = min(
                    (m for m in MAIN_KEYS if isinstance(payload.get(m), int | float)),
                    key=MAIN_KEYS.index,
                )
                v, main_done = payload[k], True
            sets = acc.setdefault(row["run_id"], {})
            sets.setdefault(name, {}).setdefault(int(row["step"]), []).append(float(v))
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for run, sets in acc.items():
        for name, by_step in sets.items():
            steps = np.array(sorted(by_step), dtype=np.int64)
            vals = np.array([np.mean(by_step[s]) for s in steps])
            out.setdefault(run, {})[name] = (steps, vals)
    return out


@dataclass(frozen=True)
class EvalFall:
    """How an eval set moved over a stretch of training: from ``first`` (the
    eval at or before its start) to ``last`` (the final eval in it)."""

    eval_set: str
    first_step: int
    first: float
    last_step: int
    last: float
    evals: int


def eval_fell(
    sets: dict[str, tuple[np.ndarray, np.ndarray]],
    start: int,
    end: int,
    min_fall: float,
    max_rise: float,
) -> EvalFall | None:
    """The main eval set's fall (else the first named set's) over steps
    ``start..end``, when every eval set with evaluations there fell: its final
    eval at least ``min_fall`` below the eval at or before ``start`` (else the
    first after it), with at least two evaluations after that one and none
    above it by more than ``max_rise``. None when no set covers the stretch or
    any set did not fall."""
    falls: list[EvalFall] = []
    for name in sorted(sets):
        steps, vals = sets[name]
        ok = np.isfinite(vals) & (vals > 0) & (steps <= end)
        steps, vals = steps[ok], vals[ok]
        before = np.flatnonzero(steps <= start)
        i = int(before[-1]) if len(before) else 0
        later = np.arange(i + 1, len(steps))
        if not len(steps) or len(later) < 2 or steps[i] > end:
            continue
        ref, last = float(vals[i]), float(vals[later[-1]])
        if last > ref * (1 - min_fall) or float(vals[later].max()) > ref * (1 + max_rise):
            return None
        falls.append(
            EvalFall(name, int(steps[i]), ref, int(steps[later[-1]]), last, len(later) + 1)
        )
    return falls[0] if falls else None
