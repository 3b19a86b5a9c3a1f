"""TS001 non-finite: NaN or Inf in the loss or the gradient norm.

What it flags:
    A loss or grad_norm that is NaN or +/-Inf, and the masking signature of
    trainers that hide a NaN (a loss of exactly 0 while grad_norm is 0 or NaN,
    after a non-zero loss). Checked from the first step, warmup included.
    Evaluations too: NaN or Inf in ``eval_loss`` or any other eval metric is
    an error when every evaluation of the run has one, else a warning (an
    eval set whose batches can all be masked gives 0/0 now and then).

Why it matters:
    Once the weights hold a NaN, every later step is wasted: the run is dead
    even if it keeps logging. HF-style trainers replace a NaN loss by the
    running average when they log (``logging_nan_inf_filter``), so the grad
    norm is often the only place the NaN shows.

Example:
    ``loss`` is NaN from step 412 on: error at step 412. A single Inf
    grad_norm at step 90 with finite losses around it is an fp16 overflow that
    the loss scaler skipped: a warning that says so.

Suggestion:
    For evaluations only: look for an eval batch whose labels are all
    masked (-100: the mean over no tokens is 0/0), an fp16 overflow in the
    eval forward pass, or a metric over an empty set; when every evaluation is
    non-finite, the eval loop or its data is broken and early stopping and
    best-checkpoint selection are blind.
    Restart from the last good checkpoint with a lower learning rate or
    gradient clipping (max_norm 1.0); use bf16 instead of fp16; check the
    batch named in the finding (empty labels, all positions masked, bad
    inputs); disable the NaN filter of the trainer's logging to see it.

Options:
    Listed below with their defaults; set them per detector in the
    configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunescope.detectors.advice import clipping
from tunescope.detectors.base import Frames
from tunescope.detectors.scans.series import event_payload, merge_ranks, rank_series, samples_note
from tunescope.detectors.scans.stats import incidents
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt
from tunescope.words import count

ID = "TS001"
NAME = "non-finite"
GUARD_ACTIONS = ("skip", "stop")  # what the training guard may do about it (train/guard.py)
SUPERSEDES = ("TS102", "TS201")  # a loss or adapter norm gone NaN is one incident: non-finite


@dataclass
class Options:
    max_transient_points: int = 1
    """A non-finite grad norm lasting at most this many logged points, with a
    finite loss and a finite grad norm right after, is a warning (a skipped
    fp16 overflow step) rather than an error."""
    gap: int = 2
    """Bad points separated by at most this many good points are one incident."""
    degenerate_points: int = 10
    """A loss of 0 with a grad norm of 0 for this many points is left to TS103
    (degenerate loss) instead of being read as a masked NaN."""

    def __post_init__(self) -> None:
        if self.max_transient_points < 0 or self.gap < 0:
            raise ValueError("max_transient_points and gap must be >= 0")


def run(ctx: Frames, opts: Options) -> list[Finding]:
    out: list[Finding] = []
    for s in rank_series(ctx):
        loss, gn = s.loss, s.grad_norm
        bad_loss = ~np.isfinite(loss)
        gn_logged = s.gn_logged if s.gn_logged is not None else ~np.isnan(gn)
        bad_gn = gn_logged & ~np.isfinite(gn)
        # masking signature: loss exactly 0 after a non-zero loss, grad norm 0 or NaN,
        # when grad norms are otherwise measured (not a constant 0)
        measured = np.nanmax(np.abs(np.where(np.isfinite(gn), gn, 0.0)), initial=0.0) > 0
        seen_nonzero = np.maximum.accumulate(np.isfinite(loss) & (loss != 0))
        masked = (
            (loss == 0)
            & np.concatenate(([False], seen_nonzero[:-1]))
            & measured
            & ((gn == 0) | (np.isnan(gn) & gn_logged))
        )
        # a long stretch of loss 0 with grad norm 0 is a degenerate loss (TS103), not a mask
        for a, b in incidents(masked & (gn == 0)):
            if b - a + 1 >= opts.degenerate_points:
                masked[a : b + 1] = False
        bad = bad_loss | bad_gn | masked
        if not bad.any():
            continue
        for a, b in incidents(bad, gap=opts.gap):
            seg = slice(a, b + 1)
            kinds = []
            if bad_loss[seg].any():
                kinds.append("loss")
            if bad_gn[seg].any():
                kinds.append("grad_norm")
            if masked[seg].any():
                kinds.append("masked loss (0 with grad_norm 0/NaN)")
            n_bad = int(bad[seg].sum())
            after_ok = (
                b + 1 < len(loss)
                and bool(np.isfinite(loss[b + 1]))
                and (not gn_logged[b + 1] or bool(np.isfinite(gn[b + 1])))
            )
            transient = kinds == ["grad_norm"] and n_bad <= opts.max_transient_points and after_ok
            first = a
            step0, step1 = int(s.step[a]), int(s.step[b])
            value = loss[first] if bad_loss[first] else gn[first]
            ids = s.samples_at(first)
            ev = {
                "first_step": step0,
                "points": n_bad,
                "signals": kinds,
                "value": float(value),
                "recovered": bool(after_ok),
                "last_finite_loss": _last_finite(loss, first),
            }
            if ids:
                ev["sample_ids"] = ids
            if transient:
                msg = (
                    f"grad_norm was {fmt(gn[first])} at step {step0} and finite again at the "
                    f"next logged step (loss stayed finite): most likely an fp16 overflow "
                    f"that the loss scaler skipped.{samples_note(ids)}"
                )
                sev = Severity.WARNING
                sug = (
                    "Harmless if rare. If it repeats, switch to bf16 or lower the learning "
                    "rate; check the batch named here."
                )
            else:
                persists = b == len(loss) - 1
                parts = []
                for label, mask, vals in (
                    ("loss", bad_loss, loss),
                    ("grad_norm", bad_gn, gn),
                    ("loss logged as 0 with grad_norm 0/NaN (a masked NaN)", masked, loss),
                ):
                    hits = np.flatnonzero(mask[seg])
                    if len(hits):
                        k = a + int(hits[0])
                        shown = "" if label.startswith("loss logged") else f" {fmt(vals[k])}"
                        parts.append((k, f"{label}{shown} from step {int(s.step[k])}"))
                tail = (
                    "never finite again to the end of the log"
                    if persists
                    else f"{count(n_bad, 'bad point')} up to step {step1}"
                )
                text = "; ".join(p for _, p in sorted(parts))
                msg = f"{text}: {tail}.{samples_note(ids)}"
                sev = Severity.ERROR
                sug = (
                    "Restart from the last checkpoint before this step with a lower learning "
                    f"rate; {clipping(s.start)}; prefer bf16 to fp16; inspect the batch for "
                    "empty or fully masked labels."
                )
            out.append(
                Finding(s.run, ID, NAME, sev, step0, step1, msg, sug, rank=s.rank, evidence=ev)
            )
    return merge_ranks(out) + _eval_findings(ctx)


# numbers of an eval event that are not metrics of the evaluation
_NOT_EVAL_METRICS = frozenset(("step", "epoch", "rank", "ts", "v"))


def _eval_findings(ctx: Frames) -> list[Finding]:
    """One finding per run whose evaluations hold NaN or Inf: an error when
    every evaluation does, else a warning."""
    per_run: dict[str, dict[int, list[tuple[str, float]]]] = {}
    for row in ctx.events(["eval"]).iter_rows(named=True):
        payload = event_payload(row["payload"])
        if row["step"] is None or not isinstance(payload, dict):
            continue
        values = [
            (k, float(v))
            for k, v in payload.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in _NOT_EVAL_METRICS
        ]
        if values:
            per_run.setdefault(row["run_id"], {}).setdefault(int(row["step"]), []).extend(values)
    out: list[Finding] = []
    for run, by_step in sorted(per_run.items()):
        bad = {s: [(k, v) for k, v in vals if not np.isfinite(v)] for s, vals in by_step.items()}
        bad = {s: kv for s, kv in bad.items() if kv}
        if not bad:
            continue
        steps = sorted(bad)
        every = len(bad) == len(by_step)
        names = sorted({k for kv in bad.values() for k, _ in kv})
        first = bad[steps[0]]
        shown = ", ".join(f"{k} {fmt(v)}" for k, v in first[:4])
        where = ", ".join(str(s) for s in steps[:6]) + (", ..." if len(steps) > 6 else "")
        msg = (
            f"{count(len(bad), 'evaluation')} of {len(by_step)} had a non-finite metric "
            f"({', '.join(names[:6])}) at step{'s' if len(steps) > 1 else ''} {where}; "
            f"first at step {steps[0]}: {shown}."
        )
        if every:
            msg += " Every evaluation is non-finite: early stopping and best-checkpoint selection see nothing."
        sug = (
            "Check the eval data for batches whose labels are all masked (-100), run the "
            "evaluation in bf16 or fp32 rather than fp16, and look at the metric code for "
            "divisions by an empty count."
        )
        ev = {
            "kind": "eval",
            "eval_steps": len(by_step),
            "non_finite_evals": len(bad),
            "metrics": names,
            "first_step": steps[0],
        }
        sev = Severity.ERROR if every else Severity.WARNING
        out.append(Finding(run, ID, NAME, sev, steps[0], steps[-1], msg, sug, evidence=ev))
    return out


def _last_finite(v: np.ndarray, i: int) -> float | None:
    prev = v[:i][np.isfinite(v[:i])]
    return float(prev[-1]) if len(prev) else None
