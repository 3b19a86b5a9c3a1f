"""``EventWriter``: append schema-v1 events to ``RUN_DIR/events/rank-N.jsonl``.

Any training loop can use it; it does not import torch::

    with EventWriter("runs/my-run", rank=0) as w:
        w.run_start(model="tiny-llama", finetuning_type="lora", total_steps=100)
        for step in range(1, 101):
            ...
            w.step(step=step, loss=loss, lr=lr)
        w.run_end("completed")

Writing happens on a background thread so the training loop never waits on
disk. Each event is written as one line and flushed to the OS right away, so a
crashed process loses at most the line being written. The queue is bounded:
when it is full, ``step`` events are dropped (counted, and the count is written
as ``dropped_events`` on the next step and in ``run_end``) rather than stalling
training; lifecycle events (``run_start``, ``checkpoint``, ``run_end``, ...)
always wait for room, because losing them would make the log lie.

``compact()`` (called by ``close()`` and meant for checkpoints) also writes the
events since the previous compaction as ``rank-N-SEQ.parquet``, a columnar copy
that other tools can read directly.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

from tunescope.eventlog import LineError, dumps, loads, parse_event
from tunescope.files import replacing
from tunescope.say import say
from tunescope.schema import METRIC_NAMES, SCHEMA_VERSION

_STOP = object()
_PARQUET_RE = re.compile(r"rank-(\d+)-(\d+)\.parquet$")


class EventWriter:
    """Appends events for one rank of one run.

    Args:
        run_dir: the run directory; events go to ``run_dir/events/rank-N.jsonl``.
        run: run name written into each event (defaults to the directory name).
        rank: global rank of this process.
        queue_size: events that may wait for the writer thread.
        block_when_full: wait for room instead of dropping step events.
        upload_to: a URL for this run (``s3://bucket/runs/RUN``): the local files
            are a spool, copied there every ``upload_interval_s`` seconds and on
            close (see :mod:`tunescope.train.upload`).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        run: str | None = None,
        rank: int = 0,
        *,
        queue_size: int = 10_000,
        block_when_full: bool = False,
        upload_to: str | None = None,
        upload_interval_s: float = 30.0,
    ) -> None:
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.run_dir = Path(run_dir)
        self.run = run or self.run_dir.resolve().name
        self.rank = rank
        self.events_dir = self.run_dir / "events"
        self.events_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.events_dir / f"rank-{rank}.jsonl"
        from tunescope.train.upload import uploader_for

        self._uploader = uploader_for(self.events_dir, upload_to, upload_interval_s, rank)
        self.block_when_full = block_when_full
        self.dropped = 0
        self._dropped_reported = 0
        self._warned = False
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._closed = False
        self._error: BaseException | None = None
        self._file = open(self.path, "ab")  # noqa: SIM115 - owned by the writer thread
        self._pos = self._file.tell()
        self._terminate_torn_line()
        self._compacted_to = self._pos
        self._thread = threading.Thread(
            target=self._loop, name=f"tunescope-writer-rank{rank}", daemon=True
        )
        self._thread.start()

    # ---- public API -------------------------------------------------------

    def emit(self, kind: str, **fields: Any) -> None:
        """Queue one event of ``kind`` with ``fields``; ``ts`` defaults to now."""
        if self._closed:
            raise RuntimeError(f"EventWriter for {self.path} is closed")
        event: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": kind, "run": self.run}
        event["rank"] = self.rank
        # Serialised later on the writer thread: copy containers the caller may reuse.
        event.update(
            {k: (v.copy() if isinstance(v, list | dict) else v) for k, v in fields.items()}
        )
        event.setdefault("ts", time.time())
        if kind == "step":
            pending = self.dropped
            if pending > self._dropped_reported:
                event["dropped_events"] = pending
            if self.block_when_full:
                self._queue.put(event)
                self._dropped_reported = pending
                return
            try:
                self._queue.put_nowait(event)
                self._dropped_reported = pending
            except queue.Full:
                self.dropped += 1
                if not self._warned:
                    self._warned = True
                    say(
                        f"event queue full for {self.path}; dropping step events "
                        "(the disk is slower than training). The count is logged as "
                        "'dropped_events'."
                    )
            return
        if kind == "run_end" and self.dropped:
            event["dropped_events"] = self.dropped
        self._queue.put(event)

    def step(self, step: int, **metrics: Any) -> None:
        """One optimizer step: ``w.step(step=12, loss=2.3, lr=1e-4)``."""
        self.emit("step", step=step, **metrics)

    def run_start(self, **fields: Any) -> None:
        fields.setdefault("host", socket.gethostname())
        self.emit("run_start", **fields)

    def eval(self, step: int, **metrics: Any) -> None:
        self.emit("eval", step=step, **metrics)

    def checkpoint(self, step: int, path: str | os.PathLike[str], **fields: Any) -> None:
        self.emit("checkpoint", step=step, path=str(path), **fields)

    def resume(self, step: int, checkpoint: str | os.PathLike[str], **fields: Any) -> None:
        self.emit("resume", step=step, checkpoint=str(checkpoint), from_step=step, **fields)

    def intervention(self, step: int, action: str, finding: str, **fields: Any) -> None:
        """What the guard did at ``step``: ``action`` (skip, stop, rewind,
        checkpoint) because of ``finding`` (a detector id), with the steps
        affected and details."""
        self.emit("intervention", step=step, action=action, finding=finding, **fields)

    def run_end(self, status: str, error: str | None = None, **fields: Any) -> None:
        if status not in ("completed", "failed", "interrupted"):
            raise ValueError(f"status must be completed, failed or interrupted, not {status!r}")
        if error is not None:
            fields["error"] = error
        self.emit("run_end", status=status, **fields)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued event is on disk (written and flushed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"events for {self.path} not written in {timeout}s")
            if not self._thread.is_alive():
                break
            time.sleep(0.001)
        self._raise_error()

    def compact(self) -> Path | None:
        """Write the events since the last compaction as ``rank-N-SEQ.parquet``."""
        done = threading.Event()
        box: list[Any] = []
        self._queue.put(("compact", done, box))
        done.wait()
        self._raise_error()
        return box[0] if box else None

    def close(self) -> None:
        """Drain the queue, write the Parquet copy and close the file."""
        if self._closed:
            return
        self.compact()
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._file.close()
        if self._uploader is not None:
            self._uploader.close()  # the last lines and the last segment
        self._raise_error()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writer thread ----------------------------------------------------

    def _terminate_torn_line(self) -> None:
        """A previous process killed mid-line left a partial last line: end it
        so that our first event starts on a line of its own."""
        if self._pos == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(self._pos - 1)
            if f.read(1) != b"\n":
                self._file.write(b"\n")
                self._file.flush()
                self._pos += 1

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if isinstance(item, tuple) and item[0] == "compact":
                    _, done, box = item
                    try:
                        box.append(self._write_parquet())
                    finally:
                        done.set()
                    continue
                line = (dumps(item) + "\n").encode("utf-8")
                self._file.write(line)
                self._file.flush()  # one write + flush per event: a crash loses one line
                self._pos += len(line)
            except BaseException as e:  # kept and re-raised in the caller's thread
                self._error = e
            finally:
                self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"writing {self.path} failed: {err}") from err

    def _write_parquet(self) -> Path | None:
        start, end = self._compacted_to, self._pos
        if end <= start:
            return None
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        table = _events_table(data.splitlines())
        seq = self._next_seq()
        out = self.events_dir / f"rank-{self.rank}-{seq:06d}.parquet"
        import pyarrow.parquet as pq

        meta = dict(table.schema.metadata or {})
        meta.update(
            {
                b"tunescope.source": self.path.name.encode(),
                b"tunescope.byte_start": str(start).encode(),
                b"tunescope.byte_end": str(end).encode(),
            }
        )
        table = table.replace_schema_metadata(meta)
        with replacing(out) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        self._compacted_to = end
        return out

    def _next_seq(self) -> int:
        seqs = [
            int(m.group(2))
            for p in self.events_dir.iterdir()
            if (m := _PARQUET_RE.search(p.name)) and int(m.group(1)) == self.rank
        ]
        return max(seqs, default=0) + 1


