"""Prometheus metrics for the runs of a store: ``tunescope metrics`` and
``tunescope watch --metrics-port`` serve them at ``/metrics``.

:class:`RunsCollector` is a ``prometheus_client`` collector over a private
registry. On each scrape it reads the store with two queries (the ``runs``
view; then memory and throughput from ``steps`` for the runs it exports) on
its own cursor, so a scrape costs the same whatever the runs' write rate,
and serves the last good reading when the cache changes under a query.
Findings are not computed on a scrape: whoever runs the detectors hands them
over with :meth:`RunsCollector.record` (the watcher after each poll, or
:func:`follow` for ``tunescope metrics``).

Cardinality is bounded: only the ``max_runs`` most recently active runs are
exported (running ones first), and the labels are ``run``, ``rank`` (peak
memory), ``detector`` and ``severity`` (findings) and ``status`` (one of
:data:`STATUSES`). docs/prometheus.md lists every metric.
"""

from __future__ import annotations

import errno
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tunescope.analysis import Detect, analyze_store
from tunescope.errors import TunescopeError, UsageError
from tunescope.findings import Finding
from tunescope.ingest.live.follow import Follower
from tunescope.ingest.store.sql_guard import first_line
from tunescope.say import say

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from tunescope.config import Config
    from tunescope.ingest.store.database import Store

DEFAULT_PORT = 9464
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_RUNS = 50
STATUSES = ("running", "completed", "failed", "interrupted")
"""The values of ``status`` in the ``runs`` view, one series each per run."""
RATE_STEPS = 20
"""Steps/s is measured over a run's last this many logged steps, by its log's clock."""
MIB = 1 << 20  # the logs' memory figures are MiB; Prometheus wants bytes

Log = Callable[[str], None]

# The runs to export, most recently active first (running ones before the
# rest), with the number the store holds. The last log line is the newer of
# the last step and the run's end, by the log's own clock.
_RUNS_SQL = """
SELECT run_id, status, last_step, last_loss,
       epoch(greatest(last_at, ended_at)) AS last_log,
       count(*) OVER () AS total
FROM runs
ORDER BY status = 'running' DESC,
         coalesce(greatest(last_at, ended_at), started_at) DESC NULLS LAST, run_id
LIMIT $max_runs
"""

# Per exported run and rank: the highest memory logged (the peak where the
# log has it, else what was allocated), and the run's steps per second over
# its last RATE_STEPS logged steps (a step's time: the latest of its ranks).
_STEPS_SQL = f"""
WITH s AS (
    SELECT run_id, rank, step, ts, coalesce(mem_peak_mb, mem_allocated_mb) AS mem
    FROM steps WHERE list_contains($runs, run_id)
),
mem AS (SELECT run_id, rank, max(mem) AS peak_mb FROM s GROUP BY run_id, rank),
recent AS (
    SELECT run_id, step, max(ts) AS ts FROM s WHERE ts IS NOT NULL GROUP BY run_id, step
    QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY step DESC) <= {RATE_STEPS + 1}
),
rate AS (
    SELECT run_id, (max(step) - min(step)) / nullif(max(ts) - min(ts), 0) AS steps_per_s
    FROM recent GROUP BY run_id
)
SELECT mem.run_id, mem.rank, mem.peak_mb, rate.steps_per_s
FROM mem LEFT JOIN rate USING (run_id)
ORDER BY mem.run_id, mem.rank
"""


@dataclass
class Reading:
    """One reading of the store: the exported runs and their figures."""

    total: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    peak_mb: dict[tuple[str, int], float] = field(default_factory=dict)
    steps_per_s: dict[str, float] = field(default_factory=dict)
    at: float = 0.0  # monotonic seconds when it was read


def read_store(store: Store, max_runs: int) -> Reading:
    """The figures of the ``max_runs`` most recently active runs of ``store``."""
    cur = store.cursor()
    try:
        cur.execute(_RUNS_SQL, {"max_runs": max_runs})
        cols = [d[0] for d in cur.description]
        runs = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        reading = Reading(total=int(runs[0]["total"]) if runs else 0, runs=runs)
        if runs:
            cur.execute(_STEPS_SQL, {"runs": [r["run_id"] for r in runs]})
            for run_id, rank, peak_mb, rate in cur.fetchall():
                if peak_mb is not None:
                    reading.peak_mb[(run_id, int(rank))] = float(peak_mb)
                if rate is not None:
                    reading.steps_per_s[run_id] = float(rate)
    finally:
        cur.close()
    return reading


