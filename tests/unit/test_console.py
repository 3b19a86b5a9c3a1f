"""Console output, metric CSVs and home-made JSON records: tricky lines, one generated log per trainer family, several
runs in one file, live appends and bad input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from run_rows import one, open_store, rows, span, start_payload, status

from tunescope.ingest.discover import discover
from tunescope.ingest.readers.console import detect as console_detect
from tunescope.ingest.readers.console import megatron, pydict
from tunescope.ingest.readers.console.reader import ConsoleReader

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real"

# ---- tricky lines --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b"{'loss': 1.23, 'grad_norm': 0.5, 'learning_rate': 2e-05, 'epoch': 0.1}",
            {"loss": 1.23, "grad_norm": 0.5, "learning_rate": 2e-05, "epoch": 0.1},
        ),
        (
            b"{'loss': '7.948', 'token_acc': '0.5679', 'elapsed_time': '14s'}",
            {"loss": 7.948, "token_acc": 0.5679, "elapsed_time": "14s"},
        ),
        (
            b"{'loss': tensor(1.2300, device='cuda:0'), 'grad_norm': np.float64(0.5)}",
            {"loss": 1.23, "grad_norm": 0.5},
        ),
        (
            b"{\"note\": \"it's, fine\", 'loss': 2.0, 'name': 'a \\'quoted\\' word'}",
            {"note": "it's, fine", "loss": 2.0, "name": "a \\'quoted\\' word"},
        ),
        (b"{'loss': 1.5, 'x': None, 'flag': True}", {"loss": 1.5, "x": None, "flag": 1.0}),
        (b"{'lo\xffss': 1.0, 'loss': 2.0}", {"lo\ufffdss": 1.0, "loss": 2.0}),
        (b"{\x1b[32m'loss'\x1b[0m: 3.5}", {"loss": 3.5}),
    ],
)
def test_dict_values(raw, expected):
    assert pydict.parse(raw) == expected


def test_non_finite_tokens_are_kept():
    got = pydict.parse(b"{'loss': nan, 'grad_norm': inf, 'x': -inf, 'y': 'NaN'}")
    assert math.isnan(got["loss"]) and got["grad_norm"] == math.inf
    assert got["x"] == -math.inf and math.isnan(got["y"])


def test_dict_split_by_a_progress_bar_redraw():
    raw = b"{'loss': 1.2, 'gra\r 10%|#   | 10/100 [00:10<00:50,  1.2it/s]\rd_norm': 0.5}"
    m = pydict.DICT.search(raw)
    assert m is not None and pydict.parse(m.group()) == {"loss": 1.2, "grad_norm": 0.5}


def test_a_very_long_line_costs_one_bounded_scan():
    # an unclosed brace on a 3 MB line: the dict pattern gives up after 8 KiB
    line = b"{'" + b"x" * 3_000_000 + b"}\n" + b"{'loss': 1.0}\n"
    found = [m.group() for m in pydict.DICT.finditer(line * 3)]
    assert found == [b"{'loss': 1.0}"] * 3


def test_megatron_fields():
    line = (
        b" iteration      120/  500000 | consumed samples: 3840 | elapsed time per iteration "
        b"(ms): 612.3 | learning rate: 4.687E-06 | global batch size: 32 | lm loss: nan | "
        b"loss scale: 65536.0 | grad norm: inf | number of skipped iterations: 2 | "
        b"number of nan iterations: 1 |"
    )
    step, total, canon, extras = megatron.iteration(megatron.ITERATION.search(line))
    assert (step, total) == (120, 500000)
    assert math.isnan(canon["loss"]) and canon["grad_norm"] == math.inf
    assert canon["step_time_s"] == pytest.approx(0.6123) and canon["lr"] == 4.687e-06
    assert extras["skipped_iterations"] == 2 and extras["nan_iterations"] == 1
    assert extras["loss_scale"] == 65536.0


# ---- generated logs, one per trainer family -------------------------------------------


def _bar(n: int, total: int, desc: str = "") -> str:
    return f"\r{desc}{100 * n // total:3d}%|##   | {n}/{total} [00:{n:02d}<00:10,  1.50it/s]"


def hf_log(steps: int = 30, every: int = 5, end: str = "summary") -> str:
    out = ["***** Running training *****\n", "  Num examples = 1000\n"]
    for s in range(1, steps + 1):
        out.append(_bar(s, steps))
        if s % every == 0:
            loss = 2.0 - s / steps
            out.append(
                f"{{'loss': {loss:.4f}, 'grad_norm': 0.5, 'learning_rate': 1e-05, "
                f"'epoch': {s / steps:.2f}}}\n"
            )
        if s == steps // 2:
            out.extend(_bar(k, 8, "eval ") for k in range(1, 9))
            out.append("{'eval_loss': 1.9, 'eval_runtime': 1.2, 'epoch': 0.5}\n")
    if end == "summary":
        out.append("{'train_runtime': 12.0, 'train_loss': 1.5, 'epoch': 1.0}\n")
    elif end == "traceback":
        out.append(
            'Traceback (most recent call last):\n  File "train.py", line 3, in <module>\n'
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        )
    elif end == "ctrl-c":
        out.append('Traceback (most recent call last):\n  File "x.py"\nKeyboardInterrupt\n')
    return "".join(out)


def megatron_log(n: int = 20, start: int = 1, total: int = 100) -> str:
    out = ["[before the start of training step] datetime: 2024-01-01 00:00:00\n"]
    for i in range(start, start + n):
        if i == start:
            for r in range(2):
                out.append(
                    f"[Rank {r}] (after {i} iterations) memory (MB) | allocated: {1000 + r} | "
                    f"max allocated: {2000 + r} | reserved: {3000 + r} | max reserved: 3000\n"
                )
        out.append(
            f" iteration {i:8d}/{total:8d} | consumed samples: {i * 8} | elapsed time per "
            f"iteration (ms): 500.0 | learning rate: 1.0E-04 | global batch size: 8 | "
            f"lm loss: {3.0 - i / 100:.6E} | loss scale: 1.0 | grad norm: 1.000 | "
            f"number of skipped iterations:   0 | number of nan iterations:   0 |\n"
        )
    out.append(" validation loss at iteration 10 | lm loss value: 2.9E+00 | lm loss PPL: 18.1 |\n")
    return "".join(out)


def torchtune_log() -> str:
    return "".join(
        f"Step {s} | loss:{2.0 - s / 100:.4f} lr:2e-05 tokens_per_second_per_gpu:812.3 \n"
        for s in range(1, 21)
    )


def loop_log() -> str:
    return "".join(
        f"[2024-01-01 00:00:{s:02d}] step {s}/40, loss={3.0 - s / 50:.3f}, lr=0.0001, "
        f"grad_norm=0.9\n"
        for s in range(1, 21)
    )


@pytest.mark.parametrize(
    ("text", "family", "steps", "total"),
    [
        (hf_log(), "dicts", (6, 5, 30), 30),
        (megatron_log(), "megatron", (20, 1, 20), 100),
        (torchtune_log(), "lines", (20, 1, 20), None),
        (loop_log(), "lines", (20, 1, 20), 40),
    ],
    ids=["hf-trainer", "megatron", "torchtune", "print-loop"],
)
def test_generated_console_logs(tmp_path, text, family, steps, total):
    root = tmp_path / "runs"
    (root / "job").mkdir(parents=True)
    (root / "job" / "train.log").write_text(text)
    store = open_store(root, tmp_path)
    assert span(store, "job")[:3] == steps
    start = start_payload(store, "job")
    assert start["family"] == family and start.get("total_steps") == total
    assert start["steps_inferred"] is False


def test_hf_steps_come_from_the_training_bar_not_the_eval_bar(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "nohup.out").write_text(hf_log())
    store = open_store(tmp_path / "r", tmp_path)
    steps = [r[0] for r in rows(store, "SELECT step FROM steps ORDER BY step")]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert one(store, "SELECT step FROM events WHERE kind = 'eval'") == 15
    assert start_payload(store, "r")["logging_steps"] == 5
    assert status(store, "r") == "completed"


def test_megatron_memory_lines_are_rank_rows(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "log.txt").write_text(megatron_log())
    store = open_store(tmp_path / "r", tmp_path)
    got = rows(
        store,
        "SELECT rank, mem_allocated_mb, mem_peak_mb, mem_reserved_mb FROM steps "
        "WHERE step = 1 ORDER BY rank",
    )
    assert got == [(0, 1000.0, 2000.0, 3000.0), (1, 1001.0, 2001.0, 3001.0)]
    assert one(store, "SELECT value FROM metrics WHERE name = 'eval_lm_loss'") == 2.9


@pytest.mark.parametrize(
    ("end", "expected", "error"),
    [
        ("summary", "completed", None),
        ("traceback", "failed", "torch.OutOfMemoryError: CUDA out of memory"),
        ("ctrl-c", "interrupted", "KeyboardInterrupt"),
    ],
)
def test_the_end_of_the_log_sets_the_status(tmp_path, end, expected, error):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train.log").write_text(hf_log(end=end))
    store = open_store(tmp_path / "r", tmp_path)
    assert status(store, "r") == expected
    payload = json.loads(one(store, "SELECT payload::VARCHAR FROM events WHERE kind = 'run_end'"))
    if error:
        assert payload["error"].startswith(error)


def test_a_traceback_that_training_survives_does_not_end_the_run(tmp_path):
    text = hf_log(steps=10, end="")
    text += "Traceback (most recent call last):\nValueError: a warning that was printed\n"
    text += "".join(f"{_bar(s, 20)}{{'loss': 1.0, 'epoch': 1}}\n" for s in (10, 15, 20))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train.log").write_text(text.replace("/10 [", "/20 ["))
    store = open_store(tmp_path / "r", tmp_path)
    ends = rows(store, "SELECT payload->>'status' FROM events WHERE kind = 'run_end'")
    assert ends == [("completed",)]  # step 20 of 20; the traceback did not end it
    assert one(store, "SELECT count(*) FROM events WHERE kind = 'resume'") == 0


def test_several_runs_in_one_file(tmp_path):
    # a crashed run, then a rerun from scratch appended, then a resume of the rerun
    text = megatron_log(n=10, total=30)
    text += "Traceback (most recent call last):\nRuntimeError: NCCL timeout\n"
    text += megatron_log(n=20, total=30)  # counts from 1 again: a new run
    text += "Traceback (most recent call last):\nRuntimeError: node lost\n"
    text += megatron_log(n=11, start=20, total=30)  # from a checkpoint at 19: a resume
    root = tmp_path / "runs"
    (root / "exp").mkdir(parents=True)
    (root / "exp" / "train.log").write_text(text)
    store = open_store(root, tmp_path)
    got = rows(store, "SELECT run_id, name, status, steps_logged FROM runs ORDER BY 1")
    assert got == [
        ("exp", "exp", "failed", 10),
        ("exp/train.log#2", "train.log#2", "completed", 30),
    ]
    resume = rows(store, "SELECT run_id, step FROM events WHERE kind = 'resume'")
    assert resume == [("exp/train.log#2", 20)]
    assert start_payload(store, "exp/train.log#2")["run_in_file"] == 2
    err = one(store, "SELECT payload->>'error' FROM events WHERE kind = 'run_end' AND run_id='exp'")
    assert err == "RuntimeError: NCCL timeout"


def test_a_rerun_without_steps_in_the_dicts_starts_a_new_run(tmp_path):
    text = hf_log(steps=10, every=2, end="ctrl-c").replace("/10 [", "/x [")
    text += hf_log(steps=10, every=2).replace("/10 [", "/x [")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train.log").write_text(text)
    store = open_store(tmp_path / "r", tmp_path)
    got = rows(store, "SELECT run_id, status, steps_logged FROM runs ORDER BY 1")
    assert got == [("r", "interrupted", 5), ("train.log#2", "completed", 5)]


def test_two_logs_in_one_folder_are_two_runs(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "slurm-1.out").write_text(torchtune_log())
    (root / "slurm-2.out").write_text(loop_log())
    store = open_store(root, tmp_path)
    assert [r[0] for r in rows(store, "SELECT run_id FROM runs ORDER BY 1")] == [
        "slurm-1.out",
        "slurm-2.out",
    ]


# ---- live ------------------------------------------------------------------------------


def test_live_append_with_a_torn_last_line(tmp_path):
    root = tmp_path / "runs"
    (root / "live").mkdir(parents=True)
    log = root / "live" / "train.log"
    lines = megatron_log(n=30, total=30).splitlines(keepends=True)
    head = "".join(lines[:12])
    torn = lines[12][:40]
    log.write_text(head + torn)
    store = open_store(root, tmp_path)
    assert span(store, "live")[:3] == (9, 1, 9)
    assert status(store, "live") == "interrupted"  # no clock, stopped short: not "running"
    with open(log, "a") as f:
        f.write(lines[12][40:] + "".join(lines[13:20]))
    store.ingest()
    assert span(store, "live")[:3] == (17, 1, 17)
    assert status(store, "live") == "running"  # it grew: taken up again
    assert one(store, "SELECT count(*) FROM events WHERE kind = 'resume'") == 1
    got = one(store, "SELECT loss FROM steps WHERE step = 10 AND rank = 0")
    assert got == pytest.approx(2.9)  # the torn line, read whole once its newline came
    with open(log, "a") as f:
        f.write("".join(lines[20:]))
    store.ingest()
    assert span(store, "live")[:3] == (30, 1, 30)
    assert status(store, "live") == "completed"  # iteration 30 of 30


def test_an_unchanged_log_is_not_read_again(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "train.log").write_text(megatron_log())
    store = open_store(tmp_path / "r", tmp_path)
    report = store.ingest()
    assert report.changed == 0 and report.rows == {"steps": 0, "metrics": 0, "events": 0}


# ---- CSV and records ---------------------------------------------------------------


def _lightning(path: Path, steps: range, loss0: float) -> None:
    path.parent.mkdir(parents=True)
    lines = ["epoch,step,train_loss_step,val_loss,train_loss_epoch"]
    for s in steps:
        lines.append(f"0,{s},{loss0 - s / 1000:.4f},,")
        if s % 20 == 19:
            lines.append(f"0,{s},,{loss0:.3f},")
    path.write_text("\n".join(lines) + "\n")


def test_lightning_versions_resume_or_start_again(tmp_path):
    root = tmp_path / "exp"
    _lightning(root / "lightning_logs" / "version_0" / "metrics.csv", range(9, 100, 10), 2.0)
    _lightning(root / "lightning_logs" / "version_1" / "metrics.csv", range(109, 200, 10), 1.9)
    _lightning(root / "lightning_logs" / "version_2" / "metrics.csv", range(9, 50, 10), 2.0)
    store = open_store(root, tmp_path)
    got = rows(store, "SELECT run_id, steps_logged FROM runs ORDER BY 1")
    assert got == [("exp", 20), ("lightning_logs/version_2", 5)]
    assert one(store, "SELECT count(*) FROM metrics WHERE name = 'val_loss'") == 5 + 5 + 2
    assert rows(store, "SELECT step FROM events WHERE kind = 'resume'") == [(109,)]


def test_plain_csv_and_configured_keys(tmp_path):
    root = tmp_path / "runs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "log.csv").write_text("iter,ce,lr_0\n1,2.5,0.1\n2,2.4,0.1\n3,2.3,0.1\n")
    (root / "pyproject.toml").write_text(
        '[tool.tunescope.ingest]\nstep = "iter"\nloss = "ce"\nmetrics = { "lr_0" = "lr" }\n'
    )
    store = open_store(root, tmp_path)
    assert rows(store, "SELECT step, loss, lr FROM steps ORDER BY step") == [
        (1, 2.5, 0.1),
        (2, 2.4, 0.1),
        (3, 2.3, 0.1),
    ]


def test_jsonl_step_and_loss_keys(tmp_path):
    root = tmp_path / "runs"
    (root / "w").mkdir(parents=True)
    recs = [{"train/global_step": s, "train/loss": 1.0 / s, "grad_norm": "nan"} for s in (1, 2, 3)]
    (root / "w" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    store = open_store(root, tmp_path)
    got = rows(store, "SELECT step, loss, grad_norm FROM steps ORDER BY step")
    assert [r[:2] for r in got] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert all(math.isnan(r[2]) for r in got)  # NaN on every row arrives as NaN


def test_llamafactory_2023_rows_with_null_fields(tmp_path):
    (tmp_path / "r").mkdir()
    rows_ = [
        {
            "current_steps": s,
            "total_steps": 30,
            "loss": 2.0 - s / 30,
            "reward": None,
            "eval_loss": None,
            "predict_loss": None,
            "learning_rate": 1e-4,
            "epoch": s / 30,
            "percentage": 100 * s / 30,
            "elapsed_time": f"0:00:{s:02d}",
            "remaining_time": "0:00:10",
        }
        for s in range(10, 31, 10)
    ]
    (tmp_path / "r" / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_))
    store = open_store(tmp_path / "r", tmp_path)
    assert rows(store, "SELECT step, lr FROM steps ORDER BY step") == [
        (10, 1e-4),
        (20, 1e-4),
        (30, 1e-4),
    ]


def test_a_claimed_file_without_loss_says_so(tmp_path):
    (tmp_path / "r").mkdir()
    rows_ = [{"current_steps": s, "total_steps": 9, "eval_loss": 1.0} for s in range(3)]
    (tmp_path / "r" / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_))
    store = open_store(tmp_path / "r", tmp_path)
    assert [str(p) for p in store.last_report.problems] == [
        f"{tmp_path / 'r' / 'trainer_log.jsonl'}: 3 rows, none with a loss; nothing read"
    ]


# ---- what is not read ----------------------------------------------------------------


def test_wandb_console_output_beside_the_run_file_is_read_once(tmp_path):
    run = tmp_path / "wandb" / "run-20240101_000000-abc"
    (run / "files").mkdir(parents=True)
    (run / "files" / "output.log").write_text(hf_log())
    (run / "run-abc.wandb").write_bytes(b":W&B" + b"\0" * 16)
    unclaimed: list = []
    sources, _ = discover(tmp_path, unclaimed=unclaimed)
    assert not [s for s in sources if s.reader.format == "console"]
    assert (
        run / "files" / "output.log",
        "the same run as run-abc.wandb beside it, read from there",
    ) in unclaimed
    os.remove(run / "run-abc.wandb")
    sources, _ = discover(tmp_path)
    assert [s.reader.format for s in sources] == ["console"]


def test_a_big_binary_file_named_like_a_log_is_one_quick_line(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    big = root / "model.log"
    with open(big, "wb") as f:  # 1 GiB, sparse: a line-by-line read would take minutes
        f.write(b"\x7fELF\x00\x01" + os.urandom(4096))
        f.seek((1 << 30) - 1)
        f.write(b"\n")
    store = open_store(root, tmp_path)
    assert [str(p) for p in store.last_report.problems] == [
        f"{big}: binary data, not a text log; skipped"
    ]
    assert one(store, "SELECT count(*) FROM runs") == 0
    assert console_detect.kind_of(big) == "binary"  # from its first MiB, whatever its size


def test_verbose_ingest_lists_unclaimed_files(tmp_path, capsys):
    from tunescope.cli import main

    root = tmp_path / "runs"
    root.mkdir()
    (root / "setup.log").write_text("pip install ok\n")
    (root / "notes.md").write_text("# notes\n")
    assert main(["ingest", str(root), "--cache-dir", str(tmp_path / "c"), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "not read:  2 files no reader took" in out
    assert "setup.log: looks like a log, but no metric lines" in out
    assert "    notes.md\n" in out


def test_console_reader_needs_step_lines():
    assert ConsoleReader().detect(REAL / "megatron-gpt2-finetune" / "finetune.log")
    assert console_detect.family_of(b"loading model...\nall done\n") is None


def test_ingest_config_errors_name_the_key():
    from tunescope.config import parse_config
    from tunescope.errors import ConfigError

    assert parse_config({"ingest": {"step": "it", "loss": ["ce"]}}).ingest == {
        "step": ["it"],
        "loss": ["ce"],
    }
    with pytest.raises(ConfigError, match=r"ingest\.stp: unknown key"):
        parse_config({"ingest": {"stp": "it"}})
    with pytest.raises(ConfigError, match="'learning_rate' is not a step column"):
        parse_config({"ingest": {"metrics": {"lr0": "learning_rate"}}})
