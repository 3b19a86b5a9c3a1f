"""TS104 overfitting and train/eval mismatch.

What it flags:
    Overfitting: the eval loss rose at least 5% above its best value over at
    least 2 later evaluations, while the training loss over the same steps
    kept falling (or stayed flat). Mismatch: the training loss is many times
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
    The fields of ``Options`` (listed by ``tunescope explain``), set per detector
    in the configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunescope.detectors.base import Context
from tunescope.detectors.series import event_payload, fmt, run_series
from tunescope.findings import Finding, Severity

ID = "TS104"
NAME = "overfitting"

EVAL_KEYS = ("eval_loss", "loss", "eval/loss", "val_loss", "validation_loss")


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


def eval_losses(ctx: Context) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per run: eval steps and eval losses (averaged over ranks per step)."""
    ev = ctx.events(["eval"])
    acc: dict[str, dict[int, list[float]]] = {}
    for row in ev.iter_rows(named=True):
        if row["step"] is None:
            continue
        payload = event_payload(row["payload"])
        if payload is None:
            continue
        for k in EVAL_KEYS:
            v = payload.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                acc.setdefault(row["run_id"], {}).setdefault(int(row["step"]), []).append(float(v))
                break
    out = {}
    for run, by_step in acc.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        vals = np.array([np.mean(by_step[s]) for s in steps])
        out[run] = (steps, vals)
    return out


def _train_at(step: np.ndarray, loss: np.ndarray, at: int, k: int = 5) -> float:
    """Median training loss of the ``k`` logged points at or before ``at``."""
    i = int(np.searchsorted(step, at, side="right"))
    seg = loss[max(0, i - k) : i]
    seg = seg[np.isfinite(seg)]
    return float(np.median(seg)) if len(seg) else float("nan")


def run(ctx: Context, opts: Options) -> list[Finding]:
    evals = eval_losses(ctx)
    if not evals:
        return []
    out = []
    for s in run_series(ctx):
        if s.run not in evals:
            continue
        esteps, evals_v = evals[s.run]
        ok = np.isfinite(evals_v)
        esteps, evals_v = esteps[ok], evals_v[ok]
        if len(esteps) == 0:
            continue
        train = np.array([_train_at(s.step, s.loss, int(e)) for e in esteps])
        # mismatch
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = train / evals_v
        good = np.isfinite(ratio) & (evals_v > 0)
        if good.any() and (ratio[good] >= opts.mismatch_ratio).all():
            r = float(np.median(ratio[good]))
            out.append(
                Finding(
                    s.run,
                    ID,
                    "train-eval-mismatch",
                    Severity.WARNING,
                    int(esteps[good][0]),
                    int(esteps[good][-1]),
                    f"train loss is {fmt(r)}x the eval loss at every evaluation "
                    f"({int(good.sum())} evals; e.g. {fmt(float(train[good][0]))} vs "
                    f"{fmt(float(evals_v[good][0]))} at step {int(esteps[good][0])}): the training "
                    "loss is scaled wrongly.",
                    "Average the loss over gradient-accumulation micro-batches (divide by the "
                    "accumulation steps) instead of summing; check the loss reduction.",
                    rank=None,
                    evidence={"kind": "mismatch", "ratio": r, "evals": int(good.sum())},
                )
            )
            continue
        if len(esteps) < opts.min_evals:
            continue
        best = int(np.argmin(evals_v))
        after = evals_v[best + 1 :]
        if len(after) < opts.rising_evals:
            continue
        floor = evals_v[best]
        if not (after > floor).all() or after[-1] < floor * (1 + opts.min_rise):
            continue
        t0, t1 = train[best], train[-1]
        if not (np.isfinite(t0) and np.isfinite(t1)) or t1 > t0 * (1 + opts.min_rise / 2):
            continue  # train loss rising too: divergence, not overfitting
        rise = after[-1] / floor - 1
        out.append(
            Finding(
                s.run,
                ID,
                NAME,
                Severity.WARNING,
                int(esteps[best]),
                int(esteps[-1]),
                f"eval loss rose {rise * 100:.0f}% from {fmt(float(floor))} at step "
                f"{int(esteps[best])} to {fmt(float(after[-1]))} at step {int(esteps[-1])} while "
                f"train loss went from {fmt(float(t0))} to {fmt(float(t1))}: overfitting since "
                f"step {int(esteps[best])}.",
                "Keep the checkpoint of the eval minimum (load_best_model_at_end), train fewer "
                "epochs, add data, or regularise (dropout, weight decay, a smaller LoRA rank).",
                rank=None,
                evidence={
                    "kind": "overfitting",
                    "best_step": int(esteps[best]),
                    "best_eval_loss": float(floor),
                    "last_eval_loss": float(after[-1]),
                    "train_at_best": float(t0),
                    "train_last": float(t1),
                },
            )
        )
    return out
