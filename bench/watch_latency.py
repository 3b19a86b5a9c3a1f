"""Alert latency of ``tunescope watch``: from a step line written to a rank file to
the webhook request arriving at a local HTTP server.

A run keeps "training" (an EventWriter appends a finite step every 50 ms) while
the real ``tunescope watch --interval 1`` console script follows it. Each trial
writes one NaN loss step (a new incident) and times how long the alert takes to
reach ``http.server`` on 127.0.0.1. The watcher wakes on file events, and
is run again with ``--poll`` (polling only) in interleaved rounds on the same
run. Printed per mode: median, p90 and best over the trials, the ratio of the
two medians, and the ratio to a baseline measured in the same run: half the
poll interval (the average wait for the next poll) plus one poll's own work
(ingest + the analysis), timed in-process on the same runs.

    python bench/watch_latency.py [--trials 15] [--rounds 3] [--interval 1]
        [--mode both|events|poll] [--analyzer auto|engine|sql]

``--analyzer sql`` uses :func:`nan_findings` below (one SQL query);
``engine`` the real detectors; ``auto`` the engine when it is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent


def nan_findings(store, *, select=None, ignore=None, config=None, run_ids=None):
    """Findings for stretches of non-finite loss (the bench's own analysis)."""
    from tunescope.findings import Finding, Severity

    rows = (
        store.cursor()
        .execute(
            """
        WITH bad AS (
            SELECT run_id, rank, step,
                   step - row_number() OVER (PARTITION BY run_id, rank ORDER BY step) AS g
            FROM steps WHERE (isnan(loss) OR isinf(loss)) AND list_contains(?, run_id)
        )
        SELECT run_id, rank, min(step), max(step) FROM bad GROUP BY run_id, rank, g
        """,
            [list(run_ids or [])],
        )
        .fetchall()
    )
    return [
        Finding(run, "NAN", "non-finite loss", Severity.ERROR, a, b, f"NaN loss at {a}", "", rank)
        for run, rank, a, b in rows
    ]


class Arrivals:
    def __init__(self) -> None:
        self.times: list[tuple[float, dict]] = []
        self.cond = threading.Condition()

    def add(self, body: dict) -> None:
        with self.cond:
            self.times.append((time.time(), body))
            self.cond.notify_all()

    def wait_for_step(self, step: int, since: float, timeout: float) -> float | None:
        """Arrival time of the first alert after ``since`` whose finding covers ``step``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self.cond:
            while True:
                for at, body in self.times[seen:]:
                    f = body.get("finding") or {}
                    start, end = f.get("step_start"), f.get("step_end")
                    if at < since or start is None:
                        continue
                    if start <= step <= (end if end is not None else start):
                        return at
                seen = len(self.times)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def serve(arrivals: Arrivals) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrivals.add(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server


def pick_analyzer(choice: str) -> str | None:
    """The ``--analyzer`` to watch with (None: the detectors)."""
    if choice == "sql":
        return "watch_latency:nan_findings"
    try:
        import tunescope.detectors.engine  # noqa: F401
    except ModuleNotFoundError:
        if choice == "engine":
            sys.exit("the detector engine (tunescope.detectors.engine) is not installed")
        return "watch_latency:nan_findings"
    return None


def poll_cost(runs: Path, cache: Path, analyzer: str | None, n: int = 5) -> float:
    """Median seconds of one poll's work (ingest + analysis, stored as the
    watcher stores it), in-process."""
    sys.path.insert(0, str(HERE))
    from tunescope.analysis import analyze_store
    from tunescope.ingest.store.database import Store
    from tunescope.watch import load_analyzer

    detect = load_analyzer(analyzer) if analyzer else None
    store = Store(runs, cache)
    store.ingest()
    ids = store.run_ids()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        store.ingest()
        analyze_store(store, run_ids=ids, detect=detect)
        times.append(time.perf_counter() - t0)
    store.close()
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=15, help="trials per mode, over all rounds")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--analyzer", choices=("auto", "engine", "sql"), default="auto")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds to wait per alert")
    ap.add_argument(
        "--mode",
        choices=("both", "events", "poll"),
        default="both",
        help="wake on file events, poll only (--poll), or both interleaved (default)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per mode")
    args = ap.parse_args()

    from tunescope.train.events import EventWriter

    analyzer = pick_analyzer(args.analyzer)
    arrivals = Arrivals()
    server = serve(arrivals)
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    tmp = Path(tempfile.mkdtemp(prefix="tunescope-watch-bench-"))
    runs = tmp / "runs"
    writer = EventWriter(runs / "live", rank=0)
    writer.run_start(model="bench", total_steps=100_000)
    step = 0
    lock = threading.Lock()
    stop = threading.Event()

    def train() -> None:  # a finite step every 50 ms, as a run in progress
        nonlocal step
        while not stop.is_set():
            with lock:
                step += 1
                writer.step(step=step, loss=2.0 + 0.01 * random.random(), lr=1e-4)
            stop.wait(0.05)

    with lock:
        for _ in range(200):
            step += 1
            writer.step(step=step, loss=2.0, lr=1e-4)
        writer.flush()
    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    script = Path(sys.executable).parent / "tunescope"
    base_cmd = (
        [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "tunescope"]
    )
    base_cmd += [
        "watch", str(runs), "--webhook", url, "--interval", str(args.interval),
        "--rate-limit", "0", "--format", "json",
        *(["--analyzer", analyzer] if analyzer else []),
    ]  # fmt: skip

    def measure(mode: str, trials: int) -> tuple[list[float], int] | None:
        """Latencies of ``trials`` NaN lines under one watch process."""
        cmd = base_cmd + (["--poll"] if mode == "poll" else [])
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def read_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if "watching" in line:
                    ready.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        latencies: list[float] = []
        missed = 0
        nonlocal step
        try:
            if not ready.wait(60):
                print("the watcher did not start", file=sys.stderr)
                return None
            time.sleep(3 * args.interval)  # past the first polls
            for trial in range(trials):
                time.sleep(random.uniform(0.2, 1.2))  # land at a random phase of the poll
                with lock:
                    step += 1
                    nan_step = step
                    writer.step(step=step, loss=float("nan"), lr=1e-4)
                    writer.flush()
                    t0 = time.time()  # the NaN line is in the rank file
                    step += 1
                    writer.step(step=step, loss=2.0, lr=1e-4)  # the incident is one step long
                at = arrivals.wait_for_step(nan_step, t0, args.timeout)
                if at is not None:
                    latencies.append(at - t0)
                else:
                    missed += 1
                    print(
                        f"{mode} trial {trial + 1}: no alert within {args.timeout:.0f}s",
                        file=sys.stderr,
                    )
        finally:
            proc.send_signal(2)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return latencies, missed

    modes = ("events", "poll") if args.mode == "both" else (args.mode,)
    got: dict[str, list[float]] = {m: [] for m in modes}
    missed = dict.fromkeys(modes, 0)
    per_round = max(1, args.trials // args.rounds)
    try:
        for _ in range(args.rounds):  # interleaved: events, polling, events, ...
            for mode in modes:
                res = measure(mode, per_round)
                if res is None:
                    return 1
                got[mode] += res[0]
                missed[mode] += res[1]
    finally:
        stop.set()
        trainer.join()
        writer.close()
        server.shutdown()

    baseline = args.interval / 2 + poll_cost(runs, tmp / "bench-cache", analyzer)
    print(
        f"watch latency, line written -> webhook received (--interval {args.interval:g}, "
        f"analyzer {analyzer or 'the detectors'}, {args.rounds} interleaved rounds "
        f"of {per_round} trials per mode)"
    )
    medians = {}
    for mode in modes:
        lat = sorted(got[mode])
        if not lat:
            print(f"  {mode}: no alert arrived", file=sys.stderr)
            return 1
        med = medians[mode] = statistics.median(lat)
        p90 = statistics.quantiles(lat, n=10)[-1] if len(lat) > 1 else lat[0]
        print(
            f"  {mode:6}: median {med:.2f}s   p90 {p90:.2f}s   best {lat[0]:.2f}s   "
            f"max {lat[-1]:.2f}s   ({len(lat)} trials, {missed[mode]} missed)"
        )
    print(f"  baseline (interval/2 + one poll's ingest+analysis, same run): {baseline:.2f}s")
    for mode in modes:
        print(f"  {mode} median / baseline: {medians[mode] / baseline:.2f}x")
    if "events" in medians and "poll" in medians:
        print(f"  events median / polling median: {medians['events'] / medians['poll']:.2f}x")
    if "events" in medians:
        met = "met" if medians["events"] < 0.5 else "NOT met"
        print(f"  target: median < 0.5s on file events -> {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
