"""The store's tables and views, defined over the cache's segments: the
schemas of empty tables, the newest-write-wins pass for runs that wrote a step
twice, the per-run figures behind ``runs``, and the views users query.
Plain functions over a DuckDB connection; :class:`tunescope.ingest.store.database.Store`
decides when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tunescope.eventlog import TS_MAX
from tunescope.ingest.rows import EVENT_SCHEMA, METRIC_SCHEMA, STEP_SCHEMA
from tunescope.schema import METRIC_NAMES

FINDINGS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("rank", pa.int32()),
        pa.field("detector", pa.string()),
        pa.field("name", pa.string()),
        pa.field("severity", pa.string()),
        pa.field("step_start", pa.int64()),
        pa.field("step_end", pa.int64()),
        pa.field("message", pa.string()),
        pa.field("suggestion", pa.string()),
        pa.field("evidence", pa.string()),
    ]
)


def with_bookkeeping(schema: pa.Schema) -> pa.Schema:
    """A reader's schema with the columns the ingester adds."""
    fields = [pa.field("run_id", pa.string()), *schema]
    fields += [pa.field(n, pa.int64()) for n in ("src", "gen", "seg")]
    return pa.schema(fields)


EMPTY = {
    "steps": with_bookkeeping(STEP_SCHEMA),
    "metrics": with_bookkeeping(METRIC_SCHEMA),
    "events": with_bookkeeping(EVENT_SCHEMA),
}


def load_table(
    con: duckdb.DuckDBPyConnection, name: str, paths: list[str], overlapping: list[str]
) -> None:
    """Define one table's live rows as a view over its segment files: rows
    are read when a query needs them, so memory follows the query, not the
    corpus. Only runs in ``overlapping`` (a step written twice) pay for the
    newest-write-wins pass."""
    drop(con, f"_{name}")  # a table (no segments yet) or a view (earlier segments)
    if not paths:
        con.register("_empty", EMPTY[name].empty_table())
        con.execute(f"CREATE TABLE _{name} AS SELECT * FROM _empty")
        con.unregister("_empty")
        return
    # a view cannot take parameters: the file names (the cache's own) are quoted here;
    # a time out of range (a cache written elsewhere) is NULL, as readers make it
    source = (
        f"(SELECT * REPLACE ({plausible_ts('ts')} AS ts) FROM read_parquet({sql_list(paths)})) "
        "SEMI JOIN _live USING (src, gen)"
    )
    if not overlapping:
        con.execute(f"CREATE OR REPLACE VIEW _{name} AS SELECT * FROM {source}")
        return
    keys = {
        "steps": "run_id, rank, step",
        "metrics": "run_id, rank, step, name",
        "events": "run_id, rank, step, kind, payload",
    }[name]
    runs = sql_list(overlapping)
    con.execute(
        f"CREATE OR REPLACE VIEW _{name} AS "
        f"WITH rows AS (SELECT * FROM {source}) "
        f"SELECT * FROM rows WHERE run_id NOT IN (SELECT unnest({runs}::VARCHAR[])) "
        "UNION ALL "
        f"SELECT * FROM rows WHERE run_id IN (SELECT unnest({runs}::VARCHAR[])) "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY seg DESC, seq DESC) = 1"
    )


def load_findings(con: duckdb.DuckDBPyConnection, path: Path | None) -> None:
    """The ``_findings`` table: the stored findings, or none."""
    if path is not None and path.exists():
        con.execute(
            "CREATE OR REPLACE TABLE _findings AS SELECT * FROM read_parquet(?)", [str(path)]
        )
    else:
        con.register("_empty", FINDINGS_SCHEMA.empty_table())
        con.execute("CREATE OR REPLACE TABLE _findings AS SELECT * FROM _empty")
        con.unregister("_empty")


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """The views users query, over the tables ``refresh`` loaded."""
    metric_cols = ", ".join(METRIC_NAMES)
    con.execute(
        "CREATE OR REPLACE VIEW steps AS SELECT run_id, rank, step, ts, "
        f"{metric_cols}, sample_ids FROM _steps"
    )
    con.execute(
        "CREATE OR REPLACE VIEW metrics AS SELECT run_id, rank, step, ts, name, value FROM _metrics"
    )
    con.execute(
        "CREATE OR REPLACE VIEW events AS SELECT run_id, rank, step, ts, kind, "
        "payload::JSON AS payload FROM _events"
    )
    con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM _runs")
    con.execute(
        "CREATE OR REPLACE VIEW findings AS SELECT run_id, rank, detector, name, severity, "
        "step_start, step_end, message, suggestion, evidence::JSON AS evidence FROM _findings"
    )


