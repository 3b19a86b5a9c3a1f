"""Bad input never crashes ingest and never costs good rows; problems name file and line."""

from __future__ import annotations

import math
import os

import pytest

from tunescope.ingest.readers.native import arrow_tier as native_arrow
from tunescope.ingest.readers.native import duckdb_tier as native_duckdb
from tunescope.ingest.readers.native import reader as native
from tunescope.ingest.store.database import Store

GOOD_1 = b'{"v":1,"kind":"step","step":1,"loss":2.0,"lr":0.001}\n'
GOOD_3 = b'{"v":1,"kind":"step","step":3,"loss":NaN,"grad_norm":Infinity}\n'


def ingest_bytes(tmp_path, body: bytes, fast: bool = False, monkeypatch=None):
    path = tmp_path / "runs" / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    if fast:
        monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 0)
    store = Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache")
    return store, path


BAD_LINES = [
    (b'{"v":1,"kind":"step","step":2,,"loss":1}\n', "malformed JSON"),
    (b'{"v":1,"kind":"wobble","step":2}\n', "unknown kind 'wobble'"),
    (b'{"v":1,"kind":"step","step":"two","loss":1.0}\n', "'step' must be a non-negative integer"),
    (b'{"v":1,"kind":"step","step":-4,"loss":1.0}\n', "'step' must be a non-negative integer"),
    (b'{"v":1,"kind":"step","loss":1.0}\n', "a step event needs 'step'"),
    (b'{"v":9,"kind":"step","step":2}\n', "unsupported schema version"),
    (b"[1,2,3]\n", "expected a JSON object"),
    (b'{"v":1,"kind":"step","step":2,"loss":\xff\xfe}\n', "not UTF-8"),
    (b"\x00\x01\x02 binary garbage \x9c\n", "not UTF-8"),
    (b'{"v":1,"kind":"step","step":2,"rank":"zero"}\n', "'rank' must be a non-negative integer"),
]


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
@pytest.mark.parametrize(("bad", "reason"), BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_bad_line_is_reported_with_file_and_line_and_neighbours_kept(
    tmp_path, monkeypatch, bad, reason, fast
):
    store, path = ingest_bytes(tmp_path, GOOD_1 + bad + GOOD_3, fast, monkeypatch)
    problems = store.last_report.problems
    assert len(problems) == 1, problems
    (p,) = problems
    assert p.path == str(path) and p.line == 2
    assert reason in p.reason
    assert str(p).startswith(f"{path}:2: ")
    rows = store.cursor().execute("SELECT step, loss, grad_norm FROM steps ORDER BY step")
    got = rows.fetchall()
    assert [r[0] for r in got] == [1, 3]
    assert got[0][1] == 2.0 and math.isnan(got[1][1]) and math.isinf(got[1][2])


def test_bad_field_is_dropped_but_the_rest_of_the_line_kept(tmp_path):
    store, _ = ingest_bytes(
        tmp_path, b'{"v":1,"kind":"step","step":5,"loss":[1],"lr":0.5,"ts":"soon"}\n'
    )
    assert store.cursor().execute("SELECT step, loss, lr, ts FROM steps").fetchall() == [
        (5, None, 0.5, None)
    ]
    reasons = sorted(p.reason for p in store.last_report.problems)
    assert len(reasons) == 2
    assert "'loss' must be a number" in reasons[0] and "'ts' must be a finite" in reasons[1]


def test_problems_are_reported_again_on_the_next_ingest(tmp_path):
    store, _ = ingest_bytes(tmp_path, GOOD_1 + b"not json\n" + GOOD_3)
    again = store.ingest()
    assert again.changed == 0
    assert [p.line for p in again.problems] == [2]
    assert again.new_problems == []


def test_blank_lines_and_crlf_are_tolerated(tmp_path, monkeypatch):
    store, _ = ingest_bytes(
        tmp_path,
        GOOD_1 + b"\n  \n" + GOOD_3.replace(b"\n", b"\r\n"),
        fast=True,
        monkeypatch=monkeypatch,
    )
    assert store.last_report.problems == []
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (2,)


def test_empty_file_and_empty_runs_dir(tmp_path):
    store, _ = ingest_bytes(tmp_path, b"")  # a run that has only just started
    assert store.last_report.problems == []
    assert store.cursor().execute("SELECT run_id, steps_logged, status FROM runs").fetchall() == [
        ("r", 0, "running")
    ]
    (tmp_path / "empty").mkdir()
    store = Store.open(tmp_path / "empty")
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (0,)


def test_missing_runs_dir_is_a_clear_input_error(tmp_path):
    from tunescope.errors import InputError

    with pytest.raises(InputError, match="no such directory"):
        Store.open(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        Store.open(tmp_path / "file")


def test_unreadable_directory_is_reported_not_raised(tmp_path, monkeypatch):
    good = tmp_path / "runs" / "good" / "events"
    good.mkdir(parents=True)
    (good / "rank-0.jsonl").write_bytes(GOOD_1)
    locked = tmp_path / "runs" / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0)
    else:
        # Root reads any directory, so stand in for the kernel's refusal.
        real = os.scandir

        def scandir(path):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied")
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        store = Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache")
    finally:
        locked.chmod(0o755)
    (p,) = store.last_report.problems
    assert p.path == str(locked) and "cannot read directory" in p.reason
    assert store.run_ids() == ["good"]


def test_unwritable_cache_dir_is_a_clear_store_error(tmp_path):
    from tunescope.errors import StoreError

    (tmp_path / "runs" / "r" / "events").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "events" / "rank-0.jsonl").write_bytes(GOOD_1)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should go")
    with pytest.raises(StoreError, match="cannot create the cache directory"):
        Store.open(tmp_path / "runs", cache_dir=blocker / "cache")


