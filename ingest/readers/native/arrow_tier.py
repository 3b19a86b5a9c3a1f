"""The Arrow tier of the native reader: Arrow's strict JSON reader for the
clean chunks the DuckDB tier (:mod:`duckdb_tier`) left; a chunk that fails a
check here goes to the exact tier (:mod:`exact_tier`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from tunescope.eventlog import INT64_MAX, RANK_MAX, TS_MAX, LineError
from tunescope.ingest.live.tail import Chunk
from tunescope.ingest.readers.native.exact_tier import file_rank
from tunescope.ingest.readers.native.fast_tiers import fast_result, is_utf8, other_events
from tunescope.ingest.rows import STEP_SCHEMA, ReadResult, RowBuilder, payload_json
from tunescope.schema import KINDS, METRIC_NAMES, SCHEMA_VERSION

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


def read_chunks(batch: list[tuple[int, Path, Chunk]]) -> dict[int, ReadResult]:
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
    if not is_utf8(data):
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
    if other_events(chunk, ords, rank0, others) is None:
        return None
    return fast_result(chunk, step_table, {name: steps.column(name) for name in extras}, others)


_KINDS = pa.array(sorted(KINDS), pa.string())
_V_NULL = re.compile(rb'"v"\s*:\s*null')


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
    if pa.types.is_integer(t):
        return None  # a bare number is not a list of ids: the exact path keeps it as a metric
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
