"""TS201 adapter-gradients: LoRA adapters that are not wired in, not
receiving gradients, receiving vanishing ones, or whose B matrix is never
updated.

What it flags:
    Wiring, from ``run_start``: zero trainable parameters (error); fewer
    adapted modules than the targets should have matched (warning; error
    when none matched). Dead: the adapter gradient norm (``grad_norm_adapter``;
    else the L2 sum of the ``grad_norm_lora_A``/``grad_norm_lora_B`` metrics;
    else ``grad_norm`` for a LoRA run) is 0, missing or NaN for 10 or more
    consecutive logged steps while the learning rate is above 0 (error).
    Vanishing: per-element RMS (norm / sqrt(trainable params)) below 1e-8,
    Adam's epsilon, or a norm below 1e-3x the run's own early median, for 50
    or more consecutive steps (warning; a quarter of the run, at least 10
    steps, for short runs). B never updated: ``grad_norm_lora_A`` still
    exactly 0 after the first optimizer step with lr > 0 while lora_B gets
    gradients (error). Since B starts at 0, lora_A gradients are 0 by
    construction until B has been updated once: that is expected at step 0
    and is not a finding. A gradient norm that is 0 on every step from the
    first while the loss falls was never measured (some formats print 0): an
    info finding, not a dead adapter. A dead adapter's run does not learn:
    its finding stands for TS103's plateau over the same steps.

Why it matters:
    A LoRA run with a frozen or disconnected adapter trains nothing while
    the loss curve may look merely slow; the usual causes are one-line
    mistakes that are invisible without looking at the gradients.

Example:
    ``every rank: adapter gradients are dead: grad_norm_adapter was 0 or
    missing on 199 consecutive logged steps (199 zero, 0 missing or NaN) from
    step 1 to 199 with lr up to 2.00e-04; loss 2.31 -> 2.3.``

Suggestion:
    Load adapters with ``PeftModel.from_pretrained(..., is_trainable=True)``;
    with gradient checkpointing call ``model.enable_input_require_grads()`` or
    pass ``gradient_checkpointing_kwargs={"use_reentrant": False}``; check that
    ``target_modules`` match module names (``model.named_modules()``, or
    ``"all-linear"``); for vanishing gradients raise ``lora_alpha`` or use
    rsLoRA (``use_rslora=True``) and a LoRA learning rate about 10x the full
    fine-tuning one; build the optimizer after wrapping the model.

Options:
    See the ``Options`` fields below (``[tool.tunescope.TS201]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tunescope.detectors.scans import stats
from tunescope.detectors.scans.rankwise import (
    collapse_ranks,
    finding,
    payload_number,
    rank_slices,
    steps_slices,
    trend1,
)
from tunescope.findings import Finding, Severity
from tunescope.numbers import grouped as fmt

if TYPE_CHECKING:
    import polars as pl

    from tunescope.detectors.base import Frames

ID = "TS201"
NAME = "adapter-gradients"
SUPERSEDES = ("TS103",)  # a dead adapter's run does not learn: one incident, the adapter's

LORA_A = "grad_norm_lora_A"
LORA_B = "grad_norm_lora_B"
_ADAPTER_TYPES = ("lora", "qlora", "dora", "adalora", "loha", "lokr", "ia3", "vera", "oft")

SUGG_DEAD = (
    "Make the adapter trainable and part of the graph: load it with "
    "PeftModel.from_pretrained(..., is_trainable=True); with gradient checkpointing call "
    "model.enable_input_require_grads() or pass gradient_checkpointing_kwargs="
    '{"use_reentrant": False}; check that target_modules match modules used in the forward '
    "pass (model.print_trainable_parameters()), and build the optimizer after wrapping."
)
SUGG_VANISH = (
    "Raise lora_alpha or use rsLoRA (use_rslora=True): with alpha/r scaling a high rank "
    "shrinks the gradients; use a LoRA learning rate about 10x the full fine-tuning one "
    "(or LoRA+ with a larger lr for B); prefer bf16 to fp16, or lower Adam's eps."
)
SUGG_B = (
    "lora_B is not being updated: check that the learning rate is not 0 after warmup, that "
    "the lora_B parameters require grad and are in the optimizer's parameter groups (build "
    "the optimizer after get_peft_model), and that no scheduler or hook zeroes them."
)


@dataclass
class Options:
    dead_min_points: int = 10
    """Consecutive logged steps with a 0, missing or NaN adapter gradient
    (lr > 0) that make a dead adapter."""
    vanish_rms: float = 1e-8
    """Per-element RMS (norm / sqrt(trainable params)) below which Adam's
    epsilon swamps the update."""
    vanish_ratio: float = 1e-3
    """A norm below this fraction of the run's early median is vanishing."""
    vanish_min_points: int = 50
    """Consecutive logged steps of vanishing gradients needed (a quarter of
    the run, at least ``dead_min_points``, for short runs)."""
    early_points: int = 100
    """Logged steps (lr > 0, positive norm) that set the run's early median."""
    lora_a_min_points: int = 3
    """Logged steps of exactly-zero lora_A gradients after the first update
    needed for 'B never updated'."""
    loss_fall: float = 0.05
    """A loss that fell by this fraction (Theil-Sen, p < 0.01) shows training
    happens: an all-zero gradient norm was then never measured."""

    def __post_init__(self) -> None:
        if self.dead_min_points < 1 or self.vanish_min_points < 1 or self.lora_a_min_points < 1:
            raise ValueError("point counts must be >= 1")
        if not 0 < self.vanish_ratio < 1 or self.vanish_rms <= 0:
            raise ValueError("vanish_ratio must be in (0, 1) and vanish_rms > 0")


