"""Downsampled curves and per-rank time grids, computed in DuckDB.

Shared by the front ends that draw runs (the TUI, the HTML report, the
Markdown summary), so there is one copy of each query.

A curve is never loaded whole. :func:`bucket_runs` asks DuckDB for min/max
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


def spec_source(
    spec: PlotSpec,
    steps: tuple[float, float] | None = None,
    *,
    many: bool = False,
    table: str = "steps",
) -> str:
    """A long table (run_id, series, step, v) for one plot of one run (``$1``),
    or of every run in the list ``$1`` when ``many``, reading only ``steps``
    (inclusive) when given, from ``table`` (``steps`` or a subset of its rows)."""
    where = "list_contains($1, run_id)" if many else "run_id = $1"
    if steps is not None:
        where += f" AND step BETWEEN {float(steps[0])!r} AND {float(steps[1])!r}"
    if spec.ranks == "first":
        where += (
            f" AND (run_id, rank) IN (SELECT run_id, min(rank) FROM {table} WHERE {where} "
            "GROUP BY run_id)"
        )
        cols = ", ".join(f'({expr})::DOUBLE AS "{label}"' for label, expr in spec.columns)
        names = ", ".join(f'"{label}"' for label, _ in spec.columns)
        # UNPIVOT drops NULLs: a column the run never logged yields no series.
        return (
            f"UNPIVOT (SELECT run_id, step, {cols} FROM {table} WHERE {where}) "
            f"ON {names} INTO NAME series VALUE v"
        )
    parts = []
    for label, expr in spec.columns:
        if spec.ranks == "each":
            parts.append(
                f"SELECT run_id, 'rank ' || rank AS series, step, ({expr}) AS v FROM {table} "
                f"WHERE {where} AND ({expr}) IS NOT NULL"
            )
        else:
            parts.append(
                f"SELECT run_id, '{label}' AS series, step, avg({expr}) AS v FROM {table} "
                f"WHERE {where} AND ({expr}) IS NOT NULL GROUP BY run_id, step"
            )
    return " UNION ALL ".join(parts)


def plots_sql(specs: tuple[PlotSpec, ...], x_range: tuple[float, float], buckets: int) -> str:
    """The min/max buckets of several plots of one run (``$1``) over ``x_range``
    in one statement: the run's rows in that range are read from ``steps`` once,
    and each series is labelled ``plot id/series`` (see :func:`split_plots`)."""
    lo, hi = float(x_range[0]), float(x_range[1])
    # From one step before the range, as one plot's own query reads (the
    # bucketing keeps the steps inside it).
    parts = " UNION ALL ".join(
        f"SELECT run_id, '{spec.id}/' || series AS series, step, v "
        f"FROM ({spec_source(spec, (lo - 1, hi), table='run_rows')})"
        for spec in specs
    )
    sql = bucket_sql(parts, buckets=buckets, smooth=1, x_range=(lo, hi))
    rows = (
        "run_rows AS MATERIALIZED (SELECT * FROM steps "
        f"WHERE run_id = $1 AND step BETWEEN {lo - 1!r} AND {hi!r}),"
    )
    return sql.replace("WITH ", "WITH " + rows, 1)


def split_plots(found: dict[tuple[str, str], Series]) -> dict[str, dict[str, Series]]:
    """The result of :func:`plots_sql` (split by :func:`split_series`), per
    plot id, then series label."""
    out: dict[str, dict[str, Series]] = {}
    for (_, name), series in found.items():
        plot, _, label = name.partition("/")
        series.label = label
        out.setdefault(plot, {})[label] = series
    return out


def smooth_window(x_range: tuple[float, float]) -> int:
    """Steps in the rolling mean when smoothing is on: about 1/60 of the view."""
    return max(3, int((x_range[1] - x_range[0]) / 60))


# ---- the bucketing query -------------------------------------------------------------


def bucket_sql(
    source_sql: str,
    *,
    buckets: int,
    smooth: int,
    x_range: tuple[float, float] | None,
) -> str:
    """The min/max bucketing of a long table (``run_id``, ``series``, ``step``,
    ``v``): over ``x_range`` for every series, or, without it, over each run's
    own step range in ``steps`` (runs ``$1``)."""
    smooth = max(1, int(smooth))
    value = (
        f"avg(v) OVER (PARTITION BY run_id, series ORDER BY step ROWS BETWEEN {smooth - 1} "
        "PRECEDING AND CURRENT ROW)"
        if smooth > 1
        else "v"
    )
    if x_range is not None:
        lo, hi = x_range
        span = max(hi - lo, 1e-9)
        # Constants, so that DuckDB pushes the step filter into the scan.
        rng, join = "", ""
        where = f"step BETWEEN {lo - smooth!r} AND {hi!r}"
        lo_col, span_col, keep = repr(lo), repr(span), f"step >= {lo!r}"
    else:
        rng = (
            "rng AS (SELECT run_id, min(step)::DOUBLE AS r_lo, "
            "greatest(max(step) - min(step), 1e-9)::DOUBLE AS r_span "
            "FROM steps WHERE list_contains($1, run_id) GROUP BY run_id),"
        )
        join, where = "JOIN rng USING (run_id)", "TRUE"
        lo_col, span_col, keep = "r_lo", "r_span", "step >= r_lo"
    return f"""
        WITH {rng}
        src AS (
            SELECT run_id, series, step, v::DOUBLE AS v FROM ({source_sql}) WHERE {where}
        ),
        sm AS (SELECT run_id, series, step, {value} AS v FROM src),
        b AS (
            SELECT run_id, series, step, v,
                   least(greatest(floor((step - {lo_col}) * {buckets} / {span_col}), 0),
                         {buckets - 1})::BIGINT AS b
            FROM sm {join} WHERE {keep}
        )
        SELECT run_id, series, b,
               avg(step)::DOUBLE AS x,
               min(v) FILTER (WHERE isfinite(v)) AS lo,
               max(v) FILTER (WHERE isfinite(v)) AS hi,
               count(*) FILTER (WHERE NOT isfinite(v)) AS bad
        FROM b GROUP BY run_id, series, b ORDER BY run_id, series, b
    """


def split_series(table: Any) -> dict[tuple[str, str], Series]:
    out: dict[tuple[str, str], Series] = {}
    if table.num_rows == 0:
        return out
    runs = np.asarray(table.column("run_id").cast("string").to_pylist(), dtype=object)
    names = np.asarray(table.column("series").to_pylist(), dtype=object)
    cols = {
        k: table.column(k).to_numpy(zero_copy_only=False).astype(np.float64)
        for k in ("x", "lo", "hi", "bad")
    }
    # Rows are ordered by run and series: split at the boundaries.
    change = np.flatnonzero((names[1:] != names[:-1]) | (runs[1:] != runs[:-1])) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(names)]])
    for s, e in zip(starts, ends, strict=True):
        label = str(names[s])
        out[(str(runs[s]), label)] = Series(
            label=label,
            x=cols["x"][s:e],
            lo=cols["lo"][s:e],
            hi=cols["hi"][s:e],
            bad=np.nan_to_num(cols["bad"][s:e]),
        )
    return out


def bucket_runs(
    cur: Any,
    source_sql: str,
    run_ids: list[str],
    *,
    buckets: int,
    smooth: int = 1,
) -> dict[tuple[str, str], Series]:
    """Min/max buckets of many runs in one query, each run over its own step
    range: ``source_sql`` yields ``run_id``, ``series``, ``step`` and ``v`` for
    the runs ``$1`` (:func:`spec_source` with ``many=True``). Keyed by (run,
    series)."""
    from tunescope.ingest.store.duck import fetch_arrow

    if not run_ids:
        return {}
    sql = bucket_sql(source_sql, buckets=buckets, smooth=smooth, x_range=None)
    return split_series(fetch_arrow(cur, sql, [list(run_ids)]))


def bucket_columns(
    cur: Any, run_ids: list[str], columns: dict[str, str], *, buckets: int
) -> dict[tuple[str, int], dict[str, Series]]:
    """Min/max buckets of several ``steps`` columns (label -> SQL expression) in
    one pass, per run and rank, each run over its own step range: the per-rank
    and first-rank plots of many runs from one scan. Keyed by (run, rank), then
    label; a column that a rank never logged has no series."""
    from tunescope.ingest.store.duck import fetch_arrow

    if not run_ids or not columns:
        return {}
    labels = list(columns)
    cols = ", ".join(f"({columns[k]})::DOUBLE AS c{i}" for i, k in enumerate(labels))
    aggs = ", ".join(
        f"min(c{i}) FILTER (WHERE isfinite(c{i})) AS lo{i}, "
        f"max(c{i}) FILTER (WHERE isfinite(c{i})) AS hi{i}, "
        f"count(c{i}) FILTER (WHERE NOT isfinite(c{i})) AS bad{i}, count(c{i}) AS n{i}"
        for i in range(len(labels))
    )
    sql = f"""
        WITH rng AS (
            SELECT run_id, min(step)::DOUBLE AS r_lo,
                   greatest(max(step) - min(step), 1e-9)::DOUBLE AS r_span
            FROM steps WHERE list_contains($1, run_id) GROUP BY run_id
        ),
        s AS (
            SELECT run_id, rank, step, {cols},
                   least(greatest(floor((step - r_lo) * {buckets} / r_span), 0),
                         {buckets - 1})::BIGINT AS b
            FROM steps JOIN rng USING (run_id) WHERE list_contains($1, run_id)
        )
        SELECT run_id, rank, b, avg(step)::DOUBLE AS x, {aggs}
        FROM s GROUP BY run_id, rank, b ORDER BY run_id, rank, b
    """
    table = fetch_arrow(cur, sql, [list(run_ids)])
    out: dict[tuple[str, int], dict[str, Series]] = {}
    if table.num_rows == 0:
        return out
    runs = np.asarray(table.column("run_id").to_pylist(), dtype=object)
    ranks = table.column("rank").to_numpy(zero_copy_only=False)
    arr = {
        name: table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        for name in table.column_names
        if name not in ("run_id", "rank", "b")
    }
    change = np.flatnonzero((runs[1:] != runs[:-1]) | (ranks[1:] != ranks[:-1])) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(runs)]])
    for a, e in zip(starts, ends, strict=True):
        mine: dict[str, Series] = {}
        for i, label in enumerate(labels):
            keep = arr[f"n{i}"][a:e] > 0
            if not keep.any():
                continue
            mine[label] = Series(
                label=label,
                x=arr["x"][a:e][keep],
                lo=arr[f"lo{i}"][a:e][keep],
                hi=arr[f"hi{i}"][a:e][keep],
                bad=np.nan_to_num(arr[f"bad{i}"][a:e][keep]),
            )
        out[(str(runs[a]), int(ranks[a]))] = mine
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
    """Mean compute time (else step time) per rank and step window of one run."""
    return rank_grids(cur, [run_id], windows).get(run_id, ([], [], [], "compute_time_s"))


def rank_grids(
    cur: Any, run_ids: list[str], windows: int
) -> dict[str, tuple[list[int], list[tuple[int, int]], list[list[float | None]], str]]:
    """:func:`rank_grid` for many runs in one query: per run the ranks, the step
    windows, the grid (ranks x windows, None where nothing was timed) and the
    column used (``compute_time_s`` when the run logged it, else ``step_time_s``)."""
    if not run_ids:
        return {}
    rows = cur.execute(
        """
        WITH c AS (
            SELECT run_id, count(compute_time_s) > 0 AS has_compute FROM steps
            WHERE list_contains($1, run_id) GROUP BY run_id
        ),
        t AS (
            SELECT run_id, rank, step, has_compute,
                   CASE WHEN has_compute THEN compute_time_s ELSE step_time_s END AS v
            FROM steps JOIN c USING (run_id) WHERE list_contains($1, run_id)
        ),
        r AS (
            SELECT run_id, min(step) AS lo, max(step) AS hi,
                   greatest(1, least($2, max(step) - min(step) + 1))::INTEGER AS n
            FROM t WHERE v IS NOT NULL GROUP BY run_id
        )
        SELECT run_id, any_value(has_compute), any_value(lo), any_value(hi), any_value(n),
               rank, least(floor((step - lo) / ((hi - lo + 1) / n)), n - 1)::INTEGER AS w,
               avg(v) FILTER (WHERE isfinite(v)) AS t
        FROM t JOIN r USING (run_id) WHERE v IS NOT NULL
        GROUP BY run_id, rank, w ORDER BY run_id, rank, w
        """,
        [list(run_ids), int(windows)],
    ).fetchall()
    by_run: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        by_run.setdefault(row[0], []).append(row)
    out = {}
    for run_id, mine in by_run.items():
        has_compute, lo, hi, n = mine[0][1:5]
        col = "compute_time_s" if has_compute else "step_time_s"
        span = (hi - lo + 1) / n
        ranks = sorted({r[5] for r in mine})
        index = {r: i for i, r in enumerate(ranks)}
        grid: list[list[float | None]] = [[None] * n for _ in ranks]
        for *_, rank, w, t in mine:
            grid[index[rank]][w] = None if t is None or not math.isfinite(t) else float(t)
        bounds = [(int(lo + i * span), int(lo + (i + 1) * span) - 1) for i in range(n)]
        out[run_id] = (ranks, bounds, grid, col)
    return out