def readable_parquet(path: Path) -> bool:
    """True when ``path`` is a whole Parquet file (its footer reads)."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return False
    return True


def plausible_ts(expr: str) -> str:
    """SQL for ``expr`` when it is seconds since the epoch in the readers'
    bounds (:data:`tunescope.eventlog.TS_MAX`), else NULL: ``to_timestamp``
    of one value out of range would fail every query over the views."""
    return f"CASE WHEN {expr} >= 0 AND {expr} < {TS_MAX:.0f} THEN {expr} END"


def drop(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop the table or view ``name`` if there is one."""
    kinds = con.execute(
        "SELECT 'VIEW' FROM duckdb_views() WHERE view_name = $n AND NOT internal "
        "UNION ALL SELECT 'TABLE' FROM duckdb_tables() WHERE table_name = $n",
        {"n": name},
    ).fetchall()
    for (kind,) in kinds:
        con.execute(f"DROP {kind} {name}")


def sql_list(items: list[str]) -> str:
    """A SQL list literal of strings (quotes doubled)."""
    return "[" + ", ".join("'" + i.replace("'", "''") + "'" for i in items) + "]"


def overlapping_runs(manifest: dict[str, Any]) -> list[str]:
    """Runs where some (rank, step) may have been written more than once: a
    source that re-wrote a step, or two sources writing the same rank."""
    out: set[str] = set()
    ranks_seen: dict[str, set[str]] = {}
    for entry in manifest["sources"].values():
        run = entry.get("run_id")
        if run is None:
            continue
        ranks = set(entry.get("max_step", {}))
        if entry.get("overlap") or ranks & ranks_seen.get(run, set()):
            out.add(run)
        ranks_seen.setdefault(run, set()).update(ranks)
    return sorted(out)


# The per-run figures that cost a pass over every row: computed once per state
# of the cache and kept beside its segments (``runstats-<key>.parquet``), so a
# command over an unchanged corpus reads a small file instead of every row.
RUNSTATS_SQL = """
CREATE OR REPLACE TABLE _runstats AS
-- distinct steps and ranks as group-bys (they spill to disk past the memory
-- limit; a DISTINCT aggregate would hold every step of the corpus in memory)
WITH logged AS (
    SELECT run_id, count(*) AS steps_logged
    FROM (SELECT run_id, step FROM _steps GROUP BY run_id, step) GROUP BY run_id
),
ranked AS (
    SELECT run_id, count(*) AS ranks
    FROM (SELECT run_id, rank FROM _steps GROUP BY run_id, rank) GROUP BY run_id
),
st AS (
    SELECT run_id, steps_logged, ranks, max(step) AS last_step,
           min(ts) AS first_ts, max(ts) AS last_ts,
           median(step_time_s) AS med_step_time,
           arg_max(loss, step) FILTER (WHERE loss IS NOT NULL) AS last_loss,
           arg_max(lr, step) FILTER (WHERE lr IS NOT NULL) AS last_lr
    FROM _steps JOIN logged USING (run_id) JOIN ranked USING (run_id)
    GROUP BY run_id, steps_logged, ranks
),
life AS (
    SELECT run_id, rank, kind, payload::JSON AS p, ts,
           row_number() OVER (PARTITION BY run_id, rank, src ORDER BY seg DESC, seq DESC) AS k
    FROM _events WHERE kind IN ('run_start', 'resume', 'run_end')
),
last_life AS (
    SELECT run_id,
           bool_and(kind = 'run_end') AS all_ended,
           max(CASE p->>'status' WHEN 'failed' THEN 3 WHEN 'interrupted' THEN 2
                                 WHEN 'completed' THEN 1 ELSE 0 END)
               FILTER (WHERE kind = 'run_end') AS worst,
           max(ts) FILTER (WHERE kind = 'run_end') AS end_ts
    FROM life WHERE k = 1 GROUP BY run_id
),
start AS (
    SELECT run_id, arg_min(payload, seg * 4294967296 + seq)::VARCHAR AS start_p,
           min(ts) AS start_ts
    FROM _events WHERE kind = 'run_start' GROUP BY run_id
),
ids AS (
    SELECT run_id FROM st UNION SELECT run_id FROM start UNION SELECT run_id FROM last_life
)
SELECT ids.run_id, st.steps_logged, st.ranks, st.last_step, st.first_ts, st.last_ts,
       st.med_step_time, st.last_loss, st.last_lr, last_life.all_ended, last_life.worst,
       last_life.end_ts, start.start_p, start.start_ts
FROM ids
LEFT JOIN st USING (run_id)
LEFT JOIN start USING (run_id)
LEFT JOIN last_life USING (run_id)
ORDER BY ids.run_id
"""

