"""The watcher: follows real runs (EventWriter -> ingest -> DuckDB), detects with a
small real analysis function, and delivers to a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from watch_analyzers import nan_analyze
from webhook_receiver import Receiver

from tunescope.alerts import AlertSender, RetryPolicy
from tunescope.errors import StoreError, UsageError
from tunescope.ingest.store.database import Store
from tunescope.train.events import EventWriter
from tunescope.watch import STATE_NAME, Watcher, load_analyzer, watch_lock

NAN = float("nan")
TESTS = Path(__file__).resolve().parents[1] / "helpers"  # the --analyzer module
FAST = RetryPolicy(timeout=2.0, retries=1, backoff=0.02)


class LogLines(list):
    def __call__(self, message: str) -> None:
        self.append(message)


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def write(w: EventWriter, steps: dict[int, float]) -> None:
    for step, loss in steps.items():
        w.step(step=step, loss=loss, lr=1e-4)
    w.flush()


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    return root


def make_watcher(runs, sender, log=None, **kw):
    store = Store(runs, runs / ".tunescope")
    return Watcher(
        store, sender, detect=nan_analyze, log=log if log is not None else LogLines(), **kw
    )


def test_new_finding_is_sent_once(runs):
    with Receiver() as rx, EventWriter(runs / "a", rank=0) as w:
        sender = AlertSender([rx.url], format="json", policy=FAST, log=LogLines())
        watcher = make_watcher(runs, sender, rate_limit=0)
        write(w, {s: 2.0 for s in range(1, 11)})
        assert watcher.poll() == []
        write(w, {11: NAN})
        (alert,) = watcher.poll()
        assert alert.reason == "new" and alert.finding.step_start == 11
        assert watcher.poll() == []  # nothing changed
        write(w, {12: 1.9})  # the run moved on, the incident did not
        assert watcher.poll() == []
        (req,) = rx.wait_for(1)
        sender.close()
    body = req.json()
    assert body["finding"]["detector"] == "NAN1"
    assert body["finding"]["severity"] == "warning"
    assert body["run"]["status"] == "running" and body["run"]["last_step"] == 11
    assert len(rx.requests) == 1


def test_alert_says_what_the_training_guard_did(runs):
    with Receiver() as rx, EventWriter(runs / "a", rank=0) as w:
        sender = AlertSender([rx.url], format="json", policy=FAST, log=LogLines())
        watcher = make_watcher(runs, sender, rate_limit=0)
        write(w, {s: 2.0 for s in range(1, 11)})
        assert watcher.poll() == []
        write(w, {11: NAN})
        w.intervention(11, "skip", "TS001", steps=[11, 11])
        w.flush()
        (alert,) = watcher.poll()
        assert alert.run["guard"] == "skip at step 11 (TS001)"
        (req,) = rx.wait_for(1)
        sender.close()
    assert req.json()["run"]["guard"] == "skip at step 11 (TS001)"


def test_growth_updates_and_severity_rise_escalates(runs):
    with EventWriter(runs / "a") as w:
        watcher = make_watcher(runs, None, rate_limit=0)
        write(w, {1: 2.0, 2: NAN})
        assert [a.reason for a in watcher.poll()] == ["new"]
        write(w, {3: NAN})
        (a,) = watcher.poll()
        assert (a.reason, a.finding.step_end, a.finding.severity.value) == ("updated", 3, "warning")
        write(w, {4: NAN})
        (a,) = watcher.poll()
        assert (a.reason, a.finding.severity.value) == ("escalated", "error")
        write(w, {5: 2.0})
        assert watcher.poll() == []


def test_rate_limit_holds_updates_folds_new_incidents_never_escalations(runs):
    clock = Clock()
    log = LogLines()
    with EventWriter(runs / "a") as w:
        watcher = make_watcher(runs, None, log=log, rate_limit=60, clock=clock)
        write(w, {1: 2.0, 2: NAN})
        assert [a.reason for a in watcher.poll()] == ["new"]
        clock.t += 10
        write(w, {3: NAN})  # grows: held by the rate limit
        assert watcher.poll() == []
        assert sum("still firing" in line for line in log) == 1
        write(w, {4: 2.0, 5: NAN})  # a second incident: folded
        assert watcher.poll() == []
        assert any("folded into the next alert" in line for line in log)
        write(w, {6: NAN, 7: NAN})  # the second one reaches 3 steps: an escalation goes out
        (a,) = watcher.poll()
        assert (a.reason, a.finding.step_start, a.folded) == ("escalated", 5, 1)
        clock.t += 61  # the window is over: the held update of the first incident goes out
        write(w, {8: 2.0})
        (a,) = watcher.poll()
        assert (a.reason, a.finding.step_start, a.finding.step_end) == ("updated", 2, 3)
        assert a.folded == 0


def test_restarted_watcher_does_not_send_again(runs):
    with Receiver() as rx, EventWriter(runs / "a") as w:
        write(w, {1: 2.0, 2: NAN, 3: 2.0})
        sender = AlertSender([rx.url], format="slack", policy=FAST, log=LogLines())
        first = make_watcher(runs, sender, rate_limit=0)
        assert len(first.poll()) == 1
        sender.close()
        assert (runs / ".tunescope" / STATE_NAME).exists()

        sender2 = AlertSender([rx.url], format="slack", policy=FAST, log=LogLines())
        log = LogLines()
        second = make_watcher(runs, sender2, log=log, rate_limit=0)  # as a new process would
        assert second.poll() == []
        assert any("skipped 1 finding already sent" in line for line in log)
        write(w, {4: NAN})  # a new incident is still sent
        (a,) = second.poll()
        assert a.finding.step_start == 4
        sender2.close()
        got = rx.wait_for(2)
    assert [r.json()["text"].split(":")[0] for r in got] == [
        "[WARNING] non-finite loss in run a rank 0"
    ] * 2
    assert len(got) == 2


def test_min_severity_drops_info(runs):
    with EventWriter(runs / "a") as w:
        write(w, {1: 2.0})
        info = make_watcher(runs, None, min_severity="info", state_path=runs / "s1.json")
        assert [a.finding.detector for a in info.poll()] == ["INFO1"]
        warn = make_watcher(runs, None, state_path=runs / "s2.json")
        assert warn.poll() == []


def test_watch_stores_the_findings_it_computes_for_query(runs):
    """With the real detectors: a poll stores the findings of every enabled
    detector about the runs it analysed, as ``analyze`` does, so ``tunescope
    query`` sees them; ``--select`` narrows the alerts, never the store."""
    with EventWriter(runs / "a") as w:
        write(w, {s: 2.0 - 0.01 * s for s in range(1, 41)})
        store = Store(runs, runs / ".tunescope")
        watcher = Watcher(store, None, select=["TS1"], rate_limit=0, log=LogLines())
        assert watcher.poll() == []
        write(w, {41: NAN, 42: NAN, 43: NAN})
        alerts = watcher.poll()
    # selected TS1 only: TS102 reports the non-finite loss (TS001 would cover it)
    assert [a.finding.detector for a in alerts] == ["TS102"]
    store.close()
    proc = subprocess.run(
        [*tunescope_cmd(), "query", str(runs), "--format", "csv",
         "SELECT run_id, detector, step_start FROM findings ORDER BY detector"],
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # the full view: TS001 covers TS102's non-finite divergence
    assert proc.stdout.splitlines() == ["run_id,detector,step_start", "a,TS001,41"]


def test_runs_finished_before_the_watch_are_a_baseline(runs):
    with EventWriter(runs / "old") as w:
        write(w, {1: 2.0, 2: NAN})
        w.run_end("failed")
    time.sleep(1.2)  # the run ended before the watch state is created
    log = LogLines()
    watcher = make_watcher(runs, None, log=log)
    assert watcher.poll() == []
    assert any("baseline: 1 finding in 1 run" in line for line in log)
    # A run that appears later, even one that has already ended, is alerted.
    with EventWriter(runs / "new") as w:
        write(w, {1: NAN})
        w.run_end("failed")
    (a,) = watcher.poll()
    assert a.finding.run == "new"
    assert a.run["status"] == "failed"
    everything = make_watcher(runs, None, include_finished=True, state_path=runs / "all.json")
    assert sorted(a.finding.run for a in everything.poll()) == ["new", "old"]


def test_a_dead_endpoint_does_not_delay_detection(runs):
    # Were sends done in the poll, each would block it for the 5 s timeout.
    with Receiver(delay=10.0) as slow, Receiver() as good, EventWriter(runs / "a") as w:
        policy = RetryPolicy(timeout=5.0, retries=0)
        sender = AlertSender([slow.url, good.url], format="json", policy=policy, log=LogLines())
        watcher = make_watcher(runs, sender, rate_limit=0)
        durations = []
        for step in range(1, 4):
            write(w, {2 * step: NAN, 2 * step + 1: 2.0})
            t0 = time.monotonic()
            assert len(watcher.poll()) == 1
            durations.append(time.monotonic() - t0)
        assert len(good.wait_for(3, timeout=3)) == 3
        assert max(durations) < 4.0, durations
        sender.close(timeout=0.2)


def test_damaged_state_is_refused_not_silently_reset(runs):
    (runs / ".tunescope").mkdir()
    (runs / ".tunescope" / STATE_NAME).write_text("{not json")
    with pytest.raises(StoreError, match="delete it to start"):
        make_watcher(runs, None)


def test_one_watcher_per_cache_dir(tmp_path):
    with (
        watch_lock(tmp_path, "runs"),
        pytest.raises(UsageError, match="already following runs"),
        watch_lock(tmp_path, "runs"),
    ):
        pass
    with watch_lock(tmp_path, "runs"):
        pass  # released


def test_load_analyzer_errors():
    with pytest.raises(UsageError, match="MODULE:FUNCTION"):
        load_analyzer("nocolon")
    with pytest.raises(UsageError, match="cannot import"):
        load_analyzer("no_such_module_xyz:f")
    with pytest.raises(UsageError, match="has no function"):
        load_analyzer("json:no_such_function")
    assert load_analyzer("watch_analyzers:nan_analyze") is nan_analyze


# ---- the real command, as a subprocess ------------------------------------------------


def tunescope_cmd() -> list[str]:
    """The installed console script, run by this interpreter."""
    script = Path(sys.executable).parent / "tunescope"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "tunescope"]


def cli_env(secret: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    env.pop("TUNESCOPE_WEBHOOK_SECRET", None)
    if secret:
        env["TUNESCOPE_WEBHOOK_SECRET"] = secret
    return env


def watch_args(runs, url, *extra):
    return [
        *tunescope_cmd(), "watch", str(runs), "--webhook", url,
        "--analyzer", "watch_analyzers:nan_analyze", "--backoff", "0.05", *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_watch_sends_and_stops_cleanly_on_a_signal(runs, sig):
    secret = "cli-secret-never-printed"
    with Receiver() as rx, EventWriter(runs / "a") as w:
        write(w, {1: 2.0})
        proc = subprocess.Popen(
            watch_args(runs, rx.url + "/tok-in-path", "--interval", "0.3"),
            env=cli_env(secret),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            write(w, {2: NAN})
            got = rx.wait_for(1, timeout=30)
            assert len(got) == 1, "no alert arrived"
            time.sleep(0.3)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"stopping ({sig.name})" in err and "stopped: 1 alert raised, 1 delivered" in err
    assert secret not in err and "tok-in-path" not in err
    assert out == ""
    body = got[0].json()
    assert body["finding"]["step_start"] == 2
    assert got[0].headers["X-Tunescope-Signature"].startswith("sha256=")


@pytest.mark.slow
def test_cli_outbox_then_redelivery_across_restarts(runs):
    with Receiver(statuses=[503]) as rx, EventWriter(runs / "a") as w:
        write(w, {1: 2.0, 2: NAN})
        first = subprocess.run(
            watch_args(runs, rx.url, "--once", "--retries", "0"),
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert first.returncode == 1, first.stderr  # --once: an alert could not be delivered
        assert "1 kept in" in first.stderr
        outbox = runs / ".tunescope" / "alerts-outbox.jsonl"
        assert len(outbox.read_text().splitlines()) == 1
        assert rx.url not in outbox.read_text()

        second = subprocess.run(
            watch_args(runs, rx.url, "--once"),
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 0, second.stderr
        assert "retrying 1 alert(s) from the outbox" in second.stderr
        assert "stopped: 0 alerts raised, 1 delivered" in second.stderr
        assert rx.answered == [503, 200]
        assert not outbox.exists()
        bodies = [r.json() for r in rx.requests]
        assert bodies[0]["id"] == bodies[1]["id"]
    state = json.loads((runs / ".tunescope" / STATE_NAME).read_text())
    assert len([k for k, v in state["incidents"].items() if v["sent"]]) == 1


def test_cli_usage_errors(runs):
    bad = subprocess.run(
        watch_args(runs, "ftp://example.com/x", "--once"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "http:// or https://" in bad.stderr and "Traceback" not in bad.stderr


def test_poll_thread_safety_smoke(runs):
    """Polling on a worker thread (as an embedding app would) works: the store
    gives each thread its own cursor."""
    with EventWriter(runs / "a") as w:
        write(w, {1: NAN})
        watcher = make_watcher(runs, None)
        box = []
        t = threading.Thread(target=lambda: box.append(watcher.poll()))
        t.start()
        t.join(30)
        assert len(box[0]) == 1


@pytest.mark.slow
def test_cli_second_sigint_keeps_undelivered_alerts_in_the_outbox(runs):
    """Two Ctrl-C in a row while the endpoint stalls: the watcher stops at once,
    and every alert the state records as sent is in the outbox for the next start."""
    writers = [EventWriter(runs / name) for name in ("a", "b", "c")]
    with Receiver(delay=60.0) as rx:  # takes each request and never answers in time
        for w in writers:
            write(w, {1: 2.0})
        proc = subprocess.Popen(
            watch_args(
                runs,
                rx.url + "/tok-in-path",
                "--interval",
                "0.3",
                "--timeout",
                "50",
                "--drain",
                "40",
                "--rate-limit",
                "0",
            ),
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for w in writers:
                write(w, {2: NAN})
            assert len(rx.wait_for(1, timeout=30)) == 1, "no alert reached the endpoint"
            time.sleep(0.5)  # the other two alerts wait in the queue behind the stalled one
            proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            assert out == ""
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
            for w in writers:
                w.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert elapsed < 10, f"the second Ctrl-C took {elapsed:.1f}s to stop the watch"
    assert "stopping now (SIGINT)" in err
    assert "stopped: 3 alerts raised, 0 delivered, 0 rejected; 3 kept in" in err, err
    assert "tok-in-path" not in err
    state = json.loads((runs / ".tunescope" / STATE_NAME).read_text())
    sent = {json.loads(k)[0] for k, v in state["incidents"].items() if v["sent"]}
    assert sent == {"a", "b", "c"}
    outbox = runs / ".tunescope" / "alerts-outbox.jsonl"
    entries = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert sorted(e["item"]["alert"]["finding"]["run"] for e in entries) == ["a", "b", "c"]
    assert rx.url not in outbox.read_text()


def test_cli_bad_webhook_url_is_refused_without_printing_it(runs):
    for url in ("http://127.0.0.1:9/services/T000/B000/SECRETTOKEN x",
                "http://127.0.0.1:9/services/T000/B000/SECRETTOKEN\r"):  # fmt: skip
        proc = subprocess.run(
            watch_args(runs, url, "--once"),
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert "whitespace or control characters" in proc.stderr
        assert "SECRETTOKEN" not in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr


def test_a_failed_analysis_is_retried_on_the_next_poll(runs):
    calls = []

    def flaky(store, **kw):
        calls.append(kw["run_ids"])
        if len(calls) == 1:
            raise RuntimeError("detector bug")
        return nan_analyze(store, **kw)

    log = LogLines()
    with EventWriter(runs / "a") as w:
        write(w, {1: 2.0, 2: NAN})
        store = Store(runs, runs / ".tunescope")
        watcher = Watcher(store, None, detect=flaky, log=log, interval=0.01)
        stop = threading.Event()
        # The first poll's error is not a TunescopeError: reported, and the watch goes on.
        t = threading.Thread(target=watcher.run, args=(stop,))
        t.start()
        deadline = time.monotonic() + 20
        while watcher.queued == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        t.join(20)
    assert watcher.queued == 1
    assert calls[0] == calls[1] == ["a"]
    assert any("poll failed (RuntimeError: detector bug)" in line for line in log)


def test_outbox_is_retried_periodically_while_watching(runs):
    with Receiver(statuses=[503]) as rx, EventWriter(runs / "a") as w:
        write(w, {1: 2.0, 2: NAN})
        box = runs / ".tunescope" / "alerts-outbox.jsonl"
        sender = AlertSender(
            [rx.url], format="json", policy=RetryPolicy(retries=0), outbox=box, log=LogLines()
        )
        watcher = make_watcher(runs, sender, interval=0.05, outbox_retry_s=0.2)
        stop = threading.Event()
        t = threading.Thread(target=watcher.run, args=(stop,))
        t.start()
        got = rx.wait_for(2, timeout=20)
        stop.set()
        t.join(20)
        sender.close()
    assert rx.answered == [503, 200]
    assert got[0].json()["id"] == got[1].json()["id"]
    assert not box.exists()


def test_cli_watch_without_a_webhook_prints_alerts(runs):
    with EventWriter(runs / "a") as w:
        write(w, {1: 2.0, 2: float("nan")})
    args = [*tunescope_cmd(), "watch", str(runs), "--once", "--include-finished",
            "--analyzer", "watch_analyzers:nan_analyze"]  # fmt: skip
    r = subprocess.run(args, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "watching" in r.stderr and "printed here (no --webhook)" in r.stderr
    assert "Ctrl-C" not in r.stderr  # --once stops by itself
    assert "alert: new" in r.stderr and "stopped: 1 alert raised" in r.stderr


def test_include_finished_sends_what_an_earlier_once_only_baselined(runs):
    with EventWriter(runs / "old") as w:
        write(w, {1: 2.0, 2: NAN})
        w.run_end("failed")
    time.sleep(1.2)  # ended before the first watch's state exists
    with Receiver() as rx:
        first = subprocess.run(
            watch_args(runs, rx.url, "--once"), env=cli_env(), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert "--include-finished sends them" in first.stderr
        assert rx.requests == []
        again = subprocess.run(
            watch_args(runs, rx.url, "--once", "--include-finished"), env=cli_env(),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        (req,) = rx.wait_for(1)
        body = req.json()
        assert body["finding"]["run"] == "old" and body["reason"] == "new"
        third = subprocess.run(
            watch_args(runs, rx.url, "--once", "--include-finished"), env=cli_env(),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert third.returncode == 0, third.stderr
        time.sleep(0.3)
        assert len(rx.requests) == 1  # sent once, not again


def test_cli_watch_once_exits_1_when_a_delivery_failed(runs):
    with Receiver(statuses=[400]) as rx, EventWriter(runs / "a") as w:
        write(w, {1: 2.0, 2: float("nan")})
        r = subprocess.run(
            watch_args(runs, rx.url, "--once", "--include-finished"),
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1, r.stderr
    assert "1 rejected" in r.stderr and "Traceback" not in r.stderr


def test_report_url_rides_in_every_payload(runs):
    from tunescope.alerts import build_payload

    template = "https://reports.example.org/{run}.html#{detector}-{step}"
    with Receiver() as rx, EventWriter(runs / "team a", rank=0) as w:
        sender = AlertSender([rx.url], format="json", policy=FAST, log=LogLines())
        watcher = make_watcher(runs, sender, rate_limit=0, report_url=template)
        write(w, {1: 2.0, 2: NAN})
        (alert,) = watcher.poll()
        (req,) = rx.wait_for(1)
        sender.close()
    link = "https://reports.example.org/team%20a.html#NAN1-2"
    assert req.json()["run"]["report_url"] == link  # delivered, over real HTTP
    assert f"report: {link}" in json.dumps(build_payload(alert, "slack"))
    assert f"report: {link}" in json.dumps(build_payload(alert, "feishu"))
    assert f"report: {link}" in build_payload(alert, "dingtalk")["markdown"]["text"]
    with pytest.raises(UsageError, match="unknown placeholder"):
        make_watcher(runs, None, report_url="https://x/{rank}.html")
