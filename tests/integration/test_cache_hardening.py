"""The cache under hostile conditions: a full disk, leftovers of killed
processes, a manifest of the wrong shape, more skipped lines than are listed,
damaged TensorBoard records."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tunescope.cli import main
from tunescope.ingest.readers.native.reader import NativeReader
from tunescope.ingest.readers.tensorboard import TensorBoardReader, iter_records
from tunescope.ingest.store.cache import Cache
from tunescope.ingest.store.database import Store
from tunescope.ingest.store.manifest import MANIFEST_VERSION, MAX_PROBLEMS_PER_SOURCE
from tunescope.train.events import EventWriter

TUNESCOPE = str(Path(sys.executable).parent / "tunescope")
TB = Path(__file__).resolve().parents[2] / "fixtures" / "formats" / "hf-trainer" / "runs" / "tb"


def write_runs(root: Path, steps: int = 10) -> None:
    for name in ("runA", "runB"):
        with EventWriter(root / name) as w:
            w.run_start(model="tiny", total_steps=steps)
            for s in range(1, steps + 1):
                w.step(step=s, loss=2.0 / s if s != 7 else math.nan, lr=1e-4, grad_norm=1.0)


def append_steps(root: Path, first: int, n: int) -> None:
    with open(root / "runA" / "events" / "rank-0.jsonl", "a", encoding="utf-8") as f:
        for s in range(first, first + n):
            f.write(json.dumps({"v": 1, "kind": "step", "rank": 0, "step": s, "loss": 1.0}) + "\n")


def digest(root: Path) -> dict[str, tuple[str, int]]:
    """Path -> (sha256, mtime_ns) of every file under ``root``."""
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def tunescope(*args: str, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TUNESCOPE, *args], capture_output=True, text=True, timeout=120, preexec_fn=preexec
    )


def one_error_line(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tunescope: error: cannot write the cache in ")
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---- a full disk -------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs mounted for the test: a real filesystem that fills up."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the RLIMIT_FSIZE test covers this case")
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip() or out.returncode}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_full_disk(tmp_path, small_disk):
    runs = tmp_path / "runs"
    write_runs(runs)
    cache = small_disk / "cache"
    assert tunescope("ingest", str(runs), "--cache-dir", str(cache)).returncode == 0
    filler = fill(small_disk)
    before = digest(cache)

    # nothing new: the query runs from the cache, and nothing is rewritten
    out = tunescope(
        "query", str(runs), "SELECT count(*) AS n FROM steps", "--cache-dir", str(cache)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["n", "20"]
    assert digest(cache) == before

    # analyze must store its findings: one line, exit 2
    one_error_line(
        tunescope("analyze", str(runs), "--cache-dir", str(cache)), "No space left on device"
    )
    assert digest(cache) == before

    # new lines cannot be recorded: ingest and query say so in one line
    append_steps(runs, 11, 2000)
    for args in (("ingest", str(runs)), ("query", str(runs), "SELECT 1")):
        one_error_line(tunescope(*args, "--cache-dir", str(cache)), "No space left on device")
        assert digest(cache) == before  # no tmp file left, the manifest untouched

    # space again: nothing was lost
    filler.unlink()
    out = tunescope(
        "query", str(runs), "SELECT count(*) AS n FROM steps", "--cache-dir", str(cache)
    )
    assert out.stdout.splitlines() == ["n", str(20 + 2000)], out.stderr


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_no_file_can_grow(tmp_path):
    """The same mechanism without root: RLIMIT_FSIZE makes every write fail."""
    runs = tmp_path / "runs"
    write_runs(runs)
    assert main(["ingest", str(runs)]) == 0
    cache = runs / ".tunescope"
    before = digest(cache)
    out = tunescope("query", str(runs), "SELECT count(*) AS n FROM steps", preexec=_limit_file_size)
    assert out.returncode == 0 and out.stdout.splitlines() == ["n", "20"], out.stderr
    assert digest(cache) == before
    append_steps(runs, 11, 5)
    one_error_line(tunescope("ingest", str(runs), preexec=_limit_file_size), "File too large")
    assert digest(cache) == before
    assert main(["ingest", str(runs)]) == 0
    assert Store(runs).query("SELECT count(*) AS n FROM steps").to_pylist() == [{"n": 25}]


LIMIT = 64 * 1024


def _limit_file_size_to_64k() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_a_write_failing_halfway_leaves_no_segment_behind(tmp_path):
    """The steps segment is written whole, then the larger metrics segment
    fails: the steps segment, which no manifest lists, is removed too."""
    runs = tmp_path / "runs"
    write_runs(runs)
    assert main(["ingest", str(runs)]) == 0
    cache = runs / ".tunescope"
    before = digest(cache)
    rng = random.Random(0)
    for r in range(8):  # each log under the limit (a process under it cannot open more)
        (runs / f"new{r}" / "events").mkdir(parents=True)
        with open(runs / f"new{r}" / "events" / "rank-0.jsonl", "w", encoding="utf-8") as f:
            for s in range(200):
                extra = {f"m{i}": rng.random() for i in range(8)}
                f.write(json.dumps({"v": 1, "kind": "step", "rank": 0, "step": s, **extra}))
                f.write("\n")
    one_error_line(tunescope("ingest", str(runs), preexec=_limit_file_size_to_64k), "too large")
    assert digest(cache) == before
    # the scenario was the half-way one: a small steps segment, a big metrics one
    assert main(["ingest", str(runs)]) == 0
    newest = sorted((cache / "segments").glob("seg-*"))[-2:]  # this pass's metrics and steps
    sizes = {p.name.split("-")[-1]: p.stat().st_size for p in newest}
    assert sizes["steps.parquet"] < LIMIT < sizes["metrics.parquet"], sizes


def test_an_ingest_with_nothing_new_does_not_rewrite_the_manifest(tmp_path):
    runs = tmp_path / "runs"
    write_runs(runs)
    store = Store.open(runs)
    manifest = store.cache.manifest_path
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns)
    report = store.ingest()
    assert not report.modified
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == before
    append_steps(runs, 11, 1)
    assert store.ingest().modified
    assert manifest.read_bytes() != before[0]


# ---- leftovers -----------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_killed_processes_are_cleaned_at_the_next_ingest(tmp_path):
    runs = tmp_path / "runs"
    write_runs(runs)
    store = Store.open(runs)
    segs = store.cache.segments_dir
    dead = _dead_pid()
    orphans = [
        segs / f".seg-00000042-steps.parquet.{dead}.tmp",
        segs / f".findings-00000043.parquet.{dead}.tmp",
        store.cache.dir / f"manifest.{dead}.tmp",
    ]
    # whole files of a pass that failed before its manifest was saved
    nxt = json.loads(store.cache.manifest_path.read_text())["next_seg"]
    orphans += [segs / f"seg-{nxt:08d}-events.parquet", segs / f"findings-{nxt + 1:08d}.parquet"]
    alive = segs / f".seg-00000044-steps.parquet.{os.getpid()}.tmp"  # a live writer's
    committed = sorted(segs.glob("seg-*.parquet"))
    for p in [*orphans, alive]:
        p.write_bytes(b"PAR1 half a segment")
    store.ingest()  # nothing new: the clean-up does not wait for new lines
    assert [p for p in orphans if p.exists()] == []
    assert alive.exists()
    assert sorted(segs.glob("seg-*.parquet")) == committed
    store.refresh()
    assert store.query("SELECT count(*) AS n FROM steps").to_pylist() == [{"n": 20}]


def test_a_killed_ingest_leaves_its_temporary_segment_for_the_next_one_to_remove(tmp_path):
    """A real kill: an ingester is stopped with SIGKILL while it writes."""
    runs = tmp_path / "runs"
    for r in range(4):
        (runs / f"run{r}" / "events").mkdir(parents=True)
        with open(runs / f"run{r}" / "events" / "rank-0.jsonl", "w", encoding="utf-8") as f:
            for s in range(5_000):
                f.write(json.dumps({"v": 1, "kind": "step", "rank": 0, "step": s, "loss": 1.0}))
                f.write("\n")
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from tunescope.ingest.store import segments\n"
        "from tunescope.ingest.store.cache import Cache\n"
        "real = segments.SegmentWriter._write\n"
        "def write(self, table):\n"
        "    real(self, table)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "segments.SegmentWriter._write = write\n"
        f"Cache(Path({str(runs)!r})).ingest()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert out.returncode == -signal.SIGKILL
    segs = runs / ".tunescope" / "segments"
    assert list(segs.glob(".seg-*.tmp")), "the kill should leave a temporary segment"
    assert main(["ingest", str(runs)]) == 0
    assert list(segs.glob(".seg-*.tmp")) == []
    n = Store(runs).query("SELECT count(*) AS n FROM steps").to_pylist()
    assert n == [{"n": 4 * 5_000}]


@pytest.mark.parametrize(
    "text",
    [
        t.replace('"version": V', f'"version": {MANIFEST_VERSION}')
        for t in [
            "[]",
            "{}",
            '{"version": V}',
            '{"version": V, "root": "x", "next_seg": 1, "next_src": 1, "sources": [], '
            '"segments": [], "trash": [], "findings": null}',
            '{"version": V, "root": "x", "next_seg": 1, "next_src": 1, "sources": {"a": 3}, '
            '"segments": [], "trash": [], "findings": null}',
            '{"version": V, "root": "x", "next_seg": "1", "next_src": 1, "sources": {}, '
            '"segments": [{"file": 1}], "trash": [], "findings": null}',
            '"manifest"',
        ]
    ],
)
def test_a_manifest_of_the_wrong_shape_is_one_line_and_a_reingest(tmp_path, capsys, text):
    runs = tmp_path / "runs"
    write_runs(runs)
    assert main(["ingest", str(runs)]) == 0
    (runs / ".tunescope" / "manifest.json").write_text(text, encoding="utf-8")
    capsys.readouterr()
    assert main(["query", str(runs), "SELECT count(*) AS n FROM steps"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == ["n", "20"]
    assert err.splitlines() == [
        f"tunescope: {runs / '.tunescope' / 'manifest.json'} is not a tunescope manifest; "
        "re-ingesting"
    ]


# ---- skipped lines ---------------------------------------------------------------------


def test_skipped_counts_every_line_even_when_the_listing_is_capped(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_runs(runs)
    bad = 3 * MAX_PROBLEMS_PER_SOURCE
    with open(runs / "runA" / "events" / "rank-0.jsonl", "a", encoding="utf-8") as f:
        for i in range(bad):
            f.write("{oops\n")
            f.write(json.dumps({"v": 1, "kind": "step", "rank": 0, "step": 100 + i}) + "\n")
    capsys.readouterr()
    assert main(["ingest", str(runs)]) == 0
    out, err = capsys.readouterr()
    assert f"skipped:   {bad:,} lines or files" in out
    assert err.count("  skipped ") == MAX_PROBLEMS_PER_SOURCE
    assert f"... and {bad - MAX_PROBLEMS_PER_SOURCE:,} more skipped, not listed" in err
    assert f"tunescope: {bad:,} lines or files skipped" in err
    # the count survives the next pass (read from the manifest)
    assert Store.open(runs).last_report.skipped == bad


# ---- TensorBoard -------------------------------------------------------------------------


def _tb() -> bytes:
    return next(TB.glob("events.out.tfevents.*")).read_bytes()


def test_tensorboard_damaged_record_is_a_named_skip_and_the_rest_is_read(tmp_path):
    data = _tb()
    records = [(pos, end) for pos, end, _, _ in iter_records(data)]
    whole = TensorBoardReader().read(next(TB.glob("events.out.tfevents.*")), None)
    path = tmp_path / "events.out.tfevents.1.host"
    # the length of a record in the middle damaged: its header CRC fails
    pos, end = records[len(records) // 2]
    bad = bytearray(data)
    bad[pos] ^= 0x01
    path.write_bytes(bytes(bad))
    r = TensorBoardReader().read(path, None)
    (problem,) = r.problems
    assert f"at byte {pos}: {end - pos} damaged byte(s)" in problem.reason
    assert "header fails its CRC" in problem.reason and "skipped" in problem.reason
    lost = whole.steps.num_rows + whole.metrics.num_rows - r.steps.num_rows - r.metrics.num_rows
    assert 0 <= lost <= 8  # only that record's points
    assert r.steps["step"].to_pylist()[-1] == whole.steps["step"].to_pylist()[-1]
    # junk between two records: skipped by name, every record kept
    pos = records[2][0]
    path.write_bytes(data[:pos] + b"\xde\xad\xbe\xef" * 5 + data[pos:])
    r = TensorBoardReader().read(path, None)
    (problem,) = r.problems
    assert f"at byte {pos}: 20 damaged byte(s)" in problem.reason
    assert r.steps.to_pylist() == whole.steps.to_pylist()
    assert r.metrics.num_rows == whole.metrics.num_rows


def test_per_run_figures_are_kept_and_reused_for_an_unchanged_cache(tmp_path):
    from tunescope.ingest.store.database import Store

    runs = tmp_path / "runs"
    write_runs(runs)
    first = Store.open(runs).query("SELECT * FROM runs ORDER BY run_id").to_pylist()
    seg = runs / ".tunescope" / "segments"
    saved = list(seg.glob("runstats-*.parquet"))
    assert len(saved) == 1
    mtime = saved[0].stat().st_mtime_ns
    again = Store.open(runs).query("SELECT * FROM runs ORDER BY run_id").to_pylist()
    assert again == first and saved[0].stat().st_mtime_ns == mtime  # read, not rewritten
    saved[0].write_bytes(b"not parquet")  # a damaged copy is computed again
    assert Store.open(runs).query("SELECT * FROM runs ORDER BY run_id").to_pylist() == first
    (runs / "c" / "events").mkdir(parents=True)
    (runs / "c" / "events" / "rank-0.jsonl").write_text(
        '{"v":1,"kind":"step","run":"c","rank":0,"step":1,"ts":1.0,"loss":2.0}\n'
    )
    later = Store.open(runs).query("SELECT run_id FROM runs ORDER BY run_id").to_pylist()
    assert {"run_id": "c"} in later  # a new state of the cache: new figures


def test_one_cache_per_runs_root_and_none_for_an_empty_folder(tmp_path, monkeypatch):
    from tunescope.ingest.store.database import Store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["ingest", str(empty)]) == 0
    assert list(empty.iterdir()) == []  # nothing to read: no cache made
    runs = tmp_path / "runs"
    write_runs(runs)
    Store.open(runs).close()
    Store.open(runs / "runA").close()  # a run inside a root that has a cache
    Store.open(runs / "runA" / "events").close()
    caches = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob(".tunescope"))
    assert caches == [Path("runs/.tunescope")]  # no caches inside one another
    assert (tmp_path / "user-cache" / "tunescope").is_dir()


def test_a_store_sees_what_another_process_ingested(tmp_path):
    """A TUI's store picks up rows a `watch` beside it ingested (and the views
    never point at segments another process's merge retired)."""
    from tunescope.ingest.store.database import Store

    runs = tmp_path / "runs"
    write_runs(runs)
    tui = Store.open(runs)
    assert tui.query("SELECT count(*) AS n FROM steps").to_pylist() == [{"n": 20}]
    append_steps(runs, 11, 5)
    other = subprocess.run(
        [sys.executable, "-m", "tunescope", "ingest", str(runs)], capture_output=True, text=True
    )
    assert other.returncode == 0, other.stderr
    tui.ingest()  # its own pass finds nothing new: the other process read it
    assert tui.last_report is not None and not tui.last_report.modified
    assert tui.query("SELECT count(*) AS n FROM steps").to_pylist() == [{"n": 25}]


