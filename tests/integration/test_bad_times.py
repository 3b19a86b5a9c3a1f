"""One time value out of range (a wall-clock time in micro- or nanoseconds, a
corrupted field) becomes NULL at the reader, with a skip line naming the file
and the line or record; it never reaches the store, where turning it into a
timestamp would fail every command on every run."""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tunescope.ingest.readers.protobuf import masked_crc32c
from tunescope.ingest.store.database import Store
from tunescope.train.events import EventWriter

TUNESCOPE = str(Path(sys.executable).parent / "tunescope")
FIX = Path(__file__).resolve().parents[2] / "fixtures" / "formats"
HUGE_MS = 99999999999999999  # ~3e9 years from now, in milliseconds
GOOD_LOSS = [1.0 / s for s in range(1, 7)]


def tunescope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUNESCOPE, *args], capture_output=True, text=True, timeout=180)


def tb_event(wall: float, step: int, tag: str, value: float) -> bytes:
    """One TensorBoard Event (wall_time, step, one simple_value), framed as a record."""
    tag_b = tag.encode()
    val = b"\x0a" + bytes([len(tag_b)]) + tag_b + b"\x15" + struct.pack("<f", value)
    summary = b"\x0a" + bytes([len(val)]) + val
    body = struct.pack("<Bd", 0x09, wall) + b"\x10" + bytes([step]) + b"\x2a"
    body += bytes([len(summary)]) + summary
    head = struct.pack("<Q", len(body))
    return (
        head
        + struct.pack("<I", masked_crc32c(head))
        + body
        + struct.pack("<I", masked_crc32c(body))
    )


def poisoned_runs(root: Path) -> None:
    """A good native run beside MLflow (file and SQLite stores) and TensorBoard
    runs that each hold one time out of range."""
    with EventWriter(root / "good") as w:
        w.run_start(model="tiny", total_steps=6)
        for s, loss in enumerate(GOOD_LOSS, start=1):
            w.step(step=s, loss=loss, lr=1e-4, grad_norm=1.0)
    shutil.copytree(FIX / "mlruns", root / "mlruns")
    run = next(p.parent for p in (root / "mlruns").rglob("meta.yaml") if "run_id" in p.read_text())
    meta = run / "meta.yaml"
    text = meta.read_text()
    start = next(line for line in text.splitlines() if line.startswith("start_time:"))
    meta.write_text(text.replace(start, f"start_time: {HUGE_MS}"))
    metric = next(p for p in (run / "metrics").rglob("*") if p.is_file())
    lines = metric.read_text().splitlines()
    lines[1] = " ".join([str(HUGE_MS), *lines[1].split()[1:]])
    metric.write_text("\n".join(lines) + "\n")
    (root / "db").mkdir()
    shutil.copy(FIX / "mlflow-db" / "mlflow.db", root / "db" / "mlflow.db")
    con = sqlite3.connect(root / "db" / "mlflow.db")
    con.execute("UPDATE runs SET start_time = ?", (HUGE_MS,))
    con.execute(
        "UPDATE metrics SET timestamp = ? WHERE rowid = (SELECT min(rowid) FROM metrics)",
        (HUGE_MS,),
    )
    con.commit()
    con.close()
    tb = root / "tb" / "events.out.tfevents.1700000000.host"
    tb.parent.mkdir()
    tb.write_bytes(
        b"".join(
            tb_event(1e17 if s == 3 else 1_700_000_000.0 + s, s, "train/loss", 2.0 / s)
            for s in range(1, 7)
        )
    )
    return None


def test_one_time_out_of_range_locks_no_command_out(tmp_path):
    runs = tmp_path / "runs"
    poisoned_runs(runs)
    out = tunescope("ingest", str(runs))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    said = out.stdout + out.stderr
    assert f":2: timestamp (ms) {HUGE_MS} is not a time in seconds since the epoch" in said
    assert f"start_time (ms) {HUGE_MS} is not a time" in said
    assert "record 3 at byte " in said and "wall_time 1e+17 is not a time" in said
    assert "mlflow.db: run " in said
    good = "SELECT count(*), sum(loss), min(ts) > 0 FROM steps WHERE run_id = 'good'"
    out = tunescope("query", str(runs), good, "--format", "csv")
    assert out.returncode == 0, out.stderr
    n, total, timed = out.stdout.splitlines()[1].split(",")
    assert (int(n), float(total), timed) == (6, sum(GOOD_LOSS), "True")
    out = tunescope(
        "query",
        str(runs),
        "SELECT run_id, started_at FROM runs ORDER BY run_id",
        "--format",
        "json",
    )
    assert out.returncode == 0, out.stderr
    started = {r["run_id"]: r["started_at"] for r in json.loads(out.stdout)}
    assert len(started) >= 5 and started["good"] is not None
    tb_rows = "SELECT count(*), count(ts) FROM steps WHERE run_id = 'tb'"
    out = tunescope("query", str(runs), tb_rows, "--format", "csv")
    assert out.stdout.splitlines()[1] == "6,5"  # the row is kept, its time is not
    for args in (
        ("analyze", str(runs), "--exit-zero"),
        ("analyze", str(runs), "--format", "json", "--exit-zero"),
        ("report", str(runs), "--output", str(tmp_path / "r.html")),
        ("compare", str(runs / "good"), str(runs / "tb")),
        ("export", str(runs), "--duckdb", str(tmp_path / "x.duckdb")),
        ("export", str(runs), "--parquet", str(tmp_path / "lake"), "--partition-by", "date"),
        ("watch", str(runs), "--once", "--include-finished"),
    ):
        out = tunescope(*args)
        assert out.returncode == 0, (args, out.stderr)
        assert "Traceback" not in out.stderr and "out of range" not in out.stderr, out.stderr


def test_a_cached_time_out_of_range_is_null_in_the_views(tmp_path):
    """A cache written elsewhere (or by an older tunescope) may hold such a
    time already: the views read it as NULL instead of failing."""
    runs = tmp_path / "runs"
    for name in ("good", "bad"):
        with EventWriter(runs / name) as w:
            w.run_start(model="tiny", total_steps=3)
            for s in range(1, 4):
                w.step(step=s, loss=1.0, lr=1e-4)
    Store.open(runs).close()
    for seg in (runs / ".tunescope" / "segments").glob("seg-*.parquet"):
        table = pq.read_table(seg)
        if "ts" in table.column_names:
            import pyarrow.compute as pc

            bad = pc.equal(table.column("run_id"), "bad")
            ts = pc.if_else(bad, 1e17, table.column("ts"))
            table = table.set_column(table.column_names.index("ts"), "ts", ts)
            pq.write_table(table, seg)
    for saved in (runs / ".tunescope" / "segments").glob("runstats-*.parquet"):
        saved.unlink()  # computed again from the rows
    store = Store(runs)
    rows = store.query("SELECT run_id, started_at IS NULL AS lost FROM runs ORDER BY run_id")
    assert rows.to_pylist() == [{"run_id": "bad", "lost": True}, {"run_id": "good", "lost": False}]
    assert store.query("SELECT count(ts) AS n FROM steps WHERE run_id = 'bad'").to_pylist() == [
        {"n": 0}
    ]
