"""Alerts sent by the training process itself (TunescopeCallback(webhook=...)),
to a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json

from train_helpers import tiny_config
from webhook_receiver import Receiver


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
