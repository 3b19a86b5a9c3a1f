"""The general reader: logs no specific reader knows, read by their shape.

Each sample under fixtures/formats/general/ is modelled on a real trainer's
output; the rows are asserted exactly. The negatives are files with numbers
in them that are not runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tunescope.ingest.discover import READERS, discover
from tunescope.ingest.readers.general import GeneralReader
from tunescope.ingest.readers.general_shape import shape_of
from tunescope.ingest.readers.general_text import line_pairs
from tunescope.ingest.readers.vocabulary import HIGH, LOW, meaning
from tunescope.ingest.store.database import Store

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "fixtures" / "formats" / "general"
NAN = float("nan")


def reader_of(path: Path) -> str | None:
    return next((r.format for r in READERS if r.detect(path)), None)


def rows(result, *cols):
    out = []
    for row in result.steps.to_pylist():
        out.append(tuple(row[c] for c in cols))
    return out


def same(got, want):
    """Row lists equal, NaN equal to NaN (and nothing else)."""
    assert len(got) == len(want), got
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            if isinstance(b, float) and math.isnan(b):
                assert a is not None and math.isnan(a), (g, w)
            else:
                assert a == pytest.approx(b) if isinstance(b, float) else a == b, (g, w)


def events(result, kind):
    return [
        json.loads(p)
        for k, p in zip(
            result.events["kind"].to_pylist(), result.events["payload"].to_pylist(), strict=True
        )
        if k == kind
    ]


def metrics(result):
    return {
        (s, n): v
        for s, n, v in zip(
            result.metrics["step"].to_pylist(),
            result.metrics["name"].to_pylist(),
            result.metrics["value"].to_pylist(),
            strict=True,
        )
    }


def read(path: Path):
    assert reader_of(path) == "general", path
    return GeneralReader().read(path, None)


# ---- text lines and blocks ---------------------------------------------------------


def test_composer_blocks_header_counter_and_indented_pairs():
    r = read(GEN / "composer" / "train.log")
    same(rows(r, "step", "loss"), [(1, 2.5012), (2, 2.4012), (3, 2.3012)])
    assert events(r, "run_start")[0]["inferred"]["shape"] == "blocks"
    m = metrics(r)
    assert m[(1, "samples_per_s")] == 45.6
    assert m[(3, "samples_per_s")] == 46.5
    assert (1, "train_metrics/train/languagecrossentropy") in m


def test_python_logging_prefix_rollout_counter_quoted_and_inf():
    r = read(GEN / "rl-rollout" / "ppo.log")
    same(
        rows(r, "step", "loss", "lr"),
        [(1, 0.5123, None), (2, 0.4987, None), (3, 0.4801, None), (4, math.inf, None)],
    )
    m = metrics(r)
    assert m[(3, "reward_mean")] == 0.19  # written quoted
    assert m[(4, "kl")] == 0.009


def test_logging_prefix_it_counter_spaced_names_and_bare_rates():
    r = read(GEN / "pylogging" / "log.txt")
    same(
        rows(r, "step", "loss", "lr", "step_time_s"),
        [(50, 1.8812, 2e-5, 3.2), (100, 1.7102, 2e-5, 3.1), (150, 1.6543, 1.9e-5, 3.3)],
    )


def test_deepspeed_lines_after_their_logging_prefix():
    r = read(GEN / "deepspeed" / "run.out")
    same(
        rows(r, "step", "loss", "lr"),
        [(10, 2.4512, 1.9e-5), (20, 2.3012, 1.8e-5), (30, 2.2012, None)],
    )


def test_torchrun_prefixes_give_ranks_and_units_convert_to_mib():
    r = read(GEN / "torchrun" / "stdout.txt")
    got = sorted(rows(r, "rank", "step", "loss", "mem_allocated_mb", "grad_norm"))
    same(
        got,
        [
            (0, 1, 4.12, 10.5 * 1024, 1.91),
            (0, 2, 3.9, 10.5 * 1024, 1.51),
            (0, 3, 3.7, 10.5 * 1024, 1.21),
            (1, 1, 4.13, 10.6 * 1024, 1.93),
            (1, 2, 3.91, 10.6 * 1024, 1.52),
            (1, 3, 3.71, 10.6 * 1024, 1.22),
        ],
    )


def test_epoch_local_counter_is_counted_on_across_epochs():
    r = read(GEN / "epoch-local" / "train.log")
    same(
        rows(r, "step", "loss", "epoch"),
        [(0, 2.9, 0.0), (1, 2.7, 0.0), (2, 2.5, 0.0), (3, 2.2, 1.0), (4, 2.1, 1.0), (5, 2.0, 1.0)],
    )
    assert r.subruns == []


def test_nanogpt_lines_thousands_separators_nan_and_ms(tmp_path):
    # the console reader knows nanoGPT's iteration lines; the general reader
    # reads the same shape when they are not in console form (after a prefix,
    # loss before the counter)
    log = tmp_path / "out.txt"
    log.write_text(
        "2024-05-01T12:00:00Z loss 10.98, iter 0, time 4,321.12ms, mfu -100.00%\n"
        "2024-05-01T12:00:01Z loss 9.8765, iter 10, time 123.45ms, mfu 30.21%\n"
        "2024-05-01T12:00:02Z loss nan, iter 20, time 122.10ms, mfu 30.50%\n"
        "2024-05-01T12:00:03Z loss 8.1, iter 30, time 1,004ms, mfu 3.10%\n"
    )
    r = read(log)
    same(
        rows(r, "step", "loss", "step_time_s"),
        [(0, 10.98, 4.32112), (10, 9.8765, 0.12345), (20, NAN, 0.1221), (30, 8.1, 1.004)],
    )
    assert metrics(r)[(10, "mfu")] == 30.21


def test_a_counter_that_starts_again_is_a_second_run_in_the_file(tmp_path):
    log = tmp_path / "train.log"
    first = "".join(f"loss={2 - s / 10:.2f} | batch={s}\n" for s in range(1, 5))
    again = "".join(f"loss={3 - s / 10:.2f} | batch={s}\n" for s in range(1, 4))
    log.write_text(first + again)
    r = read(log)
    same(rows(r, "step", "loss"), [(1, 1.9), (2, 1.8), (3, 1.7), (4, 1.6)])
    assert [k for k, _ in r.subruns] == ["#2"]
    same(rows(r.subruns[0][1], "step", "loss"), [(1, 2.9), (2, 2.8), (3, 2.7)])


def test_a_growing_log_is_read_in_pieces_and_a_torn_line_waits(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"[rank0]: it={s} lm_loss={5 - s / 10}\n" for s in range(1, 5)))
    first = read(log)
    assert [s for (s,) in rows(first, "step")] == [1, 2, 3, 4]
    with open(log, "a") as f:
        f.write("[rank0]: it=5 lm_loss=4.5\n[rank0]: it=6 lm_lo")
    again = GeneralReader().read(log, first.state)
    same(rows(again, "step", "loss"), [(5, 4.5)])
    with open(log, "a") as f:
        f.write("ss=4.4\n")
    last = GeneralReader().read(log, again.state)
    same(rows(last, "step", "loss"), [(6, 4.4)])


def test_garbage_lines_between_records_lose_no_good_row(tmp_path):
    log = tmp_path / "train.log"
    good = [f"loss: {2 - s / 100} | step: {s}\n".encode() for s in range(1, 7)]
    log.write_bytes(b"".join(good[:3]) + b"\xff\xfe\x80garbage\x81 loss\n" + b"".join(good[3:]))
    r = read(log)
    assert [s for (s,) in rows(r, "step")] == [1, 2, 3, 4, 5, 6]


# ---- tables ------------------------------------------------------------------------


def test_keras_csvlogger_epochs_give_the_steps():
    r = read(GEN / "keras" / "training.log")
    same(
        rows(r, "step", "epoch", "loss", "lr"),
        [
            (1, 0.0, 1.3862, 0.001),
            (2, 1.0, 1.0213, 0.001),
            (3, 2.0, 0.8451, 0.0005),
            (4, 3.0, 0.7312, 0.0005),
        ],
    )
    start = events(r, "run_start")[0]
    assert start["steps_from"] == "epoch" and start["steps_inferred"] is True
    assert metrics(r)[(4, "eval_loss")] == 1.0711
    assert events(r, "eval")[0] == {"eval_accuracy": 0.55, "eval_loss": 1.2001}


def test_keras_console_epoch_headers_and_their_progress_lines():
    r = read(GEN / "keras-console" / "fit.log")
    same(rows(r, "step", "epoch", "loss"), [(1, 1.0, 0.6931), (2, 2.0, 0.5512), (3, 3.0, 0.441)])
    assert events(r, "eval") == [
        {"eval_loss": 0.692, "eval_accuracy": 0.51},
        {"eval_loss": 0.582, "eval_accuracy": 0.7},
        {"eval_loss": 0.5011, "eval_accuracy": 0.76},
    ]
    assert events(r, "run_end") == [{"status": "completed"}]  # epoch 3 of 3
    start = events(r, "run_start")[0]
    assert (start["steps_from"], start["steps_inferred"]) == ("epoch", True)


def test_tsv_saved_as_train_log_with_a_blank_cell_and_thousands():
    r = read(GEN / "tsv-log" / "train.log")
    same(
        rows(r, "step", "loss", "lr", "grad_norm"),
        [(100, 2.3456, 1e-4, 0.91), (200, 2.1234, 1e-4, 0.85), (300, 2.0001, 9e-5, None)],
    )
    assert metrics(r)[(100, "tokens_per_s")] == 12345.0


def test_wandb_export_twins_dropped_and_eval_column_kept():
    r = read(GEN / "wandb-export" / "export.csv")
    same(rows(r, "step", "loss"), [(10, 2.5), (20, 2.25), (30, 2.0), (40, 1.8)])
    assert metrics(r) == {(30, "eval_loss"): 2.1}


def test_pandas_index_column_is_the_row_order():
    r = read(GEN / "pandas-index" / "history.csv")
    same(rows(r, "step", "loss", "lr"), [(1, 0.95, 0.001), (2, 0.72, 0.001), (3, 0.61, 0.001)])
    assert events(r, "run_start")[0]["steps_from"] == "order"


# ---- JSON --------------------------------------------------------------------------


def test_nested_jsonl_flattened_and_mapped():
    r = read(GEN / "nested-jsonl" / "metrics.jsonl")
    same(
        rows(r, "step", "loss", "grad_norm", "lr", "step_time_s"),
        [(5, 3.2, 1.1, 3e-4, 0.25), (10, 3.0, 0.9, 3e-4, 0.248), (15, 2.8, None, 3e-4, 0.251)],
    )


def test_a_jsonl_line_cut_or_broken_is_named_and_the_rest_kept(tmp_path):
    log = tmp_path / "hist.jsonl"
    recs = [json.dumps({"update": s, "metrics": {"total_loss": 1 / s}}) for s in range(1, 6)]
    log.write_text("\n".join(recs[:2]) + '\n{"update": 3, "metr\n' + "\n".join(recs[3:]) + "\n")
    r = read(log)
    assert [s for (s,) in rows(r, "step")] == [1, 2, 4, 5]
    assert [(p.line, p.reason.split(":")[0]) for p in r.problems] == [(3, "not JSON")]


def test_json_records_with_text_fields_and_an_epoch_local_iteration(tmp_path):
    """MMDetection's ``.log.json``: a text ``mode`` before the counter, ``iter``
    starting again each epoch, and a validation record without a loss."""
    lines = [{"env_info": "sys.platform: linux", "seed": 0}]
    for epoch in (1, 2, 3):
        for it in (10, 20, 30):
            loss = 3.0 - 0.2 * (3 * (epoch - 1) + it // 10)
            lines.append({"mode": "train", "epoch": epoch, "iter": it, "lr": 0.02, "loss": loss})
        lines.append({"mode": "val", "epoch": epoch, "iter": 30, "lr": 0.02, "bbox_mAP": 0.1})
    log = tmp_path / "20210505_084356.log.json"
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = read(log)
    got = [(s, round(v, 6)) for s, v in rows(r, "step", "loss")]
    assert got == [(10, 2.8), (20, 2.6), (30, 2.4), (31, 2.2), (41, 2.0), (51, 1.8),
                   (52, 1.6), (62, 1.4), (72, 1.2)]  # fmt: skip
    assert not r.problems


# ---- not runs ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in (GEN / "negatives").iterdir()))
def test_a_file_of_numbers_that_is_not_a_run(tmp_path, name):
    shutil.copy(GEN / "negatives" / name, tmp_path / name)
    assert reader_of(tmp_path / name) is None
    store = Store.open(tmp_path, cache_dir=tmp_path / ".cache")
    assert store.cursor().execute("SELECT count(*) FROM runs").fetchone() == (0,)


def test_refusals_say_why():
    neg = GEN / "negatives"
    assert "rises" in (shape_of(neg / "dataset.jsonl").reason or "")
    assert "only 1 record" in (shape_of(neg / "eval_summary.log").reason or "")
    assert "step" in (shape_of(neg / "results.txt").reason or "")
    assert "settings" in (shape_of(neg / "hparams.json").reason or "")


def test_every_sample_is_one_run_in_the_store(tmp_path):
    root = tmp_path / "general"
    shutil.copytree(GEN, root, ignore=shutil.ignore_patterns("negatives"))
    store = Store.open(root, cache_dir=tmp_path / "cache")
    got = dict(
        store.cursor()
        .execute("SELECT run_id, count(*) FROM steps WHERE loss IS NOT NULL GROUP BY 1")
        .fetchall()
    )
    assert got == {
        "composer": 3,
        "deepspeed": 3,
        "epoch-local": 6,
        "keras": 4,
        "keras-console": 3,
        "nanogpt": 5,
        "nested-jsonl": 3,
        "pandas-index": 3,
        "pylogging": 3,
        "rl-rollout": 4,
        "torchrun": 6,
        "tsv-log": 3,
        "wandb-export": 4,
    }
    sources, problems = discover(root)
    assert problems == []
    assert {s.reader.format for s in sources} == {"general", "console"}  # nanogpt: console


# ---- pieces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "rank", "pairs"),
    [
        (
            b"2024-05-01 12:00:01,123 - INFO - train - step=3, loss=2.5",
            0,
            [("step", 3.0), ("loss", 2.5)],
        ),
        (
            b"[default3]:iter 7 | loss 1,004.5 | mem 45.6 GiB",
            3,
            [("iter", 7.0), ("loss", 1004.5), ("mem", 45.6)],
        ),
        (b"0: step: 12 loss: 'nan'", 0, [("step", 12.0), ("loss", NAN)]),
        (b"[rank5]: batch=2/100 loss=-inf", 5, [("batch", 2.0), ("loss", -math.inf)]),
    ],
)
def test_line_pairs_read_through_prefixes_and_number_forms(line, rank, pairs):
    got_rank, got = line_pairs(line)
    assert got_rank == rank
    same([(n, v) for n, v, _, _ in got], pairs)


@pytest.mark.parametrize(
    ("name", "unit", "column", "scale", "confidence"),
    [
        ("lm loss", None, "loss", 1.0, HIGH),
        ("rl_loss", None, "loss", 1.0, HIGH),
        ("train/loss", None, "loss", 1.0, HIGH),
        ("learning-rate", None, "lr", 1.0, HIGH),
        ("learning rate", None, "lr", 1.0, HIGH),
        ("grad-norm", None, "grad_norm", 1.0, HIGH),
        ("total_norm", None, "grad_norm", 1.0, HIGH),
        ("gnorm", None, "grad_norm", 1.0, HIGH),
        ("elapsed time per iteration (ms)", None, "step_time_s", 0.001, HIGH),
        ("time", "ms", "step_time_s", 0.001, HIGH),
        ("it/s", None, "step_time_s", -1.0, HIGH),
        ("max_memory_allocated", "GiB", "mem_peak_mb", 1024.0, HIGH),
        ("memory_reserved", "GB", "mem_reserved_mb", 1024.0, HIGH),
        ("gpu_mem_used_mib", None, "mem_allocated_mb", 1.0, LOW),
        ("my_weird_loss", None, "loss", 1.0, LOW),
        ("tokens/s", None, "tokens_per_s", 1.0, HIGH),
    ],
)
def test_vocabulary_maps_names_to_columns(name, unit, column, scale, confidence):
    m = meaning(name, unit)
    assert (m.column, m.scale, m.confidence) == (column, pytest.approx(scale), confidence)


@pytest.mark.parametrize(
    ("name", "kind", "column"),
    [
        ("iter", "step", "step"),
        ("rollout", "step", "step"),
        ("_step", "step", "step"),
        ("val_loss", "eval", "eval_loss"),
        ("eval/loss", "eval", "eval_loss"),
        ("validation loss", "eval", "eval_loss"),
        ("test_acc", "eval", "eval_acc"),
        ("reward_mean", "metric", "reward_mean"),
    ],
)
def test_vocabulary_counters_and_evaluation_names(name, kind, column):
    m = meaning(name)
    assert (m.kind, m.column) == (kind, column)


# ---- TensorBoard: tensor summaries and Megatron's tags -----------------------------


def test_tensorboard_tensor_scalars_with_megatron_tags(tmp_path):
    """Megatron (and SummaryWriter's new-style scalars) write each scalar as a
    float tensor with the ``scalars`` plugin; its tags have spaces and hyphens
    and a ``vs samples`` twin, which collapses into the step series."""
    from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    from tunescope.ingest.readers.tensorboard import TensorBoardReader

    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )

    def value(tag, v):
        t = tensor_pb2.TensorProto(dtype=1, float_val=[v])
        return summary_pb2.Summary.Value(tag=tag, tensor=t, metadata=meta)

    writer = EventFileWriter(str(tmp_path))
    for it in (10, 20, 30):
        values = [
            value("lm loss", 3.0 - it / 100),
            value("grad-norm", 1.0 + it / 100),
            value("learning-rate", 1e-4),
            value("lm loss validation", 3.5 - it / 100),
        ]
        writer.add_event(
            event_pb2.Event(step=it, wall_time=1e9 + it, summary=summary_pb2.Summary(value=values))
        )
        twin = [value("lm loss vs samples", 3.0 - it / 100)]
        writer.add_event(
            event_pb2.Event(
                step=it * 512, wall_time=1e9 + it, summary=summary_pb2.Summary(value=twin)
            )
        )
    writer.close()
    path = next(tmp_path.glob("events.out.tfevents.*"))
    r = TensorBoardReader().read(path, None)
    same(
        rows(r, "step", "loss", "grad_norm", "lr"),
        [(10, 2.9, 1.1, 1e-4), (20, 2.8, 1.2, 1e-4), (30, 2.7, 1.3, 1e-4)],
    )
    assert set(r.metrics["name"].to_pylist()) == {"eval_lm_loss"}


# ---- the fast path agrees with the line-by-line path -------------------------------


def _slow(path: Path):
    """The rows the line-by-line path gives (the fast path turned off)."""
    from tunescope.ingest.readers import general_bulk

    saved = general_bulk.bulk
    general_bulk.bulk = lambda data: None  # the fallback, as for a line of another layout
    try:
        return GeneralReader().read(path, None)
    finally:
        general_bulk.bulk = saved


@pytest.mark.parametrize(
    "text",
    [
        # every line a record, units and thousands
        "".join(
            f"2024-05-01 12:00:{s % 60:02d},001 - INFO - ppo - rollout={s} rl_loss={2 - s / 100:.4f}"
            f" kl={s / 1000:.4f} time={1000 + s:,}ms\n"
            for s in range(1, 40)
        ),
        # evaluation lines between the records, and a nan
        "".join(
            f"loss: {'nan' if s == 7 else 3 - s / 10}, iter: {s}, lr: 1e-4\n"
            + (f"validation: val_loss: {2.5 - s / 20}, val_acc: 0.5\n" if s % 5 == 0 else "")
            for s in range(1, 21)
        ),
        # an evaluation's line before the first record: the layout is the record's
        "s:0 tel:4.5\n"
        + "".join(
            f"s:{s} trl:{4 - s / 50:.4f} lr:{s * 1e-5:.6f} norm:{2 - s / 40:.2f}\n"
            + (f"s:{s} tel:{4.2 - s / 60:.4f}\n" if s % 10 == 9 else "")
            for s in range(40)
        ),
    ],
)
def test_fast_path_reads_what_the_line_by_line_path_reads(tmp_path, text):
    log = tmp_path / "train.log"
    log.write_text(text)
    fast = read(log)
    slow = _slow(log)
    keep = ("rank", "step", "loss", "lr", "step_time_s")
    same(rows(fast, *keep), rows(slow, *keep))
    assert sorted(metrics(fast).items()) == sorted(metrics(slow).items())
    assert events(fast, "eval") == events(slow, "eval")


def test_a_step_too_big_for_the_store_is_not_a_step(tmp_path):
    log = tmp_path / "train.log"
    lines = [f"loss={2 - s / 10} step={s}\n" for s in range(1, 5)]
    lines.insert(2, "loss=1.5 step=99999999999999999999999\n")
    log.write_text("".join(lines))
    r = read(log)
    assert [s for (s,) in rows(r, "step")] == [1, 2, 3, 4]


def test_a_table_still_being_written_is_read_again_whole(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("iter\tloss\n1\t2.0\n2\t1.9\n3\t1.8\n")
    first = read(log)
    with open(log, "a") as f:
        f.write("4\t1.7\n5\t1.")  # a row still being written
    again = GeneralReader().read(log, first.state)
    assert again.replace is True
    same(rows(again, "step", "loss"), [(1, 2.0), (2, 1.9), (3, 1.8), (4, 1.7)])
    with open(log, "a") as f:
        f.write("65\n")
    last = GeneralReader().read(log, again.state)
    same(rows(last, "step", "loss")[-1:], [(5, 1.65)])


def test_a_jsonl_line_still_being_written_is_no_problem(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text(
        "".join(json.dumps({"it": s, "avg_loss": 3 - s / 10}) + "\n" for s in range(1, 4))
    )
    with open(log, "a") as f:
        f.write('{"it": 4, "avg_lo')
    r = read(log)
    assert r.problems == []
    same(rows(r, "step", "loss"), [(1, 2.9), (2, 2.8), (3, 2.7)])


def test_the_configuration_names_what_the_vocabulary_cannot_guess(tmp_path):
    log = tmp_path / "run" / "train.log"
    log.parent.mkdir()
    log.write_text("".join(f"tick={t} ce={3 - t / 10} lr_0=0.1 ms=12\n" for t in range(1, 5)))
    assert reader_of(log) is None  # neither "tick" nor "ce" says what it is
    assert "loss" in (shape_of(log).reason or "")
    conf = tmp_path / "conf" / "run"
    conf.mkdir(parents=True)
    (tmp_path / "conf" / "tunescope.toml").write_text(
        '[ingest]\nstep = "tick"\nloss = "ce"\nmetrics = { "lr_0" = "lr" }\n'
    )
    shutil.copy(log, conf / "train.log")
    r = read(conf / "train.log")
    same(
        rows(r, "step", "loss", "lr"),
        [(1, 2.9, 0.1), (2, 2.8, 0.1), (3, 2.7, 0.1), (4, 2.6, 0.1)],
    )
    names = shape_of(conf / "train.log").keys
    assert (names["tick"].kind, names["ce"].column) == ("step", "loss")


def test_pretty_printed_json_with_records_nested_in_it(tmp_path):
    doc = {
        "run": "x",
        "history": {
            "rows": [{"iteration": i * 10, "total_loss": 2.2 - i / 10} for i in range(1, 4)]
        },
    }
    path = tmp_path / "history.json"
    path.write_text(json.dumps(doc, indent=2))
    r = read(path)
    same(rows(r, "step", "loss"), [(10, 2.1), (20, 2.0), (30, 1.9)])


def test_a_copy_of_a_file_another_reader_owns_is_not_another_run(tmp_path):
    ckpt = tmp_path / "checkpoint-20"
    ckpt.mkdir()
    state = {"log_history": [{"step": s, "loss": 2 - s / 100} for s in range(1, 21)]}
    (ckpt / "trainer_state.json").write_text(json.dumps(state, indent=2))
    assert "owns" in (shape_of(ckpt / "trainer_state.json").reason or "")
    assert not GeneralReader().detect(ckpt / "trainer_state.json")


def test_a_long_preamble_before_the_records_is_read_through(tmp_path):
    log = tmp_path / "job.out"
    preamble = "".join(
        f"config line {i}: model.layers.{i}.mlp = Linear(4096 -> 11008)\n" for i in range(6000)
    )
    records = "".join(f"rollout={s} rl_loss={1 - s / 100} kl=0.01\n" for s in range(1, 6))
    log.write_text(preamble + records)
    assert log.stat().st_size > 256 << 10
    r = read(log)
    assert [s for (s,) in rows(r, "step")] == [1, 2, 3, 4, 5]
