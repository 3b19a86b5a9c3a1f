"""Scores of TS301 (straggler): per run, window and rank, the median of the
rank's own time per step and its score against the fastest rank. Score
first, decide second: :mod:`tunescope.detectors.straggler` judges them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tunescope.detectors.scans.rankwise import special_steps, steps_slices

if TYPE_CHECKING:
    import polars as pl

    from tunescope.detectors.base import Frames


class WindowOptions(Protocol):
    """The options the window scores read (TS301's ``Options`` has them)."""

    window: int
    min_window: int
    warn_windows: int
    warn_score: float


_COLUMNS = ("run_id", "rank", "win", "own", "n", "s0", "s1", "parts", "wsize")


def window_scores(
    ctx: Frames, opts: WindowOptions, df: pl.DataFrame, runs: set[str] | None = None
) -> pl.DataFrame:
    """Per run, window and rank: medians of the rank's own time, compute and
    data time, and the score (fastest rank's median / this rank's median)."""
    import polars as pl

    own, parts_mask = _own_time(ctx)
    by_run: dict[str, list[tuple[int, int, int]]] = {}
    for run_id, rank, a, b in steps_slices(ctx):
        if runs is None or run_id in runs:
            by_run.setdefault(run_id, []).append((rank, a, b))
    cols: dict[str, list[Any]] = {k: [] for k in _COLUMNS}
    rows_of: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    special = special_steps(ctx)
    for run_id, parts in by_run.items():
        _run_windows(ctx, opts, run_id, parts, special.get(run_id), own, parts_mask, cols, rows_of)
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
    return _with_attribution(ctx, opts, agg, rows_of)


def _own_time(ctx: Frames) -> tuple[np.ndarray, np.ndarray]:
    """Each row's own time per step (compute plus data time, else the whole
    step time) and whether it was made of those parts."""
    comp = ctx.column("compute_time_s")
    data = ctx.column("data_time_s")
    c_nan, d_nan = np.isnan(comp), np.isnan(data)
    if not c_nan.any() and not d_nan.any():
        # both parts on every row (the usual case)
        return comp + data, np.ones(len(comp), dtype=bool)
    parts_mask = ~c_nan | ~d_nan
    own = np.where(
        parts_mask,
        np.where(c_nan, 0.0, comp) + np.where(d_nan, 0.0, data),
        ctx.column("step_time_s"),
    )
    return own, parts_mask


def _run_windows(
    ctx: Frames,
    opts: WindowOptions,
    run_id: str,
    parts: list[tuple[int, int, int]],
    sp: np.ndarray | None,
    own: np.ndarray,
    parts_mask: np.ndarray,
    cols: dict[str, list[Any]],
    rows_of: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]],
) -> None:
    """One run's window medians per rank, appended to ``cols``: about
    ``window`` logged points per window (fewer for short runs), eval and
    checkpoint steps left out; numpy on slices of the sorted frame."""
    step = ctx.column("step", as_float=False)
    finite = np.isfinite(own)
    lo = min(int(step[a]) for _, a, _ in parts)
    hi = max(int(step[b - 1]) for _, _, b in parts)
    pts = max(b - a for _, a, b in parts)
    interval = max(1.0, (hi - lo + 1) / pts)  # steps per logged point
    w = (
        opts.window
        if pts >= opts.warn_windows * opts.window
        else max(opts.min_window, pts // opts.warn_windows)
    )
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
        wins, first, med, counts = window_medians(vals, win)
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


def _with_attribution(
    ctx: Frames,
    opts: WindowOptions,
    agg: pl.DataFrame,
    rows_of: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]],
) -> pl.DataFrame:
    """``agg`` with the compute and data medians of each window and their
    excess over the fastest rank's, computed only in runs where a rank is
    slow (for the finding's attribution)."""
    import polars as pl

    comp = ctx.column("compute_time_s")
    data = ctx.column("data_time_s")
    slow = set(agg.filter(pl.col("score") < opts.warn_score)["run_id"].unique().to_list())
    split: dict[str, list[Any]] = {k: [] for k in ("run_id", "rank", "win", "compute", "data")}
    for (run_id, rank), (idx, win) in rows_of.items():
        if run_id not in slow:
            continue
        wins, _, c_med, _ = window_medians(comp[idx], win)
        _, _, d_med, _ = window_medians(data[idx], win)
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
    return (
        agg.join(split_df, on=keys, how="left")
        .with_columns(
            (pl.col("compute") - pl.col("compute").min().over("run_id", "win")).alias("d_comp"),
            (pl.col("data") - pl.col("data").min().over("run_id", "win")).alias("d_data"),
        )
        .sort("run_id", "rank", "win")
    )


def window_medians(
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
