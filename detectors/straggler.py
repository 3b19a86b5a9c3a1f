"""TS301 straggler: one rank persistently slower than the others, or a rank
that stopped while the others went on (hung).

What it flags
    Per run and window of about 100 logged steps, the median of each rank's
    own time per step: ``compute_time_s`` plus ``data_time_s`` (the time
    before it waits on the others; whole ``step_time_s`` only when neither is
    logged, since collectives make step times equal). Score = the fastest
    rank's median / this rank's median (NVIDIA resiliency-ext semantics: 1.0
    is as fast as the fastest, 0.5 twice as slow). A warning when a rank
    scores below 0.90 for 3 windows in a row, an error below 0.75 for 2.
    Short runs use shorter windows (down to 20 steps) so that a run of a few
    hundred steps gets 3 windows; the evidence says so. Eval and checkpoint
    steps (and the step after each) are left out: rank 0 doing extra work
    there is structural, not a straggler. When the slowest rank rotates
    between windows, the cause is data imbalance (sequence lengths), not a
    slow device: one info finding for the run. A rank whose step counter
    lags the others by 2 or more, or that has been silent for more than 5x
    the median step time while the others advanced, is an error ("rank
    hung"). Where a format has no per-rank data (``per_rank: false`` in
    ``run_start``, or one rank of several logged), an info finding says that
    stragglers cannot be measured (only when the run has or may have more
    than one rank).

Why it matters
    In synchronous data parallelism every rank waits for the slowest at each
    all-reduce: one throttled GPU, a busy host or a slow dataloader sets the
    pace for the whole job, and a hung rank stalls it until the collective
    times out.

Example
    ``rank 3 is a straggler: its own time per step is 1.52x the fastest
    rank's (score 0.66, threshold 0.75) in 4 windows of 100 steps, steps
    200-599; the extra time is in compute (+0.160 s/step), not data loading
    (+0.001 s/step).``

Suggestion
    Compute: check that rank's GPU clocks, power and temperature
    (``nvidia-smi -q -d CLOCK,PERFORMANCE``), CPU affinity and other
    processes on the host; replace or cordon the node. Data: more dataloader
    workers, prefetching, local copies of remote data. Rotating: sequence
    packing or length-bucketed, token-balanced sampling. Hung: NCCL
    timeouts and ``NCCL_DEBUG=INFO``, the process and NIC on that host.

Options
    See the ``Options`` fields below (``[tool.tunescope.TS301]``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tunescope.detectors.rankwise import fmt, run_ended, see, special_steps, steps_slices
from tunescope.findings import Finding, Severity

if TYPE_CHECKING:
    import polars as pl

    from tunescope.detectors.base import Context

ID = "TS301"
NAME = "straggler"


@dataclass
class Options:
    window: int = 100
    """Logged steps per window (medians are taken per rank and window)."""
    min_window: int = 20
    """Shortest window used for short runs."""
    warn_score: float = 0.90
    """Warning when a rank's score (fastest median / its median) stays below this ..."""
    warn_windows: int = 3
    """... for this many consecutive windows."""
    error_score: float = 0.75
    """Error when the score stays below this ..."""
    error_windows: int = 2
    """... for this many consecutive windows."""
    hang_lag: int = 2
    """A rank whose last logged step is this many steps behind the others is hung."""
    hang_factor: float = 5.0
    """... or one silent for this many median step times while others advance."""
    rotate_share: float = 0.75
    """Slow windows spread over ranks, none slowest in more than this share of
    them (and the slowest rank changing at least twice), mean data imbalance."""

    def __post_init__(self) -> None:
        if not 0 < self.error_score <= self.warn_score <= 1:
            raise ValueError("need 0 < error_score <= warn_score <= 1")
        if self.window < self.min_window or self.min_window < 5:
            raise ValueError("need window >= min_window >= 5")
        if self.warn_windows < 1 or self.error_windows < 1 or self.hang_lag < 1:
            raise ValueError("warn_windows, error_windows and hang_lag must be >= 1")


