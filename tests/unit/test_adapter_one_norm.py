"""TS201 on a run that logs the gradient norm of one LoRA matrix only.

A callback may log ``grad_norm_lora_A`` without ``grad_norm_lora_B`` (or the
other way round); the detector then judges the one it has instead of failing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunescope.detectors import adapter_grads
from tunescope.detectors.base import Context
from tunescope.ingest.store.database import Store


def write_run(root: Path, norm_key: str, norm: float) -> None:
    """120 steps of a LoRA run whose only adapter norm is ``norm_key``."""
    events = root / "one-norm" / "events"
    events.mkdir(parents=True)
    head = {"v": 1, "run": "one-norm", "rank": 0}
    start = dict(head, kind="run_start", step=0, ts=1.0, world_size=1)
    start.update(finetuning_type="lora", trainable_params=4_000_000)
    lines = [start]
    for step in range(1, 121):
        row = dict(head, kind="step", step=step, ts=1.0 + step, lr=1e-4, grad_norm=0.5)
        lines.append(dict(row, loss=2.0 - step * 0.001, **{norm_key: norm}))
    text = "".join(json.dumps(e) + "\n" for e in lines)
    (events / "rank-0.jsonl").write_text(text, encoding="utf-8")


@pytest.mark.parametrize("norm_key", [adapter_grads.LORA_A, adapter_grads.LORA_B])
def test_one_lora_norm_is_judged_alone(tmp_path, norm_key):
    write_run(tmp_path / "runs", norm_key, 0.0)
    store = Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache")
    try:
        found = adapter_grads.run(Context(store), adapter_grads.Options())
    finally:
        store.close()
    # zero on every step while the loss falls: a norm that was never measured
    got = [(f.severity.value, f.evidence["kind"], f.evidence["series"]) for f in found]
    assert got == [("info", "not_measured", "lora_A/B")]


def test_one_healthy_lora_norm_is_quiet(tmp_path):
    write_run(tmp_path / "runs", adapter_grads.LORA_A, 0.3)
    store = Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache")
    try:
        found = adapter_grads.run(Context(store), adapter_grads.Options())
    finally:
        store.close()
    assert [f for f in found if f.severity.value != "info"] == []
