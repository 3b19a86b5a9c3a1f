"""TS502 capacity-hint: a small LoRA whose loss flattened early at a high level (a hint).

What it flags:
    A LoRA or QLoRA run with a small rank (``lora_r`` up to ``max-rank``) or
    attention-only targets whose train loss flattened early: it came within
    ``band`` of its final drop before ``early`` of the run, fell less than
    ``max-drop`` of its start in all, while the learning rate was still at
    least ``min-lr-share`` of its peak and the adapter gradients were alive;
    and whose eval loss, where logged, flattened too (not rising: that is
    overfitting, TS104). Info only: one run alone cannot prove that capacity
    was the limit (TS501 can, from siblings).

Why it matters:
    An adapter too small for the task stops improving while everything else
    looks healthy; the usual fixes for a plateau (a higher learning rate, a
    data check) do not help it.

Example:
    ``r=2 LoRA: the loss flattened at 4.9 by step 60 of 300 (fell 11% from
    5.5) with lr still 92% of its peak and adapter gradients at 0.41.``

Suggestion:
    A hint: raise the LoRA rank or add target modules (all linear layers),
    then compare the runs (``tunescope compare``).

Options:
    Listed below with their defaults; set them per detector in the
    configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tunescope.detectors.base import Frames
from tunescope.detectors.scans.series import run_series
from tunescope.detectors.scans.siblings import run_settings
from tunescope.detectors.scans.stats import rolling_median
from tunescope.findings import Finding, Severity
from tunescope.numbers import number as fmt

ID = "TS502"
NAME = "capacity-hint"

ATTENTION = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "q", "k", "v", "o", "query", "key", "value",
     "c_attn", "qkv_proj", "query_key_value", "wqkv", "out_proj", "attn"}
)  # fmt: skip


KEYS = ("lora_r", "lora_alpha", "lora_target", "learning_rate")


@dataclass
class Options:
    max_rank: int = 8
    """Ranks up to this count as small."""
    min_points: int = 50
    """Logged loss points a run needs."""
    band: float = 0.1
    """Flattened: within this fraction of the run's whole drop from its final level."""
    early: float = 0.5
    """...before this fraction of the run's steps."""
    max_drop: float = 0.3
    """A high level: the loss fell less than this fraction of its start."""
    min_lr_share: float = 0.3
    """The lr when it flattened was at least this fraction of its peak."""


def small(config: dict[str, Any], max_rank: int) -> str | None:
    """Why the adapter is small (``r=4``, ``attention-only targets``), or None."""
    r = config.get("lora_r")
    if isinstance(r, int | float) and not isinstance(r, bool) and 0 < r <= max_rank:
        return f"r={r:g}"
    targets = [t.strip().lower() for t in str(config.get("lora_target") or "").split(",")]
    if targets and all(t.split(".")[-1] in ATTENTION for t in targets if t) and any(targets):
        return "attention-only targets"
    return None


def hint(
    config: dict[str, Any],
    step: np.ndarray,
    loss: np.ndarray,
    lr: np.ndarray,
    adapter: np.ndarray | None,
    evals: np.ndarray | None,
    opts: Options,
) -> tuple[str, int, int] | None:
    """(message, flatten step, last step) for a run that fits, else None."""
    if str(config.get("finetuning_type")) not in ("lora", "qlora"):
        return None
    why = small(config, opts.max_rank)
    ok = np.isfinite(loss)
    if why is None or ok.sum() < opts.min_points or not ok.all():
        return None
    n = len(loss)
    start = float(np.median(loss[: max(3, n // 20)]))
    end = float(np.median(loss[-max(3, n // 10) :]))
    drop = start - end
    if drop <= 0 or drop >= opts.max_drop * start:
        return None
    w = max(5, n // 20)
    smooth = rolling_median(loss, w, 1)  # the trailing median, a shorter one at the start
    near = np.flatnonzero(smooth <= end + opts.band * drop)
    if not len(near) or step[near[0]] > opts.early * step[-1]:
        return None
    at = near[0]
    if np.isfinite(lr).any():
        peak = float(np.nanmax(lr))
        if peak <= 0 or not lr[at] >= opts.min_lr_share * peak:
            return None
    grads = ""
    if adapter is not None and np.isfinite(adapter[at:]).any():
        g = float(np.nanmedian(adapter[at:]))
        if not g > 0:
            return None  # dead adapters: TS201's case
        grads = f" and adapter gradients at {fmt(g)}"
    note = "no eval loss logged"
    if evals is not None and len(evals) >= 2:
        if evals[-1] > np.nanmin(evals) * 1.02:
            return None  # eval rising: overfitting (TS104), not capacity
        note = f"eval loss flat too ({fmt(float(evals[-1]))})"
    lr_note = (
        f" with lr still {lr[at] / np.nanmax(lr):.0%} of its peak" if np.isfinite(lr).any() else ""
    )
    message = (
        f"{why} LoRA: the loss flattened at {fmt(end)} by step {int(step[at])} of "
        f"{int(step[-1])} (fell {drop / start:.0%} from {fmt(start)}){lr_note}{grads}; {note}."
    )
    return message, int(step[at]), int(step[-1])


def run(ctx: Frames, opts: Options) -> list[Finding]:
    conf = run_settings(ctx)
    adapters: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    df = ctx.sql(
        "SELECT run_id, step, avg(grad_norm_adapter) AS g FROM steps"
        f"{ctx.where_runs()} GROUP BY run_id, step ORDER BY run_id, step"
    )
    for (rid,), part in df.group_by(["run_id"], maintain_order=True):
        adapters[str(rid)] = (
            part.get_column("step").to_numpy(),
            part.get_column("g").cast(float).to_numpy(),
        )
    evals: dict[str, list[float]] = {}
    for row in ctx.metrics(["eval_loss"]).iter_rows(named=True):
        if row["rank"] in (0, None) and row["value"] is not None:
            evals.setdefault(row["run_id"], []).append(float(row["value"]))
    out = []
    for s in run_series(ctx):
        cfg = conf.get(s.run, {})
        ad = None
        if s.run in adapters:
            a_step, a_val = adapters[s.run]
            idx = np.clip(np.searchsorted(a_step, s.step), 0, len(a_step) - 1)
            ad = np.where(a_step[idx] == s.step, a_val[idx], np.nan)
        ev = np.asarray(evals[s.run]) if s.run in evals else None
        found = hint(cfg, s.step, s.loss, s.lr, ad, ev, opts)
        if found is None:
            continue
        message, at, last = found
        out.append(
            Finding(
                run=s.run,
                detector=ID,
                name=NAME,
                severity=Severity.INFO,
                step_start=at,
                step_end=last,
                message=message,
                suggestion=(
                    "A hint, not a verdict: the adapter may be too small for the task. Raise "
                    "the LoRA rank (e.g. 4x) or add target modules (all linear layers), then "
                    "compare the runs with `tunescope compare`."
                ),
                evidence={"flattened_at": at, "settings": {k: cfg.get(k) for k in KEYS}},
            )
        )
    return out
