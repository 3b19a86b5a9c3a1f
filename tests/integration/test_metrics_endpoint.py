"""The Prometheus endpoint: a real server on 127.0.0.1 over the demo runs,
scraped with urllib and parsed with prometheus_client's own parsers; the
``tunescope metrics`` and ``tunescope watch --metrics-port`` commands as
subprocesses; and the Grafana dashboard's queries against what is exposed."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import promql_parser
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from watch_analyzers import nan_analyze

from tunescope.detectors.engine import analyze
from tunescope.errors import UsageError
from tunescope.ingest.store.database import Store
from tunescope.metrics import MIB, STATUSES, MetricsServer, RunsCollector, follow
from tunescope.train.events import EventWriter
from tunescope.watch import Watcher

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "runs"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
TUNESCOPE = str(Path(sys.executable).parent / "tunescope")
LABELS = {"run", "rank", "detector", "severity", "status"}
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def scrape(url: str, accept: str | None = None) -> str:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode("utf-8")


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value}, from Prometheus text."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, {})
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def by_run(series: dict, **fixed: str) -> dict[str, float]:
    """``{run: value}`` of the samples whose other labels equal ``fixed``."""
    out = {}
    for labels, value in series.items():
        d = dict(labels)
        if all(d.get(k) == v for k, v in fixed.items()):
            out[d["run"]] = value
    return out


def by_dict(item: tuple) -> tuple[dict[str, str], float]:
    labels, value = item
    return dict(labels), value


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([TUNESCOPE, *args], capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo runs (a copy: the cache goes beside them) and their store,
    analysed once by the real detectors."""
    root = tmp_path_factory.mktemp("metrics") / "runs"
    shutil.copytree(FIXTURES, root, ignore=shutil.ignore_patterns(".tunescope"))
    store = Store.open(root)
    findings = analyze(store)
    yield root, store, findings
    store.close()


@pytest.fixture(scope="module")
def served(demo):
    _, store, findings = demo
    collector = RunsCollector(store, max_runs=50)
    collector.record(store.run_ids(), findings)
    with MetricsServer(collector, "127.0.0.1", 0) as server:
        yield server, scrape(server.url)


def test_binds_loopback_on_an_ephemeral_port(served):
    server, _ = served
    assert server.host == "127.0.0.1" and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"


def test_last_step_and_status_equal_what_tunescope_query_says(demo, served):
    root, _, _ = demo
    q = cli("query", str(root), "SELECT run_id, last_step, status FROM runs", "--format", "json")
    assert q.returncode == 0, q.stderr
    rows = json.loads(q.stdout)
    assert len(rows) == 12
    m = samples(served[1])
    assert by_run(m["tunescope_run_last_step"]) == {r["run_id"]: r["last_step"] for r in rows}
    assert by_run(m["tunescope_run_status"], status="interrupted") == {
        r["run_id"]: float(r["status"] == "interrupted") for r in rows
    }
    for r in rows:  # one series per status and run, exactly one of them 1
        assert sum(by_run(m["tunescope_run_status"], status=s)[r["run_id"]] for s in STATUSES) == 1
    assert by_run(m["tunescope_run_status"], status="interrupted")["killed"] == 1
    assert by_run(m["tunescope_run_last_step"])["killed"] == 179
    assert m["tunescope_runs"][()] == 12 and m["tunescope_runs_exported"][()] == 12


def test_findings_by_detector_and_severity_equal_tunescope_analyze(demo, served):
    root, _, _ = demo
    r = cli("analyze", str(root), "--format", "json", "--exit-zero")
    assert r.returncode == 0, r.stderr
    expected = Counter(
        (f["run"], f["detector"], f["severity"]) for f in json.loads(r.stdout)["findings"]
    )
    found = samples(served[1])["tunescope_findings"]
    got = {(d["run"], d["detector"], d["severity"]): v for d, v in map(by_dict, found.items())}
    assert got == {k: float(n) for k, n in expected.items()}
    assert got[("fault-nan", "TS001", "error")] == 1  # the NaN run's divergence, counted
    assert not any(run.startswith("healthy") and sev == "error" for run, _, sev in got)