def test_damaged_manifest_is_rebuilt_from_the_logs(tmp_path, capsys):
    store, _ = ingest_bytes(tmp_path, GOOD_1 + GOOD_3)
    (tmp_path / "cache" / "manifest.json").write_text("{ not json")
    store = Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache")
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (2,)
    assert "unreadable; re-ingesting" in capsys.readouterr().err


def test_user_log_files_are_never_modified(tmp_path):
    body = GOOD_1 + b"garbage\n" + GOOD_3 + b'{"v":1,"kind":"st'
    _, path = ingest_bytes(tmp_path, body)
    before = path.stat()
    assert path.read_bytes() == body
    assert (before.st_size, before.st_mtime_ns) == (path.stat().st_size, path.stat().st_mtime_ns)


def test_one_bad_file_does_not_push_its_batch_off_the_fast_path(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 0)
    batch = []
    for i in range(5):
        path = tmp_path / f"r{i}" / "events" / "rank-0.jsonl"
        path.parent.mkdir(parents=True)
        path.write_bytes(GOOD_1 + (b"{broken\n" if i == 3 else b"") + GOOD_3)
        batch.append((i, path, native.read_new_lines(path, None)))
    assert sorted(native._read_fast(batch)) == [0, 1, 2, 4]


# Lines each path must judge the same way, whatever the chunk size.
TRICKY = {
    "ns_timestamp": b'{"v":1,"kind":"step","step":2,"loss":1.0,"ts":1732280000000000000}\n',
    "negative_ts": b'{"v":1,"kind":"step","step":2,"loss":1.0,"ts":-1e15}\n',
    "huge_step": b'{"v":1,"kind":"step","step":100000000000000000000,"loss":1.0}\n',
    "huge_rank": b'{"v":1,"kind":"step","step":2,"rank":4294967296,"loss":1.0}\n',
    "huge_metric": b'{"v":1,"kind":"step","step":2,"loss":1' + b"0" * 400 + b"}\n",
    "very_long_int": b'{"v":1,"kind":"step","step":2,"loss":' + b"9" * 5000 + b"}\n",
    "string_rank": b'{"v":1,"kind":"step","step":2,"rank":"1","loss":1.0}\n',
    "string_step": b'{"v":1,"kind":"step","step":"2","loss":1.0}\n',
    "string_ts": b'{"v":1,"kind":"step","step":2,"ts":"1700000000","loss":1.0}\n',
    "numeric_string_metric": b'{"v":1,"kind":"step","step":2,"loss":"2.5"}\n',
    "numeric_string_extra": b'{"v":1,"kind":"step","step":2,"loss":1.0,"note":"5"}\n',
    "bool_extra": b'{"v":1,"kind":"step","step":2,"loss":1.0,"flag":true}\n',
    "sample_ids_spaced": b'{"v":1,"kind":"step","step":2,"loss":1.0,"sample_ids":[1, 2, 3]}\n',
    "sample_ids_string": b'{"v":1,"kind":"step","step":2,"loss":1.0,"sample_ids":"abc"}\n',
    "key_named_ord": b'{"v":1,"kind":"step","step":2,"loss":1.0,"ord":100.0,"g":7,"f":3}\n',
    "fractional_step": b'{"v":1,"kind":"step","step":2.5,"loss":1.0}\n',
    "integral_float_step": b'{"v":1,"kind":"step","step":2.0,"loss":1.0}\n',
    "big_exact_step": b'{"v":1,"kind":"step","step":9007199254740993,"loss":1.0}\n',
    "duplicate_key": b'{"v":1,"kind":"step","step":2,"loss":1.0,"loss":4.0}\n',
    "bool_metric": b'{"v":1,"kind":"step","step":2,"loss":true}\n',
    "bool_version": b'{"v":true,"kind":"step","step":2,"loss":1.0}\n',
    "null_extra": b'{"v":1,"kind":"step","step":2,"loss":1.0,"aux":null}\n',
    "object_extra": b'{"v":1,"kind":"step","step":2,"loss":1.0,"aux":{"a":1}}\n',
    "numeric_run": b'{"v":1,"kind":"step","run":7,"step":2,"loss":1.0}\n',
    "empty_key": b'{"v":1,"kind":"step","step":2,"loss":1.0,"":3}\n',
    "huge_extra": b'{"v":1,"kind":"step","step":2,"loss":1.0,"aux":123456789012345678901234567890}\n',
    "sample_ids_null_item": b'{"v":1,"kind":"step","step":2,"loss":1.0,"sample_ids":[1,null]}\n',
    "sample_ids_texts": b'{"v":1,"kind":"step","step":2,"loss":1.0,"sample_ids":["a\\"b","\xc3\xa9"]}\n',
    "sample_ids_floats": b'{"v":1,"kind":"step","step":2,"loss":1.0,"sample_ids":[0.1,2.0]}\n',
    "eval_between_steps": b'{"v":1,"kind":"eval","step":2,"eval_loss":0.5,"note":"x"}\n',
    "extra_changes_type": b'{"v":1,"kind":"step","step":2,"loss":1.0,"grad_norm_lora_A":"n/a"}\n',
}