def run(ctx: Context, opts: Options) -> list[Finding]:

    cols = ["run_id", "rank", "step", "ts", "compute_time_s", "data_time_s", "step_time_s"]
    df = ctx.steps().select(cols)
    findings: list[Finding] = []
    run_ids = ctx.runs()["run_id"].to_list()
    ranks_by_run: dict[str, list[int]] = {r: [] for r in run_ids}
    timed: dict[str, bool] = {}
    if df.height:
        any_time = (
            df["compute_time_s"].is_not_null()
            | df["data_time_s"].is_not_null()
            | df["step_time_s"].is_not_null()
        ).to_numpy()
        for r, k, a, b in steps_slices(ctx):
            ranks_by_run.setdefault(r, []).append(k)
            timed[r] = timed.get(r, False) or bool(any_time[a:b].any())
    measurable: list[str] = []
    for run_id in run_ids:
        payload = ctx.run_start(run_id)
        ws = payload.get("world_size")
        world = int(ws) if isinstance(ws, int | float) and not isinstance(ws, bool) else None
        ranks = ranks_by_run.get(run_id, [])
        if not ranks:
            continue
        if payload.get("per_rank") is False or len(ranks) == 1:
            if world is None or world > 1:
                findings.append(_unmeasurable(run_id, payload, world, len(ranks)))
            continue
        if not timed.get(run_id):
            findings.append(_unmeasurable(run_id, payload, world, len(ranks), timings=False))
        measurable.append(run_id)  # hangs are still judged from steps and timestamps
    if not measurable:
        return findings
    findings.extend(_hangs(ctx, opts, df, set(measurable)))
    findings.extend(_stragglers(ctx, opts, df, set(measurable)))
    return findings


def _unmeasurable(
    run_id: str, payload: dict[str, Any], world: int | None, ranks: int, timings: bool = True
) -> Finding:
    fmt_name = payload.get("format") or "this log"
    if not timings:
        why = f"the {ranks} ranks log no compute_time_s, data_time_s or step_time_s"
    elif payload.get("per_rank") is False:
        why = f"{fmt_name} has no per-rank data (one row for all ranks)"
    else:
        why = f"only {ranks} rank logged" + (f" of {world}" if world else " (world size unknown)")
    msg = f"Stragglers cannot be measured: {why}."
    sugg = (
        "Log compute_time_s and data_time_s on every rank (tunescope's EventWriter per "
        "rank, or the bundled trainer) to measure stragglers and hangs."
    )
    ev = {"kind": "unmeasurable", "world_size": world, "ranks_logged": ranks}
    return Finding(run_id, ID, NAME, Severity.INFO, None, None, msg + see(ID), sugg, evidence=ev)


