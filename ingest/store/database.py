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

from tunescope.errors import CacheChanged, QueryError, StoreError, UsageError
from tunescope.files import replacing, temp_beside
from tunescope.ingest.store.cache import IngestReport
from tunescope.ingest.store.duck import connect_duckdb, fetch_arrow
from tunescope.ingest.store.mirror import open_cache
from tunescope.ingest.store.sql_guard import check_read_only, first_line, one_line, statement_kind
from tunescope.ingest.store.trust import plain_file
from tunescope.ingest.store.views import (
    EMPTY,
    FINDINGS_SCHEMA,
    RUNS_SQL,
    RUNSTATS_SQL,
    create_views,
    load_findings,
    load_table,
    overlapping_runs,
    readable_parquet,
    sql_list,
)

VIEWS = ("runs", "steps", "metrics", "events", "findings")


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
        progress: Callable[..., None] | None = None,
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
        manifest = self.manifest = self.cache.load_manifest()
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
        files: dict[str, list[str]] = {t: [] for t in EMPTY}
        for seg in manifest["segments"]:
            files[seg["table"]].append(str(seg_dir / seg["file"]))
        findings_file = manifest.get("findings")
        self._files = tuple(p for paths in files.values() for p in paths)
        if findings_file:
            self._files += (str(seg_dir / findings_file),)
        with self._lock:
            con = self.con
            try:
                con.execute("BEGIN TRANSACTION")
                con.register("_live_arrow", live)
                con.execute("CREATE OR REPLACE TABLE _live AS SELECT * FROM _live_arrow")
                con.unregister("_live_arrow")
                overlapping = overlapping_runs(manifest)
                for t, paths in files.items():
                    load_table(con, t, paths, overlapping)
                load_findings(con, seg_dir / findings_file if findings_file else None)
                unsaved = self._build_runs(manifest)
                create_views(con)
                con.execute("COMMIT")
            except duckdb.OutOfMemoryException:
                con.execute("ROLLBACK")
                raise StoreError(
                    f"loading the cache in {self.cache.dir} needs more than DuckDB's memory "
                    f"limit ({memory_limit()}); set TUNESCOPE_MEMORY_LIMIT higher (e.g. 2GB)"
                ) from None
            except duckdb.Error as e:
                con.execute("ROLLBACK")
                gone = self.vanished()
                if gone is not None:
                    raise CacheChanged(
                        f"{gone} went away or was cut short while the cache was read"
                    ) from None
                raise StoreError(
                    f"the cache in {self.cache.dir} is damaged ({first_line(e)}); delete it and run "
                    "the command again to re-ingest"
                ) from None
        if unsaved is not None:
            self._save_runstats(unsaved)  # after the commit: a failed write aborts nothing
        self.loaded_at = time.time()

    _files: tuple[str, ...] = ()  # what the views read, set by refresh
    manifest: dict[str, Any] | None = None
    """The manifest the views were last built from (set by :meth:`refresh`)."""

    def vanished(self) -> str | None:
        """A file the views read that is no longer a whole Parquet file (another
        process rebuilt the cache, or it was deleted or cut short since the
        last :meth:`refresh`), or None."""
        return next((f for f in self._files if not readable_parquet(Path(f))), None)

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
        if plain_file(saved) and readable_parquet(
            saved
        ):  # checked first: a failed read aborts the transaction
            con.execute(
                "CREATE OR REPLACE TABLE _runstats AS SELECT * FROM read_parquet(?)", [str(saved)]
            )
        else:
            con.execute(RUNSTATS_SQL)
            unsaved = saved if manifest["segments"] and self._segments.is_dir() else None
        con.execute(RUNS_SQL)
        return unsaved

    def _save_runstats(self, path: Path) -> None:
        """Keep the per-run figures beside the segments (written whole, then
        renamed into place); older copies go. Best effort: a read-only or full
        cache only means the next command computes them again."""
        try:
            with replacing(path) as tmp:
                self.con.execute(f"COPY _runstats TO {sql_list([str(tmp)])[1:-1]} (FORMAT parquet)")
            for old in self._segments.glob("runstats-*.parquet"):
                if old != path and time.time() - old.stat().st_mtime > 120:
                    old.unlink(missing_ok=True)
        except (duckdb.Error, OSError):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

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
                f"({first_line(e)})"
            ) from None
        except duckdb.Error as e:
            raise QueryError(one_line(e)) from None

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
        if len(statements) != 1 or statement_kind(statements[0]) != "SELECT":
            return None
        query = statements[0].query.strip().rstrip(";").strip()
        try:
            return self.query(f"SELECT * FROM (\n{query}\n) LIMIT {limit} OFFSET {offset}", con)
        except (QueryError, UsageError):
            return None

    def export(self, path: str | Path, overwrite: bool = False) -> None:
        """Write every view as a table into a new DuckDB database file: whole
        or not at all (a temporary file beside it, renamed into place; on a
        failure nothing is left behind and ``path`` is as it was)."""
        path = Path(path)
        if path.is_dir():
            raise UsageError(f"{path} is a directory; name a database file to write")
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise UsageError(f"{path} exists; pass --force to replace it")
            if path.exists() and not path.is_file():
                raise UsageError(f"{path} is not a regular file; name a database file to write")
        # The store's own database may not write files: the rows stream, a
        # batch at a time, into a second database that owns the new file.
        cur = self.cursor()
        tmp = temp_beside(path)
        try:
            with replacing(path) as tmp:
                out = connect_duckdb(str(tmp))
                try:
                    for view in VIEWS:
                        rel = cur.sql(f"SELECT * FROM {view}")
                        reader = getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch
                        batches = reader()
                        out.register("_batches", batches)
                        out.execute(f"CREATE TABLE {view} AS SELECT * FROM _batches")
                        out.unregister("_batches")
                    out.execute("CHECKPOINT")  # everything in the file, no .wal beside it
                finally:
                    out.close()
        except duckdb.Error as e:
            raise StoreError(f"cannot write {path}: {first_line(e)}") from None
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def save_findings(
        self, rows: list[dict[str, Any]], run_ids: list[str], key: str | None = None
    ) -> None:
        """Store findings (dicts with the ``findings`` view's columns) for ``run_ids``,
        replacing what was stored for those runs, and refresh the view. ``key``:
        what the whole stored table was made from (:meth:`holds_findings`)."""
        cols: dict[str, list[Any]] = {f.name: [] for f in FINDINGS_SCHEMA}
        for row in rows:
            for name in cols:
                cols[name].append(row.get(name))
        table = pa.table(cols, schema=FINDINGS_SCHEMA)
        self.cache.save_findings(table, run_ids, key)
        manifest = self.cache.load_manifest()
        findings_file = manifest.get("findings")
        if self.manifest is not None:  # what the views hold now
            self.manifest["findings"] = findings_file
            self.manifest["findings_key"] = manifest.get("findings_key")
        with self._lock:
            load_findings(self.con, self._segments / findings_file if findings_file else None)

    def holds_findings(self, key: str | None) -> bool:
        """Whether the findings the views hold were saved whole with ``key``
        (the same data, detectors and options: saving them again would change
        nothing)."""
        manifest = self.manifest or {}
        return (
            key is not None
            and bool(manifest.get("findings"))
            and (manifest.get("findings_key") == key)
        )

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