def _views(store):
    cur = store.cursor()
    out = {}
    for view in ("steps", "metrics", "events"):
        out[view] = repr(cur.execute(f"SELECT * EXCLUDE (ts) FROM {view} ORDER BY ALL").fetchall())
    out["ts"] = repr(cur.execute("SELECT step, ts FROM steps ORDER BY ALL").fetchall())
    out["step_ids"] = [r[0] for r in cur.execute("SELECT step FROM steps ORDER BY 1").fetchall()]
    out["problems"] = sorted((p.line, p.reason) for p in store.last_report.problems)
    return out


@pytest.mark.parametrize("tier", ["duckdb", "arrow"])
@pytest.mark.parametrize("name", list(TRICKY))
def test_fast_and_exact_paths_judge_tricky_lines_alike(tmp_path, monkeypatch, name, tier):
    if tier == "arrow":  # what the Arrow tier alone makes of the line
        monkeypatch.setattr(native_duckdb, "read_part", lambda part: {})
    body = GOOD_1 + TRICKY[name] + GOOD_3
    path = tmp_path / "runs" / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 1 << 60)
    exact = _views(Store.open(tmp_path / "runs", cache_dir=tmp_path / "c1"))
    monkeypatch.setattr(native, "FAST_PATH_MIN_BYTES", 0)
    fast = _views(Store.open(tmp_path / "runs", cache_dir=tmp_path / "c2"))
    assert fast == exact
    # Neither path loses the good lines around it.
    assert 1 in exact["step_ids"] and 3 in exact["step_ids"]


def test_out_of_range_values_cost_only_their_line_and_later_lines_still_arrive(tmp_path):
    store, path = ingest_bytes(tmp_path, GOOD_1 + TRICKY["huge_step"] + GOOD_3)
    assert [p.line for p in store.last_report.problems] == [2]
    with open(path, "ab") as f:
        f.write(b'{"v":1,"kind":"step","step":4,"loss":0.5}\n')
    store.ingest()
    steps = [r[0] for r in store.cursor().execute("SELECT step FROM steps ORDER BY 1").fetchall()]
    assert steps == [1, 3, 4]


