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

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from tunescope.eventlog import INT64_MAX, RANK_MAX, TS_MAX, LineError, loads, parse_event
from tunescope.ingest.rows import (
    EVENT_SCHEMA,
    METRIC_SCHEMA,
    STEP_SCHEMA,
    Problem,
    ReadResult,
    RowBuilder,
    decoded_lines,
    fetch_arrow,
)
from tunescope.ingest.tail import Chunk, read_new_lines
from tunescope.schema import ENVELOPE_NAMES, KINDS, METRIC_NAMES, SCHEMA_VERSION

RANK_JSONL = re.compile(r"^rank-(\d+)\.jsonl$")
RANK_PARQUET = re.compile(r"^rank-(\d+)-(\d+)\.parquet$")

# Chunks smaller than this are parsed in Python: DuckDB's per-query cost is
# larger than the parse.
FAST_PATH_MIN_BYTES = 256 * 1024
# Bytes of JSON handed to one DuckDB query.
FAST_PATH_QUERY_BYTES = 64 * 1024 * 1024

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
        done: dict[int, ReadResult] = {}
        group: list[tuple[int, Path, Chunk]] = []
        size = 0
        for item in fast:
            group.append(item)
            size += len(item[2].data)
            if size >= FAST_PATH_QUERY_BYTES:  # bounded queries: memory stays flat
                done.update(_read_fast(group))
                group, size = [], 0
        if group:
            done.update(_read_fast(group))
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
    for lineno, ev in decoded_lines(path, chunk, problems, parse_event):
        problems.extend(Problem(str(path), lineno, p) for p in ev.problems)
        try:
            add_event(rows, ev, rank0, lineno)
        except (ValueError, TypeError, OverflowError, pa.ArrowException) as e:
            # A value no column can hold: this line only, never the whole file.
            problems.append(Problem(str(path), lineno, f"value out of range: {e}"))
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
    # Rows of a later copy must win over an earlier one (a resume re-logs steps):
    # order them by where they were in the JSONL.
    meta = table.schema.metadata or {}
    base = int(meta.get(b"tunescope.byte_start", b"0") or 0)
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
        add_event(rows, ev, rank0, base + i)
    return rows.result(new_state, problems, replace=True)


# ---- fast path ---------------------------------------------------------------
#
# Two passes over the bytes: one finds every key, one reads every field as raw
# JSON text; TRY_CAST turns the text into numbers. A field whose text is present
# but not a JSON number (a string, a list, a boolean), or anything else the exact
# path would report, marks its chunk for the exact path, which then names the line.
# Internal columns start with "#", which no key may (such keys go the exact way).


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
            # A malformed line or bytes that are not UTF-8 fail the whole query:
            # bisect so that only the bad file goes to the exact path.
            if len(batch) == 1:
                return out
        finally:
            con.close()
    half = len(batch) // 2
    return {**_read_fast(batch[:half]), **_read_fast(batch[half:])}


def _num(raw: str) -> str:
    return f"TRY_CAST({raw} AS DOUBLE)"