def test_nan_loss_memory_per_rank_and_throughput(demo, served):
    _, store, _ = demo
    m = samples(served[1])
    loss = by_run(m["tunescope_run_last_loss"])
    assert math.isnan(loss["fault-nan"])
    assert loss["healthy-lora-s0"] == pytest.approx(
        store.cursor()
        .execute("SELECT last_loss FROM runs WHERE run_id = 'healthy-lora-s0'")
        .fetchone()[0]
    )
    # the demo runs trained on CPU: no peak logged, the allocated memory stands in
    peaks = (
        store.cursor()
        .execute(
            "SELECT rank, max(mem_allocated_mb) FROM steps WHERE run_id = 'fault-straggler-2rank' "
            "GROUP BY rank ORDER BY rank"
        )
        .fetchall()
    )
    mem = {
        dict(k)["rank"]: v
        for k, v in m["tunescope_run_memory_peak_bytes"].items()
        if dict(k)["run"] == "fault-straggler-2rank"
    }
    assert mem == {str(rank): pytest.approx(mb * MIB) for rank, mb in peaks}
    assert len(peaks) == 2
    # the leaking run's memory ends higher than a healthy one's
    leak = by_run(m["tunescope_run_memory_peak_bytes"], rank="0")
    assert leak["fault-leak"] > 1.3 * leak["healthy-lora-s0"]
    # steps/s by the log's clock: the last 20 steps of a healthy run
    (first, last) = (
        store.cursor()
        .execute(
            "SELECT min(ts), max(ts) FROM steps WHERE run_id = 'healthy-lora-s0' AND step >= 280"
        )
        .fetchone()
    )
    rate = by_run(m["tunescope_run_steps_per_second"])
    assert rate["healthy-lora-s0"] == pytest.approx(20 / (last - first))
    # the straggler run is slower than every single-rank run
    assert rate["fault-straggler-2rank"] < min(
        v for k, v in rate.items() if k != "fault-straggler-2rank"
    )


def test_only_the_bounded_labels(served):
    for family in text_string_to_metric_families(served[1]):
        assert family.name.startswith("tunescope_")
        for s in family.samples:
            assert set(s.labels) <= LABELS, (s.name, s.labels)


def test_openmetrics_when_asked_with_units(served):
    server, _ = served
    text = scrape(server.url, accept=OPENMETRICS)
    assert text.rstrip().endswith("# EOF")
    families = {f.name: f for f in openmetrics_families(text)}
    assert families["tunescope_run_memory_peak_bytes"].unit == "bytes"
    assert families["tunescope_run_last_log_age_seconds"].unit == "seconds"
    nan = [s for s in families["tunescope_findings"].samples if s.labels["run"] == "fault-nan"]
    assert {(s.labels["detector"], s.labels["severity"]) for s in nan} >= {("TS001", "error")}


def test_max_runs_keeps_the_most_recently_active(demo):
    _, store, findings = demo
    collector = RunsCollector(store, max_runs=3)
    collector.record(store.run_ids(), findings)
    newest = (
        store.cursor()
        .execute("SELECT run_id FROM runs ORDER BY greatest(last_at, ended_at) DESC LIMIT 3")
        .fetchall()
    )
    with MetricsServer(collector, "127.0.0.1", 0) as server:
        m = samples(scrape(server.url))
    assert m["tunescope_runs"][()] == 12 and m["tunescope_runs_exported"][()] == 3
    for name, series in m.items():
        runs = {dict(k)["run"] for k in series if "run" in dict(k)}
        assert runs <= {r for (r,) in newest}, name
    assert set(by_run(m["tunescope_run_last_step"])) == {r for (r,) in newest}


def test_a_hung_run_shows_its_age(tmp_path):
    """A run whose last line is 10 minutes old: the age follows the clock."""
    root = tmp_path / "runs"
    (root / "stuck" / "events").mkdir(parents=True)
    t0 = time.time() - 600
    lines = [{"v": 1, "kind": "run_start", "run": "stuck", "rank": 0, "ts": t0 - 50}]
    lines += [
        {
            "v": 1,
            "kind": "step",
            "run": "stuck",
            "rank": 0,
            "step": s,
            "ts": t0 - 50 + s,
            "loss": 2.0,
            "mem_allocated_mb": 100 + s,
            "mem_peak_mb": 200 + s,
        }
        for s in range(1, 51)
    ]
    (root / "stuck" / "events" / "rank-0.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines)
    )
    store = Store.open(root)
    now = [t0 + 1000.0]
    collector = RunsCollector(store, clock=lambda: now[0])
    try:
        with MetricsServer(collector, "127.0.0.1", 0) as server:
            m = samples(scrape(server.url))
            assert by_run(m["tunescope_run_last_log_timestamp_seconds"]) == {
                "stuck": pytest.approx(t0)
            }
            assert by_run(m["tunescope_run_last_log_age_seconds"]) == {
                "stuck": pytest.approx(1000.0)
            }
            assert by_run(m["tunescope_run_steps_per_second"]) == {"stuck": pytest.approx(1.0)}
            # the peak where the log has one (not the allocated memory), in bytes
            assert by_run(m["tunescope_run_memory_peak_bytes"], rank="0") == {"stuck": 250 * MIB}
            assert by_run(m["tunescope_run_status"], status="interrupted") == {"stuck": 1.0}
            now[0] += 60
            time.sleep(collector.min_interval)
            later = samples(scrape(server.url))["tunescope_run_last_log_age_seconds"]
            assert by_run(later) == {"stuck": pytest.approx(1060.0)}
    finally:
        store.close()