def test_nanosecond_timestamps_do_not_break_the_runs_view(tmp_path):
    store, _ = ingest_bytes(tmp_path, GOOD_1 + TRICKY["ns_timestamp"])
    (p,) = store.last_report.problems
    assert "seconds since the epoch" in p.reason and p.line == 2
    assert store.cursor().execute("SELECT count(*) FROM runs").fetchone() == (1,)
    assert store.cursor().execute("SELECT step, ts FROM steps ORDER BY step").fetchall() == [
        (1, None),
        (2, None),
    ]


def test_file_rewritten_in_place_is_read_again(tmp_path):
    path = tmp_path / "runs" / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(
        b"".join(b'{"v":1,"kind":"step","step":%d,"loss":1.0}\n' % s for s in range(1, 6))
    )
    store = Store.open(tmp_path / "runs")
    inode = path.stat().st_ino
    with open(path, "w") as f:  # same inode, longer content: a new run in the same file
        for s in range(1, 9):
            f.write(f'{{"v":1,"kind":"step","step":{s},"loss":0.25,"lr":0.001}}\n')
    assert path.stat().st_ino == inode
    store.ingest()
    assert store.last_report.problems == []
    rows = store.cursor().execute("SELECT step, loss FROM steps ORDER BY step").fetchall()
    assert rows == [(s, 0.25) for s in range(1, 9)]


def test_the_same_root_spelled_two_ways_is_not_read_twice(tmp_path, monkeypatch):
    ingest_bytes(tmp_path, GOOD_1 + GOOD_3)
    monkeypatch.chdir(tmp_path)
    again = Store.open("runs", cache_dir=tmp_path / "cache").last_report
    assert again.changed == 0
    assert Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache").last_report.changed == 0


# Unusual but valid lines each fast tier reads itself (no fallback to the next).
ARROW_OK = [
    "sample_ids_spaced",
    "key_named_ord",
    "big_exact_step",
    "null_extra",
    "numeric_run",
    "empty_key",
    "huge_extra",
    "sample_ids_texts",
    "eval_between_steps",
]
# Numeric run names, nulls and empty keys do not balance the DuckDB tier's quote
# count (or its SQL): the Arrow tier takes those.
DUCKDB_OK = [n for n in ARROW_OK if n not in ("null_extra", "empty_key", "numeric_run")] + [
    "bool_extra",
    "bool_metric",
    "integral_float_step",
]
TIERS = {"arrow": native_arrow.read_chunks, "duckdb": native_duckdb.read_part}


@pytest.mark.parametrize(
    ("tier", "name"),
    [("arrow", n) for n in ARROW_OK] + [("duckdb", n) for n in DUCKDB_OK],
)
def test_each_fast_tier_reads_unusual_valid_lines_itself(tmp_path, tier, name):
    path = tmp_path / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(GOOD_1 + TRICKY[name] + GOOD_3)
    read = TIERS[tier]
    assert list(read([(0, path, native.read_new_lines(path, None))])) == [0]


def test_a_key_the_sample_missed_sends_the_file_to_the_arrow_tier(tmp_path):
    lines = [b'{"v":1,"kind":"step","step":%d,"loss":1.0}\n' % s for s in range(1, 5001)]
    lines[2499] = b'{"v":1,"kind":"step","step":2500,"loss":1.0,"rare":7.5}\n'
    path = tmp_path / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"".join(lines))
    chunk = native.read_new_lines(path, None)
    assert "rare" not in native_duckdb.sample_step_keys(chunk)
    assert native_duckdb.read_part([(0, path, chunk)]) == {}
    result = native._read_fast([(0, path, chunk)])[0]
    assert result.metrics.to_pylist() == [
        {"rank": 0, "step": 2500, "ts": None, "name": "rare", "value": 7.5, "seq": 2500}
    ]
    assert result.steps.num_rows == 5000


@pytest.mark.parametrize("key", ["file_index", "filename", "#step", "#i", "#q", "#bad", "x0"])
def test_extra_metrics_named_like_the_queries_own_columns(tmp_path, key):
    """Keys that DuckDB or the fast tier's query use for themselves are plain
    extra metrics too, in files big enough for the fast tiers."""
    extra = f',"{key}":2.5'.encode()
    body = b"".join(
        b'{"v":1,"kind":"step","step":%d,"loss":1.0%s}\n' % (s, extra) for s in range(1, 3001)
    )
    assert len(body) > native.FAST_PATH_MIN_BYTES
    path = tmp_path / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    chunk = native.read_new_lines(path, None)
    (result,) = native_duckdb.read_part([(0, path, chunk)]).values()  # no fallback needed
    assert result.steps.num_rows == 3000
    assert set(result.metrics.column("name").to_pylist()) == {key}
    store = Store.open(tmp_path, cache_dir=tmp_path / "cache")
    assert store.last_report.problems == []
    got = store.cursor().execute("SELECT count(*), min(value) FROM metrics WHERE name = ?", [key])
    assert got.fetchone() == (3000, 2.5)


