"""The store: an in-memory DuckDB per process over the cached segments.

Views (the SQL surface users learn; the names are stable):

- ``runs``     one row per run: status, progress, model, LoRA settings, config
- ``steps``    one row per run, rank and step; canonical metrics as columns;
               after a resume the newest write of a step wins
- ``metrics``  long form: every numeric field that is not canonical
- ``events``   run_start, eval, checkpoint, resume, run_end (payload as JSON)
- ``findings`` what the detectors found (written by ``tunescope analyze``)

The segments are loaded into memory once per :meth:`Store.refresh`, so queries
never touch the user's logs and never wait on a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tunescope.errors import QueryError, StoreError, UsageError
from tunescope.ingest.cache import IngestReport
from tunescope.ingest.mirror import open_cache
from tunescope.ingest.rows import (
    EVENT_SCHEMA,
    METRIC_SCHEMA,
    STEP_SCHEMA,
    connect_duckdb,
    fetch_arrow,
)
from tunescope.schema import METRIC_NAMES

VIEWS = ("runs", "steps", "metrics", "events", "findings")

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

# PRAGMAs a user's SQL may run: they only read the catalog.
_READ_ONLY_PRAGMAS = frozenset(
    {"show_tables", "show_tables_expanded", "table_info", "show", "database_size", "version"}
)

_BOOK = ("src", "gen", "seg", "seq")


def _with_bookkeeping(schema: pa.Schema) -> pa.Schema:
    fields = [pa.field("run_id", pa.string()), *schema]
    fields += [pa.field(n, pa.int64()) for n in ("src", "gen", "seg")]
    return pa.schema(fields)


_EMPTY = {
    "steps": _with_bookkeeping(STEP_SCHEMA),
    "metrics": _with_bookkeeping(METRIC_SCHEMA),
    "events": _with_bookkeeping(EVENT_SCHEMA),
}


class Store:
    """Runs under one root, queryable with SQL.

    ``Store(root)`` loads what is already ingested; ``Store.open(root)`` ingests
    first. ``ingest()`` reads what is new and refreshes the views.
    """

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None) -> None:
        self.cache = open_cache(root, cache_dir)  # a folder, or a URL (mirrored)
        self.root = self.cache.root
        self.con = self._connect()
        self._lock = threading.Lock()
        self.loaded_at = 0.0
        self.refresh()

    @classmethod
    def open(
        cls,
        root: str | Path,
        cache_dir: str | Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Store:
        store = cls.__new__(cls)
        store.cache = open_cache(root, cache_dir)  # a folder, or a URL (mirrored)
        store.root = store.cache.root
        store.con = store._connect()
        store._lock = threading.Lock()
        store.loaded_at = 0.0
        store.last_report = store.cache.ingest(progress=progress)
        store.refresh()
        return store

    last_report: IngestReport | None = None

    def ingest(self, progress: Callable[..., None] | None = None) -> IngestReport:
        """Read what is new under the root, then refresh the views when the
        cache changed: by this pass, or by another process since the last load
        (a ``watch`` beside the TUI; the views read the segment files that
        manifest names, and a merge elsewhere retires them). A poll that finds
        nothing new costs a stat per file."""
        self.last_report = self.cache.ingest(progress=progress)
        if self.last_report.modified or not self.loaded_at or self._stamp != self._manifest_stamp():
            self.refresh()
        return self.last_report

    _stamp: tuple[int, int] | None = None

    def _manifest_stamp(self) -> tuple[int, int] | None:
        """The manifest file's modification time and size (None: no manifest)."""
        try:
            st = self.cache.manifest_path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """The store's database, walled in: it may open the files of the cache's
        segments folder and nothing else (no logs, no manifest, no other path,
        no network, no extension download), and its settings are locked, so no
        SQL run on it (a user's query included) can widen that."""
        self._segments = self.cache.segments_dir.resolve()
        # Memory is bounded: what a query needs beyond the limit spills to a
        # temporary folder in the cache (removed when the connection closes).
        con = connect_duckdb(
            config={"memory_limit": memory_limit(), "temp_directory": str(self.cache.dir / "tmp")}
        )
        con.execute("SET allowed_directories = ?", [[f"{self._segments}{os.sep}"]])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one thread (DuckDB connections are not shared across threads)."""
        return self.con.cursor()

    def close(self) -> None:
        self.con.close()

    # ---- loading ---------------------------------------------------------------

    def refresh(self) -> None:
        """Point the views at the segments the manifest lists (and load the
        per-run figures)."""
        self._stamp = self._manifest_stamp()  # before reading: a later write is seen next time
        manifest = self.cache.load_manifest()
        seg_dir = self._segments  # the one folder this database may read
        live = pa.table(
            {
                "src": pa.array([e["src"] for e in manifest["sources"].values()], pa.int64()),
                "gen": pa.array([e["gen"] for e in manifest["sources"].values()], pa.int64()),
                "run_id": pa.array(
                    [e.get("run_id") for e in manifest["sources"].values()], pa.string()
                ),
                "format": pa.array(
                    [e.get("format") for e in manifest["sources"].values()], pa.string()
                ),
                "run_dir": pa.array(
                    [e.get("run_dir") for e in manifest["sources"].values()], pa.string()
                ),
                "changed_at": pa.array(
                    [e.get("changed_at") for e in manifest["sources"].values()], pa.float64()
                ),
                "modified": pa.array(
                    [(e.get("mtime_ns") or 0) / 1e9 for e in manifest["sources"].values()],
                    pa.float64(),
                ),
            }
        )
        files = {t: [] for t in _EMPTY}
        for seg in manifest["segments"]:
            files[seg["table"]].append(str(seg_dir / seg["file"]))
        findings_file = manifest.get("findings")
        with self._lock:
            con = self.con
            try:
                con.execute("BEGIN TRANSACTION")
                con.register("_live_arrow", live)
                con.execute("CREATE OR REPLACE TABLE _live AS SELECT * FROM _live_arrow")
                con.unregister("_live_arrow")
                overlapping = _overlapping_runs(manifest)
                for t, paths in files.items():
                    self._load_table(t, paths, overlapping)
                self._load_findings(seg_dir / findings_file if findings_file else None)
                unsaved = self._build_runs(manifest)
                self._create_views()
                con.execute("COMMIT")
            except duckdb.OutOfMemoryException:
                con.execute("ROLLBACK")
                raise StoreError(
                    f"loading the cache in {self.cache.dir} needs more than DuckDB's memory "
                    f"limit ({memory_limit()}); set TUNESCOPE_MEMORY_LIMIT higher (e.g. 2GB)"
                ) from None
            except duckdb.Error as e:
                con.execute("ROLLBACK")
                raise StoreError(
                    f"the cache in {self.cache.dir} is damaged ({e}); delete it and run "
                    "the command again to re-ingest"
                ) from None
        if unsaved is not None:
            self._save_runstats(unsaved)  # after the commit: a failed write aborts nothing
        self.loaded_at = time.time()

    def _load_table(self, name: str, paths: list[str], overlapping: list[str]) -> None:
        """Define one table's live rows as a view over its segment files: rows
        are read when a query needs them, so memory follows the query, not the
        corpus. Only runs in ``overlapping`` (a step written twice) pay for the
        newest-write-wins pass."""
        con = self.con
        _drop(con, f"_{name}")  # a table (no segments yet) or a view (earlier segments)
        if not paths:
            con.register("_empty", _EMPTY[name].empty_table())
            con.execute(f"CREATE TABLE _{name} AS SELECT * FROM _empty")
            con.unregister("_empty")
            return
        # a view cannot take parameters: the file names (the cache's own) are quoted here
        source = f"read_parquet({_sql_list(paths)}) SEMI JOIN _live USING (src, gen)"
        if not overlapping:
            con.execute(f"CREATE OR REPLACE VIEW _{name} AS SELECT * FROM {source}")
            return
        keys = {
            "steps": "run_id, rank, step",
            "metrics": "run_id, rank, step, name",
            "events": "run_id, rank, step, kind, payload",
        }[name]
        runs = _sql_list(overlapping)
        con.execute(
            f"CREATE OR REPLACE VIEW _{name} AS "
            f"WITH rows AS (SELECT * FROM {source}) "
            f"SELECT * FROM rows WHERE run_id NOT IN (SELECT unnest({runs}::VARCHAR[])) "
            "UNION ALL "
            f"SELECT * FROM rows WHERE run_id IN (SELECT unnest({runs}::VARCHAR[])) "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY seg DESC, seq DESC) = 1"
        )

    def _load_findings(self, path: Path | None) -> None:
        con = self.con
        if path is not None and path.exists():
            con.execute(
                "CREATE OR REPLACE TABLE _findings AS SELECT * FROM read_parquet(?)", [str(path)]
            )
        else:
            con.register("_empty", FINDINGS_SCHEMA.empty_table())
            con.execute("CREATE OR REPLACE TABLE _findings AS SELECT * FROM _empty")
            con.unregister("_empty")

    def _build_runs(self, manifest: dict[str, Any]) -> Path | None:
        """The ``runs`` table: per-run figures from the cache's saved copy for
        this state of the segments when there is one (a command over an
        unchanged corpus then reads no row), else computed; returns where to
        save them then (None: nothing to save)."""
        con = self.con
        state = json.dumps(
            [
                sorted(s["file"] for s in manifest["segments"]),
                sorted((e["src"], e["gen"]) for e in manifest["sources"].values()),
            ]
        )
        key = hashlib.sha1(state.encode()).hexdigest()[:16]
        saved = self._segments / f"runstats-{key}.parquet"
        unsaved = None
        if _readable_parquet(saved):  # checked first: a failed read aborts the transaction
            con.execute(
                "CREATE OR REPLACE TABLE _runstats AS SELECT * FROM read_parquet(?)", [str(saved)]
            )
        else:
            con.execute(_RUNSTATS_SQL)
            unsaved = saved if manifest["segments"] and self._segments.is_dir() else None
        con.execute(_RUNS_SQL)
        return unsaved

    def _save_runstats(self, path: Path) -> None:
        """Keep the per-run figures beside the segments (written whole, then
        renamed into place); older copies go. Best effort: a read-only or full
        cache only means the next command computes them again."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.con.execute(f"COPY _runstats TO {_sql_list([str(tmp)])[1:-1]} (FORMAT parquet)")
            os.replace(tmp, path)
            for old in self._segments.glob("runstats-*.parquet"):
                if old != path and time.time() - old.stat().st_mtime > 120:
                    old.unlink(missing_ok=True)
        except (duckdb.Error, OSError):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def _create_views(self) -> None:
        metric_cols = ", ".join(METRIC_NAMES)
        con = self.con
        con.execute(
            "CREATE OR REPLACE VIEW steps AS SELECT run_id, rank, step, ts, "
            f"{metric_cols}, sample_ids FROM _steps"
        )
        con.execute(
            "CREATE OR REPLACE VIEW metrics AS SELECT run_id, rank, step, ts, name, value "
            "FROM _metrics"
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

    # ---- querying --------------------------------------------------------------

    def query(self, sql: str, con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
        """Run a user's read-only SQL; returns the last statement's result.

        Two walls: :func:`check_read_only` refuses every statement that is not a
        query (:class:`UsageError`), and the database itself can open no file but
        the cache's segments (:meth:`_connect`). A bad statement raises
        :class:`QueryError` with DuckDB's message.
        """
        statements = check_read_only(sql)
        cur = con or self.cursor()
        try:
            # A transaction that is always rolled back: a PIVOT's helper type
            # and anything else a query leaves in the catalog are dropped.
            cur.execute("BEGIN TRANSACTION")
            try:
                for stmt in statements[:-1]:
                    fetch_arrow(cur, stmt.query)
                return fetch_arrow(cur, statements[-1].query)
            finally:
                cur.execute("ROLLBACK")
        except duckdb.PermissionException as e:
            raise UsageError(
                f"refused: a query may read the store's views only, no other file or URL "
                f"({_first_line(e)})"
            ) from None
        except duckdb.Error as e:
            raise QueryError(str(e).strip()) from None

    def query_page(
        self, sql: str, limit: int, offset: int, con: duckdb.DuckDBPyConnection | None = None
    ) -> pa.Table | None:
        """Rows ``offset`` to ``offset + limit`` of a single SELECT-like
        statement, read-only as :meth:`query` is: the statement is wrapped as
        ``SELECT * FROM (...) LIMIT .. OFFSET ..``, so a big result is never
        fetched whole. None when ``sql`` is anything else (several statements,
        EXPLAIN, PRAGMA) or cannot be wrapped (a trailing comment): run it
        with :meth:`query`."""
        statements = check_read_only(sql)
        if len(statements) != 1 or _kind(statements[0]) != "SELECT":
            return None
        query = statements[0].query.strip().rstrip(";").strip()
        try:
            return self.query(f"SELECT * FROM (\n{query}\n) LIMIT {limit} OFFSET {offset}", con)
        except (QueryError, UsageError):
            return None

    def export(self, path: str | Path, overwrite: bool = False) -> None:
        """Write every view as a table into a new DuckDB database file."""
        path = Path(path)
        if path.is_dir():
            raise UsageError(f"{path} is a directory; name a database file to write")
        if path.exists():
            if not overwrite:
                raise UsageError(f"{path} exists; pass --force to replace it")
            path.unlink()
        # The store's own database may not write files: the rows stream, a
        # batch at a time, into a second database that owns the new file.
        cur = self.cursor()
        try:
            out = connect_duckdb(str(path))
            try:
                for view in VIEWS:
                    rel = cur.sql(f"SELECT * FROM {view}")
                    reader = getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch
                    batches = reader()
                    out.register("_batches", batches)
                    out.execute(f"CREATE TABLE {view} AS SELECT * FROM _batches")
                    out.unregister("_batches")
            finally:
                out.close()
        except duckdb.Error as e:
            raise StoreError(f"cannot write {path}: {_first_line(e)}") from None

    def save_findings(self, rows: list[dict[str, Any]], run_ids: list[str]) -> None:
        """Store findings (dicts with the ``findings`` view's columns) for ``run_ids``,
        replacing what was stored for those runs, and refresh the view."""
        cols: dict[str, list[Any]] = {f.name: [] for f in FINDINGS_SCHEMA}
        for row in rows:
            for name in cols:
                cols[name].append(row.get(name))
        table = pa.table(cols, schema=FINDINGS_SCHEMA)
        self.cache.save_findings(table, run_ids)
        findings_file = self.cache.load_manifest().get("findings")
        with self._lock:
            self._load_findings(self._segments / findings_file if findings_file else None)

    def run_ids(self) -> list[str]:
        return [
            r[0]
            for r in self.cursor().execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()
        ]


MEMORY_LIMIT = "256MB"
"""DuckDB's memory for one store (``TUNESCOPE_MEMORY_LIMIT`` overrides it):
large aggregates and sorts spill to disk beyond it, so peak memory follows
this and the detectors' batch, not the corpus."""


def memory_limit() -> str:
    return os.environ.get("TUNESCOPE_MEMORY_LIMIT") or MEMORY_LIMIT


def _readable_parquet(path: Path) -> bool:
    """True when ``path`` is a whole Parquet file (its footer reads)."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return False
    return True


def _drop(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop the table or view ``name`` if there is one."""
    kinds = con.execute(
        "SELECT 'VIEW' FROM duckdb_views() WHERE view_name = $n AND NOT internal "
        "UNION ALL SELECT 'TABLE' FROM duckdb_tables() WHERE table_name = $n",
        {"n": name},
    ).fetchall()
    for (kind,) in kinds:
        con.execute(f"DROP {kind} {name}")


def _sql_list(items: list[str]) -> str:
    """A SQL list literal of strings (quotes doubled)."""
    return "[" + ", ".join("'" + i.replace("'", "''") + "'" for i in items) + "]"


def _overlapping_runs(manifest: dict[str, Any]) -> list[str]:
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


_ALLOWED = (
    "SQL here is read-only (SELECT, WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, PIVOT, "
    "EXPLAIN of a query, PRAGMA " + "/".join(sorted(_READ_ONLY_PRAGMAS)) + ")"
)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= 60 else flat[:59] + "…")


def _tokens(text: str) -> list[str]:
    """The words and symbols of one statement as DuckDB's own tokenizer splits
    them, comments (and optimizer hints, which are comments) left out."""
    raw = text.encode("utf-8")  # the tokenizer's positions are byte offsets
    toks = duckdb.tokenize(text)
    out = []
    for i, (pos, kind) in enumerate(toks):
        end = toks[i + 1][0] if i + 1 < len(toks) else len(raw)
        if kind != duckdb.token_type.comment:
            out.append(raw[pos:end].decode("utf-8", "replace").strip())
    return out


def _token_offsets(text: str) -> list[int]:
    """Character offsets of the non-comment tokens of ``text`` (see :func:`_tokens`)."""
    raw = text.encode("utf-8")
    return [
        len(raw[:pos].decode("utf-8", "replace"))
        for pos, kind in duckdb.tokenize(text)
        if kind != duckdb.token_type.comment
    ]


def _explained(text: str) -> str | None:
    """The statement an EXPLAIN [ANALYZE] [(options)] statement explains, or
    None when its shape is not that (refused, never guessed)."""
    words = [w.lower() for w in _tokens(text)]
    offsets = _token_offsets(text)
    if not words or words[0] != "explain":
        return None
    i = 1
    if i < len(words) and words[i] in ("analyze", "analyse"):
        i += 1
    if i < len(words) and words[i] == "(":
        depth = 0
        while i < len(words):
            depth += (words[i] == "(") - (words[i] == ")")
            i += 1
            if depth == 0:
                break
    if i >= len(words):
        return None
    return text[offsets[i] :]


def _refusal(text: str, kind: str, depth: int) -> str | None:
    """Why one statement may not run here, or None when it is a query."""
    words = [w.lower() for w in _tokens(text)]
    if kind == "SELECT":  # also WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE, UNPIVOT
        return None
    if kind == "MULTI" and words[:1] == ["pivot"]:
        return None  # a PIVOT: a query plus a helper type for its columns
    if kind == "PRAGMA":
        name = words[1] if len(words) > 1 else ""
        if name in _READ_ONLY_PRAGMAS and "=" not in words:
            return None
        return f"PRAGMA {name or '?'} (not one that only reads)"
    if kind == "EXPLAIN" and depth < 4:
        inner = _explained(text)
        if inner is not None:
            try:
                stmts = duckdb.extract_statements(inner)
                kinds = [_kind(st) for st in stmts]
            except (duckdb.Error, ValueError):
                stmts, kinds = [], []
            if len(stmts) == 1:
                why = _refusal(stmts[0].query, kinds[0], depth + 1)
                return None if why is None else f"EXPLAIN of {why}"
        return "EXPLAIN of a statement that is not a query"
    return _SHOWN.get(kind, kind.replace("_", " "))


# Statement types DuckDB's parser names after one of several statements.
_SHOWN = {"LOAD": "INSTALL/LOAD", "SET": "SET/RESET/USE", "VACUUM": "VACUUM/ANALYZE"}


def _kind(stmt: Any) -> str:
    """The statement's type as DuckDB's parser names it (SELECT, COPY, ...);
    raises ValueError for a type this duckdb's Python API cannot name."""
    kind = stmt.type.name if hasattr(stmt.type, "name") else str(stmt.type)
    return kind.replace("StatementType.", "").replace("_STATEMENT", "")


def check_read_only(sql: str) -> list[Any]:
    """The statements of ``sql``, classified by DuckDB's parser; refuses
    (:class:`UsageError`, one line) any statement that is not a query: nothing
    that writes, copies, exports, attaches, installs, loads, sets or calls.
    EXPLAIN is judged by the statement it explains (ANALYZE runs it)."""
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(
            f"the SQL holds a byte that is not UTF-8 at character {e.start + 1}; "
            "pass the query as UTF-8 text"
        ) from None
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(str(e).strip()) from None
    if not statements:
        raise UsageError("no SQL statement given")
    for n, stmt in enumerate(statements, 1):
        try:
            kind = _kind(stmt)
        except ValueError:  # a statement type newer than this API (UPDATE EXTENSIONS)
            kind = "statement of a kind that is not a query"
        why = _refusal(stmt.query, kind, 0)
        if why is not None:
            where = f"statement {n} is" if len(statements) > 1 else "the statement is"
            raise UsageError(f"refused: {where} {why} {_snippet(stmt.query)}; {_ALLOWED}")
    return statements


# The per-run figures that cost a pass over every row: computed once per state
# of the cache and kept beside its segments (``runstats-<key>.parquet``), so a
# command over an unchanged corpus reads a small file instead of every row.
_RUNSTATS_SQL = """
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

_RUNS_SQL = """
CREATE OR REPLACE TABLE _runs AS
WITH src AS (
    SELECT run_id, min(run_dir) AS path,
           string_agg(DISTINCT format, ',' ORDER BY format) AS format,
           max(changed_at) AS changed_at, max(modified) AS modified
    FROM _live GROUP BY run_id
),
rs AS (SELECT * EXCLUDE (start_p), start_p::JSON AS p FROM _runstats),
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
"""
