"""The real examples in ``fixtures/real`` read as their trainers meant them:
console output (DeepSpeed's HF dicts, Megatron iterations, ms-swift), a
Lightning CSV, home-made JSONL and nested JSON records; every run dir has loss
rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_rows import one, open_store, rows, span, start_payload, status

from tunescope.ingest.store.database import Store
from tunescope.report.scoring import LOSS_POINTS

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"


# ---- the real examples ---------------------------------------------------------------


@pytest.fixture(scope="module")
def real_store(tmp_path_factory) -> Store:
    return open_store(REAL, tmp_path_factory.mktemp("real"))


def test_deepspeed_hf_dicts_without_steps(real_store):
    # 99 {'loss': ...} lines with epoch only: steps from their order
    assert span(real_store, "cn-mini-phi3-deepspeed") == (99, 1, 99, 10.5, 4.2)
    start = start_payload(real_store, "cn-mini-phi3-deepspeed")
    assert start["steps_inferred"] is True and start["steps_from"] == "order"
    assert start["format"] == "console" and start["family"] == "dicts"
    assert status(real_store, "cn-mini-phi3-deepspeed") == "completed"  # the summary dict
    assert one(
        real_store,
        "SELECT value FROM metrics WHERE run_id = 'cn-mini-phi3-deepspeed' AND name = 'train_runtime'",
    ) == pytest.approx(14003.7762)
    grad = one(
        real_store,
        "SELECT grad_norm FROM steps WHERE run_id = 'cn-mini-phi3-deepspeed' AND step = 1",
    )
    assert grad == pytest.approx(1.1915092468261719)


def test_megatron_iterations(real_store):
    n, lo, hi, first, last = span(real_store, "megatron-gpt2-finetune")
    assert (n, lo, hi) == (5800, 1, 5800)
    assert first == pytest.approx(3.010825) and last == pytest.approx(2.496638)
    times = dict(
        rows(
            real_store,
            "SELECT step // 400, median(step_time_s) FROM steps "
            "WHERE run_id = 'megatron-gpt2-finetune' GROUP BY 1",
        )
    )
    assert 0.5 < times[1] < 0.7  # ~600 ms per iteration
    assert 1.2 < times[3] < 1.4  # then ~1,300 ms: the throughput drop TS302 must see
    names = {
        r[0]
        for r in rows(
            real_store, "SELECT DISTINCT name FROM metrics WHERE run_id = 'megatron-gpt2-finetune'"
        )
    }
    assert {"skipped_iterations", "nan_iterations", "loss_scale", "consumed_samples"} <= names
    mem = rows(
        real_store,
        "SELECT mem_allocated_mb, mem_peak_mb, mem_reserved_mb, loss FROM steps "
        "WHERE run_id = 'megatron-gpt2-finetune' AND rank = 0 AND step = 1",
    )[0]
    assert mem == pytest.approx((7024.908203125, 17050.5205078125, 17548.0, 3.010825))
    start = start_payload(real_store, "megatron-gpt2-finetune")
    assert start["total_steps"] == 500000 and start["logging_steps"] == 1
    # iteration 5,800 of 500,000 with no end and no clock: not "running"
    assert status(real_store, "megatron-gpt2-finetune") == "interrupted"


def test_swift_console_with_string_values(real_store):
    assert span(real_store, "msswift-qwen35-mm-console") == (20, 1, 20, 2.479, 0.002807)
    start = start_payload(real_store, "msswift-qwen35-mm-console")
    assert start["total_steps"] == 20 and start["steps_from"] == "log"
    assert status(real_store, "msswift-qwen35-mm-console") == "completed"
    mem, st = rows(
        real_store,
        "SELECT mem_peak_mb, step_time_s FROM steps "
        "WHERE run_id = 'msswift-qwen35-mm-console' AND step = 2",
    )[0]
    assert mem == pytest.approx(5.73 * 1024, rel=0.01)
    assert st is not None and 5 < st < 30


def test_lightning_csv(real_store):
    n, lo, hi, first, last = span(real_store, "turngpt-gpt2")
    assert (n, lo, hi) == (50, 49, 2499)
    assert first == pytest.approx(2.369102716445923) and last == pytest.approx(2.243922710418701)
    start = start_payload(real_store, "turngpt-gpt2")
    assert start["variant"] == "lightning" and start["logging_steps"] == 50


def test_custom_jsonl(real_store):
    n, lo, hi, first, _ = span(real_store, "lora-medqa")
    assert (n, lo, hi) == (77, 10, 770) and first == pytest.approx(2.0655645370483398)
    assert status(real_store, "lora-medqa") == "completed"  # the summary line at step 778
    evals = rows(
        real_store,
        "SELECT step FROM metrics WHERE run_id = 'lora-medqa' AND name = 'eval_loss' ORDER BY 1",
    )
    assert evals[-1] == (778,)


def test_nested_json_records(real_store):
    n, lo, hi, first, last = span(real_store, "peft-bench-unilora")
    assert (n, lo, hi) == (20, 250, 5000)
    assert first == pytest.approx(1.3267874200344085) and last == pytest.approx(1.3412508049011231)
    acc = rows(
        real_store,
        "SELECT count(*) FROM metrics WHERE run_id = 'peft-bench-unilora' "
        "AND name = 'valid accuracy' AND value = 0",
    )[0][0]
    assert acc == 19
    assert start_payload(real_store, "peft-bench-unilora")["records_at"] == "train_info.metrics"
    assert status(real_store, "peft-bench-unilora") == "completed"


def test_every_real_run_dir_has_loss_rows(real_store):
    """Every run dir labelled readable has loss rows and none labelled
    ``expect_read: false`` has; the only problems reported are on files that
    hold no loss at all (``has_loss: false``: reported, never silently empty)."""
    labels = json.loads((REAL / "LABELS.json").read_text())["runs"]
    readable = {k for k, v in labels.items() if v.get("expect_read", True)}
    read = {r[0] for r in rows(real_store, LOSS_POINTS) if r[1]}
    # TensorBoard runs sit one folder down (runs/<date>_<host>); W&B ones in files/
    read = {r.split("/")[0] for r in read}
    assert readable <= read
    assert not (set(labels) - readable) & read, "read now: set expect_read to true"
    no_loss = {k for k, v in labels.items() if v.get("has_loss") is False}
    for problem in real_store.last_report.problems:
        run = Path(problem.path).resolve().relative_to(REAL).parts[0]
        assert run in no_loss, str(problem)