def _events_table(lines: list[bytes]) -> Any:
    """Columnar copy of event lines: envelope and canonical metrics as columns,
    everything else as JSON text in ``extra``."""
    import pyarrow as pa

    cols: dict[str, list[Any]] = {
        "v": [],
        "kind": [],
        "run": [],
        "rank": [],
        "step": [],
        "ts": [],
    }
    for name in METRIC_NAMES:
        cols[name] = []
    cols["extra"] = []
    for raw in lines:
        if not raw.strip():
            continue
        try:
            ev = parse_event(loads(raw))
        except LineError:
            continue
        cols["v"].append(SCHEMA_VERSION)
        cols["kind"].append(ev.kind)
        cols["run"].append(ev.run)
        cols["rank"].append(ev.rank)
        cols["step"].append(ev.step)
        cols["ts"].append(ev.ts)
        for name in METRIC_NAMES:
            cols[name].append(ev.metrics.get(name))
        rest = {**ev.extras, **ev.other}
        cols["extra"].append(json.dumps(rest, allow_nan=True) if rest else None)
    types = {"v": pa.int32(), "kind": pa.string(), "run": pa.string(), "rank": pa.int32()}
    types.update({"step": pa.int64(), "ts": pa.float64(), "extra": pa.string()})
    fields = [pa.field(k, types.get(k, pa.float64())) for k in cols]
    return pa.table(
        {k: pa.array(v, type=f.type) for (k, v), f in zip(cols.items(), fields, strict=True)}
    )
