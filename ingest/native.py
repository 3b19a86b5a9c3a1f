"""Reader for tunescope's own logs: ``RUN/events/rank-N.jsonl`` (and the
``rank-N-SEQ.parquet`` copies when the JSONL is gone).

Two paths read the same bytes to the same rows:

- a fast path that parses each clean chunk with Arrow's JSON reader, several
  files at once, and turns step lines into rows without Python per line (this
  is what makes a first ingest of thousands of files quick);
- an exact path in Python, line by line, that names the file and line of every
  problem. A chunk goes to the exact path whenever the fast path sees anything
  unusual in it (a malformed line, a wrong type, an unknown kind, a blank line),
  so every problem is reported the same way and no good line is lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from tunescope.eventlog import INT64_MAX, RANK_MAX, TS_MAX, LineError, loads, parse_event
from tunescope.ingest.rows import (
    METRIC_SCHEMA,
    STEP_SCHEMA,
    Problem,
    ReadResult,
    RowBuilder,
    connect_duckdb,
    decoded_lines,
    fetch_arrow,
    payload_json,
)
from tunescope.ingest.tail import Chunk, count_byte, read_new_lines
from tunescope.schema import KINDS, METRIC_NAMES, SCHEMA_VERSION

RANK_JSONL = re.compile(r"^rank-(\d+)\.jsonl$")
RANK_PARQUET = re.compile(r"^rank-(\d+)-(\d+)\.parquet$")

# Chunks smaller than this are parsed in Python: the fast path's fixed cost
# per chunk is larger than the parse.
FAST_PATH_MIN_BYTES = 64 * 1024


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
        """Read many sources at once. Clean chunks are parsed in parts on worker
        threads while the next files are still being read: a large chunk in
        parts of its own size, small ones (a run of a few hundred steps) many
        to a part, so that they share the fast tiers' fixed cost; small ones
        too few to be worth it are read by the exact path."""
        from concurrent.futures import ThreadPoolExecutor

        results: list[ReadResult | None] = [None] * len(items)
        workers = min(os.cpu_count() or 1, 8)
        total = 0
        for path, _ in items:
            with contextlib.suppress(OSError):
                total += os.stat(path).st_size
        target = max(total / (2 * workers), FAST_PATH_MIN_BYTES)  # two parts a worker
        fast: list[tuple[int, Path, Chunk]] = []
        parts: dict[bool, list[tuple[int, Path, Chunk]]] = {True: [], False: []}
        sizes = {True: 0, False: 0}
        done: dict[int, ReadResult] = {}
        with ThreadPoolExecutor(workers) as pool:
            futures = []
            for i, (path, state) in enumerate(items):
                if RANK_PARQUET.match(path.name):
                    results[i] = _read_parquet(path, state)
                    continue
                chunk = read_new_lines(path, state)
                if not chunk.data or not _looks_clean(chunk.data):
                    results[i] = _read_exact(path, chunk)
                    continue
                large = len(chunk.data) >= FAST_PATH_MIN_BYTES
                fast.append((i, path, chunk))
                parts[large].append((i, path, chunk))
                sizes[large] += len(chunk.data)
                if sizes[large] >= target:
                    futures.append(pool.submit(_read_fast, parts[large]))
                    parts[large], sizes[large] = [], 0
            if parts[True]:
                futures.append(pool.submit(_read_fast, parts[True]))
            if sizes[False] >= FAST_PATH_MIN_BYTES or (futures and parts[False]):
                futures.append(pool.submit(_read_fast, parts[False]))
            for future in futures:
                done.update(future.result())
        for i, path, chunk in fast:
            results[i] = done.get(i) or _read_exact(path, chunk)
        return [r for r in results if r is not None]


def _looks_clean(data: bytes) -> bool:
    # Blank lines need no scan here: Arrow skips them, so the fast path's row
    # count falls short of the line count and the chunk goes the exact way.
    return b"\r" not in data


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


# ---- fast path: DuckDB --------------------------------------------------------
#
# DuckDB's JSON reader is the quickest parser here, but it converts leniently
# ("12" or true where a number belongs) and reads only the keys it is told.
# Both are made exact cheaply:
#
# - Every field is typed so that what DuckDB accepts converts as the exact path
#   converts it: canonical metrics, extras and ts as DOUBLE (booleans become
#   1.0 there too), v, rank and step as text (a boolean stays "true" and fails
#   the number check).
# - The keys come from a few lines sampled over each chunk. A key the sample
#   missed, a null, or a number written as a string all show in one count: the
#   quote characters in the chunk must equal what its rows account for (two per
#   key, two per string value, and the raw count of the few other lines). So
#   does what DuckDB forgives and Python's json does not, a trailing comma: the
#   commas must equal one per key but the first, plus those between sample ids.
#   A chunk that does not balance goes to the Arrow path.
# - Step lines whose values the query cannot vouch for are parsed again from
#   their text by the exact code, like the other events: a NaN or infinity
#   (DuckDB also reads "nan", "inf", "-nan"), sample ids that are not plain
#   integers (DuckDB keeps a number's text, "1e400", where json reads a float),
#   a run name holding a quote or a comma (its escapes upset the counts).
#
# Line numbers come from row order: each DuckDB connection runs on one thread,
# so rows arrive file by file and line by line; the files of a batch are shared
# between connections running in parallel.

_JOIN_BELOW = 1 << 20  # chunks smaller than this are joined into one file for DuckDB
_SAMPLE_LINES = 16  # lines sampled for keys in each chunk (plus the first and last)
_CANONICAL = frozenset(("kind", *METRIC_NAMES))
_ENVELOPE_KEYS = frozenset(("v", "rank", "step", "ts", "run", "sample_ids"))


def _duckdb_part(part: list[tuple[int, Path, Chunk]]) -> dict[int, ReadResult]:
    import duckdb

    part = [item for item in part if _utf8(item[2].data)]
    if not part:
        return {}
    step_keys: set[str] = set()
    for _, _, chunk in part:
        found = _sample_step_keys(chunk)
        if found is None:
            return {}  # a sampled line is not a JSON object: the Arrow path decides
        step_keys |= found
    extras = sorted(step_keys - _CANONICAL - _ENVELOPE_KEYS)
    names = [*_CANONICAL, *_ENVELOPE_KEYS, *extras]
    if len({k.lower() for k in names}) != len(names):
        return {}  # SQL names ignore case: keys equal but for case go the Arrow way
    if any(c in k for k in extras for c in '",\\'):
        return {}  # such a key may be spelled with escapes that upset the counts
    # Large whole files are read where they lie. The others (smaller files, the
    # new lines of files read before) are joined into one temporary file:
    # DuckDB's cost per file read (about half a millisecond) is larger than
    # the parse of a file of a few hundred lines.
    alone = [it[2].whole_file and len(it[2].data) >= _JOIN_BELOW for it in part]
    direct = [it for it, a in zip(part, alone, strict=True) if a]
    joined = [it for it, a in zip(part, alone, strict=True) if not a]
    part = direct + joined
    with tempfile.TemporaryDirectory(prefix="tunescope-") as tmp:
        files = [str(path.resolve()) for _, path, _ in direct]
        if joined:
            files.append(os.path.join(tmp, "joined.jsonl"))
            with open(files[-1], "wb") as f:
                for _, _, chunk in joined:
                    f.write(chunk.data)
        con = connect_duckdb(config={"threads": 1, "preserve_insertion_order": True})
        try:
            table = _duckdb_rows(con, files, extras)
        except duckdb.Error:
            return {}  # a malformed line, a text where a number belongs
        finally:
            con.close()
    return _split_rows(table, part, extras, len(direct))


def _sample_step_keys(chunk: Chunk) -> set[str] | None:
    """The keys of step lines sampled over the chunk (None: one is not an object)."""
    data = chunk.data
    starts = {0, data.rfind(b"\n", 0, len(data) - 1) + 1}
    gap = max(len(data) // _SAMPLE_LINES, min(16 * 1024, len(data) // 4), 1)  # small: ~5 lines
    for at in range(gap, len(data) - 1, gap):
        starts.add(data.index(b"\n", at - 1) + 1)
    keys: set[str] = set()
    for start in starts:
        if start >= len(data):
            continue
        try:
            obj = loads(data[start : data.index(b"\n", start)])
        except LineError:
            return None
        if not isinstance(obj, dict):
            return None
        if obj.get("kind") == "step":
            keys.update(obj)
    return keys


def _duckdb_rows(con: Any, files: list[str], extras: list[str]) -> pa.Table:
    """Every line of the files as one row, in file and line order. The columns
    read are renamed by position (extras become ``x0``, ``x1``, ...), so no
    key a user wrote can collide with DuckDB's own columns (``file_index``) or
    with the names the query adds (``#i``, ``#q``)."""
    q = _ident
    envelope = {"kind": "VARCHAR", "v": "VARCHAR", "rank": "VARCHAR", "step": "VARCHAR"}
    envelope |= {"ts": "DOUBLE", "run": "VARCHAR", "sample_ids": "JSON"}
    keys = [*envelope, *METRIC_NAMES, *extras]
    alias = {**{k: k for k in (*envelope, *METRIC_NAMES)}, **_extra_aliases(extras)}
    columns = "{" + ", ".join(f"{_sql_str(k)}: '{envelope.get(k, 'DOUBLE')}'" for k in keys) + "}"
    doubles = [alias[k] for k in (*METRIC_NAMES, *extras)]

    def not_whole(k: str, n: str, lo: int, hi: int) -> str:
        return f"({q(k)} IS NOT NULL AND ({n} IS NULL OR {n} <> floor({n}) OR {n} < {lo} OR {n} > {hi}))"

    kinds = ", ".join(f"'{k}'" for k in sorted(KINDS))
    bad = f"""kind IS NULL OR kind NOT IN ({kinds})
        OR {not_whole("v", '"#v"', -INT64_MAX, SCHEMA_VERSION)}
        OR {not_whole("step", '"#s"', 0, INT64_MAX)} OR (step IS NOT NULL AND "#sb" IS NULL)
        OR (step IS NULL AND kind IN ('step', 'eval'))
        OR {not_whole("rank", '"#r"', 0, RANK_MAX)}
        OR NOT coalesce(ts >= 0 AND ts < {TS_MAX:.0f}, ts IS NULL)"""
    # step lines the exact code reads again (see above); NaN and infinities
    # survive the sum, an overflow to infinity only costs that line a re-read
    finite = " + ".join(f"coalesce({q(k)}, 0)" for k in doubles)
    ids = r"\[((0|-?[1-9][0-9]{0,17})(,(0|-?[1-9][0-9]{0,17}))*)?\]"
    check = f"""NOT isfinite({finite})
        OR ("#ids" IS NOT NULL AND NOT regexp_full_match("#ids", '{ids}'))
        OR (run IS NOT NULL AND (contains(run, '"') OR contains(run, ',')))"""
    # quote characters the line holds: "kind":"step", two per other key present
    # and two for the run name; commas: one per key present but the first,
    # and those between sample ids
    keyed = [k for k in keys if k != "kind"]
    present = " + ".join(f"({q(alias[k])} IS NOT NULL)::INTEGER" for k in keyed)
    quotes = " + ".join(
        f"({q(alias[k])} IS NOT NULL)::INTEGER * {2 + k.count(chr(34))}" for k in keyed
    )
    commas = "coalesce(length(\"#ids\") - length(replace(\"#ids\", ',', '')), 0)"
    # the casts each check needs, computed once per line
    casts = (
        '*, TRY_CAST(v AS DOUBLE) AS "#v", TRY_CAST(rank AS DOUBLE) AS "#r", '
        'TRY_CAST(step AS DOUBLE) AS "#s", TRY_CAST(step AS BIGINT) AS "#sb0", '
        'CAST(sample_ids AS VARCHAR) AS "#ids"'
    )
    names = ", ".join(q(alias[k]) for k in keys)
    return fetch_arrow(
        con,
        f"""SELECT "#i", kind = 'step' AND NOT coalesce({check}, true) AS "#step",
               ({bad}) AS "#bad",
               4 + {quotes} + 2 * (run IS NOT NULL)::INTEGER AS "#q",
               {present} + {commas} AS "#c",
               CAST("#r" AS INTEGER) AS "rank", "#sb" AS step, ts,
               {", ".join(q(k) for k in doubles)}, "#ids" AS sample_ids
        FROM (SELECT *, coalesce("#sb0", TRY_CAST("#s" AS BIGINT)) AS "#sb"
              FROM (SELECT file_index AS "#i", {casts}
                    FROM read_json(?, format='newline_delimited', columns={columns},
                                   maximum_object_size=67108864) AS lines({names})))""",
        [files],
    )


def _extra_aliases(extras: list[str]) -> dict[str, str]:
    """The column name each extra metric gets in the DuckDB tier's query."""
    return {k: f"x{n}" for n, k in enumerate(extras)}


def _split_rows(
    table: pa.Table, part: list[tuple[int, Path, Chunk]], extras: list[str], direct: int
) -> dict[int, ReadResult]:
    """Per-file results from a part's rows, for the files that pass every check.
    The first ``direct`` chunks of the part were read as files of their own,
    the others joined into one file after them."""
    import numpy as np
    import pyarrow.compute as pc

    fi = table.column("#i").to_numpy().astype(np.int64)
    if len(fi) and not bool((fi[1:] >= fi[:-1]).all()):
        return {}  # rows out of file order: line numbers cannot be trusted
    # where each chunk's rows start: its file's first row, plus in the joined
    # file the lines of the chunks before it
    lines = np.array([chunk.lines for _, _, chunk in part], dtype=np.int64)
    slot = np.minimum(np.arange(len(part)), direct)
    slot_rows = np.diff(np.searchsorted(fi, np.arange(direct + 2)))
    slot_lines = np.bincount(slot, weights=lines, minlength=direct + 1).astype(np.int64)
    slot_ok = slot_rows == slot_lines  # else DuckDB skipped a line: no row can be placed
    within = np.cumsum(lines) - lines
    within = np.where(slot == direct, within - within[min(direct, len(part) - 1)], 0)
    starts = np.concatenate(([0], np.cumsum(slot_rows)))[slot] + within
    is_step = pc.fill_null(table.column("#step"), False).to_numpy(zero_copy_only=False)
    bad = pc.fill_null(table.column("#bad"), True).to_numpy(zero_copy_only=False)
    quotes = pc.fill_null(table.column("#q"), 0).to_numpy(zero_copy_only=False)
    commas = pc.fill_null(table.column("#c"), 0).to_numpy(zero_copy_only=False)
    first = np.array([chunk.first_line for _, _, chunk in part], dtype=np.int64)
    item = np.searchsorted(starts, np.arange(len(fi)), side="right") - 1  # each row's chunk
    seq = first[item] + np.arange(len(fi)) - starts[item]
    steps_all = table.select(["rank", "step", "ts", *METRIC_NAMES, "sample_ids"])
    steps_all = steps_all.append_column("seq", pa.array(seq, pa.int64())).cast(STEP_SCHEMA)
    # Check each chunk; the lines left to the exact code (events, step lines
    # the query cannot vouch for) go into one builder, chunk after chunk.
    others = RowBuilder()
    ok = np.zeros(len(part), dtype=bool)
    marks = [others.counts()]  # rows in `others` after each chunk
    for k, (_, path, chunk) in enumerate(part):
        lo, hi = int(starts[k]), int(starts[k]) + chunk.lines
        if slot_ok[slot[k]] and not bad[lo:hi].any():
            rank0 = file_rank(path)
            ok[k] = _check_chunk(chunk, rank0, is_step[lo:hi], quotes[lo:hi], commas[lo:hi], others)
            if not ok[k]:
                others.truncate(marks[-1])
        marks.append(others.counts())
    if not ok.any():
        return {}
    # The step rows of every chunk that passed, at once, then sliced per chunk.
    keep = is_step & ok[item]
    per_chunk = np.bincount(item[keep], minlength=len(part))
    at = np.concatenate(([0], np.cumsum(per_chunk)))
    mask = pa.array(keep)
    steps = steps_all.filter(mask)
    rank = steps.column("rank")
    if rank.null_count:  # a line without "rank": the file's own
        ranks = np.array([file_rank(path) for _, path, _ in part], dtype=np.int32)
        steps = steps.set_column(0, "rank", pc.coalesce(rank, pa.array(ranks[item[keep]])))
    extra_rows = []  # per extra: its metric rows and where each chunk's begin
    for name, x in _extra_aliases(extras).items():
        values = table.column(x).filter(mask)
        metric = _extra_metrics(steps, name, values)
        if metric is not None:
            valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
            counts = np.bincount(item[keep][valid], minlength=len(part))
            extra_rows.append((metric, np.concatenate(([0], np.cumsum(counts)))))
    o_steps, o_metrics, o_events = others.tables()
    out: dict[int, ReadResult] = {}
    for k in np.flatnonzero(ok):
        i, _, chunk = part[k]
        (s0, m0, e0), (s1, m1, e1) = marks[k], marks[k + 1]
        got = steps.slice(at[k], per_chunk[k])
        if s1 > s0:  # step lines the exact code read, in line order with the rest
            got = pa.concat_tables([got, o_steps.slice(s0, s1 - s0)]).sort_by("seq")
        metrics = [m.slice(b[k], b[k + 1] - b[k]) for m, b in extra_rows]
        out[i] = ReadResult(
            steps=got,
            metrics=pa.concat_tables([*metrics, o_metrics.slice(m0, m1 - m0)]),
            events=o_events.slice(e0, e1 - e0),
            state=chunk.state,
            replace=chunk.restarted,
        )
    return out


def _check_chunk(
    chunk: Chunk, rank0: int, step_mask: Any, quotes: Any, commas: Any, others: RowBuilder
) -> bool:
    """True when every line of a chunk read by the DuckDB tier is what the
    exact path reads: the lines it left to the exact code parse without a
    problem (their rows are added to ``others``), and the quote characters and
    commas of the chunk are those its rows account for."""
    import numpy as np

    ords = [int(j) + 1 for j in np.flatnonzero(~step_mask)]
    try:
        found = _other_events(chunk, ords, rank0, others)
    except (LineError, ValueError, TypeError, OverflowError, pa.ArrowException):
        return False
    if found is None:
        return False  # a problem the exact path reports
    other_quotes, other_commas = found
    if int(quotes[step_mask].sum()) + other_quotes != count_byte(chunk.data, b'"'):
        return False  # a key the sample missed, a null, a number as text: not this tier
    return int(commas[step_mask].sum()) + other_commas == count_byte(chunk.data, b",")


def _other_events(
    chunk: Chunk, ords: list[int], rank0: int, rows: RowBuilder
) -> tuple[int, int] | None:
    """The few lines of a fast-path chunk that it leaves to the exact code
    (1-based ordinals), parsed by it, their rows added to ``rows``: the quote
    characters and commas they hold; None when one has a problem that the
    exact path must report."""
    quotes = commas = 0
    lines = _lines_at(chunk, ords)
    for k in ords:
        quotes += lines[k].count(b'"')
        commas += lines[k].count(b",")
        ev = parse_event(loads(lines[k]))
        if ev.problems:
            return None
        add_event(rows, ev, rank0, chunk.first_line - 1 + k)
    return quotes, commas


def _fast_result(
    chunk: Chunk, steps: pa.Table, extras: dict[str, Any], others: RowBuilder
) -> ReadResult:
    """A fast tier's result: the step rows (STEP_SCHEMA), one metric row per
    non-null extra value of them, and the rows of the other events."""
    parts = [_extra_metrics(steps, name, values) for name, values in extras.items()]
    ev_steps, ev_metrics, ev_events = others.tables()
    if ev_steps.num_rows:  # step lines the exact code read, in line order with the rest
        steps = pa.concat_tables([steps, ev_steps]).sort_by("seq")
    return ReadResult(
        steps=steps,
        metrics=pa.concat_tables([*(p for p in parts if p is not None), ev_metrics]),
        events=ev_events,
        state=chunk.state,
        replace=chunk.restarted,
    )


def _extra_metrics(steps: pa.Table, name: str, values: Any) -> pa.Table | None:
    """The metric rows (METRIC_SCHEMA) of one extra field of step rows: one per
    non-null value; None when there is none."""
    import pyarrow.compute as pc

    count = len(values) - values.null_count
    if not count:
        return None
    keep = pc.is_valid(values) if values.null_count else None
    columns = {
        "rank": steps.column("rank"),
        "step": steps.column("step"),
        "ts": steps.column("ts"),
        "value": pc.cast(values, pa.float64(), safe=False),
        "seq": steps.column("seq"),
    }
    if keep is not None:
        columns = {k: v.filter(keep) for k, v in columns.items()}
    columns["name"] = pa.repeat(pa.scalar(name, pa.string()), count)
    return pa.table(columns).select(METRIC_SCHEMA.names).cast(METRIC_SCHEMA)


def _ident(key: str) -> str:
    return '"' + key.replace('"', '""') + '"'


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---- fast path: Arrow ---------------------------------------------------------------
#
# Arrow's JSON reader parses each clean chunk with an explicit type for every
# envelope field and canonical metric; it is strict (a string where a number
# belongs, a boolean, a fractional step, a duplicate key: the parse fails), so
# anything it accepts converts exactly as the exact path would convert it.
# Every other check (kinds, ranges, extras that are not numbers) is a vectorised
# test afterwards; a chunk that fails any of them goes to the exact path, which
# then names the line. Step lines become rows without Python per line; the few
# other events are parsed from their own text by the exact code.

_ARROW_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("v", pa.int64()),
        ("rank", pa.int64()),
        ("step", pa.int64()),
        ("ts", pa.float64()),
        *[(name, pa.float64()) for name in METRIC_NAMES],
    ]
)
_NUMERIC = (pa.types.is_integer, pa.types.is_floating)
# Chunks above this are parsed with Arrow's own threads, in blocks of this size
# (a line longer than a block sends its chunk to the exact path).
_THREADED_BYTES = 32 * 1024 * 1024