class RunsCollector(Collector):
    """The ``tunescope_*`` metrics of the runs of ``store``.

    Args:
        store: the runs (ingested by whoever follows them; a scrape only reads).
        max_runs: how many runs are exported, the most recently active first.
        min_interval: a scrape within this many seconds of the last reading
            reuses it (two Prometheus servers scraping cost one reading).
        clock: wall-clock seconds, for the age of the last log line.
        log: where a failed reading is reported (once until one succeeds).
    """

    def __init__(
        self,
        store: Store,
        *,
        max_runs: int = DEFAULT_MAX_RUNS,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        log: Log | None = None,
    ) -> None:
        if max_runs < 1:
            raise UsageError(f"--max-runs must be at least 1, got {max_runs}")
        self.store = store
        self.max_runs = max_runs
        self.min_interval = min_interval
        self.clock = clock
        self.log = log if log is not None else say
        self._findings: dict[str, Counter[tuple[str, str]]] = {}
        self._lock = threading.Lock()  # findings, and one reading at a time
        self._reading: Reading | None = None
        self._failing = False

    # ---- what the detectors found ----------------------------------------------

    def record(self, run_ids: Sequence[str], findings: Iterable[Finding]) -> None:
        """The findings of ``run_ids`` now (replacing what was recorded for
        them); findings of other runs are ignored."""
        counts: dict[str, Counter[tuple[str, str]]] = {r: Counter() for r in run_ids}
        for f in findings:
            if f.run in counts:
                counts[f.run][(f.detector, f.severity.value)] += 1
        with self._lock:
            self._findings.update(counts)

    def exported_runs(self) -> list[str]:
        """The ids of the runs a scrape exports now."""
        return [r["run_id"] for r in read_store(self.store, self.max_runs).runs]

    # ---- a scrape ----------------------------------------------------------------

    def reading(self) -> Reading:
        """The store's figures, read again unless the last reading is fresh;
        the last good one when the read fails (the cache changed under it)."""
        with self._lock:
            last = self._reading
            if last is not None and time.monotonic() - last.at < self.min_interval:
                return last
            try:
                fresh = read_store(self.store, self.max_runs)
            except (duckdb.Error, TunescopeError) as e:
                if not self._failing:
                    self.log(
                        f"metrics: reading the store failed ({first_line(e)}); "
                        "serving the last reading"
                    )
                self._failing = True
                return last or Reading()
            self._failing = False
            fresh.at = time.monotonic()
            self._reading = fresh
            return fresh

    def collect(self) -> Iterator[Metric]:
        reading = self.reading()
        now = self.clock()
        with self._lock:
            findings = {r["run_id"]: self._findings.get(r["run_id"]) for r in reading.runs}
        runs = GaugeMetricFamily("tunescope_runs", "Runs the store holds.", value=reading.total)
        exported = GaugeMetricFamily(
            "tunescope_runs_exported",
            "Runs exported (the most recently active, at most --max-runs).",
            value=len(reading.runs),
        )
        status = GaugeMetricFamily(
            "tunescope_run_status",
            "1 for the run's status as the store knows it (running, completed, failed, "
            "interrupted), 0 for the others.",
            labels=["run", "status"],
        )
        last_step = GaugeMetricFamily(
            "tunescope_run_last_step", "The last step the run logged.", labels=["run"]
        )
        last_loss = GaugeMetricFamily(
            "tunescope_run_last_loss",
            "The loss at the last step that logged one (NaN stays NaN).",
            labels=["run"],
        )
        rate = GaugeMetricFamily(
            "tunescope_run_steps_per_second",
            f"Steps per second over the run's last {RATE_STEPS} logged steps, by its log's clock.",
            labels=["run"],
        )
        memory = GaugeMetricFamily(
            "tunescope_run_memory_peak_bytes",
            "The highest peak memory a rank logged (allocated memory where no peak is logged).",
            labels=["run", "rank"],
            unit="bytes",
        )
        last_log = GaugeMetricFamily(
            "tunescope_run_last_log_timestamp_seconds",
            "When the run's last log line was written (its last step or its end), by its "
            "log's clock, in seconds since the epoch.",
            labels=["run"],
            unit="seconds",
        )
        age = GaugeMetricFamily(
            "tunescope_run_last_log_age_seconds",
            "Seconds since the run's last log line at the time of the scrape (a hung run "
            "keeps growing it while its status is running).",
            labels=["run"],
            unit="seconds",
        )
        found = GaugeMetricFamily(
            "tunescope_findings",
            "Findings the detectors report now, by run, detector and severity.",
            labels=["run", "detector", "severity"],
        )
        for r in reading.runs:
            run = r["run_id"]
            for s in STATUSES:
                status.add_metric([run, s], 1.0 if r["status"] == s else 0.0)
            if r["last_step"] is not None:
                last_step.add_metric([run], float(r["last_step"]))
            if r["last_loss"] is not None:
                last_loss.add_metric([run], float(r["last_loss"]))
            if run in reading.steps_per_s:
                rate.add_metric([run], reading.steps_per_s[run])
            if r["last_log"] is not None:
                last_log.add_metric([run], float(r["last_log"]))
                age.add_metric([run], max(0.0, now - float(r["last_log"])))
            for (detector, severity), n in sorted((findings.get(run) or {}).items()):
                found.add_metric([run, detector, severity], float(n))
        for (run, rank), mb in sorted(reading.peak_mb.items()):
            memory.add_metric([run, str(rank)], mb * MIB)
        yield from (runs, exported, status, last_step, last_loss, rate, memory, last_log, age)
        yield found


