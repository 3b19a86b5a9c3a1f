"""Readers for logs written by other tools, on fixtures written by those
tools and on real public logs (``fixtures/real``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tunescope.ingest.discover import READERS, discover
from tunescope.ingest.readers.foreign import infer_logging_steps, parse_duration
from tunescope.ingest.readers.hf_state import HFStateReader
from tunescope.ingest.readers.llamafactory import LlamaFactoryReader
from tunescope.ingest.readers.swift import SwiftReader
from tunescope.ingest.readers.tensorboard import TensorBoardReader, read_scalars
from tunescope.ingest.store.database import Store

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "fixtures" / "formats"
REAL = REPO / "fixtures" / "real"


def real(name: str) -> Path:
    """A real public log's run dir (``fixtures/real``, provenance in its PROVENANCE.md)."""
    return REAL / name


def open_store(root: Path, tmp_path: Path) -> Store:
    return Store.open(root, cache_dir=tmp_path / "cache")


def rows(store: Store, sql: str) -> list[tuple]:
    return store.cursor().execute(sql).fetchall()


def one(store: Store, sql: str):
    return rows(store, sql)[0][0]


def run_start(store: Store, run_id: str) -> dict:
    payloads = rows(
        store,
        f"SELECT payload::VARCHAR FROM events WHERE run_id = '{run_id}' AND kind = 'run_start'",
    )
    assert len(payloads) == 1, payloads
    return json.loads(payloads[0][0])


# ---- helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:09:01", 541),
        ("9 days, 22:13:15", 9 * 86400 + 22 * 3600 + 13 * 60 + 15),
        ("1 day, 0:00:01", 86401),
        ("1m 30s", 90),
        ("10h 30m 51s", 10 * 3600 + 30 * 60 + 51),
        ("45s", 45),
        ("soon", None),
        (None, None),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_infer_logging_steps_ignores_first_and_last_rows():
    assert infer_logging_steps([1, 5, 10, 15, 20, 23]) == 5
    assert infer_logging_steps([10]) == 10
    assert infer_logging_steps([]) is None


# ---- real logs -------------------------------------------------------------------


def test_mistral_state_and_log_describe_the_same_run(tmp_path):
    src = REAL / "mistral7b-translator-lora"
    only_state = tmp_path / "state"
    only_log = tmp_path / "log"
    only_state.mkdir()
    only_log.mkdir()
    shutil.copy(src / "trainer_state.json", only_state)
    shutil.copy(src / "trainer_log.jsonl", only_log)
    hf = HFStateReader().read(only_state / "trainer_state.json", None)
    lf = LlamaFactoryReader().read(only_log / "trainer_log.jsonl", None)
    hf_loss = dict(zip(hf.steps["step"].to_pylist(), hf.steps["loss"].to_pylist(), strict=True))
    lf_loss = dict(zip(lf.steps["step"].to_pylist(), lf.steps["loss"].to_pylist(), strict=True))
    assert len(hf_loss) == len(lf_loss) == 866
    assert hf_loss == lf_loss
    assert lf.steps["grad_norm"].null_count == 866  # the JSONL has none of its own

    store = open_store(src, tmp_path)
    assert one(store, "SELECT format FROM runs") == "hf_trainer_state,llamafactory"
    assert one(store, "SELECT count(*) FROM steps") == 866
    assert one(store, "SELECT count(grad_norm) FROM steps") == 866
    assert (
        one(
            store, "SELECT count(*) FROM (SELECT step FROM steps GROUP BY step HAVING count(*) > 1)"
        )
        == 0
    )
    assert one(store, "SELECT grad_norm FROM steps WHERE step = 10") == pytest.approx(
        11.009225845336914
    )
    assert one(store, "SELECT loss FROM steps WHERE step = 8660") == pytest.approx(0.1333)
    assert one(store, "SELECT status FROM runs") == "completed"
    start = run_start(store, "mistral7b-translator-lora")
    assert start["logging_steps"] == 10 and start["per_rank"] is False
    assert start["total_steps"] == 8660
    assert one(store, "SELECT count(*) FROM events WHERE kind = 'run_end'") == 1
    # the final summary's fields are metrics, once
    assert one(store, "SELECT count(*) FROM metrics WHERE name = 'train_runtime'") == 1
    assert one(store, "SELECT value FROM metrics WHERE name = 'train_runtime'") == pytest.approx(
        20387.7129
    )


