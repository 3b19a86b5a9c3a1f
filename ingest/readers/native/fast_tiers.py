"""What the two fast tiers of the native reader share: the few lines of a
chunk they hand to the exact code, and how their rows become a result."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from tunescope.eventlog import loads, parse_event
from tunescope.ingest.live.tail import Chunk
from tunescope.ingest.readers.native.exact_tier import add_event
from tunescope.ingest.rows import METRIC_SCHEMA, ReadResult, RowBuilder


def other_events(
    chunk: Chunk, ords: list[int], rank0: int, rows: RowBuilder
) -> tuple[int, int] | None:
    """The few lines of a fast-path chunk that it leaves to the exact code
    (1-based ordinals), parsed by it, their rows added to ``rows``: the quote
    characters and commas they hold; None when one has a problem that the
    exact path must report."""
    quotes = commas = 0
    lines = lines_at(chunk, ords)
    for k in ords:
        quotes += lines[k].count(b'"')
        commas += lines[k].count(b",")
        ev = parse_event(loads(lines[k]))
        if ev.problems:
            return None
        add_event(rows, ev, rank0, chunk.first_line - 1 + k)
    return quotes, commas


def fast_result(
    chunk: Chunk, steps: pa.Table, extras: dict[str, Any], others: RowBuilder
) -> ReadResult:
    """A fast tier's result: the step rows (STEP_SCHEMA), one metric row per
    non-null extra value of them, and the rows of the other events."""
    parts = [extra_metrics(steps, name, values) for name, values in extras.items()]
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


def extra_metrics(steps: pa.Table, name: str, values: Any) -> pa.Table | None:
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


def is_utf8(data: bytes) -> bool:
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


_WALK = 64  # lines walked from an end of a chunk before finding all newlines pays


def lines_at(chunk: Chunk, ords: list[int]) -> dict[int, bytes]:
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
