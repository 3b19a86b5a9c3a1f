"""The cache changing under a command: segments deleted or cut short between
an ingest and an analyze, or while the analysis reads them (another process
rebuilding the cache). ``analyze`` is a CI gate: exit 1 means findings, so
such a change is read again once, and otherwise one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tunescope.errors import StoreError
from tunescope.opening import with_store
from tunescope.train.events import EventWriter

TUNESCOPE = str(Path(sys.executable).parent / "tunescope")
STEPS = 8


def tunescope(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUNESCOPE, *args], capture_output=True, text=True, timeout=180)


def write_runs(root: Path, names: tuple[str, ...] = ("runA", "runB")) -> None:
    for name in names:
        with EventWriter(root / name) as w:
            w.run_start(model="tiny", total_steps=STEPS)
            for s in range(1, STEPS + 1):
                w.step(step=s, loss=2.0 / s, lr=1e-4, grad_norm=1.0)
            w.run_end(status="completed")


def segment_files(runs: Path) -> list[Path]:
    return sorted((runs / ".tunescope" / "segments").glob("seg-*.parquet"))


def steps_segment(files: list[Path]) -> Path:
    """The steps table's segment: the first a manifest lists, the first checked."""
    return next(p for p in files if p.name.endswith("-steps.parquet"))


def steps_count(runs: Path) -> str:
    out = tunescope("query", str(runs), "SELECT count(*) AS n FROM steps", "--format", "csv")
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[1]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    write_runs(root)
    out = tunescope("ingest", str(root))
    assert out.returncode == 0, out.stderr
    return root


def test_segments_deleted_between_ingest_and_analyze_are_rebuilt(runs):
    gone = segment_files(runs)
    for seg in gone:
        seg.unlink()
    out = tunescope("analyze", str(runs))
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"tunescope: {steps_segment(gone)} is missing, cut short or not a segment; "
        "rebuilding the cache from the logs"
    ]
    assert "2 runs analysed, 0 findings" in out.stdout
    assert steps_count(runs) == str(2 * STEPS)


def test_a_deleted_manifest_is_a_quiet_rebuild(runs):
    (runs / ".tunescope" / "manifest.json").unlink()
    out = tunescope("analyze", str(runs))
    assert (out.returncode, out.stderr) == (0, "")
    assert steps_count(runs) == str(2 * STEPS)


def test_a_truncated_segment_is_rebuilt_from_the_logs(runs):
    seg = steps_segment(segment_files(runs))
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) // 2])
    out = tunescope("analyze", str(runs))
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"tunescope: {seg} is missing, cut short or not a segment; rebuilding the cache "
        "from the logs"
    ]
    assert steps_count(runs) == str(2 * STEPS)


def test_a_parquet_file_of_other_columns_in_place_of_a_segment_is_rebuilt(runs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    seg = steps_segment(segment_files(runs))
    pq.write_table(pa.table({"run_id": ["runA"], "step": ["not a number"]}), seg)
    out = tunescope("analyze", str(runs))
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"tunescope: {seg} is missing, cut short or not a segment; rebuilding the cache "
        "from the logs"
    ]
    assert steps_count(runs) == str(2 * STEPS)


def count_steps(store) -> int:
    return store.query("SELECT count(*) AS n FROM steps").column("n")[0].as_py()


def test_segments_vanishing_mid_analysis_are_read_again_once(runs, capsys):
    calls = []

    def work(store):
        calls.append(store)
        if len(calls) == 1:  # another process rebuilds the cache under this one
            for seg in segment_files(runs):
                seg.unlink()
        return count_steps(store)

    assert with_store(runs, None, work) == 2 * STEPS
    assert len(calls) == 2
    cache = runs / ".tunescope"
    assert capsys.readouterr().err.splitlines() == [
        f"tunescope: the cache in {cache} changed while it was read; reading it again",
        f"tunescope: {steps_segment(segment_files(runs))} is missing, cut short or not a segment; "
        "rebuilding the cache from the logs",
    ]


def test_segments_vanishing_twice_is_one_error_line(runs):
    def work(store):
        for seg in segment_files(runs):
            seg.unlink()
        return count_steps(store)

    with pytest.raises(StoreError, match=r"changed again while it was read") as info:
        with_store(runs, None, work)
    assert "\n" not in str(info.value)


def test_an_error_that_is_not_the_cache_changing_is_not_retried(runs):
    calls = []

    def work(store):
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        with_store(runs, None, work)
    assert calls == [1]


def test_analyze_under_a_process_deleting_segments_never_exits_1(tmp_path):
    """A real race: one thread deletes every segment again and again while
    ``analyze`` runs in a subprocess. Whatever the timing, the gate says 0
    (read again, or rebuilt) or 2 (one line), never 1, never a traceback."""
    runs = tmp_path / "runs"
    write_runs(runs, tuple(f"run{i}" for i in range(12)))
    assert tunescope("ingest", str(runs)).returncode == 0
    stop = threading.Event()

    def delete() -> None:
        while not stop.is_set():
            for seg in segment_files(runs):
                seg.unlink(missing_ok=True)
            stop.wait(0.02)

    deleter = threading.Thread(target=delete)
    deleter.start()
    try:
        outs = [tunescope("analyze", str(runs)) for _ in range(3)]
    finally:
        stop.set()
        deleter.join()
    for out in outs:
        assert out.returncode in (0, 2), out.stderr
        assert "Traceback" not in out.stderr
        assert all(line.startswith("tunescope: ") for line in out.stderr.splitlines())
        if out.returncode == 2:
            assert out.stderr.splitlines()[-1].startswith("tunescope: error: ")
    assert tunescope("analyze", str(runs)).returncode == 0


def test_a_merge_that_finds_a_segment_gone_merges_nothing_and_leaves_nothing(tmp_path):
    from tunescope.ingest.store import segments
    from tunescope.ingest.store.cache import Cache

    root = tmp_path / "runs"
    write_runs(root)
    cache = Cache(root)
    for name in ("runA", "runB"):  # three passes: several segments per table
        with open(root / name / "events" / "rank-0.jsonl", "a", encoding="utf-8") as f:
            f.write('{"v":1,"kind":"step","rank":0,"step":99,"loss":1.0}\n')
            f.write('{"v":1,"kind":"eval","rank":0,"step":99,"eval_loss":1.0}\n')
        cache.ingest()
    manifest = cache.load_manifest()
    before = [dict(s) for s in manifest["segments"]]
    files = sorted(p.name for p in cache.segments_dir.glob("seg-*.parquet"))
    # the last table merged: the merges of the tables before it were written
    gone = [s["file"] for s in before if s["table"] == "events"][-1]
    (cache.segments_dir / gone).unlink()
    segments.merge(manifest, cache.segments_dir)
    assert manifest["segments"] == before
    assert sorted(p.name for p in cache.segments_dir.glob("seg-*.parquet")) == [
        f for f in files if f != gone
    ]
