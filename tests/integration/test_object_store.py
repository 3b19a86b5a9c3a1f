"""Runs on object storage: a real S3-compatible server (moto) on 127.0.0.1,
reached through a counting proxy; the CLI and the store over ``s3://`` URLs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from s3_server import S3Server
from watch_analyzers import nan_analyze

from tunescope.cli import main
from tunescope.ingest.store.database import Store
from tunescope.train.events import EventWriter
from tunescope.watch import Watcher

FIXTURES = Path(__file__).parents[2] / "fixtures" / "runs"
RUNS = ["healthy-lora-s0", "fault-nan", "fault-straggler-2rank"]
BUCKET = "train-logs"


@pytest.fixture(scope="module")
def server():
    with S3Server() as srv:
        srv.client().create_bucket(Bucket=BUCKET)
        for name in RUNS:
            srv.upload(FIXTURES / name, BUCKET, f"fixed/{name}")
        yield srv


@pytest.fixture
def s3env(server, monkeypatch, tmp_path):
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    server.broken = False
    server.gone.clear()
    server.reset_counts()
    return server


def query(args, capsys):
    assert main(args) == 0
    return capsys.readouterr().out


def test_query_over_s3_equals_the_local_folder(s3env, tmp_path, capsys):
    sql = "SELECT run_id, count(*), sum(loss) FILTER (WHERE isfinite(loss)) FROM steps GROUP BY 1 ORDER BY 1"
    remote = query(["query", f"s3://{BUCKET}/fixed", sql, "--format", "csv"], capsys)
    root = tmp_path / "local"
    root.mkdir()
    for name in RUNS:
        subprocess.run(["cp", "-r", str(FIXTURES / name), str(root / name)], check=True)
    local = query(["query", str(root), sql, "--format", "csv"], capsys)
    assert remote == local
    assert remote.count("\n") == len(RUNS) + 1
    # the cache is keyed by the URL, in the user cache dir
    caches = list((tmp_path / "xdg" / "tunescope").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith(f"{BUCKET}-fixed-")


def test_ingest_then_unchanged_reingest_is_one_listing_and_no_reads(s3env, tmp_path, capsys):
    url = f"s3://{BUCKET}/fixed"
    assert main(["ingest", url, "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{url}: 3 runs")
    listings, reads = s3env.counts()
    assert listings == 1 and reads >= len(RUNS)
    s3env.reset_counts()
    assert main(["ingest", url, "--cache-dir", str(tmp_path / "c")]) == 0
    assert "read now:  0 changed files" in capsys.readouterr().out
    assert s3env.counts() == (1, 0)


def test_analyze_and_report_over_s3(s3env, tmp_path, capsys):
    url = f"s3://{BUCKET}/fixed"
    code = main(["analyze", url, "--format", "json", "--cache-dir", str(tmp_path / "c")])
    assert code == 1  # fault-nan diverges
    found = json.loads(capsys.readouterr().out)
    runs = {f["run"] for f in found["findings"]}
    assert "fault-nan" in runs and "healthy-lora-s0" not in runs
    out = tmp_path / "r.html"
    assert main(["report", url, "-o", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "fault-nan" in out.read_text(encoding="utf-8")


def test_append_is_read_by_range_and_a_rewrite_whole(s3env, tmp_path):
    s3 = s3env.client()
    key = "live/a/events/rank-0.jsonl"
    lines = [
        json.dumps({"v": 1, "kind": "step", "run": "a", "rank": 0, "step": s, "loss": 2.0})
        for s in range(1, 201)
    ]
    body = "\n".join(lines[:100]) + "\n"
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
    store = Store.open(f"s3://{BUCKET}/live", tmp_path / "c")
    steps = "SELECT count(*), max(step) FROM steps"
    assert store.cursor().execute(steps).fetchone() == (100, 100)

    s3env.reset_counts()
    body += "\n".join(lines[100:]) + "\n"
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
    store.ingest()
    assert store.cursor().execute(steps).fetchone() == (200, 200)
    reads = [r for r in s3env.requests if r.is_object_read]
    assert len(reads) == 1 and reads[0].range is not None
    first = int(reads[0].range.split("=")[1].split("-")[0])
    assert first > len(body) // 3  # only the new bytes (and a short fingerprint)
    assert store.cache.last_sync.appended == 1

    # the same size but other bytes (a new ETag): read again from the start
    rewritten = body.replace('"loss": 2.0', '"loss": 3.0')
    assert len(rewritten) == len(body)
    s3.put_object(Bucket=BUCKET, Key=key, Body=rewritten.encode())
    store.ingest()
    assert store.cursor().execute("SELECT count(*), max(loss) FROM steps").fetchone() == (200, 3.0)
    # shorter: read again, the old rows are gone
    s3.put_object(Bucket=BUCKET, Key=key, Body=("\n".join(lines[:50]) + "\n").encode())
    store.ingest()
    assert store.cursor().execute(steps).fetchone() == (50, 50)
    # an appended object whose earlier bytes changed is read whole, not spliced
    grown = "\n".join(lines[:50]).replace('"loss": 2.0', '"loss": 5.0') + "\n"
    grown += "\n".join(lines[50:60]) + "\n"
    s3.put_object(Bucket=BUCKET, Key=key, Body=grown.encode())
    store.ingest()
    got = store.cursor().execute("SELECT count(*), max(loss) FROM steps").fetchone()
    assert got == (60, 5.0)
    # gone from the bucket: gone from the store
    s3.delete_object(Bucket=BUCKET, Key=key)
    store.ingest()
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (0,)
    store.close()


def test_watch_picks_up_a_live_append(s3env, tmp_path):
    s3 = s3env.client()
    local = tmp_path / "train"

    def push() -> None:
        path = local / "events" / "rank-0.jsonl"
        s3.put_object(Bucket=BUCKET, Key="watched/run1/events/rank-0.jsonl", Body=path.read_bytes())

    with EventWriter(local, rank=0) as w:
        for s in range(1, 11):
            w.step(step=s, loss=2.0, lr=1e-4)
        w.flush()
        push()
        store = Store.open(f"s3://{BUCKET}/watched", tmp_path / "c")
        watcher = Watcher(store, None, detect=nan_analyze, rate_limit=0, log=lambda m: None)
        assert watcher.poll() == []
        w.step(step=11, loss=float("nan"), lr=1e-4)
        w.flush()
        push()
        (alert,) = watcher.poll()
    assert alert.finding.run == "run1" and alert.finding.step_start == 11
    store.close()


def test_missing_credentials_is_one_line_and_exit_2(s3env, monkeypatch, tmp_path, capsys):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    code = main(["ingest", f"s3://{BUCKET}/fixed", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "no credentials found" in err and "AWS_ACCESS_KEY_ID" in err
    assert "Traceback" not in err


def test_missing_bucket_is_one_line(s3env, tmp_path, capsys):
    code = main(["query", "s3://no-such-bucket/runs", "SELECT 1", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "tunescope: error: s3://no-such-bucket/runs: no such bucket ('no-such-bucket'); "
        "check the URL\n"
    )


def test_network_failure_mid_read_is_retried_then_reported(s3env, tmp_path, capsys):
    url = f"s3://{BUCKET}/fixed"
    cache = tmp_path / "c"
    s3env.broken = True  # listings pass, every object read is cut off halfway
    code = main(["ingest", url, "--cache-dir", str(cache)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "after 3 tries" in err and "nothing was cached" in err
    reads = [r for r in s3env.requests if r.is_object_read]
    assert len(reads) > len(RUNS) * 2  # tried again, more than once
    # nothing half-written: no mirrored copy, no segment, no manifest
    assert not any(p.is_file() for p in (cache / "mirror").rglob("*"))
    assert not (cache / "manifest.json").exists()
    assert not any((cache / "segments").glob("*")) if (cache / "segments").exists() else True
    # the network is back: the same command works, and reads everything
    s3env.broken = False
    assert main(["ingest", url, "--cache-dir", str(cache)]) == 0
    assert "3 runs" in capsys.readouterr().out


def test_without_the_extra_a_url_names_it(tmp_path):
    code = (
        "import sys; sys.modules['fsspec'] = None\n"
        "from tunescope.cli import main\n"
        f"raise SystemExit(main(['ingest', 's3://b/runs', '--cache-dir', {str(tmp_path)!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == (
        "tunescope: error: s3://b/runs: reading runs from s3:// needs s3fs; "
        "pip install -e '.[s3]' in a clone of tunescope\n"
    )


def test_event_writer_uploads_its_spool(s3env, tmp_path):
    local = tmp_path / "spool" / "run7"
    url = f"s3://{BUCKET}/uploaded/run7"
    s3 = s3env.client()

    def keys() -> dict[str, int]:
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="uploaded/run7/")
        return {o["Key"].split("/", 2)[2]: o["Size"] for o in listing.get("Contents", [])}

    with EventWriter(local, rank=0, upload_to=url, upload_interval_s=0.1) as w:
        for s in range(1, 21):
            w.step(step=s, loss=2.0, lr=1e-4)
        w.flush()
        size = (local / "events" / "rank-0.jsonl").stat().st_size
        deadline = time.monotonic() + 10
        while keys().get("events/rank-0.jsonl") != size and time.monotonic() < deadline:
            time.sleep(0.05)
        assert keys() == {"events/rank-0.jsonl": size}  # shipped while training
        w.compact()
        w.step(step=21, loss=1.9, lr=1e-4)
    # closed: the same files as the local run, byte for byte
    files = {p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*.*")}
    assert keys() == files and len(files) >= 3
    store = Store.open(f"s3://{BUCKET}/uploaded", tmp_path / "c")
    assert store.cursor().execute("SELECT count(*), max(step) FROM steps").fetchone() == (21, 21)
    store.close()


def test_runs_path_is_the_url_and_export_to_a_bucket(s3env, tmp_path, capsys):
    import pyarrow.dataset as ds
    import s3fs

    url = f"s3://{BUCKET}/fixed"
    sql = "SELECT run_id, path FROM runs ORDER BY 1"
    out = query(["query", url, sql, "--format", "csv", "--cache-dir", str(tmp_path / "c")], capsys)
    assert f"fault-nan,{url}/fault-nan\n" in out
    lake = f"s3://{BUCKET}/lake"
    args = ["export", url, "--parquet", lake, "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"wrote {lake}: 3 runs;")
    fs = s3fs.S3FileSystem()
    schema = json.loads(fs.cat_file(f"{BUCKET}/lake/_schema.json"))
    assert schema["source"] == url
    steps = ds.dataset(f"{BUCKET}/lake/steps", filesystem=fs, partitioning="hive").to_table()
    assert steps.num_rows == schema["tables"]["steps"]["rows"] > 0
    assert set(steps.column("run_id").to_pylist()) == set(RUNS)


def test_weights_are_never_fetched_and_odd_keys_stay_inside_the_mirror(s3env, tmp_path):
    s3 = s3env.client()
    line = json.dumps({"v": 1, "kind": "step", "run": "w", "rank": 0, "step": 1, "loss": 2.0})
    s3.put_object(Bucket=BUCKET, Key="weights/w/events/rank-0.jsonl", Body=(line + "\n").encode())
    s3.put_object(Bucket=BUCKET, Key="weights/w/checkpoint-10/model.safetensors", Body=b"x" * 4096)
    s3.put_object(Bucket=BUCKET, Key="weights/w/../escape.jsonl", Body=(line + "\n").encode())
    store = Store.open(f"s3://{BUCKET}/weights", tmp_path / "c")
    reads = sorted(r.path for r in s3env.requests if r.is_object_read)
    assert reads == [
        f"/{BUCKET}/weights/w/../escape.jsonl",
        f"/{BUCKET}/weights/w/events/rank-0.jsonl",
    ]
    # the key with '..' is read where it belongs, inside the mirror, under an escaped name
    assert (tmp_path / "c" / "mirror" / "w" / "%2E%2E" / "escape.jsonl").is_file()
    assert (
        not (tmp_path / "escape.jsonl").exists() and not (tmp_path / "c" / "escape.jsonl").exists()
    )
    assert store.cursor().execute("SELECT count(*) FROM steps").fetchone() == (2,)
    store.close()


def put_step(s3, key: str, rank: int = 0) -> None:
    line = json.dumps({"v": 1, "kind": "step", "rank": rank, "step": 1, "loss": 2.0})
    s3.put_object(Bucket=BUCKET, Key=key, Body=(line + "\n").encode())


def test_a_key_that_is_the_prefix_of_another_breaks_nothing(s3env, tmp_path):
    s3 = s3env.client()
    url = f"s3://{BUCKET}/prefix"
    put_step(s3, "prefix/a/events")  # a file where, later, a folder of logs appears
    put_step(s3, "prefix/b/events/rank-0.jsonl")
    store = Store.open(url, tmp_path / "c")
    put_step(s3, "prefix/a/events/rank-0.jsonl")
    put_step(s3, "prefix/a/events/rank-1.jsonl", rank=1)
    store.ingest()
    assert store.last_report.problems == []
    got = store.query("SELECT run_id, count(*) AS n FROM steps GROUP BY 1 ORDER BY 1").to_pylist()
    assert got == [{"run_id": "a", "n": 2}, {"run_id": "b", "n": 1}]
    assert (tmp_path / "c" / "mirror" / "a" / "events%~file").is_file()
    # and back: the folder goes, the file takes its own name again
    for key in ("prefix/a/events/rank-0.jsonl", "prefix/a/events/rank-1.jsonl"):
        s3.delete_object(Bucket=BUCKET, Key=key)
    store.ingest()
    assert (tmp_path / "c" / "mirror" / "a" / "events").is_file()
    assert store.query("SELECT count(*) AS n FROM steps").to_pylist() == [{"n": 1}]
    store.close()


def test_long_and_double_slash_keys_are_read_and_named_by_their_key(s3env, tmp_path, capsys):
    s3 = s3env.client()
    long_run = "r" * 300  # one part over the 255 bytes a file name may have
    put_step(s3, f"odd/{long_run}/events/rank-0.jsonl")
    put_step(s3, "odd/c//events/rank-0.jsonl")
    put_step(s3, "odd/plain/events/rank-0.jsonl")
    url = f"s3://{BUCKET}/odd"
    sql = "SELECT path FROM runs ORDER BY path"
    out = query(["query", url, sql, "--format", "csv", "--cache-dir", str(tmp_path / "c")], capsys)
    # each run is the folder above events/, named by its key
    assert out.splitlines()[1:] == sorted([f"{url}/c/", f"{url}/plain", f"{url}/{long_run}"])
    ids = query(
        [
            "query",
            url,
            "SELECT run_id FROM runs",
            "--format",
            "csv",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capsys,
    )
    assert any(i.startswith("r" * 100 + "%~") for i in ids.splitlines())  # a file name: hashed
    assert capsys.readouterr().err == ""


def test_one_object_that_cannot_be_read_is_one_skip_line(s3env, tmp_path, capsys):
    s3 = s3env.client()
    put_step(s3, "one/a/events/rank-0.jsonl")
    put_step(s3, "one/b/events/rank-0.jsonl")
    s3env.gone.add(f"/{BUCKET}/one/b/events/rank-0.jsonl")  # deleted after the listing
    url = f"s3://{BUCKET}/one"
    assert main(["ingest", url, "--cache-dir", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    assert f"{url}/b/events/rank-0.jsonl: deleted since it was listed; skipped" in out + err
    sql = "SELECT run_id FROM steps"
    assert query(
        ["query", url, sql, "--format", "csv", "--cache-dir", str(tmp_path / "c")], capsys
    ) == ("run_id\na\n")
    s3env.gone.clear()  # back again: read at the next ingest
    out = query(
        [
            "query",
            url,
            "SELECT count(*) AS n FROM steps",
            "--format",
            "csv",
            "--cache-dir",
            str(tmp_path / "c"),
        ],
        capsys,
    )
    assert out == "n\n2\n"


def test_a_tampered_mirror_state_deletes_nothing_outside(s3env, tmp_path):
    s3 = s3env.client()
    put_step(s3, "tamper/a/events/rank-0.jsonl")
    cache = tmp_path / "c"
    url = f"s3://{BUCKET}/tamper"
    Store.open(url, cache).close()
    canary = tmp_path / "notes.txt"
    canary.write_text("mine")
    state = json.loads((cache / "mirror.json").read_text())
    for bad in ("../../notes.txt", str(canary), "a/../../../notes.txt", ""):
        state["objects"][f"gone-{bad}"] = {"size": 4, "etag": "x", "path": bad}
    (cache / "mirror.json").write_text(json.dumps(state))
    (cache / "mirror" / "b").symlink_to(tmp_path, target_is_directory=True)
    state["objects"]["b/notes.txt"] = {"size": 4, "etag": "x", "path": "b/notes.txt"}
    (cache / "mirror.json").write_text(json.dumps(state))
    store = Store.open(url, cache)
    assert canary.read_text() == "mine"
    assert store.query("SELECT count(*) AS n FROM steps").to_pylist() == [{"n": 1}]
    store.close()


def test_a_killed_syncs_half_written_copies_are_swept(s3env, tmp_path, capsys):
    url = f"s3://{BUCKET}/fixed"
    cache = tmp_path / "c"
    assert main(["ingest", url, "--cache-dir", str(cache)]) == 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now free: a process that no longer runs
    run_dir = next(p for p in (cache / "mirror").iterdir() if p.is_dir())
    dead = run_dir / "events" / f".rank-0.jsonl.{child.pid}.tmp"
    live = run_dir / "events" / f".rank-1.jsonl.{os.getpid()}.tmp"  # a live writer's
    for p in (dead, live):
        p.write_bytes(b'{"kind":"step","st')
    capsys.readouterr()
    assert main(["ingest", url, "--cache-dir", str(cache)]) == 0
    assert not dead.exists() and live.exists()


def test_a_large_object_is_fetched_in_pieces_new_appended_and_rewritten(
    s3env, tmp_path, monkeypatch
):
    """An object larger than a piece is read a piece at a time (memory holds
    one piece, whatever the object's size): new, appended and rewritten
    objects come out byte for byte, and every read is one piece at most."""
    from tunescope.ingest.store import mirror

    monkeypatch.setattr(mirror, "PIECE", 4096)
    s3 = s3env.client()
    key = "big/a/events/rank-0.jsonl"
    lines = [
        json.dumps({"v": 1, "kind": "step", "run": "a", "rank": 0, "step": s, "loss": 2.0})
        for s in range(1, 1201)
    ]
    body = "\n".join(lines[:600]) + "\n"
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
    store = Store.open(f"s3://{BUCKET}/big", tmp_path / "c")
    steps = "SELECT count(*), max(step) FROM steps"
    assert store.cursor().execute(steps).fetchone() == (600, 600)
    reads = [r for r in s3env.requests if r.is_object_read]
    assert len(reads) >= len(body) // 4096
    copy = next((tmp_path / "c").rglob("rank-0.jsonl"))
    assert copy.read_bytes() == body.encode()

    s3env.reset_counts()
    body += "\n".join(lines[600:]) + "\n"
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
    store.ingest()
    assert store.cursor().execute(steps).fetchone() == (1200, 1200)
    assert copy.read_bytes() == body.encode() and store.cache.last_sync.appended == 1
    for r in (r for r in s3env.requests if r.is_object_read):
        lo, hi = map(int, r.range.split("=")[1].split("-"))
        assert hi - lo + 1 <= 4096

    # grown, but its earlier bytes changed: fetched whole again, in pieces
    rewritten = body.replace('"loss": 2.0', '"loss": 3.0') + lines[0] + "\n"
    s3.put_object(Bucket=BUCKET, Key=key, Body=rewritten.encode())
    store.ingest()
    assert copy.read_bytes() == rewritten.encode()
    got = store.cursor().execute("SELECT count(*), max(loss) FROM steps").fetchone()
    assert got == (1200, 3.0)
    store.close()