def test_nsllm_day_long_elapsed_times(tmp_path):
    store = open_store(real("nsllm-qwen-fullft"), tmp_path)
    assert one(store, "SELECT count(*) FROM steps") == 435
    assert one(store, "SELECT status FROM runs") == "completed"
    elapsed = one(store, "SELECT max(value) FROM metrics WHERE name = 'elapsed_s'")
    assert elapsed == 9 * 86400 + 21 * 3600 + 49 * 60 + 18  # last training row, step 2175
    assert run_start(store, "nsllm-qwen-fullft")["logging_steps"] == 5
    # step time from elapsed deltas: ~6.6 minutes per optimizer step
    assert one(store, "SELECT median(step_time_s) FROM steps") == pytest.approx(393.6, rel=0.01)


def test_llamafactory_stopped_early_has_no_end(tmp_path):
    store = open_store(real("llamafactory-pref-stopped-early"), tmp_path)
    assert one(store, "SELECT count(*) FROM steps") == 202
    assert one(store, "SELECT count(*) FROM events WHERE kind = 'run_end'") == 0
    assert one(store, "SELECT count(*) FROM metrics WHERE name = 'accuracy'") == 202
    start = run_start(store, "llamafactory-pref-stopped-early")
    assert start == {**start, "logging_steps": 1, "total_steps": 5100, "schema": "classic"}
    assert one(store, "SELECT lr FROM steps WHERE step = 202") == pytest.approx(
        1.980392156862745e-07
    )


def test_swift_lines_written_twice_are_read_once(tmp_path):
    store = open_store(REAL / "msswift-sft-run-b", tmp_path)
    lines = (REAL / "msswift-sft-run-b" / "logging.jsonl").read_text().count("\n")
    assert lines == 4686
    assert one(store, "SELECT count(*) FROM steps") == 2343
    assert one(store, "SELECT max(step) FROM steps") == 11710
    assert one(store, "SELECT count(*) FROM metrics WHERE name = 'eval_loss'") == 1
    assert one(store, "SELECT count(*) FROM events WHERE kind = 'eval'") == 1
    assert one(store, "SELECT value FROM metrics WHERE name = 'eval_loss'") == pytest.approx(
        0.27042434
    )
    assert one(store, "SELECT count(*) FROM events WHERE kind = 'run_end'") == 0
    start = run_start(store, "msswift-sft-run-b")
    assert start["logging_steps"] == 5 and start["format"] == "ms-swift"
    assert one(store, "SELECT loss FROM steps WHERE step = 11710") == pytest.approx(3.194e-05)
    assert one(store, "SELECT count(step_time_s) FROM steps") == 2342


def test_wandb_offline_history(tmp_path):
    store = open_store(real("alpaca-llama7b-fsdp-wandb"), tmp_path)
    assert one(store, "SELECT count(*) FROM steps") == 39
    assert one(store, "SELECT loss FROM steps WHERE step = 1") == pytest.approx(1.5021)
    assert one(store, "SELECT lr FROM steps WHERE step = 1") == pytest.approx(5.405405405405406e-07)
    assert one(store, "SELECT min(step) FROM steps") == 1  # train/global_step, not W&B's _step
    start = run_start(store, "alpaca-llama7b-fsdp-wandb")
    assert start["wandb_run_id"] == "5hx57wy1" and start["model"] == "decapoda-research/llama-7b-hf"
    assert start["logging_steps"] == 1 and start["per_rank"] is False
    assert one(store, "SELECT count(*) FROM events WHERE kind = 'run_end'") == 0
    assert one(store, "SELECT min(ts) FROM steps") == pytest.approx(1688716835.3515735)


