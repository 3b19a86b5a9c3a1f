"""Alerts sent by the training process itself (TunescopeCallback(webhook=...)),
to a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest
from train_helpers import tiny_config
from webhook_receiver import Receiver, closed_port_url

from tunescope.alerts import AlertSender, Outbox, RetryPolicy
from tunescope.detectors import divergence
from tunescope.train.live_alerts import TrainingAlerts
from tunescope.train.live_frames import LiveFrames

FAST = RetryPolicy(timeout=2.0, retries=2, backoff=0.05, max_backoff=0.1)


class LogLines(list):
    def __call__(self, message: str) -> None:
        self.append(message)


def test_a_nan_in_training_alerts_the_webhook_once_and_the_token_stays_out_of_the_log(tmp_path):
    from tunescope.train.trainer import train

    with Receiver() as rx:
        url = rx.url + "/T000/SECRETTOKEN"
        run = tmp_path / "nan-run"
        assert train(tiny_config(run, max_steps=10, inject=["nan@6"], webhook=url)) == 0
        (req,) = rx.wait_for(1, timeout=10)
        rx.wait_for(2, timeout=1)  # nothing more: one alert per incident
        assert len(rx.requests) == 1
    body = req.json()
    assert body["finding"]["detector"] == "TS001"  # an id that `tunescope explain` knows
    assert body["finding"]["step_start"] == 6 and body["finding"]["severity"] == "error"
    assert "NaN" in body["finding"]["message"]
    log = (run / "events" / "rank-0.jsonl").read_text()
    start = json.loads(log.splitlines()[0])
    assert start["kind"] == "run_start"
    assert start["config"]["webhook"] == f"http://127.0.0.1:{rx.port}/…"
    assert "SECRETTOKEN" not in log
    assert "SECRETTOKEN" not in (run / "config.json").read_text()


def test_a_guard_skip_is_alerted_next_to_the_nan(tmp_path):
    from tunescope.train.trainer import train

    with Receiver() as rx:
        run = tmp_path / "nan-skip"
        cfg = tiny_config(run, max_steps=10, inject=["nan@6"], webhook=rx.url, guard="skip")
        assert train(cfg) == 0
        rx.wait_for(2, timeout=10)
    found = sorted(
        (r.json()["finding"]["detector"], r.json()["finding"]["step_start"]) for r in rx.requests
    )
    assert found == [("TS001", 6), ("guard-skip", 6)]
    (skip,) = [r.json() for r in rx.requests if r.json()["finding"]["detector"] == "guard-skip"]
    assert "skip at step 6 (TS001" in skip["finding"]["message"]


# ---- TrainingAlerts on its own: the detectors judge -----------------------------------


def test_a_non_finite_value_is_judged_by_ts001_at_once_and_alerted_once_per_rank():
    with Receiver() as rx:
        sender = AlertSender([rx.url], format="json", policy=FAST, log=LogLines())
        checks = TrainingAlerts(sender, check_every=1000)
        fired = [checks.on_step("r", 0, s, loss=2.0, grad_norm=1.0) for s in range(1, 5)]
        fired.append(checks.on_step("r", 0, 5, loss=float("nan"), grad_norm=float("inf")))
        fired += [checks.on_step("r", 0, s, loss=float("nan")) for s in range(6, 10)]
        # Another rank is its own incident.
        fired.append(checks.on_step("r", 1, 9, loss=2.0, grad_norm=float("nan")))
        got = rx.wait_for(2)
        sender.close()
    sent = [f for f in fired if f is not None]
    assert [(f.rank, f.detector, f.step_start, f.severity.value) for f in sent] == [
        (0, "TS001", 5, "error"),
        (1, "TS001", 9, "error"),
    ]
    # TS001's own words (what `tunescope analyze` says of the same log), not a copy
    assert "loss NaN from step 5" in sent[0].message and "grad_norm" in sent[0].message
    assert sent[0].suggestion.startswith("Restart from the last checkpoint")
    assert len(got) == 2
    assert {r.json()["finding"]["rank"] for r in got} == {0, 1}
    # a NaN loss that stays is TS102's hard rule too, but TS001 covers it (one incident)
    assert all(f.detector == "TS001" for f in sent)


def rising(n_flat: int = 60, n_high: int = 40) -> list[float]:
    """A loss that settles, then jumps to 5x its first level and stays there."""
    return [2.0 - 0.01 * i for i in range(n_flat)] + [10.0] * n_high


def test_divergence_is_ts102s_verdict_at_the_check_cadence():
    checks = TrainingAlerts(None, start={"warmup_steps": 5}, check_every=10)
    out = [checks.on_step("r", 0, s, loss=v, lr=1e-4) for s, v in enumerate(rising(), 1)]
    fired = [(s, f) for s, f in enumerate(out, 1) if f is not None]
    assert len(fired) == 1
    step, f = fired[0]
    assert f.detector == "TS102" and f.severity.value == "error" and f.rank == 0
    # the same verdict as the detector's run over the same records, at that step
    cols = {"step": list(range(1, step + 1)), "ts": [float(s) for s in range(1, step + 1)]}
    cols["loss"], cols["lr"] = rising()[:step], [1e-4] * step
    (expected,) = divergence.run(
        LiveFrames("r", 0, cols, {"warmup_steps": 5}), divergence.Options()
    )
    assert (f.step_start, f.message) == (expected.step_start, expected.message)
    assert step % 10 == 1 and step > 61  # found at a check, not on every step
    assert checks.checks <= len(out) // 10 + 1


def test_the_thresholds_are_the_configuration_files(tmp_path):
    """The options come from the file `tunescope analyze` reads for the run."""
    (tmp_path / "tunescope.toml").write_text("[TS102]\nrise-factor = 8.0\nstay-factor = 6.0\n")
    checks = TrainingAlerts(None, run_dir=tmp_path)
    opts = {d: o for d, _, o, _ in checks.detectors}
    assert (opts["TS102"].rise_factor, opts["TS102"].stay_factor) == (8.0, 6.0)
    assert opts["TS001"] == TrainingAlerts(None).detectors[0][2]  # the defaults elsewhere


def test_training_alerts_validates_options():
    with pytest.raises(ValueError):
        TrainingAlerts(None, check_every=0)


def test_training_alerts_for_webhook_never_blocks_a_step(tmp_path):
    """The trainer-side path with a dead endpoint: steps never wait on it, and
    the undeliverable alert lands in the outbox at close."""
    box = tmp_path / "run" / ".tunescope" / "alerts-outbox.jsonl"
    checks = TrainingAlerts.for_webhook(
        closed_port_url(),
        format="json",
        secret="",
        outbox=box,
        policy=RetryPolicy(timeout=0.5, retries=5, backoff=0.2),
        start={"warmup_steps": 5},
    )
    checks.sender._log_fn = LogLines()
    durations = []
    for step in range(1, 2001):
        loss = float("nan") if step == 1000 else 2.0
        t0 = time.perf_counter()
        checks.on_step("run", 0, step, loss=loss, grad_norm=1.0, lr=1e-4)
        durations.append(time.perf_counter() - t0)
    # Sending on the step would take >= 0.5 s (the timeout) times six attempts.
    assert durations[999] < 0.25, f"the NaN step took {durations[999]:.3f}s"
    assert sorted(durations)[1000] < 1e-3  # the median step: microseconds
    assert checks.close(timeout=0.2) == 1
    (entry,) = Outbox(box).entries()
    assert entry["item"]["alert"]["finding"]["step_start"] == 1000