def _is_adapter_run(payload: dict[str, Any]) -> bool:
    ft = payload.get("finetuning_type")
    if ft is None and isinstance(payload.get("config"), dict):
        ft = payload["config"].get("finetuning_type")
    return str(ft or "").lower() in _ADAPTER_TYPES or payload.get("lora_r") is not None


def run(ctx: Frames, opts: Options) -> list[Finding]:
    import polars as pl

    findings: list[Finding] = []
    for run_id in ctx.runs()["run_id"].to_list():
        findings.extend(_wiring(run_id, ctx.run_start(run_id)))
    df = ctx.steps().select(
        "run_id", "rank", "step", "loss", "lr", "grad_norm", "grad_norm_adapter"
    )
    if df.height == 0:
        return findings
    # Whether the adapter / total norms were logged at all (null, not NaN).
    logged = {c: ctx.logged(c) for c in ("grad_norm", "grad_norm_adapter")}
    cols = {c: ctx.column(c) for c in ("loss", "lr", "grad_norm", "grad_norm_adapter")}
    step_c = ctx.column("step", as_float=False)
    lora = ctx.metrics([LORA_A, LORA_B])
    per_name = {
        name: _series_by_rank(lora.filter(pl.col("name") == name)) for name in (LORA_A, LORA_B)
    }
    per_rank: list[Finding] = []
    ranks: dict[str, list[int]] = {}
    for run_id, rank, a, b in steps_slices(ctx):
        n_adapter = bool(logged["grad_norm_adapter"][a:b].any())
        n_total = bool(logged["grad_norm"][a:b].any())
        ranks.setdefault(run_id, []).append(rank)
        steps = step_c[a:b]
        la = _aligned(per_name[LORA_A].get((run_id, rank)), steps)
        lb = _aligned(per_name[LORA_B].get((run_id, rank)), steps)
        payload = ctx.run_start(run_id)
        if n_adapter:
            g, source = cols["grad_norm_adapter"][a:b], "grad_norm_adapter"
            is_logged = logged["grad_norm_adapter"][a:b]
        elif la is not None or lb is not None:
            # one of the two matrices may be logged alone: judge the one there is
            norms = [x for x in (la, lb) if x is not None]
            g = np.sqrt(sum(np.nan_to_num(x) ** 2 for x in norms))
            g[np.isnan(norms[0])] = np.nan
            source = "lora_A/B"
            is_logged = ~np.isnan(g)
        elif _is_adapter_run(payload) and n_total:
            g, source = cols["grad_norm"][a:b], "grad_norm"
            is_logged = logged["grad_norm"][a:b]
        else:
            continue
        data = {
            "step": steps,
            "lr": _ffill(cols["lr"][a:b]),
            "loss": cols["loss"][a:b],
            LORA_A: la,
            LORA_B: lb,
        }
        # A norm logged only every few steps (by design) is judged on the steps
        # that carry it: its absence elsewhere is not a missing gradient.
        training = ~np.isnan(data["loss"]) | ~np.isnan(data["lr"])
        if training.any() and is_logged[training].mean() < 0.9:
            data = {k: (v[is_logged] if v is not None else None) for k, v in data.items()}
            g = g[is_logged]
            if len(g) == 0:
                continue
        per_rank.extend(_judge(opts, run_id, rank, data, g, source, payload, la is not None))
    findings.extend(collapse_ranks(per_rank, ranks))
    return findings