def _read_fast(part: list[tuple[int, Path, Chunk]]) -> dict[int, ReadResult]:
    """Parse clean chunks (one worker's share of a batch): with DuckDB where it
    can vouch for every line, with Arrow's JSON reader for the rest. Returns
    results only for chunks that passed every check; the caller sends the
    others to the exact path."""
    done = _duckdb_part(part)
    rest = [item for item in part if item[0] not in done]
    if rest:
        done.update(_read_arrow(rest))
    return done


def _read_arrow(batch: list[tuple[int, Path, Chunk]]) -> dict[int, ReadResult]:
    """Parse chunks with Arrow's JSON reader, several files at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[int, Path, Chunk]) -> tuple[int, ReadResult | None]:
        i, path, chunk = item
        try:
            return i, _fast_chunk(path, chunk)
        except (pa.ArrowException, LineError, ValueError, TypeError, OverflowError):
            return i, None

    workers = min(len(batch), os.cpu_count() or 1, 8)
    if workers <= 1:
        results = [one(item) for item in batch]
    else:
        with ThreadPoolExecutor(workers) as pool:  # Arrow releases the GIL while parsing
            results = list(pool.map(one, batch))
    return {i: r for i, r in results if r is not None}


def _fast_chunk(path: Path, chunk: Chunk) -> ReadResult | None:
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.json as pj

    data = chunk.data
    if not _utf8(data):
        return None  # Arrow does not check the text of every field
    if _max_nesting_bound(data) > _ARROW_MAX_DEPTH:
        return None  # Arrow's parser recurses per level: a deep enough line overflows the stack
    threaded = len(data) > _THREADED_BYTES
    table = pj.read_json(
        pa.BufferReader(data),
        read_options=pj.ReadOptions(
            use_threads=threaded,
            block_size=_THREADED_BYTES // 4 if threaded else len(data) + 1,
        ),
        parse_options=pj.ParseOptions(
            explicit_schema=_ARROW_SCHEMA,
            unexpected_field_behavior="infer",
            newlines_in_values=False,
        ),
    )
    n = table.num_rows
    if n != chunk.lines:
        return None
    kind = table.column("kind")
    if kind.null_count or not pc.all(pc.is_in(kind, value_set=_KINDS)).as_py():
        return None
    is_step = pc.equal(kind, "step")
    col = table.column
    if not _within(col("v"), -INT64_MAX, SCHEMA_VERSION):
        return None
    if col("v").null_count and _V_NULL.search(data):
        return None  # "v": null is no version, not a missing one (Arrow reads both as null)
    if not _within(col("rank"), 0, RANK_MAX) or not _within(col("step"), 0, INT64_MAX):
        return None
    needs_step = pc.or_(is_step, pc.equal(kind, "eval"))
    if col("step").null_count and pc.any(pc.and_(needs_step, pc.is_null(col("step")))).as_py():
        return None
    ts = col("ts")
    if ts.null_count < n:
        # TS_MAX excluded and NaN fails both comparisons: the exact path notes those
        ok = pc.and_(pc.greater_equal(ts, 0.0), pc.less(ts, TS_MAX))
        if not pc.all(ok).as_py():
            return None

    steps = table.filter(is_step)
    step_rows = is_step.to_numpy(zero_copy_only=False)
    rank0 = file_rank(path)
    rank = pc.cast(pc.fill_null(steps.column("rank"), rank0), pa.int32())
    columns: dict[str, Any] = {"rank": rank, "step": steps.column("step"), "ts": steps.column("ts")}
    for name in METRIC_NAMES:
        columns[name] = steps.column(name)
    extras: list[str] = []
    sample_ids = pa.nulls(steps.num_rows, pa.string())
    for field_ in steps.schema:
        name = field_.name
        if name in _ARROW_SCHEMA.names or name == "run":
            continue
        values = steps.column(name)
        if values.null_count == steps.num_rows:
            continue  # only in other events (or null): nothing for the step rows
        if name == "sample_ids":
            sample_ids = _ids_json(values)
            if sample_ids is None:
                return None
        elif any(test(field_.type) for test in _NUMERIC):
            extras.append(name)
        else:
            return None  # text, booleans, lists: the exact path keeps them as an event
    columns["sample_ids"] = sample_ids
    columns["seq"] = pa.array(chunk.first_line + np.flatnonzero(step_rows), pa.int64())
    step_table = pa.table(columns).cast(STEP_SCHEMA)
    ords = [int(k) + 1 for k in np.flatnonzero(~step_rows)]
    others = RowBuilder()
    if _other_events(chunk, ords, rank0, others) is None:
        return None
    return _fast_result(chunk, step_table, {name: steps.column(name) for name in extras}, others)


_KINDS = pa.array(sorted(KINDS), pa.string())
_V_NULL = re.compile(rb'"v"\s*:\s*null')


def _utf8(data: bytes) -> bool:
    """True when ``data`` is valid UTF-8 (as the exact path requires of every
    line); checked in pieces, so that no copy of a large chunk is made."""
    if data.isascii():  # the usual case, and much the quickest test
        return True
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        for at in range(0, len(data), 1 << 22):
            decoder.decode(view[at : at + (1 << 22)])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


# Arrow's JSON parser recurses once per level of nesting and overflows a
# thread's stack at a few thousand levels (SIGSEGV, the whole process). Chunks
# that may nest deeper than this go to the exact path, which reports a line
# nested deeper than Python's own limit (about 1,000) and keeps the others.
_ARROW_MAX_DEPTH = 256


def _max_nesting_bound(data: bytes) -> int:
    """An upper bound on how deeply any line of ``data`` nests: the most ``{``
    and ``[`` bytes on one line (brackets inside strings counted too), in a
    few vectorised passes over the bytes."""
    import numpy as np

    a = np.frombuffer(data, np.uint8)
    opens = np.flatnonzero((a == 0x7B) | (a == 0x5B))
    if len(opens) <= _ARROW_MAX_DEPTH:
        return len(opens)
    line_of = np.searchsorted(np.flatnonzero(a == 0x0A), opens)
    return int(np.bincount(line_of).max())


def _within(values: Any, lo: int, hi: int) -> bool:
    """True when every non-null value lies in [lo, hi]."""
    import pyarrow.compute as pc

    if values.null_count == len(values):
        return True
    bounds = pc.min_max(values)
    return lo <= bounds["min"].as_py() and bounds["max"].as_py() <= hi


def _ids_json(values: Any) -> Any:
    """``sample_ids`` as the exact path stores them: compact JSON text; None
    when Arrow's reading may differ from json's: numbers that are not all
    integers (where json keeps ``2`` in ``[0.5, 2]`` an integer, Arrow makes
    every item a float) and objects (Arrow gives each the keys of all)."""
    import pyarrow.compute as pc

    t = values.type
    item = t.value_type if pa.types.is_list(t) else t
    if not (pa.types.is_integer(item) or pa.types.is_string(item) or pa.types.is_null(item)):
        return None
    if (
        pa.types.is_list(t)
        and pa.types.is_integer(t.value_type)
        and pc.list_flatten(values).null_count == 0
    ):
        inner = pc.binary_join(pc.cast(values, pa.list_(pa.string())), ",")
        return pc.binary_join_element_wise("[", inner, "]", "")
    return pa.array(
        [None if v is None else payload_json(v) for v in values.to_pylist()], pa.string()
    )


_WALK = 64  # lines walked from an end of a chunk before finding all newlines pays


def _lines_at(chunk: Chunk, ords: list[int]) -> dict[int, bytes]:
    """The raw text of a few lines of a chunk (1-based ordinals), found by
    walking newlines from whichever end of the chunk is nearer (the usual
    ones, ``run_start`` and ``run_end``, are the first and the last line), or
    for lines far from both ends from where every newline is."""
    data, total = chunk.data, chunk.lines
    found: dict[int, bytes] = {}
    if any(_WALK < k <= total - _WALK for k in ords):
        import numpy as np

        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 0x0A)
        for k in ords:
            found[k] = data[int(ends[k - 2]) + 1 if k > 1 else 0 : int(ends[k - 1])]
        return found
    pos, line = 0, 1  # pos: where line `line` starts
    for k in sorted(k for k in ords if k <= total // 2):
        while line < k:
            pos = data.index(b"\n", pos) + 1
            line += 1
        found[k] = data[pos : data.index(b"\n", pos)]
    end, line = len(data) - 1, total  # end: the newline that ends line `line`
    for k in sorted((k for k in ords if k > total // 2), reverse=True):
        while line > k:
            end = data.rindex(b"\n", 0, end)
            line -= 1
        found[k] = data[data.rfind(b"\n", 0, end) + 1 : end]
    return found
