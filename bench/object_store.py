"""Ingest from object storage, measured against the same ingest from a local folder.

    python bench/object_store.py [--runs 1000] [--steps 200] [--repeats 2]

Writes a corpus with EventWriter (cached in bench/out/ between runs), starts a
real S3-compatible server (moto, in its own process on 127.0.0.1), uploads the
corpus, then measures in one process, interleaved ``--repeats`` times, best of
each:

1. baseline: the first ingest of the local folder (fresh cache);
2. the first ingest of ``s3://bench/runs`` (fresh cache): the ratio of the
   two throughputs (target >= 0.5x);
3. a re-ingest of the unchanged bucket: the requests it made (target: one
   listing, no object reads) and its time against the first ingest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ingest import make_corpus  # bench/ingest.py: the same corpus generator
from tunescope.ingest.store.database import Store

OUT = Path(__file__).resolve().parent / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def upload(root: Path, bucket: str, prefix: str) -> int:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]

    def put(p: Path) -> None:
        s3.put_object(
            Bucket=bucket, Key=f"{prefix}/{p.relative_to(root).as_posix()}", Body=p.read_bytes()
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))
    return len(files)


def timed_ingest(root: str | Path, cache: Path) -> tuple[float, Store]:
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    store = Store.open(root, cache)
    return time.perf_counter() - started, store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    corpus = OUT / f"objstore-{args.runs}x{args.steps}"
    make_corpus(corpus, args.runs, 1, args.steps)
    size = sum(p.stat().st_size for p in corpus.rglob("*.jsonl"))
    proc, url = start_moto()
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    tmp = Path(tempfile.mkdtemp(prefix="tunescope-objbench-"))
    try:
        started = time.perf_counter()
        n = upload(corpus, "bench", "runs")
        print(
            f"corpus: {args.runs} runs x {args.steps} steps, {n} objects, "
            f"{size / 1e6:.1f} MB (uploaded in {time.perf_counter() - started:.1f}s)"
        )
        local_t, remote_t = [], []
        for _ in range(args.repeats):
            t, store = timed_ingest(corpus, tmp / "local-cache")
            rows = store.cursor().execute("SELECT count(*) FROM steps").fetchone()[0]
            store.close()
            local_t.append(t)
            t, store = timed_ingest("s3://bench/runs", tmp / "s3-cache")
            got = store.cursor().execute("SELECT count(*) FROM steps").fetchone()[0]
            sync = store.cache.last_sync
            store.close()
            assert got == rows, (got, rows)
            remote_t.append(t)
        lt, rt = min(local_t), min(remote_t)
        print(f"baseline  local folder first ingest:  {lt:6.2f}s  ({rows / lt:,.0f} rows/s)")
        print(
            f"s3        first ingest:               {rt:6.2f}s  ({rows / rt:,.0f} rows/s; "
            f"{sync.listings} listing, {sync.reads} object reads, {sync.seconds:.2f}s of it "
            "fetching)"
        )
        print(f"  ratio s3/local throughput: {lt / rt:.2f}x (target >= 0.5x)")
        store = Store("s3://bench/runs", tmp / "s3-cache")
        started = time.perf_counter()
        store.ingest()
        again = time.perf_counter() - started
        sync = store.cache.last_sync
        store.close()
        print(
            f"s3        unchanged re-ingest:        {again:6.2f}s  ({sync.listings} listing, "
            f"{sync.reads} object reads, {sync.bytes_read} bytes; target 1 listing, 0 reads)"
        )
        print(f"  ratio re-ingest/first ingest: {again / rt:.3f}x")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
