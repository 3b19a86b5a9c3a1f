"""One run of a console log as it is read: its step, metric and event rows
so far (kept in the reader's state between reads), and those rows as tables."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunescope.ingest.readers.console import megatron
from tunescope.ingest.readers.crash_tail import lines_before
from tunescope.ingest.readers.foreign import Deltas
from tunescope.ingest.rows import METRIC_SCHEMA, STEP_SCHEMA, Problem, ReadResult, RowBuilder
from tunescope.schema import METRIC_NAMES


class Run:
    """One run inside the file, while it is being read: what crosses reads."""

    def __init__(self, idx: int, saved: dict[str, Any] | None = None) -> None:
        s = saved or {}
        self.idx = idx
        self.first: int | None = s.get("first")
        self.last: int | None = s.get("last")
        self.n: int = s.get("n", 0)
        self.total: int | None = s.get("total")
        self.ended: str | None = s.get("ended")
        self.quiet: bool = s.get("quiet", False)  # ended quietly: a crash may still come
        self.pending: list[Any] | None = s.get("pending")
        # a crash whose lines ran to the end of a read: [byte, line, status] of
        # its first marker, so a later read can add the lines still to come
        self.crash: list[Any] | None = s.get("crash")
        self.banner: bool = s.get("banner", False)
        self.started: bool = s.get("started", False)
        self.first_steps: list[int] = list(s.get("first_steps", []))
        self.steps_from: str | None = s.get("steps_from")
        self.epoch: float | None = s.get("epoch")
        self.deltas = Deltas(s)
        # rows of this read
        self.steps: dict[tuple[int, int], list[Any]] = {}
        self.metrics: list[tuple[int, int, str, float, int]] = []
        self.events: list[tuple[int | None, str, dict[str, Any], int]] = []
        self.bulk: megatron.Bulk | None = None  # iteration lines read as columns
        self.bulk_seq: Any = None
        self.gap = 0.0

    def dump(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "n": self.n,
            "total": self.total,
            "ended": self.ended,
            "quiet": self.quiet,
            "pending": self.pending,
            "crash": self.crash,
            "banner": self.banner,
            "started": self.started,
            "first_steps": [] if self.started else self.first_steps[:32],
            "steps_from": self.steps_from,
            "epoch": self.epoch,
            "prev": self.deltas.dump(),
        }

    def step_row(self, rank: int, step: int, canon: dict[str, float], seq: int) -> None:
        key = (rank, step)
        row = self.steps.get(key)
        if row is None:
            self.steps[key] = [seq, dict(canon)]
        else:
            row[0] = seq
            row[1].update(canon)

    def metric_rows(self, step: int, extras: dict[str, float], seq: int, rank: int = 0) -> None:
        for name, value in extras.items():
            self.metrics.append((rank, step, name, value, seq))


def run_result(
    run: Run, state: dict[str, Any], problems: list[Problem], replace: bool
) -> ReadResult:
    """The rows of one run as tables, built a column at a time (a console log
    can hold hundreds of thousands of steps)."""
    import pyarrow as pa

    bulk_steps = bulk_metrics = None
    if run.bulk is not None:
        bulk_steps, bulk_metrics = _bulk_tables(run)
    items = list(run.steps.items())
    seqs = [v[0] for _, v in items]
    if any(b < a for a, b in itertools.pairwise(seqs)):
        items.sort(key=lambda kv: kv[1][0])
    n = len(items)
    canons = [v[1] for _, v in items]
    present: set[str] = set()
    for c in canons[:64]:
        present.update(c)
    if n > 64:
        present = present.union(*canons[64:])
    cols: dict[str, Any] = {
        "rank": pa.array([k[0] for k, _ in items], pa.int32()),
        "step": pa.array([k[1] for k, _ in items], pa.int64()),
        "ts": pa.nulls(n, pa.float64()),
    }
    for name in METRIC_NAMES:
        if name in present:
            cols[name] = pa.array([c.get(name) for c in canons], pa.float64())
        else:
            cols[name] = pa.nulls(n, pa.float64())
    cols["sample_ids"] = pa.nulls(n, pa.string())
    cols["seq"] = pa.array([v[0] for _, v in items], pa.int64())
    steps = pa.table(cols, schema=STEP_SCHEMA)
    m = run.metrics
    metrics = pa.table(
        {
            "rank": pa.array([r[0] for r in m], pa.int32()),
            "step": pa.array([r[1] for r in m], pa.int64()),
            "ts": pa.nulls(len(m), pa.float64()),
            "name": pa.array([r[2] for r in m], pa.string()),
            "value": pa.array([r[3] for r in m], pa.float64()),
            "seq": pa.array([r[4] for r in m], pa.int64()),
        },
        schema=METRIC_SCHEMA,
    )
    if bulk_steps is not None:
        steps = pa.concat_tables([bulk_steps, steps])
        metrics = pa.concat_tables([bulk_metrics, metrics])
    rows = RowBuilder()
    for step, kind, payload, seq in run.events:
        rows.event(0, step, None, kind, payload, seq=seq)
    events = rows.tables()[2]
    return ReadResult(steps, metrics, events, state, problems, replace)


def _bulk_tables(run: Run) -> tuple[Any, Any]:
    """Step and metric tables of the iteration lines read as columns; rank-0
    rows of the same steps (memory lines) are merged into them and leave
    ``run.steps``."""
    import numpy as np
    import pyarrow as pa

    b = run.bulk
    assert b is not None
    n = len(b.steps)
    canon = {k: np.array(v, dtype=np.float64) for k, v in b.canon.items()}
    # Columns only the merged lines carry (memory at one iteration): the other
    # rows had no value, so they stay NULL; NaN is kept for a logged NaN.
    present: dict[str, Any] = {}
    seq = run.bulk_seq.astype(np.int64)  # a merged row's is its later line's
    for (rank, step), (line_seq, values) in list(run.steps.items()):
        if rank != 0:
            continue
        i = int(np.searchsorted(b.steps, step))
        if i < n and b.steps[i] == step:
            for name, value in values.items():
                if name not in canon:
                    canon[name] = np.full(n, np.nan)
                    present[name] = np.zeros(n, dtype=bool)
                canon[name][i] = value
                if name in present:
                    present[name][i] = True
            seq[i] = max(seq[i], line_seq)
            del run.steps[(rank, step)]
    missing = pa.nulls(n, pa.float64())  # one column of nulls, shared (arrays are immutable)
    cols: dict[str, Any] = {
        "rank": column(np.zeros(n, np.int32), pa.int32()),
        "step": column(b.steps, pa.int64()),
        "ts": missing,
    }
    for name in METRIC_NAMES:
        got = canon.get(name)
        if got is None:
            cols[name] = missing
        else:
            cols[name] = column(got, pa.float64(), present.get(name))
    cols["sample_ids"] = pa.nulls(n, pa.string())
    cols["seq"] = column(seq, pa.int64())
    steps = pa.table(cols, schema=STEP_SCHEMA)
    parts = []
    ranks, at_step = cols["rank"], cols["step"]
    at_seq = column(run.bulk_seq, pa.int64())
    for name, values in b.extras.items():
        parts.append(
            pa.table(
                {
                    "rank": ranks,
                    "step": at_step,
                    "ts": missing,
                    "name": repeated(name, n),
                    "value": column(values, pa.float64()),
                    "seq": at_seq,
                },
                schema=METRIC_SCHEMA,
            )
        )
    metrics = pa.concat_tables(parts) if parts else METRIC_SCHEMA.empty_table()
    return steps, metrics


def repeated(text: str, n: int) -> Any:
    """A string column holding ``text`` ``n`` times, built without a Python
    step per row."""
    import numpy as np
    import pyarrow as pa

    raw = text.encode()
    if n * len(raw) >= 2**31 - 1:  # beyond 32-bit offsets
        return pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, np.int32)), pa.array([text])
        ).cast(pa.string())
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(raw))
    return pa.Array.from_buffers(
        pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(raw * n)]
    )


def column(values: Any, kind: Any, valid: Any = None) -> Any:
    """A numpy array as an Arrow column of ``kind``, without a copy when it
    is one already (``valid``: which entries hold a value; a NaN stays a NaN)."""
    import numpy as np
    import pyarrow as pa

    data = np.ascontiguousarray(values, dtype=kind.to_pandas_dtype())
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(kind, len(data), [bitmap, pa.py_buffer(data)])


@dataclass
class Walk:
    """Where one read is in its chunk: the run being read, the runs the chunk
    ended, and what the marker scan and the progress bar left off at."""

    run: Run
    train_total: int | None
    typical: float  # the usual gap between step items, in bytes
    scanned: int = 0  # the previous step item: markers before it were looked at
    done: list[Run] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # what a subclass keeps between reads
    path: Path | None = None
    start: int = 0  # the chunk's byte offset in its file
    crash_family: bool = False  # a log with no step lines that ends in a crash
    new_crash: bool = False  # a crash began in this read
    _line0: int | None = None

    def line0(self) -> int:
        """The line number of the chunk's first byte (counted only when a
        crash needs it)."""
        if self._line0 is None:
            try:
                before = lines_before(self.path, self.start) if self.path else 0
            except OSError:
                before = 0
            self._line0 = before + 1
        return self._line0
