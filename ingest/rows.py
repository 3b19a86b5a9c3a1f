"""Normalised rows, problems and the reader interface.

Every reader (native tunescope logs, HF ``trainer_state.json``, TensorBoard, ...)
turns one source file into three Arrow tables with the columns below, plus the
problems it met and an opaque state that lets the next call read only what is
new. The ingester adds ``run_id`` and bookkeeping columns and writes them as
Parquet segments; the store turns the segments into the SQL views.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from tunescope.eventlog import LineError, loads
from tunescope.schema import METRIC_NAMES

if TYPE_CHECKING:
    from tunescope.ingest.live.tail import Chunk

# Columns a reader produces (without run_id, src, gen, seg: the ingester adds them).
STEP_SCHEMA = pa.schema(
    [
        pa.field("rank", pa.int32()),
        pa.field("step", pa.int64()),
        pa.field("ts", pa.float64()),
        *[pa.field(name, pa.float64()) for name in METRIC_NAMES],
        pa.field("sample_ids", pa.string()),
        pa.field("seq", pa.int64()),
    ]
)
METRIC_SCHEMA = pa.schema(
    [
        pa.field("rank", pa.int32()),
        pa.field("step", pa.int64()),
        pa.field("ts", pa.float64()),
        pa.field("name", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("seq", pa.int64()),
    ]
)
EVENT_SCHEMA = pa.schema(
    [
        pa.field("rank", pa.int32()),
        pa.field("step", pa.int64()),
        pa.field("ts", pa.float64()),
        pa.field("kind", pa.string()),
        pa.field("payload", pa.string()),
        pa.field("seq", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Problem:
    """Something in a user's file that was skipped, with where and why."""

    path: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "reason": self.reason}


@dataclass
class ReadResult:
    """What one ``Reader.read`` call produced.

    ``replace`` is True when the rows supersede everything read from this source
    before (a whole-file format re-read after a change, or a file that shrank).
    ``problems`` lists what was skipped in the bytes read this time.
    ``subruns`` holds the rows of further runs found in the same file, each
    with its suffix (``"#2"``): the cache records each as a run of its own,
    named after the file (``logs/train.log#2``), with the rows of this
    result as the file's first run.
    ``more`` is True when the reader stopped at its bound on what one read
    decodes: the source is read again, from ``state``, in the same pass.
    """

    steps: pa.Table
    metrics: pa.Table
    events: pa.Table
    state: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    replace: bool = False
    subruns: list[tuple[str, ReadResult]] = field(default_factory=list)
    more: bool = False

    @property
    def rows(self) -> int:
        return self.steps.num_rows + self.metrics.num_rows + self.events.num_rows


class Reader(Protocol):
    """A log format. Readers are plain objects listed in ``READERS``.

    ``detect`` is called for every file under a runs root and must be cheap
    (file name first, content only when the name is ambiguous). ``run_dir``
    maps a detected file to the directory that is its run. ``read`` reads the
    file from ``state`` (None the first time) and returns the rows that are new.
    """

    format: str

    def detect(self, path: Path) -> bool: ...

    def run_dir(self, path: Path) -> Path: ...

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult: ...


class RowBuilder:
    """Collects rows in Python and builds the three tables; for readers of
    small or awkward formats. ``seq`` orders writes: a later row for the same
    (rank, step) supersedes an earlier one."""

    def __init__(self) -> None:
        self._steps: dict[str, list[Any]] = {f.name: [] for f in STEP_SCHEMA}
        self._metrics: dict[str, list[Any]] = {f.name: [] for f in METRIC_SCHEMA}
        self._events: dict[str, list[Any]] = {f.name: [] for f in EVENT_SCHEMA}
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def step(
        self,
        rank: int,
        step: int,
        ts: float | None,
        metrics: dict[str, float],
        sample_ids: Any = None,
        seq: int | None = None,
    ) -> None:
        s = self._steps
        s["rank"].append(rank)
        s["step"].append(step)
        s["ts"].append(ts)
        for name in METRIC_NAMES:
            s[name].append(metrics.get(name))
        s["sample_ids"].append(None if sample_ids is None else payload_json(sample_ids))
        s["seq"].append(self.next_seq() if seq is None else seq)

    def metric(
        self,
        rank: int,
        step: int | None,
        ts: float | None,
        name: str,
        value: float | None,
        seq: int | None = None,
    ) -> None:
        m = self._metrics
        m["rank"].append(rank)
        m["step"].append(step)
        m["ts"].append(ts)
        m["name"].append(name)
        m["value"].append(value)
        m["seq"].append(self.next_seq() if seq is None else seq)

    def event(
        self,
        rank: int,
        step: int | None,
        ts: float | None,
        kind: str,
        payload: dict[str, Any],
        seq: int | None = None,
    ) -> None:
        e = self._events
        e["rank"].append(rank)
        e["step"].append(step)
        e["ts"].append(ts)
        e["kind"].append(kind)
        e["payload"].append(payload_json(payload))
        e["seq"].append(self.next_seq() if seq is None else seq)

    def counts(self) -> tuple[int, int, int]:
        """How many step, metric and event rows have been added so far."""
        return len(self._steps["seq"]), len(self._metrics["seq"]), len(self._events["seq"])

    def truncate(self, counts: tuple[int, int, int]) -> None:
        """Drop the rows added after ``counts()`` returned ``counts``."""
        for table, n in zip((self._steps, self._metrics, self._events), counts, strict=True):
            for values in table.values():
                del values[n:]

    def tables(self) -> tuple[pa.Table, pa.Table, pa.Table]:
        return (
            pa.table(self._steps, schema=STEP_SCHEMA),
            pa.table(self._metrics, schema=METRIC_SCHEMA),
            pa.table(self._events, schema=EVENT_SCHEMA),
        )

    def result(
        self,
        state: dict[str, Any],
        problems: Iterable[Problem] = (),
        replace: bool = False,
    ) -> ReadResult:
        steps, metrics, events = self.tables()
        return ReadResult(steps, metrics, events, state, list(problems), replace)


def payload_json(payload: dict[str, Any]) -> str:
    """Event payloads as JSON text; non-finite numbers kept as NaN/Infinity tokens."""
    return json.dumps(
        payload, allow_nan=True, default=str, separators=(",", ":"), ensure_ascii=False
    )


def empty_result(state: dict[str, Any], problems: Iterable[Problem] = ()) -> ReadResult:
    return RowBuilder().result(state, problems)


def decoded_lines(
    path: Path,
    chunk: Chunk,
    problems: list[Problem],
    convert: Callable[[Any], Any] | None = None,
) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of ``chunk``: the line's
    JSON, passed through ``convert`` when given. A line that ``loads`` or
    ``convert`` rejects (``LineError``) is added to ``problems`` and skipped."""
    lineno = chunk.first_line - 1
    for raw in chunk.data.split(b"\n")[:-1]:
        lineno += 1
        if not raw.strip():
            continue
        try:
            value = loads(raw) if convert is None else convert(loads(raw))
        except LineError as e:
            problems.append(Problem(str(path), lineno, str(e)))
            continue
        yield lineno, value
