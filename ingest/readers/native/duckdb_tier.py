"""The DuckDB tier of the native reader: the quickest parse of clean chunks,
made exact by the checks below; a chunk it cannot vouch for goes to the Arrow
tier (:mod:`arrow_tier`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from tunescope.eventlog import INT64_MAX, RANK_MAX, TS_MAX, LineError, loads
from tunescope.ingest.live.tail import Chunk, count_byte
from tunescope.ingest.readers.native.exact_tier import file_rank
from tunescope.ingest.readers.native.fast_tiers import extra_metrics, is_utf8, other_events
from tunescope.ingest.rows import STEP_SCHEMA, ReadResult, RowBuilder
from tunescope.ingest.store.duck import connect_duckdb, fetch_arrow
from tunescope.schema import KINDS, METRIC_NAMES, SCHEMA_VERSION

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


def read_part(part: list[tuple[int, Path, Chunk]]) -> dict[int, ReadResult]:
    import duckdb

    part = [item for item in part if is_utf8(item[2].data)]
    if not part:
        return {}
    step_keys: set[str] = set()
    for _, _, chunk in part:
        found = sample_step_keys(chunk)
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


def sample_step_keys(chunk: Chunk) -> set[str] | None:
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
        metric = extra_metrics(steps, name, values)
        if metric is not None:
            valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
            counts = np.bincount(item[keep][valid], minlength=len(part))
            extra_rows.append((metric, np.concatenate(([0], np.cumsum(counts)))))
    o_steps, o_metrics, o_events = others.tables()
    out: dict[int, ReadResult] = {}
    for k in np.flatnonzero(ok).tolist():
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
        found = other_events(chunk, ords, rank0, others)
    except (LineError, ValueError, TypeError, OverflowError, pa.ArrowException):
        return False
    if found is None:
        return False  # a problem the exact path reports
    other_quotes, other_commas = found
    if int(quotes[step_mask].sum()) + other_quotes != count_byte(chunk.data, b'"'):
        return False  # a key the sample missed, a null, a number as text: not this tier
    return int(commas[step_mask].sum()) + other_commas == count_byte(chunk.data, b",")


def _ident(key: str) -> str:
    return '"' + key.replace('"', '""') + '"'


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