def test_every_real_log_is_recognised_by_the_right_reader():
    sources, problems = discover(REAL)
    got = {s.path.relative_to(REAL).as_posix(): s.reader.format for s in sources}
    assert problems == []
    tb = "qwen35-sft-tb/runs/Jun13_21-22-05_a8c83ced5550/events.out.tfevents.1781385725.a8c83ced5550.312.0"
    assert got == {
        "alpaca-llama7b-fsdp-wandb/run-5hx57wy1.wandb": "wandb",
        "autoscientist-translation/trainer_state.json": "hf_trainer_state",
        "cn-mini-phi3-deepspeed/ds_pretrain.log": "console",
        "lora-medqa/metrics.jsonl": "records",
        "megatron-gpt2-finetune/finetune.log": "console",
        "msswift-qwen35-mm-console/round3_qwen35_mm.train.log": "console",
        "peft-bench-unilora/unilora--llama-3.2-3B-default.json": "records",
        "turngpt-gpt2/lightning_logs/version_0/metrics.csv": "csv",
        "llamafactory-pref-stopped-early/trainer_log.jsonl": "llamafactory",
        "medbot-16k/trainer_state.json": "hf_trainer_state",
        "mistral7b-translator-lora/trainer_log.jsonl": "llamafactory",
        "mistral7b-translator-lora/trainer_state.json": "hf_trainer_state",
        "msswift-qwen3-dpo/logging.jsonl": "ms-swift",
        "msswift-qwen3-grpo/logging.jsonl": "ms-swift",
        "msswift-qwen3-sft-20/logging.jsonl": "ms-swift",
        "msswift-qwen3-sft-memorize/logging.jsonl": "ms-swift",
        "msswift-sft-run-b/logging.jsonl": "ms-swift",
        "nsllm-qwen-fullft/trainer_log.jsonl": "llamafactory",
        "nsllm-qwen-fullft/trainer_state.json": "hf_trainer_state",
        tb: "tensorboard",
        "trainer-state-viz-30ep/trainer_state.json": "hf_trainer_state",
        # the corpus's fourth round: the files a reader takes today; a file no reader
        # takes is absent, and runs read without a loss row say expect_read: false
        "alpaca-fullft-epochs/trainer_state.json": "hf_trainer_state",
        "chatglm-lora-25ep-memorize/trainer_log.jsonl": "llamafactory",
        "chatglm-lora-50ep-state/trainer_state.json": "hf_trainer_state",
        "distill-curriculum-rising-loss/training.log": "console",
        "eagle3-draft/trainer_state.json": "hf_trainer_state",
        "law-llm/trainer_state.json": "hf_trainer_state",
        "lightning-gan-nan/lightning_logs/version_0/metrics.csv": "csv",
        "lightning-wgan-healthy/lightning_logs/version_10/metrics.csv": "csv",
        "llamafactory-predict-noloss/trainer_log.jsonl": "llamafactory",
        "lora-alpaca-trainer-state/output/trainer_state.json": "hf_trainer_state",
        "megatron-64gpu/meg_gpt2_base_n16_dp1_tp4_pp16-1809577.out": "console",
        "megatron-n32-cancelled/meg_gpt2_base_n32_dp1_tp4_pp32-1809620.out": "console",
        "megatron-n4-cancelled/meg_gpt2_base_n4_dp1_tp4_pp4-1809579.out": "console",
        "megatron-n8-cancelled/meg_gpt2_base_n8_dp1_tp4_pp8-1809562.out": "console",
        "megatron-perf-skipped-noloss/meg_gpt2_perf_n16.out": "console",
        "megds-3d-64gpu/meg_ds_3d_gpt2_perf_n16-ds-on.out": "console",
        "megds-3d-diverging/meg_ds_3d_gpt2_perf_n16-ds-off.out": "console",
        "megds-zero-timelimit/meg_ds_zero_gpt2_perf_n16-1999616.out": "console",
        "metamath-1epoch/output/trainer_state.json": "hf_trainer_state",
        "mobilevlm-dataloader-missing-file/train.out": "console",
        "nanogpt-char-overfit-b/files/output.log": "console",
        "nanogpt-char-overfit/files/output.log": "console",
        "nanogpt-healthy-5k-b/files/output.log": "console",
        "nanogpt-healthy-5k/files/output.log": "console",
        "nanogpt-oom-48mib/files/output.log": "console",
        "nanogpt-oom-first-eval/files/output.log": "console",
        "peft-bench-adaptionprompt/adaptionprompt--llama-3.2-3B-lr_5e-3.json": "records",
        "peft-bench-fullft/full-finetuning--llama-3.2-3B-lr_0.00001.json": "records",
        "peft-bench-lora-r32/lora--llama-3.2-3B-rank32.json": "records",
        "peft-bench-vera/vera--llama-3.2-3B-default.json": "records",
        "qlora-24ep-staircase/trainer_state.json": "hf_trainer_state",
        "qwen25-medical/trainer_log.jsonl": "llamafactory",
        "starcoder-divergence/trainer_state.json": "hf_trainer_state",
        "swift-run-a/logging.jsonl": "ms-swift",
        # read since: crashes before a step, and the general reader's shapes
        "credit-ddp-device-error/train_log.txt": "console",
        "dschat-llama7b-device-error/training.log": "console",
        "dschat-rlhf-ppo/actor_opt-1.3b_critic_opt-350m_globalBatchSize64.log": "general",
        "llmc-gpt2-124m/main.log": "general",
        "modded-nanogpt-1b/c0078066-c8c9-49c8-868a-ff4d4f32e615.txt": "general",
        "modded-nanogpt-medium-val-only/main.log": "general",
        "modded-nanogpt-snoo-val-only/000_01db7a67-f715-4114-a7b5-6bfe23bac1b1.txt": "general",
        "modded-nanogpt-speedrun/3151f69a-f89e-452c-ac80-b85118007583.txt": "general",
        "nanogpt-interrupt-at-start/files/output.log": "console",
        "olmo-150m-sigterm/train.log": "general",
        "olmo-1b-emb10-complete/train.log": "general",
        "olmo-1b-emb5-wandb/files/output.log": "general",
        "olmo-1b-final-save-failed/train.log": "general",
        "olmo-1b-gradprov-1000/train.log": "general",
        "olmo-20m-never-learns/train_fresh.log": "general",
        "olmo-nvrtc-arch-error/files/output.log": "console",
        "openpi-jax-cuda-error/train.out": "console",  # a JAX job that crashed before its first step
        "openvla-slurm-cancelled/slurm.out": "console",
        "verl-grpo-zero-reward-ray-died/train.out": "general",
    }


