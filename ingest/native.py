"""Reader for tunescope's own logs: ``RUN/events/rank-N.jsonl`` (and the
``rank-N-SEQ.parquet`` copies when the JSONL is gone).

Two paths read the same bytes to the same rows:

- a fast path that hands every clean chunk of a batch to DuckDB's JSON reader
  in one query (this is what makes a first ingest of thousands of files quick);
- an exact path in Python, line by line, that names the file and line of every
  problem. A chunk goes to the exact path whenever the fast path sees anything
  unusual in it (a malformed line, a wrong type, an unknown kind, a blank line),
  so every problem is reported the same way and no good line is lost.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from tunescope.eventlog import LineError, loads, parse_event
from tunescope.ingest.rows import (
    EVENT_SCHEMA,
    METRIC_SCHEMA,
    STEP_SCHEMA,
    Problem,
    ReadResult,
    RowBuilder,
    fetch_arrow,
)
from tunescope.ingest.tail import Chunk, read_new_lines
from tunescope.schema import ENVELOPE_NAMES, KINDS, METRIC_NAMES, SCHEMA_VERSION

RANK_JSONL = re.compile(r"^rank-(\d+)\.jsonl$")
RANK_PARQUET = re.compile(r"^rank-(\d+)-(\d+)\.parquet$")

# Chunks smaller than this are parsed in Python: DuckDB's per-query cost is
# larger than the parse.
FAST_PATH_MIN_BYTES = 256 * 1024

_KNOWN = frozenset((*ENVELOPE_NAMES, *METRIC_NAMES, "sample_ids"))


def file_rank(path: Path) -> int:
    m = RANK_JSONL.match(path.name) or RANK_PARQUET.match(path.name)
    return int(m.group(1)) if m else 0


class NativeReader:
    """tunescope event logs, schema v1."""

    format = "tunescope"

    def detect(self, path: Path) -> bool:
        if path.parent.name != "events":
            return False
        if RANK_JSONL.match(path.name):
            return True
        m = RANK_PARQUET.match(path.name)
        return bool(m) and not (path.parent / f"rank-{m.group(1)}.jsonl").exists()

    def run_dir(self, path: Path) -> Path:
        return path.parent.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        return self.read_batch([(path, state)])[0]

    def read_batch(self, items: list[tuple[Path, dict[str, Any] | None]]) -> list[ReadResult]:
        """Read many sources at once; clean, large chunks share one DuckDB query."""
        results: list[ReadResult | None] = [None] * len(items)
        fast: list[tuple[int, Path, Chunk]] = []
        for i, (path, state) in enumerate(items):
            if RANK_PARQUET.match(path.name):
                results[i] = _read_parquet(path, state)
                continue
            chunk = read_new_lines(path, state)
            if len(chunk.data) >= FAST_PATH_MIN_BYTES and _looks_clean(chunk.data):
                fast.append((i, path, chunk))
            else:
                results[i] = _read_exact(path, chunk)
        if fast:
            done = _read_fast(fast)
            for i, path, chunk in fast:
                results[i] = done.get(i) or _read_exact(path, chunk)
        return [r for r in results if r is not None]


def _looks_clean(data: bytes) -> bool:
    return not data.startswith(b"\n") and b"\n\n" not in data and b"\r" not in data


# ---- exact path --------------------------------------------------------------


def _read_exact(path: Path, chunk: Chunk) -> ReadResult:
    rank0 = file_rank(path)
    rows = RowBuilder()
    problems: list[Problem] = []
    lineno = chunk.first_line - 1
    for raw in chunk.data.split(b"\n")[:-1]:
        lineno += 1
        if not raw.strip():
            continue
        try:
            ev = parse_event(loads(raw))
        except LineError as e:
            problems.append(Problem(str(path), lineno, str(e)))
            continue
        problems.extend(Problem(str(path), lineno, p) for p in ev.problems)
        add_event(rows, ev, rank0, lineno)
    return rows.result(chunk.state, problems, replace=chunk.restarted)


def add_event(rows: RowBuilder, ev: Any, default_rank: int, seq: int) -> None:
    """Route one validated event into step, metric and event rows."""
    rank = ev.rank if ev.rank is not None else default_rank
    if ev.kind == "step":
        sample_ids = ev.other.pop("sample_ids", None)
        rows.step(rank, ev.step, ev.ts, ev.metrics, sample_ids, seq=seq)
        for name, value in ev.extras.items():
            rows.metric(rank, ev.step, ev.ts, name, value, seq=seq)
        if ev.other:
            rows.event(rank, ev.step, ev.ts, "step", ev.other, seq=seq)
        return
    if ev.kind == "eval":
        for name, value in {**ev.metrics, **ev.extras}.items():
            rows.metric(rank, ev.step, ev.ts, name, value, seq=seq)
    rows.event(rank, ev.step, ev.ts, ev.kind, ev.payload(), seq=seq)


def _read_parquet(path: Path, state: dict[str, Any] | None) -> ReadResult:
    """A Parquet copy whose JSONL is gone. Segments are immutable: read once."""
    import pyarrow.parquet as pq

    st = os.stat(path)
    new_state = {"offset": st.st_size, "line": 0, "inode": st.st_ino}
    rows = RowBuilder()
    if state and state.get("inode") == st.st_ino and state.get("offset") == st.st_size:
        return rows.result(new_state)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        return rows.result(new_state, [Problem(str(path), None, f"unreadable Parquet: {e}")])
    rank0 = file_rank(path)
    problems: list[Problem] = []
    for i, rec in enumerate(table.to_pylist(), start=1):
        extra = rec.pop("extra", None)
        obj = {k: v for k, v in rec.items() if v is not None}
        if extra:
            try:
                obj.update(loads(extra))
            except LineError as e:
                problems.append(Problem(str(path), i, f"row {i}: {e}"))
        try:
            ev = parse_event(obj)
        except LineError as e:
            problems.append(Problem(str(path), i, f"row {i}: {e}"))
            continue
        add_event(rows, ev, rank0, i)
    return rows.result(new_state, problems, replace=True)


# ---- fast path ---------------------------------------------------------------

_NUMERIC_JSON = ("BIGINT", "UBIGINT", "DOUBLE", "BOOLEAN")


def _transform_spec() -> str:
    spec: dict[str, str] = {
        "v": "DOUBLE",
        "kind": "VARCHAR",
        "rank": "DOUBLE",
        "step": "DOUBLE",
        "ts": "DOUBLE",
        "sample_ids": "JSON",
    }
    spec.update({name: "DOUBLE" for name in METRIC_NAMES})
    return json.dumps(spec)


def _read_fast(batch: list[tuple[int, Path, Chunk]]) -> dict[int, ReadResult]:
    """Parse clean chunks with DuckDB. Returns results only for chunks that
    passed every check; the caller sends the others to the exact path."""
    import duckdb

    out: dict[int, ReadResult] = {}
    with tempfile.TemporaryDirectory(prefix="tunescope-") as tmp:
        files: dict[str, tuple[int, Path, Chunk]] = {}
        for i, path, chunk in batch:
            if chunk.start == 0 and chunk.partial_tail == 0:
                name = str(path.resolve())
            else:
                name = os.path.join(tmp, f"{i}.jsonl")
                with open(name, "wb") as f:
                    f.write(chunk.data)
            files[name] = (i, path, chunk)
        con = duckdb.connect(config={"preserve_insertion_order": True})
        try:
            return _fast_query(con, files, out)
        except duckdb.Error:
            return out  # e.g. bytes that are not UTF-8: the exact path will say where
        finally:
            con.close()


def _fast_query(con: Any, files: dict[str, tuple[int, Path, Chunk]], out: dict) -> dict:
    meta = pa.table(
        {
            "f": list(files),
            "file_rank": [file_rank(p) for _, p, _ in files.values()],
            "line0": [c.first_line - 1 for _, _, c in files.values()],
            "expected": [c.data.count(b"\n") for _, _, c in files.values()],
        }
    )
    con.register("meta", meta)
    con.execute(
        "CREATE TEMP TABLE raw AS SELECT filename AS f, json AS j, "
        "row_number() OVER () AS g "
        "FROM read_ndjson_objects(?, filename=true, ignore_errors=true, "
        "maximum_object_size=67108864)",
        [list(files)],
    )
    con.execute(
        "CREATE TEMP TABLE t AS SELECT f, g - min(g) OVER (PARTITION BY f) + 1 AS ord, j, "
        f"json_transform(j, '{_transform_spec()}') AS r FROM raw"
    )
    keys = [
        k
        for (k,) in con.execute("SELECT DISTINCT unnest(json_keys(j)) FROM t").fetchall()
        if k not in _KNOWN
    ]
    kinds = ", ".join(f"'{k}'" for k in sorted(KINDS))
    type_checks = " OR ".join(
        f"(r.{name} IS NULL AND json_type(j, '$.{name}') <> 'NULL')" for name in METRIC_NAMES
    )
    extra_checks = "".join(
        f" OR (r.kind = 'step' AND json_type(j, {_path(k)}) NOT IN "
        f"('NULL', {', '.join(repr(t) for t in _NUMERIC_JSON)}))"
        for k in keys
    )
    bad = con.execute(
        f"""
        SELECT DISTINCT f FROM t WHERE j IS NULL
          OR r.kind IS NULL OR r.kind NOT IN ({kinds})
          OR (r.v IS NOT NULL AND (r.v > {SCHEMA_VERSION} OR r.v <> floor(r.v)))
          OR (json_type(j, '$.step') <> 'NULL' AND (r.step IS NULL OR r.step < 0 OR r.step <> floor(r.step)))
          OR (r.kind IN ('step', 'eval') AND r.step IS NULL)
          OR (json_type(j, '$.rank') <> 'NULL' AND (r.rank IS NULL OR r.rank < 0 OR r.rank <> floor(r.rank)))
          OR (json_type(j, '$.ts') <> 'NULL' AND (r.ts IS NULL OR NOT isfinite(r.ts)))
          OR {type_checks}{extra_checks}
        UNION
        SELECT f FROM meta LEFT JOIN (SELECT f, count(*) AS n FROM t GROUP BY f) USING (f)
          WHERE n IS NULL OR n <> expected
        """
    ).fetchall()
    bad_files = {f for (f,) in bad}

    metric_cols = ", ".join(f"r.{name} AS {name}" for name in METRIC_NAMES)
    base = (
        "FROM t JOIN meta USING (f) WHERE f NOT IN (SELECT unnest(?::VARCHAR[])) "
        "AND r.kind = 'step'"
    )
    steps = fetch_arrow(
        con,
        f"""SELECT f, CAST(coalesce(r.rank, file_rank) AS INTEGER) AS rank,
                   CAST(r.step AS BIGINT) AS step, r.ts AS ts, {metric_cols},
                   CAST(r.sample_ids AS VARCHAR) AS sample_ids, line0 + ord AS seq {base}""",
        [list(bad_files)],
    )
    metric_parts = [
        f"""SELECT f, CAST(coalesce(r.rank, file_rank) AS INTEGER) AS rank,
                   CAST(r.step AS BIGINT) AS step, r.ts AS ts, {_sql_str(k)} AS name,
                   CAST(j->{_path(k)} AS DOUBLE) AS value, line0 + ord AS seq {base}
                   AND json_type(j, {_path(k)}) IN ({", ".join(repr(t) for t in _NUMERIC_JSON)})"""
        for k in keys
    ]
    metrics = (
        fetch_arrow(con, " UNION ALL ".join(metric_parts), [list(bad_files)] * len(keys))
        if keys
        else None
    )
    others = con.execute(
        "SELECT f, ord, line0, file_rank, j FROM t JOIN meta USING (f) "
        "WHERE f NOT IN (SELECT unnest(?::VARCHAR[])) AND r.kind <> 'step'",
        [list(bad_files)],
    ).fetchall()

    by_file_other: dict[str, RowBuilder] = {}
    for f, ord_, line0, rank0, j in others:
        ev = parse_event(loads(j))
        add_event(by_file_other.setdefault(f, RowBuilder()), ev, rank0, line0 + ord_)

    step_parts = _split(steps, STEP_SCHEMA)
    metric_split = _split(metrics, METRIC_SCHEMA) if metrics is not None else {}
    for name, (i, _, chunk) in files.items():
        if name in bad_files:
            continue
        _, ev_metrics, ev_events = (by_file_other.get(name) or RowBuilder()).tables()
        s = step_parts.get(name, STEP_SCHEMA.empty_table())
        m = metric_split.get(name, METRIC_SCHEMA.empty_table())
        out[i] = ReadResult(
            steps=s,
            metrics=pa.concat_tables([m, ev_metrics]),
            events=ev_events.cast(EVENT_SCHEMA),
            state=chunk.state,
            replace=chunk.restarted,
        )
    return out


def _split(table: pa.Table, schema: pa.Schema) -> dict[str, pa.Table]:
    """Split a table with a leading ``f`` column into one table per file."""
    if table.num_rows == 0:
        return {}
    import pyarrow.compute as pc

    parts: dict[str, pa.Table] = {}
    fcol = table.column("f")
    body = table.drop_columns(["f"]).cast(schema)
    for name in pc.unique(fcol).to_pylist():
        parts[name] = body.filter(pc.equal(fcol, name))
    return parts


def _path(key: str) -> str:
    return _sql_str("$." + json.dumps(key))


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
