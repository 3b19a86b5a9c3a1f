"""More shapes of text log, each written here as a small sample of its shape:
block headers that carry several counters, tight ``name:value`` lines with
short names, logs that print only an evaluation's loss, pairs joined by `` - ``
or ``|``, hyphenated Megatron-DeepSpeed fields and an evaluation's loss written
without a colon on a step line. Each is read into a real store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunescope.ingest.discover import READERS
from tunescope.ingest.readers.general_shape import shape_of
from tunescope.ingest.readers.general_text import records
from tunescope.ingest.readers.vocabulary import is_eval_measure, meaning
from tunescope.ingest.store.database import Store
from tunescope.report.scoring import LOSS_POINTS


def reader_of(path: Path) -> str | None:
    return next((r.format for r in READERS if r.detect(path)), None)


def store_of(tmp_path: Path, name: str, text: str) -> Store:
    run = tmp_path / "runs" / "job"
    run.mkdir(parents=True)
    (run / name).write_text(text)
    return Store.open(tmp_path / "runs", cache_dir=tmp_path / "cache")


def q(store: Store, sql: str) -> list[tuple]:
    return store.cursor().execute(sql).fetchall()


def close(got: list[tuple], want: list[tuple], tol: float = 1e-6) -> None:
    """Rows equal, numbers to ``tol`` (None only where None is wanted)."""
    assert len(got) == len(want), got
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w), (g, w)
        for a, b in zip(g, w, strict=True):
            assert a == b if b is None else a == pytest.approx(b, abs=tol), (g, w)


# ---- block headers with several counters ------------------------------------------


def _block(step: int, loss: float, norm: float, total: int = 500) -> str:
    return (
        f"2031-03-04 10:00:{step:02d}.125\tnode-a-07:0\ttrainer.loop:412\tINFO\t"
        f"[step={step}/{total},epoch=0]\n"
        f"    optim/total_grad_norm={norm}\n"
        f"    train/CrossEntropyLoss={loss}\n"
        f"    train/Perplexity={round(2.718**loss):,}\n"
        f"    throughput/total_tokens={step * 40960:,}\n"
        f"    System/Peak GPU Memory (MB)={70000 + step:,}\n"
    )


def test_a_header_with_more_counters_and_tab_separated_prefix_fields(tmp_path):
    text = "".join(_block(s, 9.0 - s / 10, 1.5 - s / 100) for s in (5, 10, 15, 20))
    store = store_of(tmp_path, "train.log", text)
    assert reader_of(tmp_path / "runs" / "job" / "train.log") == "general"
    got = q(store, "SELECT step, loss, grad_norm, epoch FROM steps ORDER BY step")
    close(
        got, [(5, 8.5, 1.45, 0.0), (10, 8.0, 1.4, 0.0), (15, 7.5, 1.35, 0.0), (20, 7.0, 1.3, 0.0)]
    )
    assert q(store, "SELECT max(mem_peak_mb) FROM steps") == [(70020.0,)]
    tokens = q(store, "SELECT value FROM metrics WHERE name = 'throughput/total_tokens'")
    assert sorted(v for (v,) in tokens) == [204800, 409600, 614400, 819200]


def test_a_block_log_that_ends_in_a_crash_is_read_and_keeps_its_end(tmp_path):
    crash = (
        "Traceback (most recent call last):\n"
        '  File "/opt/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 9\n'
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: trainer failed\n"
    )
    text = "".join(_block(s, 9.0 - s / 10, 1.0) for s in (5, 10, 15, 20)) + crash
    store = store_of(tmp_path, "train.log", text)
    assert reader_of(tmp_path / "runs" / "job" / "train.log") == "general"
    assert q(store, "SELECT count(loss), max(step) FROM steps") == [(4, 20)]
    ends = q(store, "SELECT payload::VARCHAR FROM events WHERE kind = 'run_end'")
    assert len(ends) == 1 and "ChildFailedError" in ends[0][0]


def test_tab_separated_pairs_are_pairs_not_a_prefix(tmp_path):
    text = "".join(f"step:{s}\tloss:{3 - s / 10}\tlr:0.1\n" for s in range(1, 5))
    store = store_of(tmp_path, "train.log", text)
    close(
        q(store, "SELECT step, loss FROM steps ORDER BY step"),
        [(s, 3 - s / 10) for s in range(1, 5)],
    )


def test_a_config_dump_before_the_blocks_gives_no_evaluation(tmp_path):
    config = "\tINFO\tConfig(run=demo, eval_interval=500, eval_subset_num_batches=-1, seed=7)\n"
    text = config + "".join(_block(s, 9.0 - s / 10, 1.0) for s in (5, 10, 15))
    store = store_of(tmp_path, "train.log", text)
    assert shape_of(tmp_path / "runs" / "job" / "train.log").kind == "blocks"  # not the dump's line
    assert q(store, "SELECT count(loss) FROM steps") == [(3,)]
    assert q(store, "SELECT count(*) FROM metrics WHERE name LIKE 'eval%'") == [(0,)]


# ---- tight name:value lines -------------------------------------------------------


def test_tight_pairs_with_short_names_and_test_loss_lines(tmp_path):
    lines = ["s:0 tel:10.9500"]
    for s in range(6):
        lines.append(f"s:{s} trl:{10.9 - s / 10:.4f} lr:{(s + 1) * 1e-5:.6f} norm:{3 - s / 10:.2f}")
    lines.append("s:6 tel:10.2000")
    store = store_of(tmp_path, "main.log", "\n".join(lines) + "\n")
    got = q(store, "SELECT step, loss, lr, grad_norm FROM steps ORDER BY step")
    close(got, [(s, 10.9 - s / 10, (s + 1) * 1e-5, 3 - s / 10) for s in range(6)], 1e-4)
    evals = q(store, "SELECT step, value FROM metrics WHERE name = 'eval_loss' ORDER BY step")
    assert evals == [(0, 10.95), (6, 10.2)]


def test_a_log_with_only_an_evaluation_loss_is_read_as_evaluations(tmp_path):
    lines = []
    for s in range(0, 41):
        if s % 10 == 0:
            lines.append(f"step:{s}/40 val_loss:{4.0 - s / 40:.4f} train_time:{s * 250}ms")
        lines.append(f"step:{s + 1}/40 train_time:{(s + 1) * 250}ms step_avg:250.00ms")
    store = store_of(tmp_path, "run.txt", "\n".join(lines) + "\n")
    evals = q(store, "SELECT step, value FROM metrics WHERE name = 'eval_loss' ORDER BY step")
    close(evals, [(0, 4.0), (10, 3.75), (20, 3.5), (30, 3.25), (40, 3.0)])
    assert q(store, "SELECT count(loss) FROM steps") == [(0,)]
    assert store.last_report.problems == []  # read, not "none with a loss"
    assert [n for _, n, _ in q(store, LOSS_POINTS)] == [5]


def test_short_names_mean_nothing_else():
    assert meaning("s").kind == "step" and meaning("trl").column == "loss"
    assert meaning("tel").column == "eval_loss" and meaning("tel").kind == "eval"
    assert meaning("s", "ms").kind != "step"  # a unit after the value: not the counter
    assert is_eval_measure("eval_loss") and not is_eval_measure("eval_interval")
    assert not is_eval_measure("eval_batch_size") and not is_eval_measure("loss")


# ---- pairs joined by " - " or "|" --------------------------------------------------


def test_dash_joined_pairs_after_a_colour_prefix_past_the_first_64_kib(tmp_path):
    setup = "".join(
        f"(Worker pid=77) loading shard {i} of 4000 from /data/x\n" for i in range(2000)
    )
    assert len(setup) > 64 << 10
    recs = "".join(
        f"\x1b[36m(Runner pid=77)\x1b[0m step:{s} - seqlen/mean:812.0 - policy/pg_loss:"
        f"{0.5 / s:.4f} - policy/loss:{0.4 / s:.4f} - policy/grad_norm:{1 / s:.3f} - "
        f"policy/lr:1e-06 - timing/step:{30 + s:.1f}\n"
        for s in range(1, 7)
    )
    store = store_of(tmp_path, "train.out", setup + recs)
    got = q(store, "SELECT step, loss, grad_norm, lr FROM steps ORDER BY step")
    close(got, [(s, 0.4 / s, 1 / s, 1e-6) for s in range(1, 7)], 1e-3)
    pg = q(store, "SELECT count(*) FROM metrics WHERE name = 'policy/pg_loss'")
    assert pg == [(6,)]


def test_pipe_joined_pairs(tmp_path):
    lines = [
        f"epoch: 0|step: {s}|ppo_ep: 1|act_loss: {0.3 - s / 50:.3f}|cri_loss: {0.2 / (s + 1):.3f}"
        for s in range(5)
    ]
    store = store_of(tmp_path, "ppo.log", "\n".join(lines) + "\n")
    got = q(store, "SELECT step, loss FROM steps ORDER BY step")
    close(got, [(s, 0.3 - s / 50) for s in range(5)], 1e-3)


def test_a_line_with_one_counter_and_nothing_rising_is_no_run(tmp_path):
    log = tmp_path / "scores.log"
    log.write_text("".join(f"seed:{s} val_loss:{2 + s / 10} test_loss:{2.1}\n" for s in range(5)))
    assert reader_of(log) is None


def test_records_come_from_header_counters_and_the_lines_below():
    data = b"[step=3/9,epoch=1]\n    loss=2.5\n    lr=0.1\n"
    (rec,) = records(data)
    assert [(n, v, t) for n, v, _, t in rec.pairs] == [
        ("step", 3.0, 9),
        ("epoch", 1.0, None),
        ("loss", 2.5, None),
        ("lr", 0.1, None),
    ]


# ---- Megatron-DeepSpeed and step lines --------------------------------------------


def test_megatron_deepspeed_hyphenated_loss(tmp_path):
    lines = [
        f" iteration {i:8d}/     100 | consumed samples: {i * 64:12d} | learning rate: "
        f"{i * 1e-5:.3E} | global batch size:    64 | lm-loss: {11 - i / 10:.6E} | "
        "loss scale: 1.0 | grad norm: 2.000 | number of skipped iterations:   0 |"
        for i in range(1, 5)
    ]
    store = store_of(tmp_path, "job.out", "\n".join(lines) + "\n")
    assert reader_of(tmp_path / "runs" / "job" / "job.out") == "console"
    got = q(store, "SELECT step, loss, lr, grad_norm FROM steps ORDER BY step")
    close(got, [(i, 11 - i / 10, i * 1e-5, 2.0) for i in range(1, 5)])


def test_a_step_line_with_an_evaluation_loss_written_without_a_colon(tmp_path):
    lines = []
    for s in range(0, 31, 10):
        lines.append(f"step {s}: train loss {3 - s / 20:.4f} BPC, val loss {3.1 - s / 40:.4f} BPC")
        lines.append(f"iter {s}: loss {3 - s / 19:.4f} BPC, time 99.00ms, mfu 9.00%")
    store = store_of(tmp_path, "output.log", "\n".join(lines) + "\n")
    evals = q(store, "SELECT step, value FROM metrics WHERE name = 'eval_loss' ORDER BY step")
    close(evals, [(0, 3.1), (10, 2.85), (20, 2.6), (30, 2.35)])


# ---- the iteration within an epoch, in brackets after it -------------------------------


def test_mmcv_epoch_and_bracketed_iteration_are_counted_on_into_steps(tmp_path):
    """mmcv's ``Epoch [e][i/n]`` lines (MMDetection, MMSegmentation, ...): the
    iteration starts again each epoch, and its total is the epoch's."""
    lines = []
    for epoch in (1, 2):
        for i in (50, 100, 150):
            loss = 2.5 - 0.1 * (3 * (epoch - 1) + i // 50)
            lines.append(
                f"2021-03-11 17:35:{i // 10:02d},921 - mmdet - INFO - Epoch [{epoch}][{i}/150]\t"
                f"lr: 9.890e-04, eta: 1 day, 10:00:39, time: 0.340, data_time: 0.134, "
                f"memory: 2949, loss_cls: 1.0965, loss: {loss:.4f}\n"
            )
    store = store_of(tmp_path, "20210311_173506.log", "".join(lines))
    close(
        q(store, "SELECT step, loss, epoch FROM steps ORDER BY step"),
        [(50, 2.4, 1), (100, 2.3, 1), (150, 2.2, 1), (151, 2.1, 2), (201, 2.0, 2), (251, 1.9, 2)],
    )
    assert q(store, "SELECT total_steps FROM runs") == [(None,)]  # 150 is an epoch's


def test_imagenet_example_lines_with_one_line_per_epoch(tmp_path):
    """PyTorch's ImageNet example's ``Epoch: [e][ i/n]`` lines with running
    averages in brackets, here only the first batch of each epoch: the epochs
    give the steps."""
    text = "".join(
        f"Epoch: [{e}][  0/391]\tTime  1.505 ( 1.505)\tLoss {3.0 - 0.2 * e:.4e} "
        f"({3.0 - 0.2 * e:.4e})\tAcc@1  14.06 ( 14.06)\n"
        for e in range(5)
    )
    store = store_of(tmp_path, "training.log", text)
    close(
        q(store, "SELECT step, loss FROM steps ORDER BY step"),
        [(0, 3.0), (1, 2.8), (2, 2.6), (3, 2.4), (4, 2.2)],
    )