# ---- fixtures written by the tools --------------------------------------------------


def test_hf_trainer_output_dir_is_one_run(tmp_path):
    store = open_store(FIX / "hf-trainer", tmp_path)
    hf = "hf-trainer"
    assert one(store, f"SELECT format FROM runs WHERE run_id = '{hf}'") == "hf_trainer_state"
    assert rows(store, f"SELECT step FROM steps WHERE run_id = '{hf}' ORDER BY step") == [
        (2,),
        (4,),
        (6,),
        (8,),
        (10,),
        (12,),
    ]
    assert rows(
        store,
        f"SELECT step FROM metrics WHERE run_id = '{hf}' AND name = 'eval_loss' ORDER BY step",
    ) == [(6,), (12,)]
    assert one(store, f"SELECT count(*) FROM events WHERE run_id = '{hf}' AND kind = 'eval'") == 2
    end = rows(
        store,
        f"SELECT step, payload->>'status' FROM events WHERE run_id = '{hf}' AND kind = 'run_end'",
    )
    assert end == [(12, "completed")]
    start = run_start(store, hf)
    assert start["logging_steps"] == 2 and start["total_steps"] == 12 and start["per_rank"] is False
    assert start["source"].endswith("hf-trainer/trainer_state.json")  # not a checkpoint copy
    # Training rows that carry train_runtime (tokens counted) are still training rows;
    # at the last step the summary's value (written later) is the one kept.
    runtime = rows(
        store,
        f"SELECT step, value FROM metrics WHERE run_id = '{hf}' AND name = 'train_runtime' ORDER BY step",
    )
    assert [s for s, _ in runtime] == [2, 4, 6, 8, 10, 12]
    assert runtime[-1][1] == pytest.approx(1.2613)
    assert (
        one(store, f"SELECT max(tokens) FROM steps WHERE run_id = '{hf}'") == 32
    )  # 2 steps x 2 x 8
    checkpoints = rows(
        store,
        f"SELECT step FROM events WHERE run_id = '{hf}' AND kind = 'checkpoint' ORDER BY step",
    )
    assert checkpoints == [(6,), (12,)]


