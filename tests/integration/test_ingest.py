"""Writer -> ingest -> store: what is written is what the views return."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunescope.ingest.readers.native import arrow_tier as native_arrow
from tunescope.ingest.readers.native import duckdb_tier as native_duckdb
from tunescope.ingest.readers.native import reader as native
from tunescope.ingest.store.database import Store
from tunescope.schema import METRIC_NAMES
from tunescope.train.events import EventWriter

finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)
metric_values = st.dictionaries(st.sampled_from(METRIC_NAMES), finite_or_not, max_size=6)
extra_values = st.dictionaries(
    st.sampled_from(["grad_norm_lora_A", "grad_norm_lora_B", "reward", "z"]),
    finite_or_not,
    max_size=2,
)
step_event = st.tuples(st.integers(0, 2), st.integers(0, 40), metric_values, extra_values)


def same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


def write_and_ingest(tmp_path, events):
    run = tmp_path / "runs" / "r1"
    writers = {}
    expected_steps: dict[tuple[int, int], dict] = {}
    expected_metrics: dict[tuple[int, int, str], float] = {}
    for rank, step, metrics, extras in events:
        w = writers.setdefault(rank, EventWriter(run, rank=rank))
        w.step(step=step, **metrics, **extras)
        expected_steps[(rank, step)] = metrics  # the newest write of a step wins
        for name, value in extras.items():
            expected_metrics[(rank, step, name)] = value
    for w in writers.values():
        w.close()
    store = Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache")
    return store, expected_steps, expected_metrics


def check_round_trip(tmp_path, events):
    store, expected_steps, expected_metrics = write_and_ingest(tmp_path, events)
    cols = ", ".join(METRIC_NAMES)
    rows = store.cursor().execute(f"SELECT rank, step, {cols} FROM steps").fetchall()
    got = {(r[0], r[1]): dict(zip(METRIC_NAMES, r[2:], strict=True)) for r in rows}
    assert set(got) == set(expected_steps)
    for key, metrics in expected_steps.items():
        for name in METRIC_NAMES:
            assert same(got[key][name], metrics.get(name)), (key, name)
    rows = store.cursor().execute("SELECT rank, step, name, value FROM metrics").fetchall()
    got_m = {(r[0], r[1], r[2]): r[3] for r in rows}
    assert set(got_m) == set(expected_metrics)
    for key, value in expected_metrics.items():
        assert same(got_m[key], value), key
    assert not store.last_report.problems


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(step_event, min_size=1, max_size=60))
def test_round_trip_exact_path(tmp_path_factory, events):
    check_round_trip(tmp_path_factory.mktemp("rt"), events)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(step_event, min_size=1, max_size=60))
def test_round_trip_fast_path(tmp_path_factory, monkeypatch_module, events):
    check_round_trip(tmp_path_factory.mktemp("rt"), events)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setattr(native, "FAST_PATH_MIN_BYTES", 0)  # send every chunk through the fast path
    yield mp
    mp.undo()


def test_fast_and_exact_paths_agree_on_a_large_file(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "big"
    with EventWriter(run) as w:
        w.run_start(model="m", lora_r=8)
        for s in range(1, 4001):
            loss = math.nan if s == 77 else 3.0 / math.sqrt(s)
            w.step(
                step=s,
                loss=loss,
                lr=1e-4,
                grad_norm=math.inf if s == 99 else 1.0,
                tokens=512,
                grad_norm_lora_B=0.1,
                sample_ids=[s],
            )
            if s % 1000 == 0:
                w.eval(step=s, eval_loss=1.0)
        w.run_end("completed")
    path = run / "events" / "rank-0.jsonl"
    assert path.stat().st_size > native.FAST_PATH_MIN_BYTES
    # The chunk really is clean enough for the fast path (no silent fallback).
    chunk = native.read_new_lines(path, None)
    assert list(native_duckdb.read_part([(0, path, chunk)])) == [0]
    assert list(native_arrow.read_chunks([(0, path, chunk)])) == [0]
    fast = Store.open(tmp_path / "runs", cache_dir=tmp_path / "c1")
    monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 1 << 60)
    exact = Store.open(tmp_path / "runs", cache_dir=tmp_path / "c2")
    for view in ("steps", "metrics", "events", "runs"):
        order = "ORDER BY ALL" if view != "runs" else ""
        cols = "* EXCLUDE (started_at, ended_at, last_at)" if view == "runs" else "*"
        a = fast.cursor().execute(f"SELECT {cols} FROM {view} {order}").fetchall()
        b = exact.cursor().execute(f"SELECT {cols} FROM {view} {order}").fetchall()
        assert len(a) == len(b) > 0
        assert repr(a) == repr(b), view  # repr: NaN == NaN
    assert fast.cursor().execute("SELECT count(*) FROM steps WHERE isnan(loss)").fetchone() == (1,)


def test_resume_relogged_steps_newest_wins(tmp_path):
    run = tmp_path / "runs" / "r"
    with EventWriter(run) as w:
        for s in range(1, 11):
            w.step(step=s, loss=10.0 + s)
    with EventWriter(run) as w:  # resumed from a checkpoint at step 6
        w.resume(step=6, checkpoint="ckpt-6")
        for s in range(7, 13):
            w.step(step=s, loss=1.0 + s)
    store = Store.open(tmp_path / "runs")
    rows = dict(store.cursor().execute("SELECT step, loss FROM steps").fetchall())
    assert len(rows) == 12
    assert rows[6] == 16.0 and rows[7] == 8.0 and rows[12] == 13.0
    kinds = [k for (k,) in store.cursor().execute("SELECT kind FROM events").fetchall()]
    assert kinds == ["resume"]


def test_torn_last_line_is_left_for_the_next_ingest(tmp_path):
    path = tmp_path / "runs" / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"v":1,"kind":"step","step":1,"loss":2.0}\n{"v":1,"kind":"step","ste')
    store = Store.open(tmp_path / "runs")
    assert store.cursor().execute("SELECT step FROM steps").fetchall() == [(1,)]
    assert not store.last_report.problems  # a line still being written is not an error
    with open(path, "ab") as f:
        f.write(b'p":2,"loss":1.5}\n')
    store.ingest()
    assert store.cursor().execute("SELECT step, loss FROM steps ORDER BY step").fetchall() == [
        (1, 2.0),
        (2, 1.5),
    ]
    assert store.last_report.rows["steps"] == 1


def test_reingest_unchanged_reads_nothing(tmp_path):
    with EventWriter(tmp_path / "runs" / "a") as w:
        for s in range(1, 6):
            w.step(step=s, loss=1.0)
    store = Store.open(tmp_path / "runs")
    again = store.ingest()
    assert again.changed == 0 and sum(again.rows.values()) == 0
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (5,)


def test_shrunk_or_replaced_file_supersedes_old_rows(tmp_path):
    path = tmp_path / "runs" / "r" / "events" / "rank-0.jsonl"
    with EventWriter(tmp_path / "runs" / "r") as w:
        for s in range(1, 21):
            w.step(step=s, loss=float(s))
    store = Store.open(tmp_path / "runs")
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (20,)
    path.write_text('{"v":1,"kind":"step","step":1,"loss":0.5}\n')  # shrank: a new run
    store.ingest()
    assert store.cursor().execute("SELECT step, loss FROM steps").fetchall() == [(1, 0.5)]
    tmp = path.with_suffix(".new")
    tmp.write_text(
        '{"v":1,"kind":"step","step":1,"loss":0.25}\n{"v":1,"kind":"step","step":2,"loss":0.2}\n'
    )
    os.replace(tmp, path)  # replaced by another file (new inode)
    store.ingest()
    assert store.cursor().execute("SELECT step, loss FROM steps ORDER BY step").fetchall() == [
        (1, 0.25),
        (2, 0.2),
    ]


def test_deleted_run_disappears(tmp_path):
    for name in ("a", "b"):
        with EventWriter(tmp_path / "runs" / name) as w:
            w.step(step=1, loss=1.0)
    store = Store.open(tmp_path / "runs")
    assert store.run_ids() == ["a", "b"]
    for p in (tmp_path / "runs" / "b" / "events").iterdir():
        p.unlink()
    store.ingest()
    assert store.run_ids() == ["a"]


def test_runs_at_any_depth_and_run_ids(tmp_path):
    for rel in ("x", "team/exp1/run-3", "team/exp2/deep/er/run"):
        with EventWriter(tmp_path / "runs" / rel) as w:
            w.step(step=1, loss=1.0)
    store = Store.open(tmp_path / "runs")
    assert store.run_ids() == ["team/exp1/run-3", "team/exp2/deep/er/run", "x"]


def test_many_ingest_passes_merge_segments(tmp_path):
    from tunescope.ingest.store import cache

    run = tmp_path / "runs" / "r"
    w = EventWriter(run)
    store = Store.open(tmp_path / "runs")
    for s in range(1, cache.MAX_SEGMENTS + 6):
        w.step(step=s, loss=1.0 / s)
        w.flush()
        store.ingest()
    w.close()
    manifest = store.cache.load_manifest()
    assert len(manifest["segments"]) <= cache.MAX_SEGMENTS
    assert store.cursor().execute("SELECT count(*), max(step) FROM steps").fetchone() == (
        cache.MAX_SEGMENTS + 5,
        cache.MAX_SEGMENTS + 5,
    )


def test_run_status_and_summary_columns(tmp_path):
    with EventWriter(tmp_path / "runs" / "done") as w:
        w.run_start(model="tiny", finetuning_type="lora", lora_r=8, total_steps=2, world_size=1)
        w.step(step=1, loss=2.0, lr=1e-4)
        w.step(step=2, loss=1.5, lr=5e-5)
        w.run_end("completed")
    with EventWriter(tmp_path / "runs" / "failed") as w:
        w.step(step=1, loss=2.0)
        w.run_end("failed", error="CUDA out of memory")
    with EventWriter(tmp_path / "runs" / "live") as w:
        w.step(step=1, loss=2.0)
    store = Store.open(tmp_path / "runs")
    rows = {r["run_id"]: r for r in store.query("SELECT * FROM runs").to_pylist()}
    assert rows["done"]["status"] == "completed"
    assert rows["done"]["model"] == "tiny" and rows["done"]["lora_r"] == 8
    assert rows["done"]["steps_logged"] == 2 and rows["done"]["total_steps"] == 2
    assert rows["done"]["last_loss"] == 1.5 and rows["done"]["last_lr"] == 5e-5
    assert rows["failed"]["status"] == "failed"
    assert rows["live"]["status"] == "running"  # written just now, no run_end


APPENDER = textwrap.dedent(
    """
    import sys, time
    path, n = sys.argv[1], int(sys.argv[2])
    with open(path, "ab", buffering=0) as f:
        for s in range(1, n + 1):
            line = ('{"v":1,"kind":"step","step":%d,"loss":%r}\\n' % (s, 1.0 / s)).encode()
            cut = len(line) // 2
            f.write(line[:cut])  # a reader may see half a line here
            time.sleep(0.0005)
            f.write(line[cut:])
    """
)


def test_ingest_while_another_process_appends(tmp_path):
    path = tmp_path / "runs" / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    path.touch()
    n = 3000
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(n)])
    store = Store.open(tmp_path / "runs")
    passes = 1
    while proc.poll() is None:
        store.ingest()
        passes += 1
        assert not store.last_report.problems
    store.ingest()
    assert proc.returncode == 0
    assert passes > 2
    rows = store.cursor().execute("SELECT count(*), count(DISTINCT step), max(step) FROM steps")
    assert rows.fetchone() == (n, n, n)  # exactly once, no half lines


INGESTER = textwrap.dedent(
    """
    import sys
    from tunescope.ingest.store.database import Store
    s = Store.open(sys.argv[1])
    print(s.cursor().execute("SELECT count(*) FROM steps").fetchone()[0])
    """
)


def test_two_concurrent_ingesters(tmp_path):
    for r in range(6):
        with EventWriter(tmp_path / "runs" / f"run{r}") as w:
            for s in range(1, 301):
                w.step(step=s, loss=1.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", INGESTER, str(tmp_path / "runs")],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["1800", "1800"]
    store = Store(tmp_path / "runs")
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (1800,)
    # The second ingester found everything ingested: one steps segment, no duplicates.
    tables = [s["table"] for s in store.cache.load_manifest()["segments"]]
    assert tables.count("steps") == 1


def test_native_logs_win_over_foreign_files_in_the_same_run(tmp_path):
    run = tmp_path / "runs" / "r"
    with EventWriter(run) as w:
        w.run_start(total_steps=2)
        w.step(step=1, loss=2.0)
        w.step(step=2, loss=1.0)
        w.run_end("completed")
    ckpt = run / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(
        '{"global_step": 2, "logging_steps": 1, "max_steps": 2, "log_history": '
        '[{"step": 1, "loss": 9.0}, {"step": 2, "loss": 9.0}]}'
    )
    store = Store.open(tmp_path / "runs")
    assert store.query("SELECT format, status FROM runs").to_pylist() == [
        {"format": "tunescope", "status": "completed"}
    ]
    assert store.cursor().execute("SELECT max(loss) FROM steps").fetchone() == (2.0,)


def test_a_copied_log_of_a_dead_run_is_interrupted_not_running(tmp_path):
    import shutil

    with EventWriter(tmp_path / "old" / "r") as w:
        w.step(step=1, ts=1.7e9, loss=2.0)  # written long ago, never ended
    shutil.copytree(tmp_path / "old", tmp_path / "runs")  # fresh mtimes on disk
    store = Store.open(tmp_path / "runs")
    assert store.query("SELECT status FROM runs").to_pylist() == [{"status": "interrupted"}]


def _result(steps=(), metrics=()):
    from tunescope.ingest.rows import RowBuilder

    rows = RowBuilder()
    for rank, step in steps:
        rows.step(rank, step, None, {"loss": 1.0})
    for rank, step, name in metrics:
        rows.metric(rank, step, None, name, 1.0)
    return rows.result({})


@pytest.mark.parametrize(
    ("steps", "metrics", "overlap"),
    [
        ([(0, 1), (0, 2), (0, 3)], [], False),
        ([(0, 1), (0, 3), (0, 2)], [], False),  # out of order but unique
        ([(0, 1), (0, 2), (0, 2)], [], True),  # a step written twice
        ([(0, 1), (1, 1), (0, 2)], [], False),  # two ranks
        ([(0, 1), (1, 1), (1, 1)], [], True),
        ([], [(0, 1, "a"), (0, 2, "a"), (0, 1, "b"), (0, 2, "b")], False),
        ([], [(0, 100, "l"), (0, 100, "acc"), (0, 200, "l"), (0, 200, "acc")], False),
        ([], [(0, 100, "l"), (0, 100, "acc"), (0, 100, "l")], True),
        ([], [(0, 1, "a"), (0, 2, "a"), (0, 1, "b"), (0, 2, "a")], True),
    ],
)
def test_overlap_is_noted_exactly_when_a_key_repeats(steps, metrics, overlap):
    from tunescope.ingest.store.manifest import note_overlap

    entry: dict = {}
    note_overlap(entry, _result(steps, metrics))
    assert entry.get("overlap", False) is overlap
    again: dict = {"max_step": dict(entry["max_step"])}
    note_overlap(again, _result(steps, metrics))  # the same rows again: always overlap
    assert again.get("overlap") is True


def test_fast_path_numbers_lines_per_file_across_a_batch_and_on_appends(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    paths = []
    for r in range(3):
        path = root / f"run-{r}" / "events" / f"rank-{r}.jsonl"
        path.parent.mkdir(parents=True)
        lines = [b'{"v":1,"kind":"run_start","run":"run-%d"}\n' % r]
        lines += [
            b'{"v":1,"kind":"step","step":%d,"loss":%d.5,"aux":%d}\n' % (s, r, s)
            for s in range(1, 200)
        ]
        path.write_bytes(b"".join(lines))
        paths.append(path)

    def views(store):
        cur = store.cursor()
        return [
            cur.execute(f"SELECT * EXCLUDE (src, gen, seg) FROM _{v} ORDER BY ALL").fetchall()
            for v in ("steps", "metrics", "events")
        ]

    monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 0)
    fast = Store.open(root, cache_dir=tmp_path / "c1")
    with open(paths[1], "ab") as f:  # a run still being written: only new lines are read
        f.write(b'{"v":1,"kind":"eval","step":199,"eval_loss":0.5}\n')
        f.write(b'{"v":1,"kind":"step","step":200,"loss":9.5,"aux":200}\n')
    fast.ingest()
    seqs = (
        fast.cursor()
        .execute("SELECT run_id, min(seq), max(seq), count(*) FROM _steps GROUP BY 1 ORDER BY 1")
        .fetchall()
    )
    assert seqs == [("run-0", 2, 200, 199), ("run-1", 2, 202, 200), ("run-2", 2, 200, 199)]
    monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 1 << 60)
    exact = Store.open(root, cache_dir=tmp_path / "c2")
    assert views(fast) == views(exact)


def test_batches_are_bounded_by_count_and_by_bytes(monkeypatch):
    from types import SimpleNamespace

    from tunescope.ingest.store import planning

    monkeypatch.setattr(planning, "BATCH", 3)
    monkeypatch.setattr(planning, "BATCH_BYTES", 100)
    srcs = [SimpleNamespace(key=str(i)) for i in range(8)]
    sizes = {"0": 10, "1": 10, "2": 10, "3": 10, "4": 95, "5": 200, "6": 1, "7": 1}
    got = [[s.key for s in b] for b in planning.batches(srcs, sizes)]
    assert got == [["0", "1", "2"], ["3"], ["4"], ["5"], ["6", "7"]]


def _small_runs(root, n: int, steps: int = 40):
    paths = []
    for r in range(n):
        path = root / f"run-{r:03d}" / "events" / "rank-0.jsonl"
        path.parent.mkdir(parents=True)
        lines = [b'{"v":1,"kind":"run_start","run":"run-%03d","model":"m"}\n' % r]
        lines += [
            b'{"v":1,"kind":"step","step":%d,"loss":%d.25,"lr":0.001,"aux":%d}\n' % (s, r, s)
            for s in range(1, steps + 1)
        ]
        lines.append(b'{"v":1,"kind":"run_end","status":"completed"}\n')
        path.write_bytes(b"".join(lines))
        paths.append(path)
    return paths


def test_small_files_are_read_together_by_the_fast_tier(tmp_path, monkeypatch):
    """Files far below FAST_PATH_MIN_BYTES, but many of them: one fast-tier
    query, not a Python parse per line; the same rows as the exact path."""
    monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 64 * 1024)  # whatever a fixture set
    root = tmp_path / "runs"
    paths = _small_runs(root, 60)
    assert max(p.stat().st_size for p in paths) < native.FAST_PATH_MIN_BYTES
    assert sum(p.stat().st_size for p in paths) > native.FAST_PATH_MIN_BYTES
    exact_reads = []
    real_exact = native.read_exact
    monkeypatch.setattr(
        native, "read_exact", lambda p, c: exact_reads.append(p) or real_exact(p, c)
    )
    fast = Store.open(root, cache_dir=tmp_path / "c1")
    assert exact_reads == [] and fast.last_report.problems == []
    monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 1 << 60)  # now every file is read alone...
    exact = Store.open(root, cache_dir=tmp_path / "c2")
    assert len(exact_reads) == 60  # ...by the exact path
    for view in ("steps", "metrics", "events"):
        sql = f"SELECT * EXCLUDE (src, gen, seg) FROM _{view} ORDER BY ALL"
        a, b = fast.cursor().execute(sql).fetchall(), exact.cursor().execute(sql).fetchall()
        assert len(a) == len(b) > 0 and a == b, view


def test_a_bad_small_file_among_many_costs_its_line_only(tmp_path):
    root = tmp_path / "runs"
    paths = _small_runs(root, 30)
    with open(paths[7], "ab") as f:
        f.write(b'{"v":1,"kind":"step","step":41,"loss":1.0,}\n')  # a trailing comma
        f.write(b'{"v":1,"kind":"step","step":42,"loss":1.0}\n')
    store = Store.open(root)
    (p,) = store.last_report.problems
    assert (p.path, p.line) == (str(paths[7]), 43)
    got = store.cursor().execute("SELECT count(*) FROM steps").fetchone()
    assert got == (30 * 40 + 1,)


def test_appends_to_many_small_files_are_read_together(tmp_path, monkeypatch):
    """A live corpus: new lines of many files joined for one fast-tier query,
    each numbered from where its file had got to."""
    root = tmp_path / "runs"
    paths = _small_runs(root, 40)
    store = Store.open(root, cache_dir=tmp_path / "c1")
    for r, path in enumerate(paths):
        with open(path, "ab") as f:
            for s in range(41, 81):
                f.write(b'{"v":1,"kind":"step","step":%d,"loss":%d.5,"aux":%d}\n' % (s, r, s))
    store.ingest()
    assert store.last_report.problems == []
    rows = store.cursor().execute(
        "SELECT count(*), min(seq), max(seq), count(DISTINCT run_id) FROM _steps WHERE step > 40"
    )
    assert rows.fetchone() == (40 * 40, 43, 82, 40)
    monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 1 << 60)
    exact = Store.open(root, cache_dir=tmp_path / "c2")
    sql = "SELECT * EXCLUDE (src, gen, seg) FROM _steps ORDER BY ALL"
    assert store.cursor().execute(sql).fetchall() == exact.cursor().execute(sql).fetchall()


def _numbered_lines(first: int, n: int) -> bytes:
    return b"".join(
        b'{"v":1,"kind":"step","step":%d,"loss":1.5,"note":"n%d"}\n' % (s, s)
        for s in range(first, first + n)
    )


def test_read_new_lines_stops_at_its_bounds_and_goes_on_from_its_state(tmp_path):
    from tunescope.ingest.live.tail import read_new_lines

    path = tmp_path / "rank-0.jsonl"
    long_line = b'{"v":1,"kind":"step","step":0,"note":"' + b"x" * 5000 + b'"}\n'
    path.write_bytes(long_line + _numbered_lines(1, 250) + b'{"torn')
    got, state, reads = [], None, 0
    while True:
        chunk = read_new_lines(path, state, limit=1000, max_lines=100)
        reads += 1
        got.append(chunk.data)
        assert chunk.data.endswith(b"\n") or not chunk.data
        assert not chunk.whole_file
        if not chunk.more:
            break
        state = chunk.state
    assert b"".join(got) == long_line + _numbered_lines(
        1, 250
    )  # a line longer than the limit whole
    assert got[0].startswith(long_line) and reads > 3
    assert chunk.state["line"] == 251 and chunk.partial_tail == len(b'{"torn')
    # Unbounded, the same file is one chunk.
    whole = read_new_lines(path, None)
    assert not whole.more and whole.data == b"".join(got)


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
def test_a_rank_file_over_the_read_bound_is_read_whole_in_one_pass(tmp_path, monkeypatch, fast):
    """Memory follows the bound on one read, not the file: the file is read in
    parts, each recorded before the next, and loses nothing."""
    monkeypatch.setattr(native, "READ_LINES", 300)
    monkeypatch.setattr(native, "READ_BYTES", 20_000)
    if fast:
        monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 0)
    path = tmp_path / "runs" / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    body = _numbered_lines(1, 1000) + b"{broken\n" + _numbered_lines(1001, 999)
    path.write_bytes(body)
    reads = []
    real = native.NativeReader.read_batch

    def counted(self, items):
        reads.append(len(items))
        return real(self, items)

    monkeypatch.setattr(native.NativeReader, "read_batch", counted)
    store = Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache")
    assert len(reads) >= 1999 * 60 // 20_000  # read in parts, each a read of its own
    assert [(p.line, "malformed JSON" in p.reason) for p in store.last_report.problems] == [
        (1001, True)
    ]
    cur = store.cursor()
    assert cur.execute("SELECT count(*), min(step), max(step) FROM steps").fetchone() == (
        1999,
        1,
        1999,
    )
    # Rows keep their lines' order (seq) across the parts; events carry the notes.
    assert cur.execute("SELECT count(*) FROM events WHERE kind = 'step'").fetchone() == (1999,)
    seqs = [r[0] for r in cur.execute("SELECT seq FROM _steps ORDER BY step").fetchall()]
    assert seqs == [*range(1, 1001), *range(1002, 2001)]
    # Lines appended later are read from where the parts ended.
    with open(path, "ab") as f:
        f.write(_numbered_lines(2000, 5))
    store.ingest()
    assert cur.execute("SELECT count(*), max(step) FROM steps").fetchone() == (2004, 2004)