def _fast_query(con: Any, files: dict[str, tuple[int, Path, Chunk]], out: dict) -> dict:
    meta = pa.table(
        {
            "#f": list(files),
            "#file_rank": [file_rank(p) for _, p, _ in files.values()],
            "#line0": [c.first_line - 1 for _, _, c in files.values()],
            "#expected": [c.lines for _, _, c in files.values()],
        }
    )
    con.register("meta", meta)
    # Pass 1: every key that occurs, so that no field is ever dropped.
    all_keys = [
        k
        for (k,) in con.execute(
            "SELECT DISTINCT unnest(json_keys(json)) FROM read_ndjson_objects(?, "
            "ignore_errors=true, maximum_object_size=67108864)",
            [list(files)],
        ).fetchall()
    ]
    lowered = {k.lower() for k in all_keys}
    if (
        len(lowered) != len(all_keys)  # keys equal but for case (SQL names ignore case)
        or "kind" not in all_keys
        or any(k.startswith("#") for k in all_keys)
    ):
        return out
    keys = [k for k in all_keys if k not in _KNOWN]
    fields = ["v", "rank", "step", "ts", "sample_ids", *keys]
    columns = (
        "{'kind': 'VARCHAR', "
        + ", ".join(f"{_sql_str(k)}: 'DOUBLE'" for k in METRIC_NAMES)
        + ", "
        + ", ".join(f"{_sql_str(k)}: 'JSON'" for k in fields)
        + "}"
    )
    # Pass 2: canonical metrics straight to DOUBLE (numbers, numeric text and
    # booleans convert as the exact path converts them; anything else raises),
    # every other field as raw JSON text. Malformed JSON or a metric that is no
    # number raises here, which sends the batch to the exact path (bisected).
    con.execute(
        'CREATE TEMP TABLE raw AS SELECT *, row_number() OVER () AS "#g" FROM read_json(?, '
        f"format='newline_delimited', columns={columns}, filename='#f', "
        "maximum_object_size=67108864)",
        [list(files)],
    )
    numeric = keys  # extras: numbers only; canonical metrics are DOUBLE already
    kinds = ", ".join(f"'{k}'" for k in sorted(KINDS))
    q = _ident

    # Each field is cast once (in ``c``); a field is a JSON number when its cast
    # worked and its text is not a string or boolean that DuckDB would cast too.
    def n(k: str) -> str:
        return q("#n:" + k)

    def is_number(k: str) -> str:
        return f"({n(k)} IS NOT NULL AND left(CAST({q(k)} AS VARCHAR), 1) NOT IN ('\"', 't', 'f'))"

    def whole(k: str, limit: int) -> str:
        return f"(NOT {is_number(k)} OR {n(k)} < 0 OR {n(k)} <> floor({n(k)}) OR {n(k)} > {limit})"

    envelope = ("v", "rank", "step", "ts")
    casts = ", ".join(f"{_num(q(k))} AS {n(k)}" for k in (*envelope, *numeric))
    not_numbers = (
        " OR ".join(f"({q(k)} IS NOT NULL AND NOT {is_number(k)})" for k in numeric) or "false"
    )
    bad = f"""kind IS NULL OR kind NOT IN ({kinds})
          OR (v IS NOT NULL AND {whole("v", SCHEMA_VERSION)})
          OR (step IS NOT NULL AND ({whole("step", INT64_MAX)} OR TRY_CAST(step AS BIGINT) IS NULL))
          OR (kind IN ('step', 'eval') AND step IS NULL)
          OR ("rank" IS NOT NULL AND {whole("rank", RANK_MAX)})
          OR (ts IS NOT NULL AND (NOT {is_number("ts")} OR NOT coalesce({n("ts")} >= 0 AND {n("ts")} < {TS_MAX:.0f}, false)))
          OR (kind = 'step' AND ({not_numbers}))"""
    outs = ", ".join([*METRIC_NAMES, *(f"{n(k)} AS {q(k)}" for k in numeric)])
    con.execute(
        f"""CREATE TEMP TABLE t AS
        WITH c AS (SELECT *, {casts} FROM raw)
        SELECT c."#f", c."#g" - g0."#g0" + 1 AS "#ord", meta."#line0", meta."#file_rank",
               kind,
               CAST(coalesce({n("rank")}, meta."#file_rank") AS INTEGER) AS "#r",
               TRY_CAST(step AS BIGINT) AS "#s", {n("ts")} AS "#t",
               CAST(sample_ids AS VARCHAR) AS sample_ids, {outs},
               ({bad}) AS "#bad"
        FROM c JOIN (SELECT "#f", min("#g") AS "#g0" FROM raw GROUP BY "#f") AS g0
               ON g0."#f" = c."#f"
        JOIN meta ON meta."#f" = c."#f"
        """
    )
    bad_files = [
        f
        for (f,) in con.execute(
            """SELECT DISTINCT "#f" FROM t WHERE "#bad"
            UNION
            SELECT meta."#f" FROM meta
            LEFT JOIN (SELECT "#f", count(*) AS n FROM t GROUP BY "#f") AS c ON c."#f" = meta."#f"
            WHERE n IS NULL OR n <> "#expected"
            """
        ).fetchall()
    ]
    if bad_files:
        con.execute('DELETE FROM t WHERE "#f" IN (SELECT unnest(?::VARCHAR[]))', [bad_files])
    common = '"#r" AS rank, "#s" AS step, "#t" AS ts, "#line0" + "#ord" AS seq'
    steps = fetch_arrow(
        con,
        f'SELECT "#f" AS f, {common}, {", ".join(METRIC_NAMES)}, sample_ids '
        "FROM t WHERE kind = 'step' ORDER BY f, seq",
    )
    steps = steps.select(["f", *STEP_SCHEMA.names])
    metrics = None
    if keys:
        cols = ", ".join(q(k) for k in keys)
        metrics = fetch_arrow(
            con,
            "SELECT f, rank, step, ts, name, value, seq FROM (UNPIVOT "
            f"(SELECT \"#f\" AS f, {common}, {cols} FROM t WHERE kind = 'step') "
            f"ON {cols} INTO NAME name VALUE value) ORDER BY f, seq",
        )
    others = con.execute(
        """SELECT "#f", "#ord", "#line0", "#file_rank" FROM t WHERE kind <> 'step'"""
    ).fetchall()
    by_file_other: dict[str, RowBuilder] = {}
    if others:
        lines = _lines_of(files, others)
        for f, ord_, line0, rank0 in others:
            ev = parse_event(loads(lines[(f, ord_)]))
            add_event(by_file_other.setdefault(f, RowBuilder()), ev, rank0, line0 + ord_)

    step_parts = _split(steps, STEP_SCHEMA)
    metric_split = _split(metrics, METRIC_SCHEMA) if metrics is not None else {}
    bad_set = set(bad_files)
    for name, (i, _, chunk) in files.items():
        if name in bad_set:
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