def _series_by_rank(m: pl.DataFrame) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(run, rank) -> (steps, values) of one metric (frame sorted by run, rank, step)."""
    out: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    if m.height == 0:
        return out
    st, val = m["step"].to_numpy(), m["value"].to_numpy().astype(float, copy=False)
    for run_id, rank, a, b in rank_slices(m):
        out[(run_id, rank)] = (st[a:b], val[a:b])
    return out


def _aligned(sv: tuple[np.ndarray, np.ndarray] | None, steps: np.ndarray) -> np.ndarray | None:
    """A metric's values at ``steps`` (NaN where it was not logged)."""
    if sv is None:
        return None
    ms, mv = sv
    idx = np.clip(np.searchsorted(ms, steps), 0, len(ms) - 1)
    hit = ms[idx] == steps
    return np.where(hit, mv[idx], np.nan)


def _ffill(x: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(x)
    if ok.all() or not ok.any():
        return x
    idx = np.maximum.accumulate(np.where(ok, np.arange(len(x)), 0))
    out = x[idx]
    out[: np.argmax(ok)] = np.nan
    return out


def _wiring(run_id: str, payload: dict[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    trainable = payload_number(payload, "trainable_params")
    total = payload_number(payload, "total_params")
    if trainable is not None and trainable == 0:
        what = f" of {fmt(total)}" if total else ""
        msg = f"The run has 0 trainable parameters{what}: nothing will be trained."
        sugg = (
            "Load the adapter with PeftModel.from_pretrained(..., is_trainable=True) (the "
            "default is frozen); apply get_peft_model once (prepare_model_for_kbit_training "
            "applied to a PeftModel freezes it); check with model.print_trainable_parameters()."
        )
        ev = {"kind": "no_trainable_params", "trainable_params": 0, "total_params": total}
        out.append(
            finding(
                run_id=run_id,
                detector_id=ID,
                name=NAME,
                sev=Severity.ERROR,
                step_start=None,
                step_end=None,
                message=msg,
                suggestion=sugg,
                evidence=ev,
            )
        )
    adapted = payload_number(payload, "adapted_modules")
    expected = payload_number(payload, "expected_adapted_modules")
    if adapted is not None and expected is not None and expected > 0 and adapted < expected:
        targets = payload.get("target_modules")
        sev = Severity.ERROR if adapted == 0 else Severity.WARNING
        msg = (
            f"target_modules matched {int(adapted)} of the {int(expected)} modules expected"
            + (f" (target_modules={targets})" if targets else "")
            + ": part of the model gets no adapter."
        )
        sugg = (
            "Check the target_modules names against model.named_modules() (e.g. q_proj vs "
            'query_key_value), or use target_modules="all-linear"; PEFT only errors when no '
            "target matches at all."
        )
        ev = {"kind": "targets", "adapted_modules": adapted, "expected_adapted_modules": expected}
        out.append(
            finding(
                run_id=run_id,
                detector_id=ID,
                name=NAME,
                sev=sev,
                step_start=None,
                step_end=None,
                message=msg,
                suggestion=sugg,
                evidence=ev,
            )
        )
    return out


def _judge(
    opts: Options,
    run_id: str,
    rank: int,
    part: dict[str, Any],
    g: np.ndarray,
    source: str,
    payload: dict[str, Any],
    has_a: bool,
) -> list[Finding]:
    steps = part["step"]
    lr = part["lr"]
    loss = part["loss"]
    n = len(steps)
    active = np.ones(n, dtype=bool) if np.all(np.isnan(lr)) else (np.nan_to_num(lr) > 0)
    training_row = ~np.isnan(loss) | ~np.isnan(lr)
    zero = g == 0
    nan = np.isnan(g) & training_row  # missing or NaN (nulls arrive as NaN)
    bad = active & (zero | nan)
    out: list[Finding] = []
    measured = np.isfinite(g)
    all_zero = measured.any() and bool(np.all(g[measured] == 0))
    first_measured = int(np.flatnonzero(measured)[0]) if measured.any() else n
    need = min(opts.dead_min_points, max(3, n))
    for a, b in stats.incidents(bad):
        if b - a + 1 < need:
            continue
        seg = slice(a, b + 1)
        if all_zero and a <= first_measured:
            fell, l0, l1 = _loss_fell(steps, loss, opts)
            if fell:
                out.append(_not_measured(run_id, rank, steps, source, l0, l1))
                continue
        nz, nn = int(np.count_nonzero(zero[seg])), int(np.count_nonzero(nan[seg]))
        l0, l1 = _ends(loss[seg])
        msg = (
            f"rank {rank}: adapter gradients are dead: {source} was 0 or missing on "
            f"{b - a + 1} consecutive logged steps ({nz} zero, {nn} missing or NaN) from step "
            f"{int(steps[a]):,} to {int(steps[b]):,} with lr up to {fmt(np.nanmax(lr[seg]))}; "
            f"loss {fmt(l0)} -> {fmt(l1)}."
        )
        ev = {
            "kind": "dead",
            "series": source,
            "points": b - a + 1,
            "zero_points": nz,
            "missing_or_nan_points": nn,
            "max_lr": float(np.nanmax(lr[seg])) if np.isfinite(lr[seg]).any() else None,
            "detected_at_step": int(steps[a + need - 1]),
        }
        out.append(
            finding(
                run_id=run_id,
                detector_id=ID,
                name=NAME,
                sev=Severity.ERROR,
                step_start=int(steps[a]),
                step_end=int(steps[b]),
                message=msg,
                suggestion=SUGG_DEAD,
                rank=rank,
                evidence=ev,
            )
        )
    out.extend(_vanishing(opts, run_id, rank, steps, g, active, source, payload))
    if has_a:
        f = _lora_a_zero(opts, run_id, rank, part, steps, lr)
        if f is not None:
            out.append(f)
    return out


def _ends(loss: np.ndarray) -> tuple[float, float]:
    fin = loss[np.isfinite(loss)]
    if len(fin) == 0:
        return float("nan"), float("nan")
    k = max(1, len(fin) // 10)
    return float(np.median(fin[:k])), float(np.median(fin[-k:]))


def _loss_fell(steps: np.ndarray, loss: np.ndarray, opts: Options) -> tuple[bool, float, float]:
    ok = np.isfinite(loss)
    l0, l1 = _ends(loss)
    if ok.sum() < 5:
        return False, l0, l1
    t = trend1(steps[ok], loss[ok])
    span = float(steps[ok][-1] - steps[ok][0])
    drop = -t.slope * span / max(abs(l0), 1e-12)
    return bool(t.p < 0.01 and t.slope < 0 and drop >= opts.loss_fall), l0, l1


def _not_measured(
    run_id: str, rank: int, steps: np.ndarray, source: str, l0: float, l1: float
) -> Finding:
    msg = (
        f"rank {rank}: {source} is 0 on every logged step while the loss fell "
        f"({fmt(l0)} -> {fmt(l1)}): the gradient norm was not measured, so adapter gradients "
        "cannot be judged."
    )
    sugg = (
        "Log the real gradient norm (for HF Trainer, make sure grad_norm is computed: "
        "max_grad_norm > 0), or log grad_norm_adapter with the bundled trainer."
    )
    ev = {"kind": "not_measured", "series": source, "loss_start": l0, "loss_end": l1}
    return finding(
        run_id=run_id,
        detector_id=ID,
        name=NAME,
        sev=Severity.INFO,
        step_start=int(steps[0]),
        step_end=int(steps[-1]),
        message=msg,
        suggestion=sugg,
        rank=rank,
        evidence=ev,
    )


def _vanishing(
    opts: Options,
    run_id: str,
    rank: int,
    steps: np.ndarray,
    g: np.ndarray,
    active: np.ndarray,
    source: str,
    payload: dict[str, Any],
) -> list[Finding]:
    ok = active & np.isfinite(g) & (g > 0)
    if ok.sum() < 3:
        return []
    p = payload_number(payload, "trainable_params")
    rms = g / np.sqrt(p) if p and p > 0 else np.full(len(g), np.nan)
    tiny_abs = ok & (rms < opts.vanish_rms)
    early = g[ok][: opts.early_points]
    med = float(np.median(early)) if len(early) >= 10 else float("nan")
    tiny_rel = ok & (g < opts.vanish_ratio * med) if np.isfinite(med) else np.zeros(len(g), bool)
    mask = tiny_abs | tiny_rel
    need = min(opts.vanish_min_points, max(opts.dead_min_points, int(ok.sum()) // 4))
    out: list[Finding] = []
    for a, b in stats.incidents(mask):
        if b - a + 1 < need:
            continue
        seg = slice(a, b + 1)
        gm = float(np.nanmedian(g[seg]))
        parts = []
        if p is not None and tiny_abs[seg].any():  # tiny_abs holds only when p is known
            parts.append(
                f"per-element RMS {fmt(gm / np.sqrt(p))} over {fmt(p)} trainable params is "
                f"below Adam's eps ({fmt(opts.vanish_rms)})"
            )
        if tiny_rel[seg].any():
            parts.append(f"{fmt(gm / med)}x the run's early median {fmt(med)}")
        lora = ""
        r, alpha = payload_number(payload, "lora_r"), payload_number(payload, "lora_alpha")
        if r and alpha:
            lora = f" (lora_r={int(r)}, lora_alpha={fmt(alpha)}, scale alpha/r={fmt(alpha / r)})"
        msg = (
            f"rank {rank}: adapter gradients are vanishing: median {source} {fmt(gm)} from "
            f"step {int(steps[a]):,} to {int(steps[b]):,} ({b - a + 1} logged steps); "
            + "; ".join(parts)
            + lora
            + "."
        )
        ev = {
            "kind": "vanishing",
            "series": source,
            "median_norm": gm,
            "early_median": med,
            "trainable_params": p,
            "rms": gm / np.sqrt(p) if p else None,
            "points": b - a + 1,
            "detected_at_step": int(steps[a + need - 1]),
        }
        out.append(
            finding(
                run_id=run_id,
                detector_id=ID,
                name=NAME,
                sev=Severity.WARNING,
                step_start=int(steps[a]),
                step_end=int(steps[b]),
                message=msg,
                suggestion=SUGG_VANISH,
                rank=rank,
                evidence=ev,
            )
        )
    return out


def _lora_a_zero(
    opts: Options,
    run_id: str,
    rank: int,
    part: dict[str, Any],
    steps: np.ndarray,
    lr: np.ndarray,
) -> Finding | None:
    a = part[LORA_A]
    b = part[LORA_B] if part[LORA_B] is not None else np.full(len(a), np.nan)
    upd = np.flatnonzero(np.nan_to_num(lr) > 0) if not np.all(np.isnan(lr)) else np.arange(len(lr))
    if len(upd) == 0:
        return None
    s_first = int(steps[upd[0]])
    # One step of slack: the lr logged at a step may be the one for the next.
    after = np.flatnonzero((steps >= s_first + 2) & np.isfinite(a))
    if len(after) < opts.lora_a_min_points:
        return None
    zero = a[after] == 0
    lead = int(np.argmin(zero)) if not zero.all() else len(zero)
    if lead < opts.lora_a_min_points:
        return None
    rows = after[:lead]
    if not (np.nan_to_num(b[rows]) > 0).any():
        return None  # B gets no gradient either: a dead adapter, reported as such
    recovered = lead < len(zero)
    s0, s1 = int(steps[rows[0]]), int(steps[rows[-1]])
    msg = (
        f"rank {rank}: lora_B was never updated: grad_norm_lora_A is exactly 0 on {lead} "
        f"logged steps from {s0:,} to {s1:,}, after the first optimizer step with lr > 0 "
        f"(step {s_first:,}), while lora_B gets gradients (median {fmt(np.nanmedian(b[rows]))})"
        + (f"; lora_A gradients appear from step {int(steps[after[lead]]):,}" if recovered else "")
        + ". lora_A gradients are 0 only while B is still 0."
    )
    ev = {
        "kind": "lora_b_not_updated",
        "points": lead,
        "first_update_step": s_first,
        "recovered": recovered,
        "lora_b_median": float(np.nanmedian(b[rows])),
        "detected_at_step": int(steps[rows[opts.lora_a_min_points - 1]]),
    }
    return finding(
        run_id=run_id,
        detector_id=ID,
        name=NAME,
        sev=Severity.ERROR,
        step_start=s0,
        step_end=s1,
        message=msg,
        suggestion=SUGG_B,
        rank=rank,
        evidence=ev,
    )