def test_the_watcher_hands_its_findings_over(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    store = Store(root, root / ".tunescope")
    collector = RunsCollector(store)
    watcher = Watcher(
        store, None, detect=nan_analyze, log=lambda m: None, on_findings=collector.record
    )
    with MetricsServer(collector, "127.0.0.1", 0) as server, EventWriter(root / "a") as w:
        for step in range(1, 11):
            w.step(step=step, loss=2.0, lr=1e-4)
        w.flush()
        watcher.poll()
        m = samples(scrape(server.url))
        assert by_run(m["tunescope_run_last_step"]) == {"a": 10}
        assert by_run(m["tunescope_run_status"], status="running") == {"a": 1}
        assert by_run(m["tunescope_findings"], detector="NAN1", severity="warning") == {}
        assert by_run(m["tunescope_findings"], severity="info") == {"a": 1}
        for step in (11, 12):
            w.step(step=step, loss=float("nan"), lr=1e-4)
        w.flush()
        watcher.poll()
        time.sleep(collector.min_interval)
        m = samples(scrape(server.url))
    assert by_run(m["tunescope_run_last_step"]) == {"a": 12}
    assert math.isnan(by_run(m["tunescope_run_last_loss"])["a"])
    assert by_run(m["tunescope_findings"], detector="NAN1", severity="warning") == {"a": 1}
    store.close()


def test_follow_runs_the_detectors_on_exported_runs_only(tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES, root, ignore=shutil.ignore_patterns(".tunescope"))
    store = Store.open(root)
    collector = RunsCollector(store, max_runs=2)
    asked: list[list[str]] = []

    def counting(store, **kw):
        asked.append(list(kw["run_ids"]))
        return analyze(store, **kw)

    stop = threading.Event()
    loop = threading.Thread(
        target=follow, args=(store, collector, stop), kwargs={"detect": counting, "interval": 0.1}
    )
    loop.start()
    try:
        deadline = time.monotonic() + 60
        while not asked and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # more polls: nothing changed, nothing analysed again
    finally:
        stop.set()
        loop.join(timeout=30)
    assert asked == [sorted(collector.exported_runs())]
    store.close()


def test_a_port_in_use_is_one_line_and_exit_2(demo, served):
    server, _ = served
    _, store, _ = demo
    with pytest.raises(UsageError, match=r"127\.0\.0\.1:\d+: the port is in use .* --port$"):
        MetricsServer(RunsCollector(store), "127.0.0.1", server.port)
    root = demo[0]
    for args in (
        ["metrics", str(root), "--port", str(server.port)],
        ["watch", str(root), "--metrics-port", str(server.port), "--once", "--poll"],
    ):
        r = cli(*args)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        (line,) = [x for x in r.stderr.splitlines() if "error:" in x]
        flag = "--port" if args[0] == "metrics" else "--metrics-port"
        assert line == (
            f"tunescope: error: cannot serve metrics on 127.0.0.1:{server.port}: the port is "
            f"in use (another exporter?); choose another with {flag}"
        )


def test_bad_port_and_max_runs_are_usage_errors(demo):
    root = str(demo[0])
    for args in (["--port", "70000"], ["--max-runs", "0"], ["--port", "x"]):
        r = cli("metrics", root, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert f"error: argument {args[0]}: " in r.stderr.splitlines()[-1]


def serve_cli(*args: str) -> tuple[subprocess.Popen, str]:
    """Start ``tunescope ARGS`` and return it with its metrics URL, read from
    the line it prints when serving."""
    proc = subprocess.Popen(
        [TUNESCOPE, *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"serving metrics .*?at (http://127\.0\.0\.1:\d+/metrics)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError(f"no serving line; exit {proc.wait()}")


def test_the_metrics_command_is_scraped_then_stopped(demo, tmp_path):
    root = demo[0]
    proc, url = serve_cli(
        "metrics", str(root), "--port", "0", "--interval", "0.5", "--cache-dir", str(tmp_path)
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # the detectors' first pass may still be running
            m = samples(scrape(url))
            if m.get("tunescope_findings") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, out
    assert "stopped serving metrics" in out and "Traceback" not in out
    assert by_run(m["tunescope_findings"], detector="TS001", severity="error") == {"fault-nan": 1}
    assert by_run(m["tunescope_run_last_step"])["fault-straggler-2rank"] == 200


def test_watch_serves_metrics_with_its_alerts(tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES / "fault-nan", root / "fault-nan")
    proc, url = serve_cli("watch", str(root), "--metrics-port", "0", "--poll", "--interval", "0.5")
    try:
        deadline = time.monotonic() + 120
        while True:
            m = samples(scrape(url))
            if m.get("tunescope_findings") or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[1]
    assert by_run(m["tunescope_findings"], detector="TS001", severity="error") == {"fault-nan": 1}
    assert "Traceback" not in out


# ---- the Grafana dashboard ---------------------------------------------------------------


def dashboard_queries(node: object) -> list[str]:
    """Every query in the dashboard: panel targets' PromQL and the variables'."""
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                out.append(value)
            elif key == "query" and isinstance(value, dict) and "query" in value:
                out.append(value["query"])
            else:
                out.extend(dashboard_queries(value))
    elif isinstance(node, list):
        for item in node:
            out.extend(dashboard_queries(item))
    return out


def names_and_labels(query: str) -> tuple[set[str], set[str]]:
    """The metric names a query selects and the labels it names (matchers,
    ``by``/``without``, ``on``/``ignoring``), read from the PromQL parser's
    tree; Grafana's ``label_values(METRIC, LABEL)`` is read as METRIC and LABEL."""
    names: set[str] = set()
    labels: set[str] = set()
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\s*\)", query.strip())
    if m:
        query = m.group(1)
        labels.add(m.group(2))

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
            labels.update(x.name for x in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None:
                labels.update(matching.labels)

    promql_parser.walk(promql_parser.parse(query), pre_visit=visit)  # ValueError: bad PromQL
    return names, labels


def test_the_query_reader_sees_through_promql():
    names, labels = names_and_labels(
        'count((a_x{run=~"$run"} > 600) and on (run) (b_y{status="running"} == 1)) or vector(0)'
    )
    assert (names, labels) == ({"a_x", "b_y"}, {"run", "status"})
    assert names_and_labels("sum by (run, detector) (rate(c_z[5m]))") == (
        {"c_z"},
        {"run", "detector"},
    )
    with pytest.raises(ValueError):
        names_and_labels("sum(tunescope_findings{")


def test_dashboard_queries_name_only_exposed_metrics_and_labels(served):
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exposed = {f.name for f in text_string_to_metric_families(served[1])}
    panels = dash["panels"]
    assert len(panels) >= 8
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert names_and_labels(target["expr"])[0], panel["title"]
    queries = dashboard_queries(dash)
    assert len(queries) > len(panels)
    used: set[str] = set()
    for q in queries:
        names, labels = names_and_labels(q)
        assert names and names <= exposed, (q, names - exposed)
        assert labels <= LABELS, (q, labels - LABELS)
        used |= names
    # the dashboard shows every per-run metric the exporter serves
    assert used >= {
        "tunescope_run_last_step",
        "tunescope_run_last_loss",
        "tunescope_run_steps_per_second",
        "tunescope_run_memory_peak_bytes",
        "tunescope_run_status",
        "tunescope_run_last_log_age_seconds",
        "tunescope_findings",
    }


def test_a_scrape_serves_the_last_reading_when_the_cache_goes_away(tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES / "fault-nan", root / "fault-nan")
    store = Store.open(root)
    said: list[str] = []
    collector = RunsCollector(store, min_interval=0, log=said.append)
    try:
        with MetricsServer(collector, "127.0.0.1", 0) as server:
            before = samples(scrape(server.url))
            for seg in (root / ".tunescope" / "segments").glob("*.parquet"):
                seg.unlink()  # the files the views read: another process rebuilt the cache
            after = [samples(scrape(server.url)) for _ in range(2)]
    finally:
        store.close()
    assert by_run(before["tunescope_run_last_step"]) == {"fault-nan": 300}
    age = "tunescope_run_last_log_age_seconds"  # follows the clock
    assert all(repr({**a, age: None}) == repr({**before, age: None}) for a in after)  # NaN too
    (line,) = said  # once, not on every scrape
    assert line.startswith("metrics: reading the store failed (IO Error: No files found")
    assert line.endswith("; serving the last reading") and "\n" not in line