class _BatchFails(NativeReader):
    """The native reader with a batch read that fails the given way."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def read_batch(self, items):
        raise self.error

    def read(self, path, state):
        return NativeReader.read_batch(self, [(path, state)])[0]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (OSError(errno.EIO, "Input/output error"), False),  # a read that failed: per file, quietly
        (KeyError("rank"), True),  # a bug in the batch read: said, never hidden
    ],
)
def test_a_failed_batch_read_falls_back_to_one_file_at_a_time(tmp_path, capsys, error, said):
    runs = tmp_path / "runs"
    write_runs(runs)
    want = Store.open(runs, cache_dir=tmp_path / "c0").query("SELECT * FROM steps ORDER BY ALL")
    capsys.readouterr()
    report = Cache(runs, tmp_path / "c1").ingest(readers=[_BatchFails(error)])
    err = capsys.readouterr().err
    assert report.rows["steps"] == 20 and report.problems == []
    got = Store(runs, cache_dir=tmp_path / "c1").query("SELECT * FROM steps ORDER BY ALL")
    assert repr(got.to_pylist()) == repr(want.to_pylist())  # NaN != NaN: compared as text
    line = "tunescope: the tunescope batch reader failed (KeyError: 'rank')"
    assert (line in err) is said
    assert said or err == ""