# ---- serving ---------------------------------------------------------------------------


class MetricsServer:
    """``collector`` served at ``http://HOST:PORT/metrics`` by a daemon thread
    (Prometheus text, or OpenMetrics when the scraper asks for it).

    A port in use, or a host that cannot be bound, is a :class:`UsageError`
    naming ``option`` (the flag that chose the port)."""

    def __init__(
        self,
        collector: Collector,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        option: str = "--port",
    ) -> None:
        if not 0 <= port <= 65535:
            raise UsageError(f"{option} must be a port number (0-65535), got {port}")
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        try:
            self.httpd, self.thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            where = f"{host}:{port}"
            if e.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"cannot serve metrics on {where}: the port is in use (another exporter?); "
                    f"choose another with {option}"
                ) from None
            raise UsageError(
                f"cannot serve metrics on {where} ({e.strerror or e}); check the host and {option}"
            ) from None
        self.host = host
        self.port = int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        server: WSGIServer = self.httpd
        server.shutdown()
        server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- following runs for ``tunescope metrics`` ------------------------------------------


def follow(
    store: Store,
    collector: RunsCollector,
    stop: threading.Event,
    *,
    detect: Detect | None = None,
    interval: float = 5.0,
    select: list[str] | None = None,
    ignore: list[str] | None = None,
    config: Config | None = None,
    log: Log | None = None,
) -> None:
    """Until ``stop`` is set: ingest what is new every ``interval`` seconds
    and run the detectors on the exported runs that changed (or that are
    exported for the first time), handing their findings to ``collector``.

    An error in the first poll is raised; later ones are reported and the
    loop goes on, waiting longer while polls keep failing.
    """
    if interval <= 0:
        raise UsageError(f"--interval must be > 0 seconds, got {interval}")
    log = log if log is not None else say
    follower = Follower(store)
    analysed: set[str] = set()
    failures = 0
    while not stop.is_set():
        try:
            changed = set(follower.poll())
            wanted = set(collector.exported_runs())
            todo = sorted((changed | (wanted - analysed)) & wanted)
            analysed -= changed - wanted  # vanished, or no longer exported
            if todo:
                findings = analyze_store(
                    store, config, select=select, ignore=ignore, run_ids=todo, detect=detect
                ).found
                collector.record(todo, findings)
                analysed.update(todo)
            failures = 0
        except Exception as e:
            if follower.polls <= 1 and failures == 0 and isinstance(e, TunescopeError):
                raise
            failures += 1
            log(f"poll failed ({type(e).__name__}: {first_line(e)}); trying again")
        stop.wait(interval * min(30, 2 ** max(0, failures - 1)) if failures else interval)
