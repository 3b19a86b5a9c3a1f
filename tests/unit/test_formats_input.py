"""Foreign-format readers on awkward input: schema variants, growing files,
truncated files, garbage bytes and wrong types. Nothing crashes, no good
row is lost, and every problem names the file and the line (or byte)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from wandb_file import field as _field
from wandb_file import history as _history
from wandb_file import item as _item
from wandb_file import wandb_file as _wandb_file

from tunescope.ingest.readers.hf_state import HFStateReader
from tunescope.ingest.readers.llamafactory import LlamaFactoryReader
from tunescope.ingest.readers.mlflow_store import MLflowFileReader
from tunescope.ingest.readers.swift import SwiftReader
from tunescope.ingest.readers.tensorboard import TensorBoardReader, read_scalars
from tunescope.ingest.readers.wandb_offline import WandbOfflineReader
from tunescope.ingest.store.database import Store

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "fixtures" / "formats"
REAL = REPO / "fixtures" / "real"  # real public logs, provenance in its PROVENANCE.md
WANDB = REAL / "alpaca-llama7b-fsdp-wandb" / "run-5hx57wy1.wandb"


def lines(*objs) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def events(result, kind):
    return [
        (s, json.loads(p))
        for s, k, p in zip(
            result.events["step"].to_pylist(),
            result.events["kind"].to_pylist(),
            result.events["payload"].to_pylist(),
            strict=True,
        )
        if k == kind
    ]


def metric_values(result, name):
    return [
        v
        for n, v in zip(
            result.metrics["name"].to_pylist(), result.metrics["value"].to_pylist(), strict=True
        )
        if n == name
    ]


def col(result, name):
    return result.steps[name].to_pylist()


# ---- ms-swift ---------------------------------------------------------------------


def test_swift_current_schema(tmp_path):
    log = tmp_path / "logging.jsonl"
    log.write_text(
        lines(
            {
                "loss": 2.0,
                "token_acc": 0.5,
                "grad_norm": 1.5,
                "learning_rate": 1e-5,
                "epoch": 0.1,
                "global_step/max_steps": "1/20",
                "percentage": "5.00%",
                "elapsed_time": "30s",
                "remaining_time": "9m 30s",
                "memory(GiB)": 10.5,
                "train_speed(s/it)": 30.0,
            },
            {
                "loss": 1.5,
                "grad_norm": 1.2,
                "learning_rate": 2e-5,
                "epoch": 0.5,
                "global_step/max_steps": "10/20",
                "elapsed_time": "1m 30s",
                "memory(GiB)": 11.0,
                "train_speed(s/it)": 9.0,
            },
            {
                "eval_loss": 1.4,
                "eval_token_acc": 0.6,
                "epoch": 0.5,
                "global_step/max_steps": "10/20",
            },
            {
                "loss": 1.2,
                "grad_norm": 1.0,
                "learning_rate": 1e-5,
                "epoch": 1.0,
                "global_step/max_steps": "20/20",
                "elapsed_time": "2m 30s",
                "memory(GiB)": 11.0,
                "train_speed(s/it)": 7.5,
            },
            {
                "train_runtime": 150.0,
                "train_samples_per_second": 1.0,
                "train_steps_per_second": 0.13,
                "train_loss": 1.5,
                "epoch": 1.0,
                "global_step/max_steps": "20/20",
            },
            {
                "last_model_checkpoint": "/out/checkpoint-20",
                "best_model_checkpoint": None,
                "best_metric": None,
                "global_step": 20,
                "log_history": [{"loss": 2.0, "step": 1}, {"loss": 1.5, "step": 10}],
                "memory": 11.0,
            },
        )
    )
    r = SwiftReader().read(log, None)
    assert col(r, "step") == [1, 10, 20]  # log_history is not read again
    assert col(r, "mem_peak_mb") == [10.5 * 1024, 11.0 * 1024, 11.0 * 1024]
    assert col(r, "step_time_s") == [None, pytest.approx(60 / 9), pytest.approx(6.0)]
    ends = events(r, "run_end")
    assert len(ends) == 1 and ends[0][1]["status"] == "completed"
    (start,) = events(r, "run_start")
    assert start[1]["total_steps"] == 20 and start[1]["variant"] == "trainer"
    names = set(r.metrics["name"].to_pylist())
    assert {"eval_loss", "eval_token_acc", "token_acc", "train_runtime"} <= names
    assert "percentage" not in names and "memory(GiB)" not in names
    assert r.problems == []


def test_swift_megatron_iteration_and_iter_per_s(tmp_path):
    log = tmp_path / "logging.jsonl"
    log.write_text(
        lines(
            {
                "loss": 3.0,
                "grad_norm": 2.0,
                "learning_rate": 1e-5,
                "iteration": "5/100",
                "memory(GiB)": 40,
                "train_speed(iter/s)": 0.5,
            },
            {
                "loss": 2.5,
                "grad_norm": 2.0,
                "learning_rate": 1e-5,
                "iteration": "10/100",
                "memory(GiB)": 40,
                "train_speed(iter/s)": 0.25,
            },
            {
                "loss": 2.0,
                "grad_norm": 2.0,
                "learning_rate": 1e-5,
                "iteration": "15/100",
                "memory(GiB)": 40,
                "train_speed(iter/s)": 0.25,
            },
        )
    )
    r = SwiftReader().read(log, None)
    assert col(r, "step") == [5, 10, 15]
    assert col(r, "step_time_s") == [
        None,
        pytest.approx((40 - 10) / 5),
        pytest.approx((60 - 40) / 5),
    ]
    (start,) = events(r, "run_start")
    assert start[1]["variant"] == "megatron" and start[1]["logging_steps"] == 5
    assert start[1]["total_steps"] == 100


def test_swift_bad_lines_cost_nothing_else(tmp_path):
    log = tmp_path / "logging.jsonl"
    good = {"loss": 1.0, "global_step/max_steps": "1/3"}
    log.write_bytes(
        (
            lines(good)
            + "{not json\n"
            + '["a list"]\n'
            + lines({"loss": 1.0, "global_step/max_steps": "x/3"})
            + "\xff\xfe garbage\n"
            + lines({"loss": float("nan"), "global_step/max_steps": "2/3"})
        ).encode("utf-8", errors="surrogateescape")
    )
    r = SwiftReader().read(log, None)
    assert col(r, "step") == [1, 2]
    assert math.isnan(col(r, "loss")[1])
    assert [p.line for p in r.problems] == [2, 3, 4, 5]
    assert all(p.path == str(log) for p in r.problems)


# ---- LLaMA-Factory -----------------------------------------------------------------


def test_llamafactory_v1_schema_and_incremental_appends(tmp_path):
    log = tmp_path / "trainer_log.jsonl"
    rows = [
        {
            "epoch": 0.1,
            "step": s,
            "loss": 1.0 / s,
            "grad_norm": 0.5,
            "learning_rate": 1e-4,
            "total_steps": 8,
            "rewards/chosen": 0.1 * s,
        }
        for s in (2, 4, 6, 8)
    ]
    log.write_text(lines(*rows[:2]) + json.dumps(rows[2])[:20])  # third line half-written
    reader = LlamaFactoryReader()
    first = reader.read(log, None)
    assert col(first, "step") == [2, 4]
    assert col(first, "grad_norm") == [0.5, 0.5]
    (start,) = events(first, "run_start")
    assert start[1]["schema"] == "v1" and start[1]["logging_steps"] == 2
    with open(log, "w") as f:
        f.write(lines(*rows))
    second = reader.read(log, first.state)
    assert col(second, "step") == [6, 8] and not second.replace
    assert events(second, "run_start") == []
    assert metric_values(second, "rewards/chosen") == [pytest.approx(0.6), pytest.approx(0.8)]
    assert second.problems == []


def test_llamafactory_eval_progress_rows_are_not_steps(tmp_path):
    log = tmp_path / "trainer_log.jsonl"
    log.write_text(
        lines(
            {
                "current_steps": 5,
                "total_steps": 10,
                "loss": 2.0,
                "lr": 1e-4,
                "epoch": 0.5,
                "percentage": 50.0,
                "elapsed_time": "0:00:10",
                "remaining_time": "0:00:10",
                "throughput": "1000.00",
                "total_tokens": 5000,
                "vram_allocated": 2.0,
                "vram_reserved": 3.0,
            },
            {"current_steps": 5, "total_steps": 40, "percentage": 12.5, "elapsed_time": "0:00:11"},
            {"current_steps": 5, "total_steps": 10, "eval_loss": 1.9, "epoch": 0.5},
            {
                "current_steps": 10,
                "total_steps": 10,
                "loss": 1.5,
                "lr": 0.0,
                "epoch": 1.0,
                "elapsed_time": "0:00:25",
                "total_tokens": 10000,
            },
            {
                "current_steps": 10,
                "total_steps": 10,
                "epoch": 1.0,
                "percentage": 100.0,
                "elapsed_time": "0:00:25",
            },
        )
    )
    r = LlamaFactoryReader().read(log, None)
    assert col(r, "step") == [5, 10]
    assert col(r, "mem_allocated_mb") == [2048.0, None]
    assert col(r, "mem_reserved_mb") == [3072.0, None]
    assert col(r, "tokens") == [None, 1000.0]
    assert col(r, "step_time_s") == [None, 3.0]
    assert [s for s, _ in events(r, "eval")] == [5]
    assert [(s, p["status"]) for s, p in events(r, "run_end")] == [(10, "completed")]
    throughput = metric_values(r, "throughput")
    assert throughput == [1000.0]


def test_llamafactory_joined_with_a_state_file_that_arrives_later(tmp_path):
    src = REAL / "nsllm-qwen-fullft"
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(src / "trainer_log.jsonl", run)
    store = Store.open(tmp_path, cache_dir=tmp_path / "cache")
    assert store.query("SELECT count(grad_norm) AS n FROM steps").column("n")[0].as_py() == 0
    shutil.copy(src / "trainer_state.json", run)  # save_state() at the end of training
    store.ingest()
    got = (
        store.cursor()
        .execute("SELECT count(*), count(grad_norm), count(step_time_s) FROM steps")
        .fetchone()
    )
    assert got == (435, 435, 434)
    assert (
        store.cursor().execute("SELECT format FROM runs").fetchone()[0]
        == "hf_trainer_state,llamafactory"
    )
    assert (
        store.cursor().execute("SELECT count(*) FROM events WHERE kind = 'run_start'").fetchone()[0]
        == 1
    )


# ---- HF trainer_state.json ------------------------------------------------------------


def test_truncated_trainer_state_keeps_the_rows_before_the_cut(tmp_path):
    text = (FIX / "hf-nan" / "checkpoint-10" / "trainer_state.json").read_text()
    cut = text.index('"step": 8')  # inside the 8th history entry
    out = tmp_path / "out"
    out.mkdir()
    (out / "trainer_state.json").write_text(text[:cut])
    r = HFStateReader().read(out / "trainer_state.json", None)
    assert col(r, "step") == [1, 2, 3, 4, 5, 6, 7]
    assert math.isnan(col(r, "loss")[6])
    (problem,) = r.problems
    assert problem.path.endswith("trainer_state.json") and problem.line is not None
    assert "damaged JSON" in problem.reason


def test_trainer_state_wrong_types_are_reported_by_line(tmp_path):
    state = {
        "global_step": 3,
        "logging_steps": 1,
        "max_steps": 3,
        "log_history": [
            {"loss": 1.0, "step": 1},
            "not an entry",
            {"loss": 1.0, "step": "two"},
            {"loss": "NaN", "grad_norm": float("inf"), "learning_rate": 1e-4, "step": 3},
        ],
    }
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps(state, indent=2, sort_keys=True))
    assert "Infinity" in path.read_text()
    r = HFStateReader().read(path, None)
    assert col(r, "step") == [1, 3]
    assert math.isnan(col(r, "loss")[1]) and col(r, "grad_norm")[1] == math.inf
    text = path.read_text().splitlines()
    for p in r.problems:
        assert p.line is not None and text[p.line - 1].strip() in ('"not an entry",', "{")
    assert len(r.problems) == 2


def test_trainer_state_garbage_file_is_a_problem_not_a_crash(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_bytes(b"\x00\xff garbage \x89PNG")
    r = HFStateReader().read(path, None)
    assert r.steps.num_rows == 0 and len(r.problems) == 1


# ---- TensorBoard ---------------------------------------------------------------------


def _tb_file() -> Path:
    return next((FIX / "hf-trainer" / "runs" / "tb").glob("events.out.tfevents.*"))


def test_tensorboard_appends_and_cut_records(tmp_path):
    data = _tb_file().read_bytes()
    path = tmp_path / "events.out.tfevents.1.host"
    reader = TensorBoardReader()
    whole = reader.read(_tb_file(), None)
    state = None
    got_steps: dict[int, dict] = {}
    got_metrics = 0
    for cut in (len(data) // 3 + 5, 2 * len(data) // 3 + 3, len(data)):  # mid-record cuts
        path.write_bytes(data[:cut])
        r = reader.read(path, state)
        state = r.state
        assert r.problems == []
        for row in r.steps.to_pylist():  # a re-emitted step supersedes, as in the store
            got_steps[row["step"]] = row
        got_metrics += r.metrics.num_rows
    assert state["offset"] == len(data)
    assert sorted(got_steps) == whole.steps["step"].to_pylist()
    assert [got_steps[s]["loss"] for s in sorted(got_steps)] == col(whole, "loss")
    assert [got_steps[s]["epoch"] for s in sorted(got_steps)] == col(whole, "epoch")
    assert got_metrics == whole.metrics.num_rows


def test_tensorboard_garbage_is_reported_with_its_byte_offset(tmp_path):
    data = _tb_file().read_bytes()
    path = tmp_path / "events.out.tfevents.2.host"
    path.write_bytes(data + b"\xde\xad\xbe\xef" * 8)
    r = TensorBoardReader().read(path, None)
    assert r.steps.num_rows == 6
    (problem,) = r.problems
    assert f"byte {len(data)}" in problem.reason
    # a flipped byte inside a loss value: caught by the optional CRC check
    bad = bytearray(data)
    at = data.index(b"train/loss") + len(b"train/loss") + 2
    bad[at] ^= 0xFF
    path.write_bytes(bytes(bad))
    clean = read_scalars(_tb_file())
    assert len(read_scalars(path)) == len(clean)  # unchecked: read as it is
    assert len(read_scalars(path, verify=True)) == len(clean) - 1
    r = TensorBoardReader(verify_crc=True).read(path, None)
    assert any("CRC mismatch" in p.reason for p in r.problems)


# ---- W&B offline ---------------------------------------------------------------------


def test_wandb_growing_file_reads_only_whole_records(tmp_path):
    data = WANDB.read_bytes()
    path = tmp_path / "run-abc.wandb"
    reader = WandbOfflineReader()
    state = None
    steps: dict[int, dict] = {}
    for cut in (40_000, 90_001, 130_017, len(data)):
        path.write_bytes(data[:cut])
        r = reader.read(path, state)
        state = r.state
        assert r.problems == [], r.problems
        for row in r.steps.to_pylist():
            steps[row["step"]] = row
    assert len(steps) == 39
    whole = reader.read(WANDB, None)
    assert [steps[s]["loss"] for s in sorted(steps)] == col(whole, "loss")


def test_wandb_damaged_block_is_skipped_with_its_offset(tmp_path):
    data = bytearray(WANDB.read_bytes())
    data[40_000] ^= 0xFF  # inside the second block
    path = tmp_path / "run-abc.wandb"
    path.write_bytes(bytes(data))
    r = WandbOfflineReader().read(path, None)
    assert r.problems and all("byte" in p.reason for p in r.problems)
    whole = WandbOfflineReader().read(WANDB, None)
    assert 0 < r.steps.num_rows <= whole.steps.num_rows
    assert r.steps.num_rows >= whole.steps.num_rows - 10  # only the damaged block's rows


def test_wandb_not_a_wandb_file(tmp_path):
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"hello world, not a run")
    assert not WandbOfflineReader().detect(path)
    r = WandbOfflineReader().read(path, None)
    assert r.steps.num_rows == 0 and r.problems


# ---- MLflow --------------------------------------------------------------------------


def test_mlflow_metric_line_variants_and_bad_lines(tmp_path):
    src = next(
        p.parent
        for p in (FIX / "mlruns").rglob("mlflow.runName")
        if p.read_text().strip() == "qwen-lora-r16"
    ).parent
    run = tmp_path / "mlruns" / "1" / src.name
    shutil.copytree(src, run)
    shutil.rmtree(run / "metrics" / "train")  # train/loss would also be the loss
    (run / "metrics" / "loss").write_text(
        "1795337984275 2.0 1\n"  # 3 fields
        "1795337984276 1.5\n"  # 2 fields: step 0
        "1795337984277 1.0 3 train abc123\n"  # 5 fields
        "garbage line here too many fields x\n"
        "1795337984278 nan 4\n"
    )
    r = MLflowFileReader().read(run / "meta.yaml", None)
    loss = dict(zip(col(r, "step"), col(r, "loss"), strict=True))
    assert loss[0] == 1.5 and loss[1] == 2.0 and loss[3] == 1.0 and math.isnan(loss[4])
    (problem,) = r.problems
    assert problem.line == 4 and problem.path.endswith("metrics/loss")


# ---- W&B records built by hand (what the real file does not show) ------------------


def test_wandb_nan_nested_keys_long_records_and_exit(tmp_path):
    config = _field(
        5,
        b"".join(
            _field(1, _item(k, v))
            for k, v in {"logging_steps": '{"value": 2}', "max_steps": "6"}.items()
        ),
    )
    run = _field(17, _field(1, b"abc123") + _field(3, b"proj") + _field(8, b"my-run"))
    rows = [
        _history(
            {"_step": "0", "train/global_step": "2", "train/loss": "2.0", "_timestamp": "100.0"}
        ),
        _history(
            {
                "_step": "1",
                "train/global_step": "4",
                "train/loss": "NaN",
                "train/grad_norm": "Infinity",
                "_timestamp": "104.0",
            }
        ),
        _history(
            {
                "_step": "2",
                "train/global_step": "4",
                "eval/loss": "1.5",
                "train/epoch": "0.5",
                "_timestamp": "105.0",
            }
        ),
        # a record longer than a block: split into FIRST / MIDDLE / LAST chunks
        _history(
            {
                "_step": "3",
                "train/global_step": "6",
                "train/loss": "1.0",
                ("gpu", "stats"): "7.5",
                "big": json.dumps("x" * 70000),
                "_timestamp": "110.0",
            }
        ),
        _field(18, _field(1, 1)),  # exit code 1
    ]
    path = tmp_path / "run-abc123.wandb"
    path.write_bytes(_wandb_file([config, run, *rows]))
    assert WandbOfflineReader().detect(path)
    r = WandbOfflineReader().read(path, None)
    assert r.problems == []
    assert col(r, "step") == [2, 4, 6]
    loss = col(r, "loss")
    assert loss[0] == 2.0 and math.isnan(loss[1]) and loss[2] == 1.0
    assert col(r, "grad_norm")[1] == math.inf
    assert col(r, "epoch")[1] == 0.5  # the eval row's epoch joins the step's row
    assert col(r, "step_time_s") == [None, 2.0, 3.0]
    assert metric_values(r, "eval_loss") == [1.5]
    assert metric_values(r, "gpu.stats") == [7.5]
    (start,) = events(r, "run_start")
    assert start[1]["logging_steps"] == 2 and start[1]["total_steps"] == 6
    assert start[1]["run"] == "my-run" and start[1]["project"] == "proj"
    assert events(r, "run_end") == [(6, {"status": "failed", "exit_code": 1})]


def test_wandb_times_out_of_range_are_dropped_with_a_named_skip(tmp_path):
    config = _field(5, _field(1, _item("logging_steps", '{"value": 1}')))
    start = _field(17, _field(1, 10**17))  # start_time.seconds
    run = _field(17, _field(1, b"abc123") + _field(8, b"my-run") + start)
    rows = [
        _history({"_step": str(s), "train/loss": "1.0", "_timestamp": ts})
        for s, ts in ((1, "100.0"), (2, "1e17"), (3, "NaN"), (4, "103.0"))
    ]
    path = tmp_path / "run-abc123.wandb"
    path.write_bytes(_wandb_file([config, run, *rows]))
    r = WandbOfflineReader().read(path, None)
    assert col(r, "step") == [1, 2, 3, 4]
    assert col(r, "ts") == [100.0, None, None, 103.0]
    reasons = [p.reason for p in r.problems]
    assert len(reasons) == 3, reasons
    assert reasons[0].startswith("record 2 at byte ") and "start_time 1e+17 is not a " in reasons[0]
    assert reasons[1].startswith("record 4 at byte ") and "_timestamp 1e+17 is not a " in reasons[1]
    assert reasons[2].startswith("record 5 at byte ") and "_timestamp NaN is not a " in reasons[2]
    assert all(p.path == str(path) for p in r.problems)
    assert [e[0] for e in events(r, "run_start")] == [None]  # ran, without its start time
    assert r.events.column("ts").to_pylist() == [None]


# ---- steps beyond int64 ------------------------------------------------------------

HUGE_STEP = 2**64 + 5  # above what the store's step columns hold


def _huge_step_file(tmp_path, fmt):
    """A log of each foreign format with steps 1, 2**64 + 5 and 3."""
    if fmt == "trainer_state":
        path = tmp_path / "out" / "trainer_state.json"
        path.parent.mkdir()
        history = [{"loss": 1.0, "step": s} for s in (1, HUGE_STEP, 3)]
        path.write_text(json.dumps({"global_step": 3, "log_history": history}, indent=2))
        return path, HFStateReader()
    if fmt == "llamafactory":
        path = tmp_path / "trainer_log.jsonl"
        path.write_text(lines(*({"current_steps": s, "loss": 1.0} for s in (1, HUGE_STEP, 3))))
        return path, LlamaFactoryReader()
    path = tmp_path / "logging.jsonl"
    path.write_text(
        lines(*({"loss": 1.0, "global_step/max_steps": f"{s}/3"} for s in (1, HUGE_STEP, 3)))
    )
    return path, SwiftReader()


@pytest.mark.parametrize("fmt", ["trainer_state", "llamafactory", "swift"])
def test_a_step_beyond_int64_costs_its_row_only(tmp_path, fmt):
    path, reader = _huge_step_file(tmp_path, fmt)
    r = reader.read(path, None)
    assert col(r, "step") == [1, 3]
    (problem,) = r.problems
    assert problem.path == str(path) and problem.line is not None
    assert str(HUGE_STEP) in problem.reason


def test_line_logs_with_a_byte_order_mark_keep_line_one(tmp_path):
    lf = tmp_path / "trainer_log.jsonl"
    lf.write_bytes(
        b"\xef\xbb\xbf" + lines(*({"current_steps": s, "loss": 1.0} for s in (1, 2))).encode()
    )
    sw = tmp_path / "logging.jsonl"
    sw.write_bytes(
        b"\xef\xbb\xbf"
        + lines(*({"loss": 1.0, "global_step/max_steps": f"{s}/2"} for s in (1, 2))).encode()
    )
    for path, reader in ((lf, LlamaFactoryReader()), (sw, SwiftReader())):
        r = reader.read(path, None)
        assert (col(r, "step"), r.problems) == ([1, 2], [])


def test_trainer_state_lone_surrogates_cost_their_entry_only(tmp_path):
    history = [
        '{"loss": 1.0, "step": 1}',
        '{"loss": 1.0, "step": 2, "\\ud800x": 1}',
        '{"loss": 1.0, "step": 3, "note": "a\\udc00"}',
        '{"loss": 0.5, "step": 4, "emoji": "\\ud83d\\ude00"}',
    ]
    path = tmp_path / "out" / "trainer_state.json"
    path.parent.mkdir()
    path.write_text(
        '{"global_step": 4, "best_model_checkpoint": "ckpt-\\udfff",\n "log_history": [\n'
        + ",\n".join(history)
        + "\n]}\n"
    )
    r = HFStateReader().read(path, None)
    assert col(r, "step") == [1, 4]
    reasons = sorted(p.reason for p in r.problems)
    assert len(reasons) == 3 and all("unpaired surrogate" in x for x in reasons)
    assert {p.line for p in r.problems if "log_history" in p.reason} == {4, 5}
