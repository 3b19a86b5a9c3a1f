"""The SQL the screens run, as plain functions of a cursor.

Each function takes a DuckDB cursor (one per worker thread) and returns plain
Python values or :class:`~tunescope.report.curves.Series`; none touches a
widget, so the benchmark and the tests call them directly. The curve specs, the
bucketing and the rank grid are shared with the reports
(:mod:`tunescope.report.curves`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from tunescope.ingest.store.duck import fetch_arrow
from tunescope.report.curves import (
    PlotSpec,
    Series,
    bucket_sql,
    plots_sql,
    smooth_window,
    spec_source,
    split_plots,
    split_series,
)
from tunescope.schema import METRIC_NAMES
from tunescope.tui.plot import PALETTE

SEVERITIES = ("error", "warning", "info")
STATUSES = ("running", "completed", "failed", "interrupted")

# Sort keys of the runs table: label -> (column, descending by default?) pairs.
# The run's name as the runs list shows it: the run id when it is one folder
# deep, else its first folder, "…" and the run's own name (an MLflow or W&B
# run name, a TensorBoard run folder); the full id is shown on demand.
DISPLAY_SQL = """CASE WHEN strpos(run_id, '/') = 0 THEN run_id
    ELSE split_part(run_id, '/', 1) || '/…/' ||
         coalesce(nullif(name, ''), regexp_extract(run_id, '[^/]+$')) END"""

SORTS: dict[str, tuple[tuple[str, bool], ...]] = {
    "name": (("display", False),),
    "status": (("status", False),),
    "findings": (("n_error", True), ("n_warning", True), ("n_info", True)),
    "steps": (("last_step", True),),
    "loss": (("last_loss", False),),
}


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
    only steps inside
    ``x_range`` are read. ``smooth`` > 1 applies a trailing rolling mean over
    that many steps first (NaN stays NaN: it is signal). Returns one
    :class:`Series` per distinct ``series`` value, ordered by name.
    """
    # One range for all: the series labels alone tell the curves apart.
    source = f"SELECT NULL::VARCHAR AS run_id, series, step, v FROM ({source_sql})"
    sql = bucket_sql(source, buckets=buckets, smooth=smooth, x_range=x_range)
    found = split_series(fetch_arrow(cur, sql, params))
    return {label: s for (_, label), s in found.items()}


def order_by(sort: str, reverse: bool) -> str:
    """ORDER BY terms for a sort key; missing values always go last."""
    terms = []
    for col, desc in SORTS.get(sort, SORTS["name"]):
        terms.append(f"{col} {'DESC' if desc != reverse else 'ASC'} NULLS LAST")
    return ", ".join(terms)


RUNS_PAGE = 100  # rows fetched into the runs table at a time (more as the cursor nears the end)
RUNS_LIMIT = 5000  # runs offered by the compare screen's list at most


@dataclass(frozen=True)
class RunFilter:
    text: str = ""
    status: str | None = None
    findings_only: bool = False
    sort: str = "name"
    descending: bool = False


