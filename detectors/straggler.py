"""TS301 straggler: one rank persistently slower than the others, or a rank
that stopped while the others went on (hung).

What it flags:
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
    ``run_start``, or one rank of several logged), the run summary says that
    stragglers cannot be measured (``limits``); no finding is raised.

Why it matters:
    In synchronous data parallelism every rank waits for the slowest at each
    all-reduce: one throttled GPU, a busy host or a slow dataloader sets the
    pace for the whole job, and a hung rank stalls it until the collective
    times out.

Example:
    ``rank 2 is a straggler: its own time per step is 1.50x the fastest
    rank's (median score 0.67, lowest 0.67, threshold 0.75) in 4 windows of
    100 steps, steps 201-600; the extra time is in compute (+0.15 s/step),
    not data loading (+1.19e-04 s/step).``

Suggestion:
    Compute: check that rank's GPU clocks, power and temperature
    (``nvidia-smi -q -d CLOCK,PERFORMANCE``), CPU affinity and other
    processes on the host; replace or cordon the node. Data: more dataloader
    workers, prefetching, local copies of remote data. Rotating: sequence
    packing or length-bucketed, token-balanced sampling. Hung: NCCL
    timeouts and ``NCCL_DEBUG=INFO``, the process and NIC on that host.

Options:
    See the ``Options`` fields below (``[tool.tunescope.TS301]``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tunescope.detectors.scans.rankwise import finding, run_ended, steps_slices
from tunescope.detectors.scans.straggler_windows import window_scores
from tunescope.findings import Finding, Severity
from tunescope.numbers import grouped as fmt
from tunescope.words import count

if TYPE_CHECKING:
    import polars as pl

    from tunescope.detectors.base import Frames

ID = "TS301"
NAME = "straggler"
# what the training guard may do: a rank that stops making progress altogether
# (hung) gets a checkpoint from the watchdog (train/watchdog.py)
GUARD_ACTIONS = ("checkpoint",)


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


def run(ctx: Frames, opts: Options) -> list[Finding]:

    cols = ["run_id", "rank", "step", "ts", "compute_time_s", "data_time_s", "step_time_s"]
    df = ctx.steps().select(cols)
    findings: list[Finding] = []
    run_ids = ctx.runs()["run_id"].to_list()
    ranks_by_run: dict[str, list[int]] = {r: [] for r in run_ids}
    timed: dict[str, bool] = {}
    if df.height:
        any_time = (
            ctx.logged("compute_time_s") | ctx.logged("data_time_s") | ctx.logged("step_time_s")
        )
        for r, k, a, b in steps_slices(ctx):
            ranks_by_run.setdefault(r, []).append(k)
            timed[r] = timed.get(r, False) or bool(any_time[a:b].any())
    measurable: list[str] = []
    for run_id in run_ids:
        payload = ctx.run_start(run_id)
        ranks = ranks_by_run.get(run_id, [])
        if not ranks:
            continue
        if payload.get("per_rank") is False or len(ranks) == 1:
            continue  # what the log cannot show is in the run summary (detectors/limits.py)
        measurable.append(run_id)  # hangs are still judged from steps and timestamps
    if not measurable:
        return findings
    findings.extend(_hangs(ctx, opts, df, set(measurable)))
    findings.extend(_stragglers(ctx, opts, df, set(measurable)))
    return findings


def _hangs(ctx: Frames, opts: Options, df: pl.DataFrame, runs: set[str]) -> list[Finding]:

    # Per rank: last step and time, and the typical step time (mean logged
    # step time, else the mean interval); then the run's view of each rank.
    step = ctx.column("step", as_float=False)
    ts = ctx.column("ts")
    st = ctx.column("step_time_s")
    per: list[dict[str, Any]] = []
    for run_id, rank, a, b in steps_slices(ctx):
        if run_id not in runs:
            continue
        t, s_ = ts[a:b], step[a:b]
        fin = np.isfinite(t)
        if not fin.any():
            continue
        sts = st[a:b][np.isfinite(st[a:b])]
        span = float(s_[-1] - s_[0])
        dt = (
            float(sts.mean())
            if len(sts)
            else (float(t[fin][-1] - t[fin][0]) / span if span else 0.0)
        )
        per.append(
            {
                "run_id": run_id,
                "rank": rank,
                "last_step": int(s_[-1]),
                "last_ts": float(t[fin].max()),
                "dt": dt,
            }
        )
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in per:
        by_run.setdefault(row["run_id"], []).append(row)
    rows_out: list[dict[str, Any]] = []
    for group in by_run.values():
        max_step = max(r["last_step"] for r in group)
        max_ts = max(r["last_ts"] for r in group)
        run_dt = float(np.median([r["dt"] for r in group]))
        for r in group:
            rows_out.append(
                {
                    **r,
                    "max_step": max_step,
                    "lag": max_step - r["last_step"],
                    "silent_s": max_ts - r["last_ts"],
                    "run_dt": run_dt,
                }
            )
    ended = run_ended(ctx)
    out: list[Finding] = []
    for row in rows_out:
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
            finding(
                run_id=row["run_id"],
                detector_id=ID,
                name=NAME,
                sev=Severity.ERROR,
                step_start=int(row["last_step"]) + 1,
                step_end=int(row["max_step"]),
                message=msg,
                suggestion=sugg,
                rank=rank,
                evidence=ev,
            )
        )
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    from tunescope.detectors.scans.stats import incidents

    return incidents(mask)


def _stragglers(ctx: Frames, opts: Options, df: pl.DataFrame, runs: set[str]) -> list[Finding]:
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
    worst = float(slow["score"].to_numpy().min())
    ranks = sorted({int(x) for x in slow["rank"].to_list()})
    s0, s1 = int(slow["s0"].to_numpy().min()), int(slow["s1"].to_numpy().max())
    ev = {
        "kind": "rotating",
        "slow_windows": slow.height,
        "ranks": ranks,
        "min_score": worst,
        "window_steps": int(g["wsize"].to_numpy().max()),
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
    return finding(
        run_id=run_id,
        detector_id=ID,
        name=NAME,
        sev=Severity.INFO,
        step_start=s0,
        step_end=s1,
        message=msg,
        suggestion=sugg,
        evidence=ev,
    )


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
    win_text = f"{count(len(score), 'window')} of up to {wsize} steps" + (
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
    return finding(
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


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")