def _hangs(ctx: Context, opts: Options, df: pl.DataFrame, runs: set[str]) -> list[Finding]:
    import polars as pl

    # Per rank: last step and time, and the typical step time (mean logged
    # step time, else the mean interval); then the run's view of each rank.
    last = (
        df.group_by("run_id", "rank")
        .agg(
            pl.col("step").max().alias("last_step"),
            pl.col("ts").max().alias("last_ts"),
            pl.col("step_time_s").mean().alias("st"),
            (
                (pl.col("ts").max() - pl.col("ts").min())
                / (pl.col("step").max() - pl.col("step").min())
            ).alias("span_dt"),
        )
        .filter(pl.col("run_id").is_in(list(runs)))
        .with_columns(pl.coalesce("st", "span_dt").alias("dt"))
        .with_columns(
            pl.col("last_step").max().over("run_id").alias("max_step"),
            pl.col("last_ts").max().over("run_id").alias("max_ts"),
            pl.col("dt").median().over("run_id").alias("run_dt"),
        )
        .with_columns(
            (pl.col("max_step") - pl.col("last_step")).alias("lag"),
            (pl.col("max_ts") - pl.col("last_ts")).alias("silent_s"),
        )
    )
    ended = run_ended(ctx)
    out: list[Finding] = []
    for row in last.iter_rows(named=True):
        lag, silent, dt = row["lag"], row["silent_s"], row["run_dt"]
        if ended.get((row["run_id"], int(row["rank"]))) == "completed":
            continue
        silent_x = silent / dt if dt and dt > 0 and silent is not None else 0.0
        if not (lag >= opts.hang_lag or (lag >= 1 and silent_x > opts.hang_factor)):
            continue
        rank = int(row["rank"])
        ev = {
            "kind": "hung",
            "last_step": row["last_step"],
            "others_last_step": row["max_step"],
            "lag_steps": lag,
            "silent_s": silent,
            "median_step_s": dt,
            "silent_x_step_time": silent_x,
        }
        msg = (
            f"rank {rank} hung: its last logged step is {row['last_step']:,} while the "
            f"others reached {row['max_step']:,} ({lag} steps behind; silent for "
            f"{fmt(silent)} s, {fmt(silent_x)}x the median step time)."
        )
        sugg = (
            f"Check the process of rank {rank} (is it alive, stuck in a collective, out of "
            "host memory?); set NCCL timeouts and NCCL_DEBUG=INFO, check the NIC of that "
            "host, and restart from the last checkpoint."
        )
        out.append(
            Finding(
                row["run_id"],
                ID,
                NAME,
                Severity.ERROR,
                int(row["last_step"]) + 1,
                int(row["max_step"]),
                msg + see(ID),
                sugg,
                rank=rank,
                evidence=ev,
            )
        )
    return out