def runs_page(
    cur: Any, flt: RunFilter, offset: int = 0, limit: int = RUNS_PAGE
) -> tuple[list[dict[str, Any]], int, int]:
    """One page of the runs matching ``flt`` with their findings counts, the
    match count and the total."""
    order = order_by(flt.sort, flt.descending)
    sql = f"""
        WITH f AS (
            SELECT run_id,
                   count(*) FILTER (WHERE severity = 'error') AS n_error,
                   count(*) FILTER (WHERE severity = 'warning') AS n_warning,
                   count(*) FILTER (WHERE severity = 'info') AS n_info
            FROM findings GROUP BY run_id
        ),
        r AS (
            SELECT runs.run_id, name, {DISPLAY_SQL} AS display, status, steps_logged,
                   total_steps, last_step, last_loss,
                   last_lr, world_size, coalesce(n_error, 0) AS n_error,
                   coalesce(n_warning, 0) AS n_warning, coalesce(n_info, 0) AS n_info
            FROM runs LEFT JOIN f USING (run_id)
        ),
        m AS (
            SELECT * FROM r
            WHERE ($text = '' OR display ILIKE '%' || $text || '%'
                   OR run_id ILIKE '%' || $text || '%')
              AND ($status IS NULL OR status = $status)
              AND (NOT $only OR n_error + n_warning + n_info > 0)
        )
        SELECT *, (SELECT count(*) FROM m) AS matched, (SELECT count(*) FROM r) AS total
        FROM m ORDER BY {order}, run_id LIMIT {int(limit)} OFFSET {int(offset)}
    """
    params = {"text": flt.text.strip(), "status": flt.status, "only": flt.findings_only}
    rel = cur.execute(sql, params)
    names = [d[0] for d in rel.description]
    rows = [dict(zip(names, r, strict=True)) for r in rel.fetchall()]
    if rows:
        return rows, rows[0]["matched"], rows[0]["total"]
    matched, total = cur.execute(
        sql.split("SELECT *, (SELECT")[0]
        + "SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM r)",
        params,
    ).fetchall()[0]
    return [], matched, total


def run_summary(cur: Any, run_id: str) -> tuple[dict[str, Any] | None, Any, tuple[int, int] | None]:
    rel = cur.execute(
        "SELECT * EXCLUDE (started_at, ended_at, last_at), started_at::VARCHAR AS started_at, "
        "ended_at::VARCHAR AS ended_at FROM runs WHERE run_id = ?",
        [run_id],
    )
    names = [d[0] for d in rel.description]
    rows = rel.fetchall()
    row = rows[0] if rows else None
    if row is None:
        return None, None, None
    rec = dict(zip(names, row, strict=True))
    # The whole run_start payload (model, LoRA settings, world size, config...).
    start = cur.execute(
        "SELECT payload::VARCHAR FROM events WHERE run_id = ? AND kind = 'run_start' "
        "ORDER BY rank, ts LIMIT 1",
        [run_id],
    ).fetchall()
    config = start[0][0] if start else rec.get("config")
    if isinstance(config, str):
        with contextlib.suppress(ValueError):
            config = json.loads(config)
    lo, hi = cur.execute(
        "SELECT min(step), max(step) FROM steps WHERE run_id = ?", [run_id]
    ).fetchall()[0]
    extent = (int(lo), int(hi)) if lo is not None else None
    return rec, config, extent


def run_findings(cur: Any, run_id: str) -> list[dict[str, Any]]:
    rel = cur.execute(
        """
        SELECT detector, name, severity, rank, step_start, step_end, message, suggestion,
               evidence::VARCHAR AS evidence
        FROM findings WHERE run_id = ?
        ORDER BY CASE severity WHEN 'error' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END,
                 step_start NULLS LAST, detector
        """,
        [run_id],
    )
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


def run_interventions(cur: Any, run_id: str) -> list[tuple[int, str, str]]:
    """(step, action, finding) of what the training guard did, once per step
    and action (every rank logs its own)."""
    return cur.execute(
        """
        SELECT DISTINCT step, payload->>'action' AS action, payload->>'finding' AS finding
        FROM events WHERE run_id = ? AND kind = 'intervention' AND step IS NOT NULL
        ORDER BY step, action
        """,
        [run_id],
    ).fetchall()


# ---- curves --------------------------------------------------------------------------


def plot_series(
    cur: Any,
    run_id: str,
    spec: PlotSpec,
    x_range: tuple[float, float],
    buckets: int,
    smooth: bool = False,
) -> list[Series]:
    window = smooth_window(x_range) if smooth and spec.smoothable else 1
    source = spec_source(spec, (x_range[0] - window, x_range[1]))
    found = bucket_series(cur, source, [run_id], x_range=x_range, buckets=buckets, smooth=window)
    return _ordered(spec, found)