def _steps_of(n: int, first: int = 1) -> bytes:
    return b"".join(
        b'{"v":1,"kind":"step","step":%d,"loss":1.0}\n' % s for s in range(first, first + n)
    )


LONE_SURROGATES = {
    "value": b'{"v":1,"kind":"step","step":9000,"loss":1.0,"note":"a\\ud800"}\n',
    "key": b'{"v":1,"kind":"step","step":9000,"loss":1.0,"\\uDC00x":1}\n',
    "sample_ids": b'{"v":1,"kind":"step","step":9000,"loss":1.0,"sample_ids":["\\ud800"]}\n',
    "run_start": b'{"v":1,"kind":"run_start","model":"m\\udbff"}\n',
}


@pytest.mark.parametrize("lines", [3, 3000], ids=["small", "large"])
@pytest.mark.parametrize("where", list(LONE_SURROGATES))
def test_a_lone_surrogate_escape_costs_its_line_only(tmp_path, where, lines):
    body = _steps_of(lines) + LONE_SURROGATES[where] + _steps_of(lines, 5000)
    store, path = ingest_bytes(tmp_path, body)
    (p,) = store.last_report.problems
    assert (p.path, p.line) == (str(path), lines + 1)
    assert "unpaired surrogate" in p.reason
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (2 * lines,)


def test_a_surrogate_pair_is_one_character_and_kept(tmp_path):
    body = GOOD_1 + b'{"v":1,"kind":"run_start","model":"\\ud83d\\ude00"}\n' + GOOD_3
    store, _ = ingest_bytes(tmp_path, body)
    assert store.last_report.problems == []
    (payload,) = store.cursor().execute("SELECT payload FROM events").fetchone()
    assert "\U0001f600" in payload


@pytest.mark.parametrize("lines", [3, 3000], ids=["small", "large"])
def test_a_byte_order_mark_does_not_cost_line_one(tmp_path, lines):
    store, path = ingest_bytes(tmp_path, b"\xef\xbb\xbf" + _steps_of(lines))
    assert store.last_report.problems == []
    assert store.cursor().execute("SELECT count(*), min(step) FROM steps").fetchone() == (
        lines,
        1,
    )
    with open(path, "ab") as f:  # appended lines are read as new, not as a rewrite
        f.write(_steps_of(2, lines + 1))
    store.ingest()
    assert store.last_report.problems == []
    got = store.cursor().execute("SELECT count(*), max(step), max(seq) FROM _steps").fetchone()
    assert got == (lines + 2, lines + 2, lines + 2)


DEEP = 30_000  # levels; Arrow's parser overflowed a thread's stack at about 3,000


