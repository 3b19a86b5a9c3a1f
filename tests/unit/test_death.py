"""TS601 why-it-died: the crash lines ingest keeps from console logs, SLURM
outputs and W&B's output.log, and the cause the detector names from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from wandb_file import field, history, wandb_file

from tunescope.detectors import death
from tunescope.detectors.engine import analyze
from tunescope.detectors.scans import death_oom
from tunescope.ingest.readers import crash_tail
from tunescope.ingest.store.database import Store
from tunescope.report.explain import explain_text

CRASH = Path(__file__).resolve().parents[2] / "fixtures" / "formats" / "crash"


def _open(root: Path, tmp_path: Path) -> Store:
    return Store.open(root, cache_dir=tmp_path / "cache")


def _run_end(store: Store, run_id: str) -> dict:
    got = store.cursor().execute(
        "SELECT payload::VARCHAR FROM events WHERE run_id = ? AND kind = 'run_end'", [run_id]
    )
    return json.loads(got.fetchall()[-1][0])


@pytest.fixture(scope="module")
def crash_findings(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    store = _open(CRASH, tmp)
    found = {f.run: f for f in analyze(store, select="TS601")}
    status = dict(store.cursor().execute("SELECT run_id, status FROM runs").fetchall())
    return store, found, status


# run dir -> cause, severity, line of the evidence, text on it, the run's status
EXPECTED = {
    "oom-hf": ("cuda-oom", "error", 17, "Tried to allocate 2.00 GiB", "failed"),
    "oom-new": ("cuda-oom", "error", 16, "GPU 0 has a total capacity of 79.14 GiB", "failed"),
    "nccl-timeout": ("nccl-timeout", "error", 16, "Watchdog caught", "failed"),
    "host-oom": ("exit-9", "error", 12, "exitcode: -9", "failed"),
    "segfault": ("exit-11", "error", 12, "exitcode: -11", "failed"),
    "nan-assert": ("non-finite", "error", 13, "ValueError: loss is nan", "failed"),
    "disk-full": ("disk-full", "error", 20, "No space left on device", "failed"),
    "time-limit": ("time-limit", "error", 24, "DUE TO TIME LIMIT", "interrupted"),
    "preempted": ("preemption", "warning", 10, "DUE TO PREEMPTION", "interrupted"),
    "data-error": ("data-error", "error", 16, "KeyError: 'labels'", "failed"),
    "import-error": ("import-error", "error", 7, "No module named 'flash_attn'", "failed"),
    "keyboard": ("keyboard-interrupt", "info", 14, "KeyboardInterrupt", "interrupted"),
    "slurm-cancel": ("cancelled", "warning", 11, "CANCELLED AT 2024-09-14", "interrupted"),
    "elastic-sigterm": ("preemption", "warning", 7, "Received 15 death signal", "interrupted"),
    "torn-oom": ("cuda-oom", "error", 8, "Tried to allocate 48.00 MiB", "failed"),
    "ray-worker": ("worker-lost", "error", 7, "RayTaskError(ActorDiedError)", "failed"),
    "cuda-setup": ("cuda-setup", "error", 8, "nvrtc: error", "failed"),
    "device-mismatch": ("device-mismatch", "error", 8, "on the same device", "failed"),
    "write-failed": ("disk-full", "error", 10, "PytorchStreamWriter failed writing", "failed"),
    "jax-cuda": ("cuda-setup", "error", 8, "not implemented for CUDA below", "failed"),
}


@pytest.mark.parametrize("run", sorted(EXPECTED))
def test_each_cause_is_named_from_the_console_log(crash_findings, run):
    _, found, status = crash_findings
    cause, severity, line, text, st = EXPECTED[run]
    f = found[run]
    assert (f.evidence["cause"], f.severity.value) == (cause, severity)
    assert f.evidence["line"] == line and text in f.evidence["text"]
    assert f"line {line}: " in f.message
    assert status[run] == st
    # the line number is the file's own
    source = next((CRASH / run).iterdir())
    assert text.encode() in source.read_bytes().split(b"\n")[line - 1]


def test_a_handled_out_of_memory_mid_run_is_not_a_death(crash_findings):
    _, found, status = crash_findings
    assert "handled-oom" not in found
    assert status["handled-oom"] == "completed"


def test_a_crash_before_any_step_line_is_a_run(crash_findings):
    store, found, _ = crash_findings
    assert found["data-error"].step_start is None
    assert "before step 1" in found["data-error"].message
    assert "nothing was trained" in found["import-error"].message
    end = _run_end(store, "import-error")
    assert end["status"] == "failed" and end["log_file"].endswith("train.log")
    assert [7, "ModuleNotFoundError: No module named 'flash_attn'"] in end["log_tail"]


def test_out_of_memory_numbers_and_the_fix_in_the_finding(crash_findings):
    _, found, _ = crash_findings
    f = found["oom-hf"]
    assert "tried to allocate 2.00 GiB with 0.51 GiB free of 79.15 GiB" in f.message
    assert f.evidence["memory"]["allocated_gib"] == pytest.approx(76.20)
    assert "No memory metrics were logged before the crash" in f.message
    assert f.step_start == 2 and "(of 30)" in f.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 512.00 MiB "
            "(GPU 3; 23.69 GiB total capacity; 21.10 GiB already allocated; 301.06 MiB free; "
            "22.51 GiB reserved in total by PyTorch)",
            {"tried_gib": 0.5, "total_gib": 23.69, "free_gib": 0.294, "reserved_gib": 22.51},
        ),
        (
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 7.83 GiB. GPU 0 has "
            "a total capacity of 79.14 GiB of which 3.12 GiB is free. Of the allocated memory "
            "71.40 GiB is allocated by PyTorch, and 4.08 GiB is reserved by PyTorch but "
            "unallocated.",
            {"tried_gib": 7.83, "total_gib": 79.14, "free_gib": 3.12, "unallocated_gib": 4.08},
        ),
    ],
)
def test_both_forms_of_the_out_of_memory_message(text, expected):
    got = death_oom.parse(text)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=0.01), key


def test_the_fix_follows_the_config():
    n = {"tried_gib": 2.0, "free_gib": 0.5, "unallocated_gib": 0.2}
    base = {
        "micro_batch": 8.0,
        "max_length": 4096.0,
        "gradient_checkpointing": True,
        "finetuning_type": "lora",
        "quantized": False,
        "zero_stage": None,
        "offload": False,
    }
    assert death_oom.fix(n, base)[0] == "smaller micro-batch"
    assert "from 8 to 4" in death_oom.fix(n, base)[1]
    assert death_oom.fix(n, {**base, "gradient_checkpointing": False})[0] == (
        "gradient checkpointing"
    )
    full = {**base, "finetuning_type": "full", "zero_stage": 2.0}
    assert death_oom.fix(n, full)[0] == "ZeRO-3/offload"
    one = {**base, "micro_batch": 1.0, "max_length": 1024.0}
    assert death_oom.fix(n, one)[0] == "QLoRA"
    frag = {**n, "unallocated_gib": 3.0}
    assert death_oom.fix(frag, base)[0] == "allocator fragmentation"
    assert death_oom.settings({"config": {"deepspeed": "examples/ds_z3_offload.json"}})[
        "zero_stage"
    ] == pytest.approx(3)


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        (["ERROR: exitcode  : -7 (pid: 4411)"], "exit-7"),
        (["Main process received SIGTERM, exiting"], "preemption"),
        (["RuntimeError: Detected mismatch between collectives on ranks"], "collective-mismatch"),
        (["torch.distributed.DistBackendError: NCCL error in: ncclSystemError"], "nccl-error"),
        (["OSError: [Errno 122] Disk quota exceeded"], "disk-full"),
        (["RuntimeError: found inf in gradients of the loss"], "non-finite"),
        (
            [
                '  File "/x/hf_argparser.py", line 339, in parse_args_into_dataclasses',
                "ValueError: x",
            ],
            "config-error",
        ),
        (
            ["datasets.exceptions.DatasetGenerationError: An error occurred"],
            "data-error",
        ),
        (["slurmstepd: error: *** JOB 9 ON n1 CANCELLED AT 2024-01-01T00:00:00 ***"], "cancelled"),
        (["RuntimeError: CUDA error: an illegal memory access was encountered"], "exception"),
        (["something went wrong"], "unknown"),
        (
            ["torch.distributed.elastic.multiprocessing.api.SignalException: got signal: 15"],
            "preemption",
        ),
        (["ERROR: failed (exitcode: -15) local_rank: 0"], "preemption"),
        (["ray.exceptions.ActorUnavailableError: The actor is unavailable"], "worker-lost"),
        (["RuntimeError: CUDA error: no kernel image is available for execution"], "cuda-setup"),
    ],
)
def test_classify(lines, key):
    got = death.classify([(i + 1, t) for i, t in enumerate(lines)])
    assert got is not None and got["key"] == key


def test_a_tokenizer_line_before_the_crash_does_not_make_it_a_data_error():
    lines = [
        (1, "[INFO|tokenization_utils_base.py:2106] loading file tokenizer.json"),
        (2, "Traceback (most recent call last):"),
        (3, "RuntimeError: CUDA error: device-side assert triggered"),
    ]
    got = death.classify(lines)
    assert got is not None and got["key"] == "exception" and got["label"] == "RuntimeError"


def test_crash_lines_are_bounded_numbered_and_free_of_secrets():
    frames = "".join(f'  File "/site-packages/mod{i}.py", line {i}, in f\n' for i in range(5000))
    data = (
        b"step line\n" * 10
        + b"export HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz123456\n"
        + b"Traceback (most recent call last):\n"
        + frames.encode()
        + b"requests.exceptions.HTTPError: 401 for https://user:s3cretpass@hub.example.com/x\n"
        + b"api_key='sk-0123456789abcdefghijklmnop' password=hunter2hunter2\n"
        + b"\xff\xfe binary garbage \x00\n"
        + b"RuntimeError: boom\n"
    )
    lo = data.index(b"Traceback")
    lines = crash_tail.crash_lines(data, lo, len(data), 101)
    assert len(lines) <= crash_tail.MAX_LINES
    assert sum(len(t) for _, t in lines) <= crash_tail.MAX_BYTES
    text = "\n".join(t for _, t in lines)
    for secret in ("hf_abcdefghijklmnop", "s3cretpass", "sk-0123456789", "hunter2hunter2"):
        assert secret not in text
    assert lines[-1] == [101 + data.count(b"\n") - 1, "RuntimeError: boom"]
    first = [n for n, t in lines if t.startswith("Traceback")]
    assert first == [111 + 1]  # ten step lines, the export line, then the traceback


def test_the_line_number_of_a_crash_appended_to_a_log_already_read(tmp_path):
    run = tmp_path / "runs" / "live"
    run.mkdir(parents=True)
    log = run / "train.log"
    head = (CRASH / "oom-hf" / "train.log").read_text().split("\nTraceback")[0] + "\n"
    log.write_text(head + "{'loss': 2.0, 'grad_norm': 0.5, 'learning_rate': 2e-05, 'epoch': 0.1}\n")
    store = _open(tmp_path / "runs", tmp_path)
    assert not analyze(store, select="TS601")
    n_before = len(log.read_text().splitlines())
    with log.open("a") as f:
        f.write("Traceback (most recent call last):\n")
        f.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB\n")
    store = _open(tmp_path / "runs", tmp_path)
    (f,) = analyze(store, select="TS601")
    assert f.evidence["cause"] == "cuda-oom" and f.evidence["line"] == n_before + 2


def test_wandb_output_log_is_read_into_the_same_run(tmp_path):
    root = tmp_path / "wandb"
    run = root / "run-20240514_091203-abc123"
    (run / "files").mkdir(parents=True)
    shutil.copy(CRASH / "oom-new" / "nohup.out", run / "files" / "output.log")
    config = field(5, field(1, field(1, b"logging_steps") + field(16, b'{"value": 1}')))
    meta = field(17, field(1, b"abc123") + field(3, b"proj") + field(8, b"sft"))
    rows = [
        history({"_step": str(i), "train/global_step": str(i + 1), "train/loss": str(2.0 - i / 10)})
        for i in range(5)
    ]
    (run / "run-abc123.wandb").write_bytes(
        wandb_file([config, meta, *rows, field(18, field(1, 1))])
    )
    store = _open(root, tmp_path)
    assert [r[0] for r in store.cursor().execute("SELECT run_id FROM runs").fetchall()] == [
        run.name
    ]
    end = _run_end(store, run.name)
    assert end["exit_code"] == 1 and end["log_file"].endswith("files/output.log")
    (f,) = analyze(store, select="TS601")
    assert f.evidence["cause"] == "cuda-oom" and "output.log line 16" in f.message


def test_explain_has_the_sections():
    text = explain_text(death)
    for section in ("What it flags", "Why it matters", "Example", "Suggestion", "Options"):
        assert section in text
    assert "evidence-lines" in text


def test_every_surface_shows_the_cause(tmp_path):
    from tunescope.detectors.engine import run_summaries
    from tunescope.report import formats as report
    from tunescope.report import html as html_report
    from tunescope.watch import Watcher

    root = tmp_path / "runs"
    shutil.copytree(CRASH / "oom-hf", root / "oom-hf")
    store = _open(root, tmp_path)
    findings = analyze(store)
    runs = run_summaries(store, findings)
    assert runs[0]["status"] == "failed" and runs[0]["cause"] == "CUDA out of memory"
    shown = "oom-hf: failed (CUDA out of memory), step 2/30"
    assert report.text(findings, runs).startswith(shown)
    assert "| oom-hf | failed (CUDA out of memory) |" in report.markdown(findings, runs)
    assert json.loads(report.as_json(findings, runs))["runs"][0]["cause"] == "CUDA out of memory"
    page = html_report.build(findings, runs)
    assert "failed (CUDA out of memory)</span>" in page
    watcher = Watcher(
        Store(root, tmp_path / "watch"), None, include_finished=True, log=lambda _: None
    )
    (alert,) = watcher.poll()
    assert alert.finding.detector == "TS601"
    assert alert.run["status"] == "failed (CUDA out of memory)"


def test_a_crash_still_being_written_gets_its_last_lines(tmp_path):
    run = tmp_path / "runs" / "live"
    run.mkdir(parents=True)
    log = run / "train.log"
    data = (CRASH / "oom-hf" / "train.log").read_bytes()  # bytes: progress bars end in \r
    cut = data.index(b"torch.cuda.OutOfMemoryError")
    log.write_bytes(data[:cut])  # the traceback's frames so far, not its last line
    store = _open(tmp_path / "runs", tmp_path)
    (first,) = analyze(store, select="TS601")
    assert first.evidence["cause"] != "cuda-oom"
    with log.open("ab") as f:
        f.write(data[cut:])
    store = _open(tmp_path / "runs", tmp_path)
    (f,) = analyze(store, select="TS601")
    assert f.evidence["cause"] == "cuda-oom" and f.evidence["line"] == 17
    assert "tried to allocate 2.00 GiB with 0.51 GiB free of 79.15 GiB" in f.message


def test_a_run_that_went_on_after_a_crash_is_not_dead(tmp_path):
    run = tmp_path / "runs" / "resumed"
    run.mkdir(parents=True)
    text = (CRASH / "oom-hf" / "train.log").read_bytes().decode()
    more = "".join(
        f"{{'loss': {1.9 - s / 100:.4f}, 'grad_norm': 0.5, 'learning_rate': 2e-05, "
        f"'epoch': {s / 30:.2f}, 'step': {s}}}\n"
        for s in range(3, 8)
    )
    (run / "train.log").write_bytes((text + more).encode())
    store = _open(tmp_path / "runs", tmp_path)
    assert not analyze(store, select="TS601")


@pytest.mark.parametrize(
    ("run", "fact"),
    [
        ("nccl-timeout", "A collective waited 1,800 s against a 1,800 s timeout."),
        ("time-limit", "The run reached step 200 of 100,000 (0.2%)."),
        ("disk-full", "The write that failed was 'saves/qwen-7b/checkpoint-20/optimizer.pt'."),
        ("host-oom", "The failed worker ran on worker-3."),
    ],
)
def test_the_fix_carries_the_runs_numbers(crash_findings, run, fact):
    _, found, _ = crash_findings
    assert found[run].suggestion.startswith(fact)


@pytest.mark.parametrize("outside", ["slurm-cancel", "elastic-sigterm", "preempted"])
def test_a_run_stopped_from_outside_is_a_warning_that_says_stopped(crash_findings, outside):
    _, found, _ = crash_findings
    f = found[outside]
    assert f.severity.value == "warning" and f.message.startswith("The run was stopped ")


def test_an_unnamed_error_names_no_line_of_source_code():
    lines = [
        (40, "Traceback (most recent call last):"),
        (41, '  File "/w/train.py", line 77, in <module>'),
        (42, "    lossf = loss.item() * gradient_accumulation_steps"),
        (43, "            ^^^^^^^^^^^"),
        (44, "the process was stopped"),
        (45, '  File "/w/train.py", line 80, in step'),
        (46, "    optimizer.step()"),
    ]
    got = death.classify(lines)
    assert (
        got is not None
        and got["key"] == "unknown"
        and got["line"] == (44, "the process was stopped")
    )


def test_the_torn_last_line_of_a_crash_is_kept_and_read_again_when_it_grows(tmp_path):
    run = tmp_path / "runs" / "torn"
    run.mkdir(parents=True)
    log = run / "output.log"
    body = (CRASH / "torn-oom" / "output.log").read_bytes()
    cut = body.rindex(b"\n") + 1
    log.write_bytes(body[: cut + 40])  # the exception's first 40 bytes, no newline
    store = _open(tmp_path / "runs", tmp_path)
    first = _run_end(store, "torn")["log_tail"][-1]
    assert first == [8, body[cut : cut + 40].decode()]
    store.close()
    log.write_bytes(body + b"\n")
    store = _open(tmp_path / "runs", tmp_path)
    f = {x.run: x for x in analyze(store, select="TS601")}["torn"]
    assert f.evidence["cause"] == "cuda-oom" and f.evidence["line"] == 8
    assert "48.00 MiB" in f.evidence["text"]


_SETUP_CRASH = (
    "2025-12-12 21:23:24.297\thost-03:0\ttrain:139\tINFO\tBuilding model...\n"
    "2025-12-12 21:23:29.705\thost-03:0\ttrain:141\tINFO\tTotal number of parameters: 1,176\n"
    "2025-12-12 21:23:29.714\thost-03:0\ttrain:155\tINFO\tWrapping model with DDP...\n"
    "Traceback (most recent call last):\n"
    '  File "/home/u/proj/scripts/train.py", line 159, in main\n'
    '    raise ProjConfigurationError("DDP needs init_device cuda")\n'
    "proj.exceptions.ProjConfigurationError: DDP needs init_device cuda\n"
)


def test_a_training_script_that_dies_while_it_sets_up_is_a_dead_run(tmp_path):
    """No training library named, but the script says what training scripts
    say while they set up (a parameter count, DDP): its traceback is a death."""
    run = tmp_path / "runs" / "cfg-error"
    run.mkdir(parents=True)
    (run / "output.log").write_text(_SETUP_CRASH)
    store = _open(tmp_path / "runs", tmp_path)
    (f,) = analyze(store, select="TS601")
    assert f.severity.value == "error" and f.evidence["line"] == 7
    assert "ProjConfigurationError" in f.message


def test_another_scripts_traceback_is_not_a_run(tmp_path):
    run = tmp_path / "runs" / "etl"
    run.mkdir(parents=True)
    (run / "job.log").write_text(
        "2025-12-12 21:23:24 INFO processing shard 3 of 12\n"
        "Traceback (most recent call last):\n"
        '  File "/home/u/etl/convert.py", line 12, in <module>\n'
        "KeyError: 'text'\n"
    )
    store = _open(tmp_path / "runs", tmp_path)
    assert store.cursor().execute("SELECT count(*) FROM runs").fetchone() == (0,)
