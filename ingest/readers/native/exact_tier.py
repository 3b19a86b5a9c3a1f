"""The exact tier of the native reader: tunescope's own logs parsed in Python,
line by line, naming the file and line of every problem; and the Parquet copies
of a log whose JSONL is gone. The fast tiers (:mod:`duckdb_tier`,
:mod:`arrow_tier`) must read every chunk they accept to the same rows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from tunescope.eventlog import LineError, loads, parse_event
from tunescope.ingest.live.tail import Chunk
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder, decoded_lines

RANK_JSONL = re.compile(r"^rank-(\d+)\.jsonl$")
RANK_PARQUET = re.compile(r"^rank-(\d+)-(\d+)\.parquet$")


def file_rank(path: Path) -> int:
    m = RANK_JSONL.match(path.name) or RANK_PARQUET.match(path.name)
    return int(m.group(1)) if m else 0


def read_exact(path: Path, chunk: Chunk) -> ReadResult:
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


def read_parquet(path: Path, state: dict[str, Any] | None) -> ReadResult:
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
