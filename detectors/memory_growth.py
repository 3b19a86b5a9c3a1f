"""TS401 memory-growth: the allocated-memory floor keeps rising (a leak), with
an out-of-memory forecast; reserved memory far above allocated and rising
(fragmentation).

What it flags:
    Per run and rank, the step-boundary floor of ``mem_allocated_mb`` (the
    minimum over short blocks of steps, so eval spikes, variable sequence
    lengths and gradient-accumulation sawtooth do not count) rising steadily
    once the one-time allocations are done: after the first optimizer steps
    (optimizer state is allocated lazily), the first eval and the first
    checkpoint, with eval and checkpoint steps (and the steps after a
    resume) left out. A window is flagged when Kendall's tau is positive with
    p < 0.01 (the variance inflated for the lag-1 autocorrelation of the
    residuals, since memory series wander), the 99% Theil-Sen lower bound of
    the slope is above 0, the growth over the window exceeds 1% of the level
    (and a few MiB), and the rise is spread over the window rather than one
    jump (a torch.compile recompile or a CUDA-graph pool is a level shift,
    not a leak); a leak must show in two overlapping windows (or the whole
    of a short run). A floor that rose and then stayed flat over the last
    fifth of the run is reported as info (settled at a higher level).
    Windows of several sizes (200, 1000, 4000 logged
    points, and the whole run when it is shorter) catch fast and slow leaks.
    With the device capacity known (``device_memory_mb`` in ``run_start``, or
    per-device ``memory_mb`` in ``devices``), the peak's slope gives the
    steps and wall time left before out-of-memory: an error when that comes
    before the planned end of the run (or within an hour), else a warning.
    Separately, reserved memory well above allocated (over 30% of reserved,
    or 20% of the device) and still rising at the end of the run is flagged
    as allocator fragmentation. On CPU runs ``mem_allocated_mb`` is the
    process RSS and is judged the same way.

    Not a leak: reserved memory growing and then levelling off (the caching
    allocator keeps what it reserved, by design), a peak statistic that only
    rises by definition, one-time step-ups.

Why it matters:
    A leak (a loss kept with its graph, metric lists of tensors, caches that
    never clear) ends in an out-of-memory crash hours into a run; catching
    the slope early saves the run and says how long is left.

Example:
    ``every rank: the allocated-memory floor grew 7.9 MiB/step from step 300
    to 1,500 (about 9,475 MiB on top of 19,999 MiB; Kendall p=8.5e-30 on a
    1480-point window). At this rate the peak reaches the 81,920 MiB device
    in about 5,566 steps (1.4 h), before the planned end (8,500 steps
    left).``

Suggestion:
    Log scalars with ``.item()``/``.detach()`` (never accumulate a loss
    tensor), clear lists of tensors, then take a memory snapshot
    (``torch.cuda.memory._record_memory_history()`` and
    ``_dump_snapshot()``) to find the allocation that grows. For
    fragmentation: ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``, or
    pad batches to a few bucketed lengths.

Options:
    See the ``Options`` fields below (``[tool.tunescope.TS401]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tunescope.detectors.scans.memory_forecast import capacity_mb, forecast, forecast_text
from tunescope.detectors.scans.memory_windows import merge_windows, onset, rising_windows
from tunescope.detectors.scans.rankwise import (
    collapse_ranks,
    finding,
    first_event_step,
    on_cpu,
    ranks_from_slices,
    run_ended,
    special_steps,
    steps_slices,
    trend1,
)
from tunescope.findings import Finding, Severity
from tunescope.numbers import grouped as fmt

if TYPE_CHECKING:
    from tunescope.detectors.base import Frames

ID = "TS401"
NAME = "memory-growth"
GUARD_ACTIONS = ("checkpoint",)  # what the training guard may do about it (train/guard.py)


@dataclass
class Options:
    skip_steps: int = 20
    """Logged steps after the first optimizer step left out (lazy optimizer
    state, allocator warm-up)."""
    windows: list[int] = field(default_factory=lambda: [200, 1000, 4000])
    """Window sizes of the trend test, in logged points; the whole run is
    also tested when it is shorter than the largest."""
    min_points: int = 50
    """Fewest logged points (after exclusions) for any verdict."""
    points_per_window: int = 64
    """Each window is reduced to this many block minima (the floor) before
    the trend test."""
    p_value: float = 0.01
    """Kendall / Mann-Kendall p-value below which a rise is significant."""
    confidence: float = 0.99
    """Confidence of the Theil-Sen slope bound that must be above 0."""
    min_growth: float = 0.01
    """Growth over a window must exceed this fraction of the memory level."""
    min_growth_mb: float = 16.0
    """... and this many MiB."""
    max_jump_share: float = 0.75
    """At most this share of the rise may happen between two adjacent
    quarters of the window (above: a one-time level shift, not a leak)."""
    headroom: float = 0.02
    """Fraction of device memory kept as headroom in the out-of-memory forecast."""
    oom_error_hours: float = 1.0
    """A forecast out-of-memory within this many hours of wall time is an error."""
    frag_ratio: float = 0.3
    """Fragmentation: reserved minus allocated above this fraction of reserved ..."""
    frag_capacity_ratio: float = 0.2
    """... or above this fraction of the device (when its capacity is known)."""
    frag_window: int = 200
    """Fragmentation is judged on the last this many logged points."""

    def __post_init__(self) -> None:
        if self.min_points < 10:
            raise ValueError(f"min_points must be >= 10, got {self.min_points}")
        if not self.windows or min(self.windows) < 10:
            raise ValueError(f"windows must be sizes >= 10, got {self.windows}")
        if not 8 <= self.points_per_window <= 400:
            raise ValueError(f"points_per_window must be 8..400, got {self.points_per_window}")
        if not 0 < self.p_value < 1 or not 0.5 < self.confidence < 1:
            raise ValueError("p_value must be in (0, 1) and confidence in (0.5, 1)")


def run(ctx: Frames, opts: Options) -> list[Finding]:

    cols = ["run_id", "rank", "step", "ts", "mem_allocated_mb", "mem_reserved_mb", "mem_peak_mb"]
    df = ctx.steps()
    if df.height == 0 or not ctx.logged("mem_allocated_mb").any():
        return []
    special = special_steps(ctx)
    resumed = special_steps(ctx, after=opts.skip_steps, kinds=("resume",))
    first_eval = first_event_step(ctx, "eval")
    first_ckpt = first_event_step(ctx, "checkpoint")
    ended = run_ended(ctx)
    runs = {r["run_id"]: r for r in ctx.runs().iter_rows(named=True)}
    arrays = {c: ctx.column(c) for c in cols[2:]}
    slices = steps_slices(ctx)
    findings: list[Finding] = []
    for run_id, rank, a, b in slices:
        part = {c: v[a:b] for c, v in arrays.items()}
        findings.extend(
            _judge_rank(
                ctx,
                opts,
                str(run_id),
                int(rank),
                part,
                _union(special.get(str(run_id)), resumed.get(str(run_id))),
                first_eval.get(str(run_id)),
                first_ckpt.get(str(run_id)),
                ended,
                runs.get(str(run_id), {}),
            )
        )
    return collapse_ranks(findings, ranks_from_slices(slices))


def _judge_rank(
    ctx: Frames,
    opts: Options,
    run_id: str,
    rank: int,
    part: dict[str, np.ndarray],
    special: np.ndarray | None,
    first_eval: int | None,
    first_ckpt: int | None,
    ended: dict[tuple[str, int], str],
    run_row: dict[str, Any],
) -> list[Finding]:
    steps_all = part["step"]
    alloc_all = part["mem_allocated_mb"]
    keep = _judged_points(opts, part, special, first_eval, first_ckpt)
    n = int(keep.sum())
    if n < opts.min_points:
        return []
    steps = steps_all[keep].astype(float)
    alloc = alloc_all[keep]
    scales = sorted({w for w in opts.windows if w <= n} | ({n} if n < max(opts.windows) else set()))
    payload = ctx.run_start(run_id)
    cap = capacity_mb(payload, rank)
    cpu = on_cpu(payload)
    what = "process RSS (CPU run)" if cpu else "allocated-memory floor"
    out: list[Finding] = []

    for group in merge_windows(rising_windows(steps, alloc, opts, scales)):
        # One window alone is not enough (wandering noise); a leak shows in the
        # overlapping windows around it. A short run has one whole-run window.
        if len(group) < 2 and group[0]["window"] < n:
            continue
        best = max(group, key=lambda d: d["growth"] / max(d["level"], 1.0))
        s0, s1 = int(min(d["start"] for d in group)), int(max(d["end"] for d in group))
        span = (steps >= s0) & (steps <= s1)
        s0 = max(s0, int(onset(steps[span], alloc[span])))
        ev = _leak_evidence(best, group, cpu)
        # A floor that rose and then levelled off is not a leak: the last part
        # of the run has a slope confidently far below the rise's.
        tail_n = max(opts.min_points, n // 5)
        if steps[n - tail_n] > s0 + (s1 - s0) // 4:
            tt = trend1(steps[n - tail_n :], alloc[n - tail_n :], alpha=opts.confidence)
            if tt.hi < 0.25 * best["slope"]:
                out.append(_plateaued(run_id, rank, what, s0, steps, alloc, tail_n, tt, best, ev))
                continue
        sev, fc = forecast(opts, part, steps_all, s0, s1, best, cap, run_id, rank, ended)
        sev, tail = forecast_text(sev, fc, cap, run_row, ev, opts, cpu)
        rise = best["slope"] * (s1 - s0)
        base = float(np.median(alloc[span][: max(5, int(span.sum()) // 10)])) if span.any() else 0
        ev["rise_mb"] = rise
        msg = (
            f"rank {rank}: the {what} grew {fmt(best['slope'])} MiB/step from step {s0:,} to "
            f"{s1:,} (about {fmt(rise)} MiB on top of {fmt(base)} MiB; Kendall p="
            f"{best['p']:.1e} on a {best['window']}-point window). " + tail
        )
        sugg = SUGG_LEAK
        out.append(
            finding(
                run_id=run_id,
                detector_id=ID,
                name=NAME,
                sev=sev,
                step_start=s0,
                step_end=s1,
                message=msg,
                suggestion=sugg,
                rank=rank,
                evidence=ev,
            )
        )

    frag = _fragmentation(opts, part, steps_all, keep, cap, rank, run_id)
    if frag is not None:
        out.append(frag)
    return out


SUGG_LEAK = (
    "Look for tensors kept alive across steps: log scalars with .item() or .detach() "
    "(never accumulate a loss tensor), clear lists of tensors and caches; then record "
    "a memory snapshot (torch.cuda.memory._record_memory_history(), _dump_snapshot()) "
    "to find the allocation that grows."
)


def _judged_points(
    opts: Options,
    part: dict[str, np.ndarray],
    special: np.ndarray | None,
    first_eval: int | None,
    first_ckpt: int | None,
) -> np.ndarray:
    """The rank's points that are judged: finite, not at eval or checkpoint
    steps, and after the one-time allocations (optimizer state, first eval,
    first checkpoint, when waiting for them still leaves enough points)."""
    steps_all = part["step"]
    start = int(steps_all.min()) + opts.skip_steps
    for s in (first_eval, first_ckpt):
        if s is not None and np.count_nonzero(steps_all > s + 1) >= opts.min_points:
            start = max(start, s + 2)
    keep = (steps_all >= start) & np.isfinite(part["mem_allocated_mb"])
    if special is not None and len(special):
        keep &= ~np.isin(steps_all, special)
    return keep


def _leak_evidence(
    best: dict[str, float], group: list[dict[str, float]], cpu: bool
) -> dict[str, Any]:
    """The numbers behind a leak finding: the strongest window of the group."""
    return {
        "kind": "leak",
        "series": "mem_allocated_mb",
        "slope_mb_per_step": best["slope"],
        "slope_lower_bound": best["lo"],
        "kendall_tau": best["tau"],
        "p_value": best["p"],
        "growth_mb": best["growth"],
        "level_mb": best["level"],
        "window_points": best["window"],
        "windows_flagged": len(group),
        "detected_at_step": int(min(d["end"] for d in group)),
        "cpu_rss": cpu,
    }


def _plateaued(
    run_id: str,
    rank: int,
    what: str,
    s0: int,
    steps: np.ndarray,
    alloc: np.ndarray,
    tail_n: int,
    tt: Any,
    best: dict[str, float],
    ev: dict[str, Any],
) -> Finding:
    t0 = int(steps[-tail_n])
    before = float(np.median(alloc[steps <= s0][-20:])) if (steps <= s0).any() else float(alloc[0])
    after = float(np.median(alloc[-tail_n:]))
    ev.update(
        {
            "kind": "growth_plateaued",
            "flat_from_step": t0,
            "tail_slope_mb_per_step": tt.slope,
            "tail_slope_upper_bound": tt.hi,
            "level_before_mb": before,
            "level_after_mb": after,
        }
    )
    msg = (
        f"rank {rank}: the {what} rose from about {fmt(before)} to {fmt(after)} MiB after "
        f"step {s0:,} (up to {fmt(best['slope'])} MiB/step) and then levelled off: flat over "
        f"the last {tail_n} logged steps (from step {t0:,}, slope at most {fmt(tt.hi)} "
        "MiB/step). Not a leak; memory settled at a higher level."
    )
    sugg = (
        "Nothing to fix if the new level leaves headroom; a one-time growth is usually a "
        "cache, compiled kernels for new shapes or optimizer state."
    )
    return finding(
        run_id=run_id,
        detector_id=ID,
        name=NAME,
        sev=Severity.INFO,
        step_start=s0,
        step_end=int(steps[-1]),
        message=msg,
        suggestion=sugg,
        rank=rank,
        evidence=ev,
    )


def _fragmentation(
    opts: Options,
    part: dict[str, np.ndarray],
    steps_all: np.ndarray,
    keep: np.ndarray,
    cap: float | None,
    rank: int,
    run_id: str,
) -> Finding | None:
    res = part["mem_reserved_mb"]
    alloc = part["mem_allocated_mb"]
    ok = keep & np.isfinite(res) & np.isfinite(alloc)
    if ok.sum() < opts.min_points:
        return None
    tail = np.flatnonzero(ok)[-opts.frag_window :]  # only the last window is judged
    steps = steps_all[tail].astype(float)
    gap = res[tail] - alloc[tail]
    reserved = res[tail]
    end_gap = float(np.median(gap[-10:]))
    end_res = float(np.median(reserved[-10:]))
    far = end_gap > opts.frag_ratio * end_res or (
        cap is not None and end_gap > opts.frag_capacity_ratio * cap
    )
    if not far or len(gap) < opts.min_points:
        return None
    found = rising_windows(steps, gap, opts, [len(gap)])
    if not found:
        return None
    w = found[-1]
    if w["growth"] < opts.min_growth * end_res:
        return None
    ev: dict[str, Any] = {
        "kind": "fragmentation",
        "reserved_mb": end_res,
        "allocated_mb": float(np.median(alloc[np.flatnonzero(ok)[-10:]])),
        "gap_mb": end_gap,
        "gap_slope_mb_per_step": w["slope"],
        "p_value": w["p"],
        "capacity_mb": cap,
    }
    msg = (
        f"rank {rank}: reserved memory is {fmt(end_res)} MiB against {fmt(ev['allocated_mb'])} "
        f"MiB allocated ({100 * end_gap / max(end_res, 1e-9):.0f}% of it cached but unused) "
        f"and the gap is still rising ({fmt(w['slope'])} MiB/step over steps "
        f"{int(w['start']):,}-{int(w['end']):,}): the allocator is fragmenting."
    )
    sugg = (
        "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (or max_split_size_mb), "
        "and pad batches to a few bucketed sequence lengths."
    )
    return finding(
        run_id=run_id,
        detector_id=ID,
        name=NAME,
        sev=Severity.WARNING,
        step_start=int(w["start"]),
        step_end=int(w["end"]),
        message=msg,
        suggestion=sugg,
        rank=rank,
        evidence=ev,
    )


def _union(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return a if b is None else b
    return np.union1d(a, b)