@pytest.mark.parametrize(
    "line",
    [
        b"[" * DEEP + b"]" * DEEP,
        b'{"v":1,"kind":"step","step":9000,"loss":1.0,"aux":' + b"[" * DEEP + b"]" * DEEP + b"}",
        b'{"v":1,"kind":"step","step":9000,"x":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
    ],
    ids=["whole_line", "list_value", "object_value"],
)
def test_a_line_nested_thousands_deep_is_reported_not_a_crash(tmp_path, line):
    """In a subprocess, so that a crash fails this test instead of ending pytest."""
    import subprocess
    import sys

    path = tmp_path / "runs" / "r" / "events" / "rank-0.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(_steps_of(3000) + line + b"\n" + _steps_of(2, 3001))
    assert path.stat().st_size > native.FAST_PATH_MIN_BYTES
    proc = subprocess.run(
        [sys.executable, "-m", "tunescope", "ingest", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert f"{path}:3001: malformed JSON: nested too deeply" in proc.stderr
    assert "3,002 step rows" in proc.stdout + proc.stderr


def _nested(depth: int, text: bytes) -> bytes:
    return b"[" * depth + b'"' + text + b'"' + b"]" * depth


@pytest.mark.parametrize("lines", [10, 3000], ids=["small", "large"])
def test_a_surrogate_pair_nested_hundreds_deep_is_read_with_its_neighbours(tmp_path, lines):
    deep = b'{"v":1,"kind":"eval","step":5,"x":' + _nested(350, b"\\ud83d\\ude00") + b"}\n"
    store, _ = ingest_bytes(tmp_path, _steps_of(lines) + deep + _steps_of(lines, 5000))
    assert store.last_report.problems == []
    cur = store.cursor()
    assert cur.execute("SELECT count(*) FROM steps").fetchone() == (2 * lines,)
    (payload,) = cur.execute("SELECT payload FROM events WHERE kind = 'eval'").fetchone()
    assert "\U0001f600" in payload


@pytest.mark.parametrize("lines", [10, 3000], ids=["small", "large"])
def test_a_lone_surrogate_nested_hundreds_deep_costs_its_line_only(tmp_path, lines):
    deep = b'{"v":1,"kind":"eval","step":5,"x":' + _nested(350, b"\\ud83d") + b"}\n"
    store, path = ingest_bytes(tmp_path, _steps_of(lines) + deep + _steps_of(lines, 5000))
    (p,) = store.last_report.problems
    assert (p.path, p.line) == (str(path), lines + 1)
    assert "unpaired surrogate" in p.reason
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (2 * lines,)


def test_the_closing_line_claims_kept_neighbours_only_when_every_skip_is_a_line(tmp_path):
    import subprocess
    import sys

    runs = tmp_path / "runs"
    bad = runs / "a" / "events" / "rank-0.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(GOOD_1 + b"{oops\n" + GOOD_3)

    def closing() -> str:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tunescope",
                "ingest",
                str(runs),
                "--cache-dir",
                str(tmp_path / "c"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr.strip().splitlines()[-1]

    assert closing() == "tunescope: 1 line skipped (good lines around them were kept)"
    whole = runs / "b" / "events" / "rank-0-1.parquet"  # a Parquet copy that is not Parquet
    whole.parent.mkdir(parents=True)
    whole.write_bytes(b"PAR1 but not really")
    last = closing()
    assert "good lines around" not in last
    assert last == "tunescope: 2 lines or files skipped (listed above); the rest was read"


def _csv_store(tmp_path, lines: list[str]):
    path = tmp_path / "runs" / "r" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache"), path


HUGE = "x" * (200 << 10)  # over the csv module's 128 KiB field limit


def test_a_csv_cell_over_the_field_limit_costs_that_cell_only(tmp_path):
    lines = ["step,loss,note", *(f"{s},{1 / s},ok" for s in range(1, 21))]
    lines[10] = f'10,0.1,"{HUGE}"'
    store, path = _csv_store(tmp_path, lines)
    (p,) = store.last_report.problems
    assert (p.path, p.line) == (str(path), 11)
    assert "note: a cell over 131,072 characters; dropped" in p.reason
    got = store.cursor().execute("SELECT count(*), min(step), max(step) FROM steps").fetchone()
    assert got == (20, 1, 20)
    assert store.cursor().execute("SELECT loss FROM steps WHERE step = 10").fetchone() == (0.1,)


def test_a_csv_header_name_over_the_field_limit_costs_that_column_only(tmp_path):
    lines = [f"step,loss,{HUGE}", *(f"{s},{1 / s},3" for s in range(1, 21))]
    store, path = _csv_store(tmp_path, lines)
    (p,) = store.last_report.problems
    assert (p.path, p.line) == (str(path), 1)
    assert "column 3: a name over 131,072 characters" in p.reason
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (20,)


def _records_json_with_a_deep_key(tmp_path, depth: int):
    import json

    records = [{"step": s, "loss": 1.0 / s} for s in range(1, 21)]
    body = json.dumps({"log_history": records})[:-1]
    body += ', "deep": ' + "[" * depth + "]" * depth + "}"
    path = tmp_path / "runs" / "r" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(body)
    return Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache"), path


def test_a_json_file_with_a_key_nested_990_deep_after_its_records_is_read(tmp_path):
    store, _ = _records_json_with_a_deep_key(tmp_path, 990)
    assert store.last_report.problems == [] and store.last_report.unclaimed == []
    assert store.cursor().execute("SELECT count(*), max(step) FROM steps").fetchone() == (20, 20)


def test_a_json_file_nested_too_deep_to_parse_says_so(tmp_path):
    store, path = _records_json_with_a_deep_key(tmp_path, 20_000)
    assert store.last_report.unclaimed == [(path, "nested more than 5,000 levels deep: not read")]