def _lines_of(files: dict[str, tuple[int, Path, Chunk]], wanted: list[tuple]) -> dict:
    """The raw text of a few lines (non-step events), looked up by file and
    ordinal, splitting from whichever end of the chunk is nearer."""
    need: dict[str, set[int]] = {}
    for f, ord_, *_ in wanted:
        need.setdefault(f, set()).add(ord_)
    found: dict[tuple[str, int], bytes] = {}
    for f, ords in need.items():
        chunk = files[f][2]
        data, total = chunk.data, chunk.lines
        head = [n for n in ords if n <= total // 2]
        tail = [n for n in ords if n > total // 2]
        if head:
            lines = data.split(b"\n", max(head))
            found.update(((f, n), lines[n - 1]) for n in head)
        if tail:
            back = total - min(tail) + 1  # lines needed from the end
            lines = data[:-1].rsplit(b"\n", back)
            found.update(((f, n), lines[len(lines) - 1 - (total - n)]) for n in tail)
    return found


def _split(table: pa.Table, schema: pa.Schema) -> dict[str, pa.Table]:
    """Split a table whose leading ``f`` column is sorted into one table per file."""
    if table.num_rows == 0:
        return {}
    import pyarrow.compute as pc

    body = table.drop_columns(["f"]).cast(schema)
    parts: dict[str, pa.Table] = {}
    start = 0
    for item in pc.value_counts(table.column("f")).to_pylist():  # in order of appearance
        parts[item["values"]] = body.slice(start, item["counts"])
        start += item["counts"]
    return parts


def _ident(key: str) -> str:
    return '"' + key.replace('"', '""') + '"'


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