def window_scores(
    ctx: Context, opts: Options, df: pl.DataFrame, runs: set[str] | None = None
) -> pl.DataFrame:
    """Per run, window and rank: medians of the rank's own time, compute and
    data time, and the score (fastest rank's median / this rank's median)."""
    import polars as pl

    # Window index per row, computed per run on numpy slices of the sorted
    # frame: ~``window`` logged points per window, fewer for short runs.
    special = special_steps(ctx)
    step = df["step"].to_numpy()
    keep = np.ones(df.height, dtype=bool)
    win = np.zeros(df.height, dtype=np.int64)
    wsize = np.zeros(df.height, dtype=np.int64)
    by_run: dict[str, list[tuple[int, int]]] = {}
    for run_id, _, a, b in steps_slices(ctx):
        by_run.setdefault(run_id, []).append((a, b))
    for run_id, parts in by_run.items():
        if runs is not None and run_id not in runs:
            for a, b in parts:
                keep[a:b] = False
            continue
        lo = min(int(step[a]) for a, _ in parts)
        hi = max(int(step[b - 1]) for _, b in parts)
        pts = max(b - a for a, b in parts)
        interval = max(1.0, (hi - lo + 1) / pts)  # steps per logged point
        w = (
            opts.window
            if pts >= opts.warn_windows * opts.window
            else max(opts.min_window, pts // opts.warn_windows)
        )
        sp = special.get(run_id)
        for a, b in parts:
            win[a:b] = ((step[a:b] - lo) / interval) // w
            wsize[a:b] = w
            if sp is not None and len(sp):
                keep[a:b] &= ~np.isin(step[a:b], sp)
    df = df.with_columns(pl.Series("win", win), pl.Series("wsize", wsize)).filter(pl.Series(keep))
    has_parts = pl.col("compute_time_s").is_not_null() | pl.col("data_time_s").is_not_null()
    own = (
        pl.when(has_parts)
        .then(pl.col("compute_time_s").fill_null(0.0) + pl.col("data_time_s").fill_null(0.0))
        .otherwise(pl.col("step_time_s"))
    )
    df = df.with_columns(own.alias("own"), has_parts.alias("parts")).filter(
        pl.col("own").is_not_null() & pl.col("own").is_finite()
    )
    if df.height == 0:
        return pl.DataFrame()
    keys = ["run_id", "win", "rank"]
    agg = (
        df.group_by(keys)
        .agg(
            pl.col("own").median().alias("own"),
            pl.col("parts").any().alias("parts"),
            pl.len().alias("n"),
            pl.col("step").min().alias("s0"),
            pl.col("step").max().alias("s1"),
            pl.col("wsize").first().alias("wsize"),
        )
        .filter(pl.col("n") >= pl.max_horizontal(pl.lit(5), pl.col("wsize") // 4))
        .with_columns(pl.col("rank").count().over("run_id", "win").alias("nranks"))
        .filter(pl.col("nranks") >= 2)
        .with_columns((pl.col("own").min().over("run_id", "win") / pl.col("own")).alias("score"))
    )
    # Compute and data medians (for the attribution) only where a rank is slow.
    slow = agg.filter(pl.col("score") < opts.warn_score)["run_id"].unique().to_list()
    split = (
        df.filter(pl.col("run_id").is_in(slow))
        .group_by(keys)
        .agg(
            pl.col("compute_time_s").median().alias("compute"),
            pl.col("data_time_s").median().alias("data"),
        )
    )
    agg = (
        agg.join(split, on=keys, how="left")
        .with_columns(
            (pl.col("compute") - pl.col("compute").min().over("run_id", "win")).alias("d_comp"),
            (pl.col("data") - pl.col("data").min().over("run_id", "win")).alias("d_data"),
        )
        .sort("run_id", "rank", "win")
    )
    return agg


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    from tunescope.detectors.stats import incidents

    return incidents(mask)


def _stragglers(ctx: Context, opts: Options, df: pl.DataFrame, runs: set[str]) -> list[Finding]:
    agg = window_scores(ctx, opts, df, runs)
    if agg.height == 0:
        return []
    out: list[Finding] = []
    for (run_id,), g in agg.partition_by(["run_id"], as_dict=True).items():
        run_id = str(run_id)
        incidents: list[dict[str, Any]] = []
        for (rank,), r in g.partition_by(["rank"], as_dict=True).items():
            win = r["win"].to_numpy()
            score = r["score"].to_numpy()
            slow = score < opts.warn_score
            for a, b in _runs(slow):
                # windows must also be consecutive in index
                breaks = [i for i in range(a + 1, b + 1) if win[i] != win[i - 1] + 1]
                bounds = [a, *breaks, b + 1]
                for lo, hi in itertools.pairwise(bounds):
                    seg = np.arange(lo, hi)
                    hard = [
                        s + opts.error_windows - 1
                        for s, e in _runs(score[seg] < opts.error_score)
                        if e - s + 1 >= opts.error_windows
                    ]
                    if hard:
                        sev, at = Severity.ERROR, hard[0]
                    elif len(seg) >= opts.warn_windows:
                        sev, at = Severity.WARNING, opts.warn_windows - 1
                    else:
                        continue
                    rows = r[lo:hi]
                    incidents.append(
                        {
                            "rank": int(rank),
                            "rows": rows,
                            "severity": sev,
                            "detected_at": int(rows["s1"][at]),
                        }
                    )
        if _rotating(g, opts):
            out.append(_rotation_finding(run_id, g, opts))
            continue
        for inc in incidents:
            out.append(_straggler_finding(run_id, inc, opts))
    return out


def _rotating(g: pl.DataFrame, opts: Options) -> bool:
    """The slowest rank changes between the slow windows: data imbalance."""
    import polars as pl

    per_win = (
        g.sort("win", "score")
        .group_by("win", maintain_order=True)
        .agg(pl.col("rank").first().alias("slowest"), pl.col("score").min().alias("score"))
        .filter(pl.col("score") < opts.warn_score)
        .sort("win")
    )
    if per_win.height < opts.warn_windows:
        return False
    slowest = per_win["slowest"].to_numpy()
    counts = np.unique(slowest, return_counts=True)[1]
    switches = int(np.count_nonzero(np.diff(slowest) != 0))
    return len(counts) >= 2 and counts.max() / len(slowest) < opts.rotate_share and switches >= 2


def _rotation_finding(run_id: str, g: pl.DataFrame, opts: Options) -> Finding:
    import polars as pl

    slow = g.filter(pl.col("score") < opts.warn_score)
    worst = float(slow["score"].min())
    ranks = sorted({int(x) for x in slow["rank"].to_list()})
    s0, s1 = int(slow["s0"].min()), int(slow["s1"].max())
    ev = {
        "kind": "rotating",
        "slow_windows": slow.height,
        "ranks": ranks,
        "min_score": worst,
        "window_steps": int(g["wsize"].max()),
    }
    msg = (
        f"The slowest rank rotates: ranks {', '.join(map(str, ranks))} each fall behind in "
        f"some windows ({slow.height} slow windows between steps {s0:,} and {s1:,}, lowest "
        f"score {worst:.2f}); that points at uneven batches (sequence lengths), not a slow "
        "device."
    )
    sugg = (
        "Balance the work per rank: sequence packing, length-bucketed or token-balanced "
        "sampling, or a fixed padded length."
    )
    return Finding(run_id, ID, NAME, Severity.INFO, s0, s1, msg + see(ID), sugg, evidence=ev)


def _straggler_finding(run_id: str, inc: dict[str, Any], opts: Options) -> Finding:
    rows = inc["rows"]
    rank = inc["rank"]
    score = rows["score"].to_numpy()
    worst = float(score.min())
    med = float(np.median(score))
    wsize = int(rows["wsize"].max())
    d_comp = _mean(rows["d_comp"].fill_null(np.nan).to_numpy())
    d_data = _mean(rows["d_data"].fill_null(np.nan).to_numpy())
    parts = bool(rows["parts"].any())
    s0, s1 = int(rows["s0"].min()), int(rows["s1"].max())
    sev: Severity = inc["severity"]
    thr = opts.error_score if sev is Severity.ERROR else opts.warn_score
    if not parts:
        cause = "only whole step times are logged, so the cause cannot be split"
        kind = "step_time"
        sugg = (
            "Log compute_time_s and data_time_s per rank to tell compute from data loading; "
            "check that rank's GPU clocks, power and temperature and its host."
        )
    elif np.isfinite(d_data) and (not np.isfinite(d_comp) or d_data > d_comp):
        cause = (
            f"the extra time is in data loading (+{fmt(d_data)} s/step), not compute "
            f"(+{fmt(d_comp if np.isfinite(d_comp) else 0.0)} s/step)"
        )
        kind = "data"
        sugg = (
            f"Speed up data loading on rank {rank}: more dataloader workers and prefetching, "
            "a local copy of remote data, and check that host's disk and CPU load."
        )
    else:
        cause = (
            f"the extra time is in compute (+{fmt(d_comp)} s/step), not data loading "
            f"(+{fmt(d_data if np.isfinite(d_data) else 0.0)} s/step)"
        )
        kind = "compute"
        sugg = (
            f"Check rank {rank}'s GPU clocks, power and temperature (nvidia-smi -q -d "
            "CLOCK,PERFORMANCE), other processes and CPU affinity on its host; replace or "
            "cordon the node if it stays slow."
        )
    adapted = wsize < opts.window
    win_text = f"{len(score)} windows of {wsize} steps" + (
        " (shortened for a short run)" if adapted else ""
    )
    msg = (
        f"rank {rank} is a straggler: its own time per step is {1 / med:.2f}x the fastest "
        f"rank's (median score {med:.2f}, lowest {worst:.2f}, threshold {thr:.2f}) in "
        f"{win_text}, steps {s0:,}-{s1:,}; {cause}."
    )
    ev = {
        "kind": kind,
        "scores": [round(float(x), 4) for x in score],
        "window_steps": wsize,
        "windows_adapted": adapted,
        "compute_deficit_s": d_comp,
        "data_deficit_s": d_data,
        "signal": "compute_time_s+data_time_s" if parts else "step_time_s",
        "detected_at_step": inc["detected_at"],
    }
    return Finding(run_id, ID, NAME, sev, s0, s1, msg + see(ID), sugg, rank=rank, evidence=ev)


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")