def test_hf_nan_losses_survive_and_the_longest_checkpoint_wins(tmp_path):
    store = open_store(FIX / "hf-nan", tmp_path)
    got = rows(store, "SELECT step, loss, grad_norm FROM steps ORDER BY step")
    assert [s for s, _, _ in got] == list(range(1, 11))
    assert all(math.isnan(loss) and math.isnan(g) for s, loss, g in got if s >= 7)
    assert all(not math.isnan(loss) for s, loss, _ in got if s < 7)
    assert run_start(store, "hf-nan")["source"].endswith("checkpoint-10/trainer_state.json")


def test_hf_checkpoints_appearing_do_not_double_count(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint-5").mkdir(parents=True)
    shutil.copy(FIX / "hf-nan" / "checkpoint-5" / "trainer_state.json", out / "checkpoint-5")
    store = open_store(out, tmp_path)
    assert one(store, "SELECT count(*) FROM steps") == 5
    (out / "checkpoint-10").mkdir()
    shutil.copy(FIX / "hf-nan" / "checkpoint-10" / "trainer_state.json", out / "checkpoint-10")
    store.ingest()
    assert one(store, "SELECT count(*) FROM steps") == 10
    assert one(store, "SELECT count(*) FROM events WHERE kind = 'run_start'") == 1
    assert one(store, "SELECT count(*) FROM metrics") == one(
        store, "SELECT count(DISTINCT (step, name)) FROM metrics"
    )
    assert one(store, "SELECT count(*) FROM runs") == 1


def test_tensorboard_fixture_matches_event_accumulator(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = next((FIX / "hf-trainer" / "runs" / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    theirs = sorted((t, e.step, e.value) for t in acc.Tags()["scalars"] for e in acc.Scalars(t))
    ours = sorted((t, s, v) for t, s, _, v in read_scalars(path, verify=True))
    assert ours == theirs and len(ours) > 30
    # The event file alone (training before its first checkpoint) is a run.
    out = tmp_path / "out"
    shutil.copytree(path.parent, out / "runs" / "tb")
    store = open_store(out, tmp_path)
    tb = "runs/tb"
    assert one(store, f"SELECT count(*) FROM steps WHERE run_id = '{tb}'") == 6
    hf = HFStateReader().read(FIX / "hf-trainer" / "trainer_state.json", None)
    hf_loss = list(zip(hf.steps["step"].to_pylist(), hf.steps["loss"].to_pylist(), strict=True))
    tb_loss = rows(store, f"SELECT step, loss FROM steps WHERE run_id = '{tb}' ORDER BY step")
    assert [s for s, _ in hf_loss] == [s for s, _ in tb_loss]
    for (_, a), (_, b) in zip(hf_loss, tb_loss, strict=True):
        assert b == pytest.approx(a, rel=1e-6)  # float32 in TensorBoard
    start = run_start(store, tb)
    assert start["logging_steps"] == 2 and start["total_steps"] == 12  # from the args text
    assert rows(
        store,
        f"SELECT step FROM metrics WHERE run_id = '{tb}' AND name = 'eval_loss' ORDER BY step",
    ) == [
        (6,),
        (12,),
    ]
    end = f"SELECT payload->>'status' FROM events WHERE run_id = '{tb}' AND kind = 'run_end'"
    assert one(store, end) == "completed"
    times = [
        t
        for (t,) in rows(
            store, f"SELECT step_time_s FROM steps WHERE run_id = '{tb}' ORDER BY step"
        )
    ]
    assert times[0] is None and all(t is not None and t >= 0 for t in times[1:])
    # Once the output dir has its trainer_state.json, that is the run: not two runs.
    shutil.copy(FIX / "hf-trainer" / "trainer_state.json", out)
    store.ingest()
    assert rows(store, "SELECT run_id, format FROM runs") == [("out", "hf_trainer_state")]


def test_mlflow_file_store(tmp_path):
    store = open_store(FIX / "mlruns", tmp_path)
    runs = dict(rows(store, "SELECT name, status FROM runs"))
    assert runs == {"qwen-lora-r16": "completed", "crashed": "failed"}
    rid = one(store, "SELECT run_id FROM runs WHERE name = 'qwen-lora-r16'")
    got = rows(
        store, f"SELECT step, loss, lr, grad_norm FROM steps WHERE run_id = '{rid}' ORDER BY step"
    )
    assert len(got) == 20
    assert math.isnan(got[12][1]) and got[12][0] == 13
    assert got[0][1:] == (2.0, pytest.approx(4e-05), pytest.approx(1.1))
    assert rows(
        store,
        f"SELECT step FROM metrics WHERE run_id = '{rid}' AND name = 'eval_loss' ORDER BY step",
    ) == [(10,), (20,)]
    start = run_start(store, rid)
    assert start["config"]["lora_r"] == "16" and start["model"] == "tiny-gpt2"
    assert start["tags"] == {"team": "fixtures"} and start["per_rank"] is False


def test_mlflow_sqlite_store_gives_one_run_per_mlflow_run(tmp_path):
    store = open_store(FIX / "mlflow-db", tmp_path)
    runs = dict(rows(store, "SELECT name, status FROM runs"))
    assert runs == {"finished": "completed", "diverged": "failed"}
    rid = one(store, "SELECT run_id FROM runs WHERE name = 'diverged'")
    assert rid.startswith("mlflow.db/")
    got = rows(store, f"SELECT step, loss FROM steps WHERE run_id = '{rid}' ORDER BY step")
    assert len(got) == 12
    assert all(math.isnan(loss) == (step >= 9) for step, loss in got)
    assert one(store, "SELECT count(*) FROM metrics WHERE name = 'eval_loss'") == 4


def test_fixture_files_each_claimed_by_one_reader():
    sources, problems = discover(FIX)
    assert problems == []
    formats = {}
    for s in sources:
        formats.setdefault(s.reader.format, []).append(s.path.relative_to(FIX).as_posix())
    assert formats["hf_trainer_state"] == [
        "hf-nan/checkpoint-10/trainer_state.json",
        "hf-trainer/trainer_state.json",
    ]
    assert "llamafactory" not in formats
    assert "tensorboard" not in formats  # the Trainer's copy under runs/ is the same run
    assert len(formats["mlflow"]) == 4  # two runs in the file store, two in mlflow.db
    # no reader claims the experiment-level meta.yaml, the generator script or checkpoint copies
    claimed = {s.path for s in sources}
    for path in FIX.rglob("*"):
        if path.is_file() and path not in claimed:
            assert not any(
                r.detect(path) for r in READERS if r.format != "mlflow" or path.name != "mlflow.db"
            ), path


def test_detectors_do_not_steal_each_others_files(tmp_path):
    """Every reader's detect on every other format's file says no."""
    tb = next((FIX / "hf-trainer" / "runs" / "tb").glob("events.out.tfevents.*"))
    shutil.copy(tb, tmp_path)
    files = {
        "tensorboard": tmp_path / tb.name,
        "hf_trainer_state": FIX / "hf-trainer" / "trainer_state.json",
        "mlflow": FIX / "mlflow-db" / "mlflow.db",
    }
    swift = tmp_path / "logging.jsonl"
    swift.write_text('{"loss": 1.0, "global_step/max_steps": "1/10"}\n')
    files["ms-swift"] = swift
    lf = tmp_path / "lf" / "trainer_log.jsonl"
    lf.parent.mkdir()
    lf.write_text('{"current_steps": 1, "total_steps": 10, "loss": 1.0}\n')
    files["llamafactory"] = lf
    other = tmp_path / "other" / "logging.jsonl"  # some other tool's log of the same name
    other.parent.mkdir()
    other.write_text('{"level": "info", "msg": "hello"}\n')
    for fmt, path in files.items():
        claims = [r.format for r in READERS if r.detect(path)]
        assert claims[:1] == [fmt], (path, claims)
    assert [r.format for r in READERS if r.detect(other)] == []


def test_state_json_beside_swift_log_is_left_to_the_swift_reader(tmp_path):
    out = tmp_path / "v0-run"
    (out / "checkpoint-5").mkdir(parents=True)
    shutil.copy(FIX / "hf-nan" / "checkpoint-5" / "trainer_state.json", out / "checkpoint-5")
    (out / "logging.jsonl").write_text('{"loss": 1.0, "global_step/max_steps": "1/10"}\n')
    assert not HFStateReader().detect(out / "checkpoint-5" / "trainer_state.json")
    assert SwiftReader().detect(out / "logging.jsonl")


def test_tensorboard_reader_reads_scalar_tensors(tmp_path):
    """TF2-style scalars (tensors with float_val, double_val, tensor_content)."""
    import struct

    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(tmp_path))
    for step in range(1, 4):
        values = [
            summary_pb2.Summary.Value(
                tag="train/loss", tensor=tensor_pb2.TensorProto(dtype=1, float_val=[1.5 * step])
            ),
            summary_pb2.Summary.Value(
                tag="train/learning_rate",
                tensor=tensor_pb2.TensorProto(dtype=2, double_val=[1e-4 * step]),
            ),
            summary_pb2.Summary.Value(
                tag="throughput",
                tensor=tensor_pb2.TensorProto(
                    dtype=1, tensor_content=struct.pack("<f", 10.0 * step)
                ),
            ),
            summary_pb2.Summary.Value(
                tag="hist", tensor=tensor_pb2.TensorProto(dtype=1, float_val=[1.0, 2.0, 3.0])
            ),
        ]
        writer.add_event(
            event_pb2.Event(
                step=step, wall_time=100.0 + step, summary=summary_pb2.Summary(value=values)
            )
        )
    writer.close()
    path = next(tmp_path.glob("events.out.tfevents.*"))
    result = TensorBoardReader().read(path, None)
    assert result.steps["loss"].to_pylist() == [1.5, 3.0, 4.5]
    assert result.steps["lr"].to_pylist() == [1e-4, 2e-4, pytest.approx(3e-4)]
    assert result.metrics["name"].to_pylist() == ["throughput"] * 3  # not the 3-element tensor
    assert result.metrics["value"].to_pylist() == [10.0, 20.0, 30.0]
    assert result.steps["ts"].to_pylist() == [101.0, 102.0, 103.0]


def test_a_log_without_timestamps_is_running_only_once_seen_to_grow(tmp_path):
    """A copied or freshly cloned log is new on disk but not a live run."""
    src = REAL / "llamafactory-pref-stopped-early" / "trainer_log.jsonl"
    lines = src.read_text().splitlines(keepends=True)
    run = tmp_path / "runs" / "pref"
    run.mkdir(parents=True)
    log = run / "trainer_log.jsonl"
    log.write_text("".join(lines[:100]))
    store = open_store(tmp_path / "runs", tmp_path)
    assert one(store, "SELECT status FROM runs") == "interrupted"  # stopped short, no end row
    with log.open("a") as f:
        f.write("".join(lines[100:150]))
    store.ingest()
    assert one(store, "SELECT status FROM runs") == "running"  # it grew between two reads
