"""TS302 throughput-drop: a sustained fall in tokens/s or steps/s against the
run's own earlier level.

What it flags
    Per run and rank, the rate of progress: ``tokens / step_time_s``
    (tokens/s), else ``1 / step_time_s`` (steps/s), else steps (times tokens
    per step, when logged) over ``ts`` differences, which also works for
    formats that log every N steps. Eval and checkpoint steps (and the step
    after each) and the first few steps (compilation, cache warm-up) are
    left out. The level is a trailing median over 50 logged steps; the
    reference is the best level reached so far. A warning when the level
    stays below 0.8x the reference for at least 25 more steps (shorter
    windows for short runs). One finding per drop; a drop on every rank
    (the usual case: synchronous ranks wait for each other) is one
    run-wide finding. The step range starts at the estimated onset; the
    evidence holds the step at which the drop was confirmed.

Why it matters
    A run that slows down by a third costs a third more GPU hours and can
    miss its time budget; the cause (a throttling GPU, a slow rank, a
    filling disk, data that got longer, a leak that makes the allocator
    retry) is usually fixable once noticed.

Example
    ``throughput fell to 0.62x its earlier level on every rank: 14,200 ->
    8,800 tokens/s (median) from step 3,200 until the end of the log.``

Suggestion
    Check TS301 (a straggler slows every rank) and TS401 (allocator
    retries); look at GPU clocks and temperature, other jobs on the hosts,
    the storage the data loader reads, and whether batches got longer.

Options
    See the ``Options`` fields below (``[tool.tunescope.TS302]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tunescope.detectors import stats
from tunescope.detectors.rankwise import collapse_ranks, fmt, ranks_of, see, special_steps
from tunescope.findings import Finding, Severity

if TYPE_CHECKING:
    import polars as pl

    from tunescope.detectors.base import Context

ID = "TS302"
NAME = "throughput-drop"


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

    def __post_init__(self) -> None:
        if not 0 < self.drop < 1:
            raise ValueError(f"drop must be in (0, 1), got {self.drop}")
        if self.window < 3 or self.min_points < 1 or self.min_run_points < 10:
            raise ValueError("need window >= 3, min_points >= 1, min_run_points >= 10")


def rates(ctx: Context, opts: Options) -> pl.DataFrame:
    """Per run, rank and step: the throughput (``rate``, in ``unit``), its
    trailing-median ``level`` and the best earlier level ``ref``."""
    import polars as pl

    df = ctx.steps().select("run_id", "rank", "step", "ts", "step_time_s", "tokens")
    special = special_steps(ctx)
    if special:
        excl = pl.DataFrame(
            {
                "run_id": [r for r, s in special.items() for _ in s],
                "step": np.concatenate(list(special.values())).astype(np.int64),
            },
            schema={"run_id": pl.String, "step": pl.Int64},
        )
    by = ["run_id", "rank"]
    d_step = pl.col("step").diff().over(by)
    d_ts = pl.col("ts").diff().over(by)
    has_tok = pl.col("tokens").is_not_null().any().over(by)
    has_st = pl.col("step_time_s").is_not_null().any().over(by)
    rate = (
        pl.when(has_st & has_tok)
        .then(pl.col("tokens") / pl.col("step_time_s"))
        .when(has_st)
        .then(1.0 / pl.col("step_time_s"))
        .when(has_tok)
        .then(pl.col("tokens") * d_step / d_ts)
        .otherwise(d_step / d_ts)
    )
    unit = pl.when(has_tok).then(pl.lit("tokens/s")).otherwise(pl.lit("steps/s"))
    df = df.sort(*by, "step").with_columns(rate.alias("rate"), unit.alias("unit"))
    if special:
        df = df.join(excl, on=["run_id", "step"], how="anti")
    df = df.filter(pl.col("rate").is_finite() & (pl.col("rate") > 0))
    df = df.filter(pl.int_range(pl.len()).over(by) >= opts.skip_steps)
    n = pl.len().over(by)
    w = pl.min_horizontal(pl.lit(opts.window), pl.max_horizontal(pl.lit(10), n // 8))
    df = df.with_columns(w.alias("w"))
    # rolling windows need a literal size: compute per distinct size (one or two)
    parts = []
    for (size,), part in df.partition_by(["w"], as_dict=True).items():
        size = int(size)
        # The reference is the best level of a 4x longer median: less noise
        # than the current level, so its running maximum barely drifts up.
        part = part.with_columns(
            pl.col("rate").rolling_median(size, min_samples=size).over(by).alias("level"),
            pl.col("rate")
            .rolling_median(4 * size, min_samples=2 * size)
            .cum_max()
            .over(by)
            .alias("ref"),
        )
        parts.append(part)
    if not parts:
        return df
    return pl.concat(parts).sort(*by, "step")


def run(ctx: Context, opts: Options) -> list[Finding]:
    df = rates(ctx, opts)
    if df.height == 0 or "level" not in df.columns:
        return []
    out: list[Finding] = []
    for (run_id, rank), part in df.partition_by(["run_id", "rank"], as_dict=True).items():
        if part.height < opts.min_run_points:
            continue
        out.extend(_judge(opts, str(run_id), int(rank), part))
    return collapse_ranks(out, ranks_of(df))


def _judge(opts: Options, run_id: str, rank: int, part: Any) -> list[Finding]:
    steps = part["step"].to_numpy()
    raw = part["rate"].to_numpy()
    level = part["level"].to_numpy()
    ref = part["ref"].to_numpy()
    w = int(part["w"][0])
    need = max(3, min(opts.min_points, w // 2))
    unit = str(part["unit"][0])
    low = np.isfinite(level) & (level < (1 - opts.drop) * ref)
    out: list[Finding] = []
    for a, b in stats.incidents(low, gap=max(1, w // 10)):
        if b - a + 1 < need:
            continue
        # Onset: the trailing median crosses about half a window after the
        # rate itself; the best single level shift around it dates the drop.
        lo_i = max(0, a - 2 * w)
        i0 = lo_i + _break(np.log(raw[lo_i : min(b, a + w) + 1]))
        b_end = b
        if b < len(steps) - 1:  # recovered: date the return the same way
            lo_j = max(i0 + 1, b - 2 * w)
            b_end = max(i0, lo_j + _break(np.log(raw[lo_j : b + 1])) - 1)
        before = float(ref[a])
        after = float(np.median(raw[a : b + 1]))
        ratio = after / before
        ended = b == len(steps) - 1
        until = "until the end of the log" if ended else f"until step {int(steps[b_end]):,}"
        msg = (
            f"rank {rank}: throughput fell to {ratio:.2f}x its earlier level: "
            f"{fmt(before)} -> {fmt(after)} {unit} (median) from step {int(steps[i0]):,} "
            f"{until}."
        )
        sugg = (
            "Check TS301 (one slow rank slows every rank) and TS401 (allocator retries), GPU "
            "clocks and temperature, other jobs on the hosts, the storage the data loader "
            "reads from, and whether batches got longer."
        )
        ev = {
            "kind": "drop",
            "unit": unit,
            "before": before,
            "after": after,
            "ratio": ratio,
            "window_points": w,
            "detected_at_step": int(steps[min(a + need - 1, b)]),
            "recovered": not ended,
        }
        out.append(
            Finding(
                run_id,
                ID,
                NAME,
                Severity.WARNING,
                int(steps[i0]),
                int(steps[b_end]),
                msg + see(ID),
                sugg,
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
