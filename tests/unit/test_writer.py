"""EventWriter: one flushed line per event, NaN/Inf tokens, queue policy, Parquet copy."""

from __future__ import annotations

import json
import math
import threading
import time

import pyarrow.parquet as pq
import pytest

from tunescope.train.events import EventWriter


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_events_are_written_flushed_and_typed(tmp_path):
    w = EventWriter(tmp_path / "run", rank=1)
    w.run_start(model="tiny", total_steps=3)
    w.step(step=1, loss=2.5, lr=1e-4, sample_ids=[3, 9])
    w.flush()
    # Visible on disk before close: a crash now would lose nothing.
    got = lines(tmp_path / "run" / "events" / "rank-1.jsonl")
    assert [e["kind"] for e in got] == ["run_start", "step"]
    assert got[1] == {
        "v": 1,
        "kind": "step",
        "run": "run",
        "rank": 1,
        "step": 1,
        "loss": 2.5,
        "lr": 1e-4,
        "sample_ids": [3, 9],
        "ts": got[1]["ts"],
    }
    assert got[0]["host"]
    w.run_end("completed")
    w.close()


def test_nan_and_infinity_are_written_as_tokens(tmp_path):
    with EventWriter(tmp_path / "r") as w:
        w.step(step=1, loss=math.nan, grad_norm=math.inf, lr=-math.inf)
    text = (tmp_path / "r" / "events" / "rank-0.jsonl").read_text()
    assert '"loss":NaN' in text
    assert '"grad_norm":Infinity' in text
    assert '"lr":-Infinity' in text


def test_numpy_scalars_are_unwrapped(tmp_path):
    np = pytest.importorskip("numpy")
    with EventWriter(tmp_path / "r") as w:
        w.step(step=np.int64(4), loss=np.float32(1.5), ids=np.arange(2))
    (event,) = lines(tmp_path / "r" / "events" / "rank-0.jsonl")
    assert event["step"] == 4 and event["loss"] == 1.5 and event["ids"] == [0, 1]


def test_close_writes_parquet_copy_of_new_events(tmp_path):
    w = EventWriter(tmp_path / "r", rank=2)
    for s in range(1, 6):
        w.step(step=s, loss=1.0 / s, lora_A=0.5)
    first = w.compact()
    w.step(step=6, loss=math.nan)
    w.close()
    events = tmp_path / "r" / "events"
    assert first == events / "rank-2-000001.parquet"
    t1 = pq.read_table(first)
    t2 = pq.read_table(events / "rank-2-000002.parquet")
    assert t1.column("step").to_pylist() == [1, 2, 3, 4, 5]
    assert json.loads(t1.column("extra")[0].as_py()) == {"lora_A": 0.5}
    assert t2.column("step").to_pylist() == [6]
    assert math.isnan(t2.column("loss")[0].as_py())
    meta = t2.schema.metadata
    assert int(meta[b"tunescope.byte_end"]) == (events / "rank-2.jsonl").stat().st_size


def test_reopen_after_torn_line_starts_a_fresh_line(tmp_path):
    path = tmp_path / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"v":1,"kind":"step","step":1,"loss":1.0}\n{"v":1,"kind":"st')
    with EventWriter(tmp_path / "r") as w:
        w.resume(step=1, checkpoint="ckpt-1")
    raw = path.read_bytes().split(b"\n")
    assert raw[1] == b'{"v":1,"kind":"st'  # the torn line stays as it was, on its own line
    assert json.loads(raw[2])["kind"] == "resume"


class _SlowFile:
    """Wraps the writer's file to stand in for a stalled disk (no way to make a
    real disk slow on demand here)."""

    def __init__(self, f, gate):
        self._f, self._gate = f, gate

    def write(self, data):
        self._gate.wait()
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_full_queue_drops_steps_counts_them_and_keeps_lifecycle_events(tmp_path, capsys):
    gate = threading.Event()
    w = EventWriter(tmp_path / "r", queue_size=3)
    w._file = _SlowFile(w._file, gate)
    started = time.perf_counter()
    for s in range(1, 51):
        w.step(step=s, loss=1.0)
    assert time.perf_counter() - started < 1.0  # the caller never waited on the disk
    assert w.dropped > 0
    gate.set()
    w.flush()
    w.step(step=51, loss=1.0)  # the first step with room carries the count
    w.run_end("completed")
    w.close()
    got = lines(tmp_path / "r" / "events" / "rank-0.jsonl")
    steps = [e for e in got if e["kind"] == "step"]
    assert len(steps) + w.dropped == 51
    assert got[-1]["kind"] == "run_end" and got[-1]["dropped_events"] == w.dropped
    assert any("dropped_events" in e for e in steps)
    assert "dropping step events" in capsys.readouterr().err


def test_block_when_full_loses_nothing(tmp_path):
    gate = threading.Event()
    w = EventWriter(tmp_path / "r", queue_size=2, block_when_full=True)
    w._file = _SlowFile(w._file, gate)
    threading.Timer(0.2, gate.set).start()
    for s in range(1, 21):
        w.step(step=s, loss=1.0)
    w.close()
    assert len(lines(tmp_path / "r" / "events" / "rank-0.jsonl")) == 20


def test_invalid_arguments_and_use_after_close(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        EventWriter(tmp_path / "r", rank=-1)
    w = EventWriter(tmp_path / "r")
    with pytest.raises(ValueError, match="status"):
        w.run_end("exploded")
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.step(step=1, loss=1.0)


def test_containers_are_copied_when_queued(tmp_path):
    ids = [1, 2]
    with EventWriter(tmp_path / "r") as w:
        w.step(step=1, loss=1.0, sample_ids=ids)
        ids.append(3)  # the caller reuses its list before the writer thread runs
    (event,) = lines(tmp_path / "r" / "events" / "rank-0.jsonl")
    assert event["sample_ids"] == [1, 2]