RUNS_SQL = """
CREATE OR REPLACE TABLE _runs AS
WITH src AS (
    SELECT run_id, min(run_dir) AS path,
           string_agg(DISTINCT format, ',' ORDER BY format) AS format,
           max(changed_at) AS changed_at, max(modified) AS modified
    FROM _live GROUP BY run_id
),
rs AS (
    SELECT * EXCLUDE (start_p) REPLACE (
        {first_ts} AS first_ts, {last_ts} AS last_ts, {end_ts} AS end_ts, {start_ts} AS start_ts
    ), start_p::JSON AS p FROM _runstats
),
ids AS (SELECT run_id FROM src UNION SELECT run_id FROM rs)
SELECT
    ids.run_id,
    coalesce(rs.p->>'run', regexp_extract(ids.run_id, '[^/]+$')) AS name,
    src.path,
    src.format,
    CASE
        WHEN rs.all_ended AND rs.worst = 3 THEN 'failed'
        WHEN rs.all_ended AND rs.worst = 2 THEN 'interrupted'
        WHEN rs.all_ended THEN 'completed'
        -- no end written, but every planned step logged: a finished run (a log
        -- without a final summary row, or copied after the end)
        WHEN rs.last_step >= TRY_CAST(rs.p->>'total_steps' AS BIGINT) THEN 'completed'
        -- the log's own clock when it has one; without one, a file seen to
        -- change since an earlier read (a copied or cloned file is new on disk,
        -- but not a live run); a log with no rows yet: a run just starting
        WHEN epoch(now()) - coalesce(
                rs.last_ts, src.changed_at,
                CASE WHEN rs.steps_logged IS NULL THEN src.modified END, 0
             )
             < greatest(120, 30 * coalesce(rs.med_step_time, 0)) THEN 'running'
        ELSE 'interrupted'
    END AS status,
    to_timestamp(coalesce(rs.start_ts, rs.first_ts)) AS started_at,
    to_timestamp(CASE WHEN rs.all_ended THEN coalesce(rs.end_ts, rs.last_ts) END) AS ended_at,
    coalesce(TRY_CAST(rs.p->>'world_size' AS INTEGER), rs.ranks::INTEGER) AS world_size,
    coalesce(rs.steps_logged, 0) AS steps_logged,
    TRY_CAST(rs.p->>'total_steps' AS BIGINT) AS total_steps,
    rs.p->>'model' AS model,
    rs.p->>'finetuning_type' AS finetuning_type,
    TRY_CAST(rs.p->>'lora_r' AS INTEGER) AS lora_r,
    coalesce(rs.p->'config', rs.p) AS config,
    rs.last_step,
    rs.last_loss,
    rs.last_lr,
    to_timestamp(rs.last_ts) AS last_at
FROM ids
LEFT JOIN src USING (run_id)
LEFT JOIN rs USING (run_id)
ORDER BY ids.run_id
""".format(**{c: plausible_ts(c) for c in ("first_ts", "last_ts", "end_ts", "start_ts")})
