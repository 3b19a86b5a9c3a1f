"""TS302 throughput-drop: a sustained fall in tokens/s or steps/s against the
run's own earlier level.

What it flags:
    Per run and rank, the rate of progress: ``tokens / step_time_s``
    (tokens/s), else ``1 / step_time_s`` (steps/s), else steps (times tokens
    per step, when logged) over ``ts`` differences, which also works for
    formats that log every N steps. Eval and checkpoint steps (and the step
    after each) and the first few steps (compilation, cache warm-up) are
    left out. The level is a trailing median over about 50 logged steps
    (a median of 10-step block medians); the reference is the best level of a
    8x longer median reached so far. A warning when the level stays below
    0.8x the reference, by more than 5 standard errors of those medians
    (noisy rates need a clearer fall), for at least 25 more steps (shorter
    windows for short runs). One finding per drop; a drop on every rank
    (the usual case: synchronous ranks wait for each other) is one
    run-wide finding. The step range starts at the estimated onset; the
    evidence holds the step at which the drop was confirmed.

    On a CPU run that logs ``compute_time_s``, a drop that slowed both the
    step's own compute and the rest of the step (data, optimizer, logging)
    by at least half of it is other processes on the same cores, not the
    run, and is left out. A slowdown of the run's own making slows one of
    the two (heavier math or a slower forward; a slower data loader).

Why it matters:
    A run that slows down by a third costs a third more GPU hours and can
    miss its time budget; the cause (a throttling GPU, a slow rank, a
    filling disk, data that got longer, a leak that makes the allocator
    retry) is usually fixable once noticed.

Example:
    ``every rank: throughput fell to 0.61x its earlier level: 20,813 ->
    12,791 tokens/s (median) from step 602 until the end of the log.``

Suggestion:
    Check TS301 (a straggler slows every rank) and TS401 (allocator
    retries); look at GPU clocks and temperature, other jobs on the hosts,
    the storage the data loader reads, and whether batches got longer. On a
    CPU run: other processes on the same cores (``uptime``), the thread
    count, the data loader and whether batches got longer.

Options:
    See the ``Options`` fields below (``[tool.tunescope.TS302]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tunescope.detectors.scans import stats
from tunescope.detectors.scans.rankwise import (
    collapse_ranks,
    finding,
    on_cpu,
    ranks_from_slices,
    special_steps,
    steps_slices,
)
from tunescope.findings import Finding, Severity
from tunescope.numbers import grouped as fmt

if TYPE_CHECKING:
    from tunescope.detectors.base import Frames

ID = "TS302"
NAME = "throughput-drop"
FIX = (
    "Check TS301 (one slow rank slows every rank) and TS401 (allocator retries), GPU "
    "clocks and temperature, other jobs on the hosts, the storage the data loader "
    "reads from, and whether batches got longer."
)
CPU_FIX = (
    "This run trained on a CPU: check other processes on the same cores (`uptime`, "
    "`top`), the thread count (cpu_threads), the storage the data loader reads from, "
    "and whether batches got longer; TS401 if memory grew (swapping)."
)


@dataclass
class Options:
    window: int = 50
    """Logged steps in the trailing median that gives the current level."""
    min_points: int = 25
    """Consecutive logged steps the level must stay low after crossing."""
    drop: float = 0.2
    """A level below (1 - drop) x the best earlier level is a drop."""
    skip_steps: int = 5
    """First logged steps left out (compilation, warm-up)."""
    min_run_points: int = 40
    """Fewest logged steps (after exclusions) for a verdict."""
    noise_z: float = 5.0
    """The fall of the level must also exceed this many standard errors of
    the medians (noisy rates, e.g. variable tokens per step, need more)."""
    load_share: float = 0.5
    """On a CPU run that logs compute_time_s: a drop that slowed both the
    step's compute and the rest of the step by at least this share of it
    (log terms) is machine load, not flagged."""

    def __post_init__(self) -> None:
        if not 0 < self.drop < 1:
            raise ValueError(f"drop must be in (0, 1), got {self.drop}")
        if self.window < 3 or self.min_points < 1 or self.min_run_points < 10:
            raise ValueError("need window >= 3, min_points >= 1, min_run_points >= 10")
        if not 0 < self.load_share <= 1:
            raise ValueError(f"load_share must be in (0, 1], got {self.load_share}")


def rates(
    steps: np.ndarray, ts: np.ndarray, st: np.ndarray, tok: np.ndarray
) -> tuple[np.ndarray, str]:
    """Throughput per logged step and its unit, from the best columns logged."""
    has_tok, has_st = bool(np.isfinite(tok).any()), bool(np.isfinite(st).any())
    with np.errstate(divide="ignore", invalid="ignore"):
        if has_st:
            r = tok / st if has_tok else 1.0 / st
        else:
            d_step = np.diff(steps, prepend=np.nan)
            d_ts = np.diff(ts, prepend=np.nan)
            r = (tok if has_tok else 1.0) * d_step / d_ts
    return r, ("tokens/s" if has_tok else "steps/s")


def _block_medians(x: np.ndarray, bs: int) -> np.ndarray:
    """Medians of consecutive blocks of ``bs`` points (the last may be shorter)."""
    nb = len(x) // bs
    out = stats.row_median(x[: nb * bs].reshape(nb, bs)) if nb else np.empty(0)
    if len(x) - nb * bs:
        out = np.append(out, np.median(x[nb * bs :]))
    return out


def run(ctx: Frames, opts: Options) -> list[Finding]:
    slices = steps_slices(ctx)
    if not slices:
        return []
    special = special_steps(ctx)
    resumed = special_steps(ctx, after=opts.skip_steps, kinds=("resume",))
    step_c = ctx.column("step", as_float=False)
    ts_c = ctx.column("ts")
    st_c = ctx.column("step_time_s")
    tok_c = ctx.column("tokens")
    ct_c = ctx.column("compute_time_s")
    out: list[Finding] = []
    for run_id, rank, a, b in slices:
        steps = step_c[a:b]
        rate, unit = rates(steps, ts_c[a:b], st_c[a:b], tok_c[a:b])
        keep = np.isfinite(rate) & (rate > 0)
        for sp in (special.get(run_id), resumed.get(run_id)):
            if sp is not None and len(sp):
                keep &= ~np.isin(steps, sp)
        idx = np.flatnonzero(keep)[opts.skip_steps :]
        if len(idx) < opts.min_run_points:
            continue
        cpu = on_cpu(ctx.run_start(run_id))
        found = _judge(opts, run_id, rank, steps[idx], rate[idx], unit, cpu=cpu)
        if found and cpu:
            ct, st = ct_c[a:b][idx], st_c[a:b][idx]
            found = [f for f in found if not _machine_load(f, steps[idx], ct, st, opts)]
        out.extend(found)
    return collapse_ranks(out, ranks_from_slices(slices))


def _machine_load(
    f: Finding, steps: np.ndarray, ct: np.ndarray, st: np.ndarray, opts: Options
) -> bool:
    """Whether a CPU run's drop is other processes on the same cores: they slow
    the step's own compute (``compute_time_s``) and the rest of the step (data,
    optimizer, logging) alike. A slowdown of the run's own making slows one of
    the two: heavier math or a slower forward its compute, a slower data
    loader the rest. Each part's slowdown is measured from its fast level
    before the onset (the lower quartile) to its median during the drop; both
    at least ``load_share`` of the drop (in log terms) is load. The shares go
    into the evidence."""
    rest = st - ct
    ok = np.isfinite(ct) & np.isfinite(rest) & (ct > 0) & (rest > 0)
    if ok.mean() < 0.5:
        return False  # compute time not logged: no way to tell
    ev = f.evidence
    i0 = int(np.searchsorted(steps, f.step_start or 0))
    i1 = int(np.searchsorted(steps, f.step_end or 0, side="right"))
    lo = max(0, i0 - 8 * int(ev["window_points"]))
    drop = -float(np.log(ev["ratio"]))
    shares = []
    for part in (ct, rest):
        before, during = part[lo:i0][ok[lo:i0]], part[i0:i1][ok[i0:i1]]
        if len(before) < 3 or len(during) < 3:
            return False
        slower = float(np.log(np.median(during) / np.quantile(before, 0.25)))
        shares.append(round(slower / drop, 3))
    ev["compute_share"], ev["rest_share"] = shares
    return min(shares) >= opts.load_share


def _judge(
    opts: Options,
    run_id: str,
    rank: int,
    steps: np.ndarray,
    raw: np.ndarray,
    unit: str,
    *,
    cpu: bool = False,
) -> list[Finding]:
    n = len(raw)
    w = min(opts.window, max(10, n // 8))
    bs = max(1, w // 5)  # medians of blocks, then medians of those: far cheaper than per point
    blocks = _block_medians(raw, bs)
    lb = max(1, w // bs)
    level = stats.rolling_median(blocks, lb, lb)
    # The reference (below) never exceeds the running maximum of the block
    # medians: when the level never falls below that by the drop, nothing can
    # be flagged, and the long rolling median is not worth computing.
    with np.errstate(invalid="ignore"):
        if not (level < (1 - opts.drop) * np.fmax.accumulate(blocks)).any():
            return []
    # The reference is the best level of an 8x longer median: less noise than
    # the current level, so its running maximum barely drifts up.
    ref = np.fmax.accumulate(stats.rolling_median(blocks, 8 * lb, 4 * lb))
    # The drop must also stand out of the noise of the medians: rate noise
    # from point-to-point differences (robust to the drop itself).
    lr = np.log(np.maximum(raw, 1e-300))
    sigma = 1.4826 * float(np.median(np.abs(np.diff(lr)))) / np.sqrt(2.0)
    # 1.5: a median of block medians is noisier than the median of the points
    se = 1.5 * sigma * np.sqrt(1.0 / w + 1.0 / (8 * w))
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.log(ref) - np.log(level)
    low = (
        np.isfinite(level)
        & np.isfinite(ref)
        & (level < (1 - opts.drop) * ref)
        & (gap > opts.noise_z * se)
    )
    need = max(3, min(opts.min_points, w // 2))
    out: list[Finding] = []
    for ba, bb in stats.incidents(low, gap=1):
        if (bb - ba + 1) * bs < need:
            continue
        a, b = ba * bs, min(n - 1, (bb + 1) * bs - 1)
        # Onset: the trailing median crosses about half a window after the
        # rate itself; the best single level shift around it dates the drop.
        lo_i = max(0, a - 2 * w)
        i0 = lo_i + _break(np.log(raw[lo_i : min(b, a + w) + 1]))
        b_end = b
        ended = b >= n - 1
        if not ended:  # recovered: date the return the same way
            lo_j = max(i0 + 1, b - 2 * w)
            b_end = max(i0, lo_j + _break(np.log(raw[lo_j : b + 1])) - 1)
        before = float(ref[ba])
        after = float(np.median(raw[i0 : b_end + 1]))
        ratio = after / before
        if ratio > 1 - 0.9 * opts.drop or b_end - i0 + 1 < need:
            continue  # the rate itself did not fall for long: a dip of the medians only
        until = "until the end of the log" if ended else f"until step {int(steps[b_end]):,}"
        msg = (
            f"rank {rank}: throughput fell to {ratio:.2f}x its earlier level: "
            f"{fmt(before)} -> {fmt(after)} {unit} (median) from step {int(steps[i0]):,} "
            f"{until}."
        )
        sugg = CPU_FIX if cpu else FIX
        ev = {
            "kind": "drop",
            "noise_sigma_log": sigma,
            "unit": unit,
            "before": before,
            "after": after,
            "ratio": ratio,
            "window_points": w,
            "detected_at_step": int(steps[min(a + need - 1, b)]),
            "recovered": not ended,
        }
        out.append(
            finding(
                run_id=run_id,
                detector_id=ID,
                name=NAME,
                sev=Severity.WARNING,
                step_start=int(steps[i0]),
                step_end=int(steps[b_end]),
                message=msg,
                suggestion=sugg,
                rank=rank,
                evidence=ev,
            )
        )
    return out


def _break(y: np.ndarray) -> int:
    """Index of the first point after the best single level shift in ``y``."""
    n = len(y)
    if n < 4:
        return 0
    c = np.cumsum(y - y.mean())[:-1]
    k = np.arange(1, n)
    return int(np.argmax(c * c / k + c * c / (n - k))) + 1
