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

from tunescope.detectors.rankwise import finding, run_ended, special_steps, steps_slices
from tunescope.findings import Finding, Severity
from tunescope.numbers import grouped as fmt
from tunescope.words import count

if TYPE_CHECKING:
    import polars as pl

    from tunescope.detectors.base import Context

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


def run(ctx: Context, opts: Options) -> list[Finding]:

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


def _hangs(ctx: Context, opts: Options, df: pl.DataFrame, runs: set[str]) -> list[Finding]:

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
                row["run_id"],
                ID,
                NAME,
                Severity.ERROR,
                int(row["last_step"]) + 1,
                int(row["max_step"]),
                msg,
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

    # Per run: ~``window`` logged points per window (fewer for short runs);
    # per rank, window medians with numpy on slices of the sorted frame.
    special = special_steps(ctx)
    step = ctx.column("step", as_float=False)
    comp = ctx.column("compute_time_s")
    data = ctx.column("data_time_s")
    c_nan, d_nan = np.isnan(comp), np.isnan(data)
    if not c_nan.any() and not d_nan.any():
        parts_mask = np.ones(len(comp), dtype=bool)  # both parts on every row (the usual case)
        own = comp + data
    else:
        parts_mask = ~c_nan | ~d_nan
        own = np.where(
            parts_mask,
            np.where(c_nan, 0.0, comp) + np.where(d_nan, 0.0, data),
            ctx.column("step_time_s"),
        )
    finite = np.isfinite(own)
    by_run: dict[str, list[tuple[int, int, int]]] = {}
    for run_id, rank, a, b in steps_slices(ctx):
        if runs is None or run_id in runs:
            by_run.setdefault(run_id, []).append((rank, a, b))
    cols: dict[str, list[Any]] = {
        k: [] for k in ("run_id", "rank", "win", "own", "n", "s0", "s1", "parts", "wsize")
    }
    rows_of: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for run_id, parts in by_run.items():
        lo = min(int(step[a]) for _, a, _ in parts)
        hi = max(int(step[b - 1]) for _, _, b in parts)
        pts = max(b - a for _, a, b in parts)
        interval = max(1.0, (hi - lo + 1) / pts)  # steps per logged point
        w = (
            opts.window
            if pts >= opts.warn_windows * opts.window
            else max(opts.min_window, pts // opts.warn_windows)
        )
        sp = special.get(run_id)
        for rank, a, b in parts:
            keep = finite[a:b]
            if sp is not None and len(sp):
                keep = keep & ~np.isin(step[a:b], sp)
            if keep.all():  # slices, not gathers
                idx = np.arange(a, b)
                st, vals = step[a:b], own[a:b]
            else:
                idx = a + np.flatnonzero(keep)
                if len(idx) == 0:
                    continue
                st, vals = step[idx], own[idx]
            win = ((st - lo) / interval // w).astype(np.int64)
            wins, first, med, counts = _window_medians(vals, win)
            rows_of[(run_id, rank)] = (idx, win)
            cols["run_id"].extend([run_id] * len(wins))
            cols["rank"].extend([rank] * len(wins))
            cols["win"].append(wins)
            cols["own"].append(med)
            cols["n"].append(counts)
            cols["s0"].append(st[first])
            cols["s1"].append(st[first + counts - 1])
            cols["parts"].append(np.logical_or.reduceat(parts_mask[idx], first))
            cols["wsize"].append(np.full(len(wins), w))
    if not cols["run_id"]:
        return pl.DataFrame()
    frame = {k: (v if k in ("run_id", "rank") else np.concatenate(v)) for k, v in cols.items()}
    agg = (
        pl.DataFrame(frame)
        .filter(pl.col("n") >= pl.max_horizontal(pl.lit(5), pl.col("wsize") // 4))
        .with_columns(pl.col("rank").count().over("run_id", "win").alias("nranks"))
        .filter(pl.col("nranks") >= 2)
        .with_columns((pl.col("own").min().over("run_id", "win") / pl.col("own")).alias("score"))
    )
    # Compute and data medians (for the attribution) only where a rank is slow.
    slow = set(agg.filter(pl.col("score") < opts.warn_score)["run_id"].unique().to_list())
    split: dict[str, list[Any]] = {k: [] for k in ("run_id", "rank", "win", "compute", "data")}
    for (run_id, rank), (idx, win) in rows_of.items():
        if run_id not in slow:
            continue
        wins, _, c_med, _ = _window_medians(comp[idx], win)
        _, _, d_med, _ = _window_medians(data[idx], win)
        split["run_id"].extend([run_id] * len(wins))
        split["rank"].extend([rank] * len(wins))
        split["win"].extend(wins.tolist())
        split["compute"].extend(c_med.tolist())
        split["data"].extend(d_med.tolist())
    split_df = pl.DataFrame(
        split,
        schema={
            "run_id": pl.String,
            "rank": agg.schema["rank"],
            "win": pl.Int64,
            "compute": pl.Float64,
            "data": pl.Float64,
        },
    )
    keys = ["run_id", "win", "rank"]
    agg = (
        agg.join(split_df, on=keys, how="left")
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
    return finding(run_id, ID, NAME, Severity.INFO, s0, s1, msg, sugg, evidence=ev)


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
    return finding(run_id, ID, NAME, sev, s0, s1, msg, sugg, rank=rank, evidence=ev)


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _window_medians(
    values: np.ndarray, win: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Medians of ``values`` per run of equal ``win`` (non-decreasing), NaN
    ignored: windows, first index, medians (NaN if empty), counts. Vectorised:
    one padded 2-D sort instead of a group-by."""
    in_order = len(win) > 0 and bool((win[1:] >= win[:-1]).all())
    if in_order:
        # already in order (the usual case): runs from change points, no sort
        first = np.flatnonzero(np.concatenate(([True], win[1:] != win[:-1])))
        wins = win[first]
        counts = np.diff(np.append(first, len(win)))
    else:
        wins, first, counts = np.unique(win, return_index=True, return_counts=True)
    v = np.where(np.isnan(values), np.inf, values)
    nw, width = len(wins), int(counts.max())
    if in_order and nw > 1 and bool((counts[:-1] == width).all()):
        # equal windows but maybe the last (the usual case): a reshape, no scatter
        pad = np.empty((nw, width))
        pad[:-1] = v[: (nw - 1) * width].reshape(nw - 1, width)
        pad[-1] = np.inf
        pad[-1, : counts[-1]] = v[(nw - 1) * width :]
    else:
        pad = np.full((nw, width), np.inf)
        rows = np.repeat(np.arange(nw), counts)
        pad[rows, np.arange(len(v)) - np.repeat(first, counts)] = v
    pad.sort(axis=1)
    valid = np.isfinite(pad).sum(axis=1)
    r = np.arange(len(wins))
    lo = pad[r, np.maximum(valid - 1, 0) // 2]
    hi = np.where(valid > 0, pad[r, np.minimum(valid // 2, pad.shape[1] - 1)], np.nan)
    med = np.where(valid > 0, (lo + hi) / 2, np.nan)
    return wins, first, med, counts
