"""TS104 overfitting: eval loss rising while train loss falls, or a train/eval mismatch.

What it flags:
    Overfitting: the eval loss rose at least 5% above its best value over at
    least 2 later evaluations, while the training loss over the same steps
    kept falling (or stayed flat); every eval set counts (``eval_loss``, and
    named sets such as ``eval_g0_loss`` or ``eval/val_a/loss``), one finding
    per run naming the sets that rose. Mismatch: the training loss is many times
    (default 4x) the eval loss at every evaluation: the training loss is
    scaled wrongly, typically summed over gradient-accumulation micro-batches
    instead of averaged.

Why it matters:
    Past the eval minimum, more steps make the model worse on new data: the
    best checkpoint is behind you. A mis-scaled training loss also scales the
    gradients, so the effective learning rate is off by the same factor.

Example:
    ``eval loss rose 18% from 1.42 at step 600 to 1.68 at step 1000 while
    train loss fell from 1.30 to 0.95: overfitting since step 600.``

Suggestion:
    Keep the checkpoint of the eval minimum (``load_best_model_at_end``),
    train fewer epochs, add data or regularisation (dropout, weight decay, a
    smaller LoRA rank). For a mismatch: divide the loss by the number of
    accumulation steps (or let the trainer do it) and check the loss reduction.

Options:
    Listed below with their defaults; set them per detector in the
    configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tunescope.detectors.base import Frames
from tunescope.detectors.scans.evals import eval_losses
from tunescope.detectors.scans.series import run_series
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt

ID = "TS104"
NAME = "overfitting"


@dataclass
class Options:
    min_evals: int = 3
    """Evaluations needed before overfitting can be judged."""
    min_rise: float = 0.05
    """The eval loss must end this fraction above its best value."""
    rising_evals: int = 2
    """Evaluations after the best one that must all stay above it."""
    mismatch_ratio: float = 4.0
    """Train loss at least this many times the eval loss at every evaluation."""

    def __post_init__(self) -> None:
        if self.min_evals < 2 or self.rising_evals < 1 or self.mismatch_ratio <= 1:
            raise ValueError("min_evals >= 2, rising_evals >= 1, mismatch_ratio > 1")


def _train_at(step: np.ndarray, loss: np.ndarray, at: int, k: int = 5) -> float:
    """Median training loss of the ``k`` logged points at or before ``at``."""
    i = int(np.searchsorted(step, at, side="right"))
    seg = loss[max(0, i - k) : i]
    seg = seg[np.isfinite(seg)]
    return float(np.median(seg)) if len(seg) else float("nan")


def run(ctx: Frames, opts: Options) -> list[Finding]:
    evals = eval_losses(ctx)
    if not evals:
        return []
    out = []
    for s in run_series(ctx):
        sets = {}
        for name, (esteps, vals) in sorted(evals.get(s.run, {}).items()):
            ok = np.isfinite(vals)
            if ok.any():
                train = np.array([_train_at(s.step, s.loss, int(e)) for e in esteps[ok]])
                sets[name] = (esteps[ok], vals[ok], train)
        if not sets:
            continue
        first = next(iter(sets))  # the main eval set ("") when there is one
        mismatch = _mismatch(s.run, first, *sets[first], opts)
        if mismatch is not None:
            out.append(mismatch)
            continue
        rising = [r for name, v in sets.items() if (r := _overfit(name, *v, opts)) is not None]
        if rising:
            out.append(_overfit_finding(s.run, rising))
    return out


def _label(name: str) -> str:
    return "eval loss" if name == "" else f"eval loss of set {name!r}"


def _mismatch(
    run: str, name: str, esteps: np.ndarray, evals_v: np.ndarray, train: np.ndarray, opts: Options
) -> Finding | None:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = train / evals_v
    good = np.isfinite(ratio) & (evals_v > 0)
    if not good.any() or not (ratio[good] >= opts.mismatch_ratio).all():
        return None
    r = float(np.median(ratio[good]))
    return Finding(
        run,
        ID,
        "train-eval-mismatch",
        Severity.WARNING,
        int(esteps[good][0]),
        int(esteps[good][-1]),
        f"train loss is {fmt(r)}x the {_label(name)} at every evaluation "
        f"({int(good.sum())} evals; e.g. {fmt(float(train[good][0]))} vs "
        f"{fmt(float(evals_v[good][0]))} at step {int(esteps[good][0])}): the training "
        "loss is scaled wrongly.",
        "Average the loss over gradient-accumulation micro-batches (divide by the "
        "accumulation steps) instead of summing; check the loss reduction.",
        rank=None,
        evidence={"kind": "mismatch", "ratio": r, "evals": int(good.sum()), "eval_set": name},
    )


def _overfit(
    name: str, esteps: np.ndarray, evals_v: np.ndarray, train: np.ndarray, opts: Options
) -> dict[str, Any] | None:
    """The overfitting evidence of one eval set, or None."""
    if len(esteps) < opts.min_evals:
        return None
    best = int(np.argmin(evals_v))
    after = evals_v[best + 1 :]
    if len(after) < opts.rising_evals:
        return None
    floor = evals_v[best]
    if not (after > floor).all() or after[-1] < floor * (1 + opts.min_rise):
        return None
    t0, t1 = train[best], train[-1]
    if not (np.isfinite(t0) and np.isfinite(t1)) or t1 > t0 * (1 + opts.min_rise / 2):
        return None  # train loss rising too: divergence, not overfitting
    return {
        "eval_set": name,
        "best_step": int(esteps[best]),
        "best_eval_loss": float(floor),
        "last_step": int(esteps[-1]),
        "last_eval_loss": float(after[-1]),
        "rise": float(after[-1] / floor - 1),
        "train_at_best": float(t0),
        "train_last": float(t1),
    }


def _overfit_finding(run: str, rising: list[dict[str, Any]]) -> Finding:
    """One finding for a run, told by the set that rose most; the others named."""
    top = max(rising, key=lambda r: r["rise"])
    others = [r["eval_set"] or "main" for r in rising if r is not top]
    also = f" The same on {len(others)} more eval set(s): {', '.join(others)}." if others else ""
    msg = (
        f"{_label(top['eval_set'])} rose {top['rise'] * 100:.0f}% from "
        f"{fmt(top['best_eval_loss'])} at step {top['best_step']} to "
        f"{fmt(top['last_eval_loss'])} at step {top['last_step']} while train loss went from "
        f"{fmt(top['train_at_best'])} to {fmt(top['train_last'])}: overfitting since step "
        f"{top['best_step']}.{also}"
    )
    ev = {"kind": "overfitting", **top, "eval_sets": [r["eval_set"] for r in rising]}
    return Finding(
        run,
        ID,
        NAME,
        Severity.WARNING,
        min(r["best_step"] for r in rising),
        max(r["last_step"] for r in rising),
        msg,
        "Keep the checkpoint of the eval minimum (load_best_model_at_end), train fewer "
        "epochs, add data, or regularise (dropout, weight decay, a smaller LoRA rank).",
        rank=None,
        evidence=ev,
    )
