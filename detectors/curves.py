"""Downsampled curves and per-rank time grids, computed in DuckDB.

Shared by the front ends that draw runs (the TUI, the HTML report, the
Markdown summary), so there is one copy of each query.

A curve is never loaded whole. :func:`bucket_series` asks DuckDB for min/max
buckets: the step range is cut into as many buckets as the drawing has
columns, and each bucket keeps its lowest and highest value (and a count of
NaN/Inf values). Drawing a vertical span from min to max per column
reproduces every spike of a 100k-step run exactly, from about 2 x width rows.
:data:`RUN_PLOTS` says which curves a run has; :func:`rank_grid` gives the
mean compute time per rank and step window, and :func:`colour_for` colours a
time against the median of the other ranks.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Series:
    """One downsampled curve: per bucket, the step span and the value range."""

    label: str
    x: np.ndarray  # bucket centre (step), float64
    lo: np.ndarray  # lowest finite value in the bucket (NaN when none)
    hi: np.ndarray  # highest finite value in the bucket (NaN when none)
    bad: np.ndarray  # how many NaN/Inf values the bucket held
    colour: str = "#4ea1ff"  # set by the front end that draws it

    def __len__(self) -> int:
        return len(self.x)


# ---- which curves a run has ----------------------------------------------------------


@dataclass(frozen=True)
class PlotSpec:
    """One plot of the run screen: which columns, and how ranks are combined.

    ``ranks`` is ``mean`` (average over ranks at each step: the loss),
    ``first`` (the lowest rank only: values that all ranks share after the
    all-reduce, such as the learning rate and the clipped grad norm; one scan,
    no per-step grouping) or ``each`` (one series per rank).
    """

    id: str
    title: str
    columns: tuple[tuple[str, str], ...]  # (series label, SQL expression over steps)
    ranks: str = "mean"
    smoothable: bool = False


RUN_PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("loss", "loss", (("loss", "loss"),), smoothable=True),
    PlotSpec("lr", "learning rate", (("lr", "lr"),), ranks="first"),
    PlotSpec(
        "grad",
        "grad norm",
        (
            ("adapter", "grad_norm_adapter"),
            ("backbone", "grad_norm_backbone"),
            ("total", "grad_norm"),
        ),
        ranks="first",
    ),
    PlotSpec("mem", "memory MiB per rank", (("mem", "mem_allocated_mb"),), ranks="each"),
    PlotSpec(
        "time",
        "compute s per rank",
        (("time", "coalesce(compute_time_s, step_time_s)"),),
        ranks="each",
    ),
)


def spec_source(spec: PlotSpec, steps: tuple[float, float] | None = None) -> str:
    """A long table (series, step, v) for one run (``$1``) and one plot,
    reading only ``steps`` (inclusive) when given."""
    where = "run_id = $1"
    if steps is not None:
        where += f" AND step BETWEEN {float(steps[0])!r} AND {float(steps[1])!r}"
    if spec.ranks == "first":
        where += " AND rank = (SELECT min(rank) FROM steps WHERE run_id = $1)"
        cols = ", ".join(f'({expr})::DOUBLE AS "{label}"' for label, expr in spec.columns)
        names = ", ".join(f'"{label}"' for label, _ in spec.columns)
        # UNPIVOT drops NULLs: a column the run never logged yields no series.
        return (
            f"UNPIVOT (SELECT step, {cols} FROM steps WHERE {where}) "
            f"ON {names} INTO NAME series VALUE v"
        )
    parts = []
    for label, expr in spec.columns:
        if spec.ranks == "each":
            parts.append(
                f"SELECT 'rank ' || rank AS series, step, ({expr}) AS v FROM steps "
                f"WHERE {where} AND ({expr}) IS NOT NULL"
            )
        else:
            parts.append(
                f"SELECT '{label}' AS series, step, avg({expr}) AS v FROM steps "
                f"WHERE {where} AND ({expr}) IS NOT NULL GROUP BY step"
            )
    return " UNION ALL ".join(parts)


def smooth_window(x_range: tuple[float, float]) -> int:
    """Steps in the rolling mean when smoothing is on: about 1/60 of the view."""
    return max(3, int((x_range[1] - x_range[0]) / 60))


# ---- the bucketing query -------------------------------------------------------------


def bucket_series(
    cur: Any,
    source_sql: str,
    params: list[Any],
    *,
    x_range: tuple[float, float],
    buckets: int,
    smooth: int = 1,
) -> dict[str, Series]:
    """Min/max buckets of a long table, computed in DuckDB.

    ``source_sql`` must yield columns ``series`` (text), ``step`` and ``v``;
    only steps inside ``x_range`` are read. ``smooth`` > 1 applies a trailing
    rolling mean over that many steps first (NaN stays NaN: it is signal).
    Returns one :class:`Series` per distinct ``series`` value, ordered by name.
    """
    lo, hi = x_range
    span = max(hi - lo, 1e-9)
    smooth = max(1, int(smooth))
    value = (
        f"avg(v) OVER (PARTITION BY series ORDER BY step ROWS BETWEEN {smooth - 1} "
        "PRECEDING AND CURRENT ROW)"
        if smooth > 1
        else "v"
    )
    # Smoothing needs the steps just before the range as well.
    read_lo = lo - smooth
    sql = f"""
        WITH src AS (
            SELECT series, step, v::DOUBLE AS v FROM ({source_sql})
            WHERE step BETWEEN {read_lo!r} AND {hi!r}
        ),
        sm AS (SELECT series, step, {value} AS v FROM src),
        b AS (
            SELECT series, step, v,
                   least(greatest(floor((step - {lo!r}) * {buckets} / {span!r}), 0),
                         {buckets - 1})::BIGINT AS b
            FROM sm WHERE step >= {lo!r}
        )
        SELECT series, b,
               avg(step)::DOUBLE AS x,
               min(v) FILTER (WHERE isfinite(v)) AS lo,
               max(v) FILTER (WHERE isfinite(v)) AS hi,
               count(*) FILTER (WHERE NOT isfinite(v)) AS bad
        FROM b GROUP BY series, b ORDER BY series, b
    """
    from tunescope.ingest.rows import fetch_arrow

    table = fetch_arrow(cur, sql, params)
    out: dict[str, Series] = {}
    if table.num_rows == 0:
        return out
    names = np.asarray(table.column("series").to_pylist(), dtype=object)
    cols = {
        k: table.column(k).to_numpy(zero_copy_only=False).astype(np.float64)
        for k in ("x", "lo", "hi", "bad")
    }
    # Rows are ordered by series: split at the boundaries.
    change = np.flatnonzero(names[1:] != names[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(names)]])
    for s, e in zip(starts, ends, strict=True):
        label = str(names[s])
        out[label] = Series(
            label=label,
            x=cols["x"][s:e],
            lo=cols["lo"][s:e],
            hi=cols["hi"][s:e],
            bad=np.nan_to_num(cols["bad"][s:e]),
        )
    return out


# ---- per-rank grid -------------------------------------------------------------------

# (upper bound of time / window median, colour)
SCALE = (
    (1.05, "#2f7d46"),
    (1.15, "#8a9a2a"),
    (1.30, "#d9a21b"),
    (1.60, "#e8661e"),
    (float("inf"), "#d63a3a"),
)
STRAGGLER_RATIO = 1.15


def colour_for(ratio: float) -> str:
    for bound, colour in SCALE:
        if ratio <= bound:
            return colour
    return SCALE[-1][1]


def others_median(values: list[float | None], i: int) -> float | None:
    """The median of every value but the ``i``-th (the rank being judged), so
    that with two ranks the slow one is compared with the fast one. With one
    rank it is compared with itself."""
    rest = [v for j, v in enumerate(values) if j != i and v is not None]
    if not rest:
        rest = [v for v in values if v is not None]
    return statistics.median(rest) if rest else None


def rank_grid(
    cur: Any, run_id: str, windows: int
) -> tuple[list[int], list[tuple[int, int]], list[list[float | None]], str]:
    """Mean compute time (else step time) per rank and step window."""
    has_compute = cur.execute(
        "SELECT count(compute_time_s) > 0 FROM steps WHERE run_id = ?", [run_id]
    ).fetchall()[0][0]
    col = "compute_time_s" if has_compute else "step_time_s"
    lo, hi = cur.execute(
        f"SELECT min(step), max(step) FROM steps WHERE run_id = ? AND {col} IS NOT NULL",
        [run_id],
    ).fetchall()[0]
    if lo is None:
        return [], [], [], col
    windows = max(1, min(windows, int(hi - lo + 1)))
    span = (hi - lo + 1) / windows
    rows = cur.execute(
        f"""
        SELECT rank, least(floor((step - $2) / $3), $4 - 1)::INTEGER AS w,
               avg({col}) FILTER (WHERE isfinite({col})) AS t
        FROM steps WHERE run_id = $1 AND {col} IS NOT NULL
        GROUP BY ALL ORDER BY rank, w
        """,
        [run_id, lo, span, windows],
    ).fetchall()
    ranks = sorted({r for r, _, _ in rows})
    index = {r: i for i, r in enumerate(ranks)}
    grid: list[list[float | None]] = [[None] * windows for _ in ranks]
    for r, w, t in rows:
        grid[index[r]][w] = None if t is None or not math.isfinite(t) else float(t)
    bounds = [(int(lo + i * span), int(lo + (i + 1) * span) - 1) for i in range(windows)]
    return ranks, bounds, grid, col