def run_plots(
    cur: Any,
    run_id: str,
    specs: tuple[PlotSpec, ...],
    x_range: tuple[float, float],
    buckets: dict[str, int],
    smooth: bool = False,
) -> dict[str, list[Series]]:
    """:func:`plot_series` of every plot in ``specs`` (plot id -> series): in one
    statement when the plots share a bucket count and none is smoothed, else
    one query per plot."""
    counts = {buckets[spec.id] for spec in specs}
    if len(counts) != 1 or (smooth and any(spec.smoothable for spec in specs)):
        return {
            spec.id: plot_series(cur, run_id, spec, x_range, buckets[spec.id], smooth=smooth)
            for spec in specs
        }
    table = fetch_arrow(cur, plots_sql(specs, x_range, counts.pop()), [run_id])
    found = split_plots(split_series(table))
    return {spec.id: _ordered(spec, found.get(spec.id, {})) for spec in specs}


def _ordered(spec: PlotSpec, found: dict[str, Series]) -> list[Series]:
    """A plot's series in drawing order (ranks first, then the spec's columns),
    each given its colour."""
    order = [label for label, _ in spec.columns]

    def key(label: str) -> tuple[int, int, str]:
        if label.startswith("rank "):
            return (0, int(label[5:]), label)
        return (1, order.index(label) if label in order else 99, label)

    out = []
    for i, label in enumerate(sorted(found, key=key)):
        s = found[label]
        s.colour = PALETTE[i % len(PALETTE)]
        out.append(s)
    return out


def metric_source(metric: str) -> tuple[str, bool]:
    """A long table (series=run_id, step, v) for ``metric`` over the runs ``$1``
    (a list), averaged over ranks; canonical metrics come from ``steps``, others
    from ``metrics``. Returns the SQL and whether the metric is known."""
    if metric in METRIC_NAMES:
        return (
            f"SELECT run_id AS series, step, avg({metric}) AS v FROM steps "
            f"WHERE list_contains($1, run_id) AND {metric} IS NOT NULL GROUP BY run_id, step",
            True,
        )
    return (
        "SELECT run_id AS series, step, avg(value) AS v FROM metrics "
        f"WHERE list_contains($1, run_id) AND name = {_sql_str(metric)} GROUP BY run_id, step",
        False,
    )


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def compare_series(
    cur: Any,
    run_ids: list[str],
    metric: str,
    buckets: int,
    smooth: bool = False,
) -> tuple[list[Series], tuple[float, float] | None]:
    if not run_ids:
        return [], None
    lo, hi = cur.execute(
        "SELECT min(step), max(step) FROM steps WHERE list_contains($1, run_id)", [run_ids]
    ).fetchall()[0]
    if metric not in METRIC_NAMES:
        mlo, mhi = cur.execute(
            "SELECT min(step), max(step) FROM metrics WHERE list_contains($1, run_id) "
            "AND name = $2",
            [run_ids, metric],
        ).fetchall()[0]
        lo, hi = mlo, mhi
    if lo is None:
        return [], None
    x_range = (float(lo), float(max(hi, lo + 1)))
    src, _ = metric_source(metric)
    window = smooth_window(x_range) if smooth else 1
    found = bucket_series(cur, src, [run_ids], x_range=x_range, buckets=buckets, smooth=window)
    out = []
    for i, rid in enumerate(run_ids):
        if rid in found:
            s = found[rid]
            s.colour = PALETTE[i % len(PALETTE)]
            out.append(s)
    return out, x_range


def metric_names(cur: Any) -> list[str]:
    extra = [
        r[0] for r in cur.execute("SELECT DISTINCT name FROM metrics ORDER BY name").fetchall()
    ]
    return [*METRIC_NAMES, *[n for n in extra if n not in METRIC_NAMES]]


def run_choices(cur: Any) -> list[tuple[str, str]]:
    rows = cur.execute(
        f"SELECT run_id, {DISPLAY_SQL} AS display, status FROM runs "
        f"ORDER BY display, run_id LIMIT {RUNS_LIMIT}"
    ).fetchall()
    return [(rid, f"{display} ({status})") for rid, display, status in rows]
