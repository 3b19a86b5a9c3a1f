"""Per-GPU telemetry JSONL beside a training log joins its run as metrics."""

from __future__ import annotations

import json
from pathlib import Path

from tunescope.cli import main
from tunescope.ingest.discover import discover
from tunescope.ingest.readers.explain import explain
from tunescope.ingest.readers.telemetry import is_telemetry
from tunescope.ingest.store.database import Store

T0 = 1717000000.0


def jsonl(path: Path, recs: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def train_log(folder: Path, times: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recs = []
    for step in range(1, 6):  # one step every 10 s from T0 + 10
        rec: dict[str, float] = {"step": step, "loss": 3.0 - 0.1 * step}
        if times:
            rec["timestamp"] = T0 + 10 * step
        recs.append(rec)
    return jsonl(folder / "metrics.jsonl", recs)


def flat(t: float, gpu: int, mem: float) -> dict[str, float]:
    return {"time": t, "gpu": gpu, "memory_used_mb": mem, "memory_total_mb": 81920,
            "utilization": 97, "power_w": 312.4, "temperature_c": 71}  # fmt: skip


def rows(store: Store, sql: str) -> list[tuple[object, ...]]:
    return store.cursor().execute(sql).fetchall()


def test_telemetry_joins_the_run_per_gpu_at_the_step_at_or_before_its_time(tmp_path):
    root = tmp_path / "runs"
    train_log(root / "run-a")
    jsonl(root / "run-a" / "gpu.jsonl", [
        flat(T0 + 5, 0, 100),  # before the first step: the first step
        flat(T0 + 5, 1, 110),
        flat(T0 + 25, 0, 200),  # between steps 2 and 3: step 2
        flat(T0 + 25, 1, 210),
        flat(T0 + 50, 0, 300),  # exactly at step 5
    ])  # fmt: skip
    # nvidia-smi names and one record per sample with a list of GPUs
    jsonl(root / "run-a" / "smi.jsonl", [
        {"ts": T0 + 31, "gpus": [
            {"index": 0, "memory.used [MiB]": 400, "utilization.gpu [%]": 88,
             "power.draw [W]": 250.5},
            {"index": 1, "memory.used [MiB]": 410, "utilization.gpu [%]": 89,
             "power.draw [W]": 251.5},
        ]},
    ])  # fmt: skip
    store = Store.open(root, cache_dir=tmp_path / "cache")
    assert rows(store, "SELECT run_id FROM runs") == [("run-a",)]
    got = rows(
        store,
        "SELECT rank, step, ts, value FROM metrics WHERE name = 'gpu_memory_used_mb' "
        "ORDER BY ts, rank",
    )
    assert got == [
        (0, 1, T0 + 5, 100.0),
        (1, 1, T0 + 5, 110.0),
        (0, 2, T0 + 25, 200.0),
        (1, 2, T0 + 25, 210.0),
        (0, 3, T0 + 31, 400.0),
        (1, 3, T0 + 31, 410.0),
        (0, 5, T0 + 50, 300.0),
    ]
    names = {n for (n,) in rows(store, "SELECT DISTINCT name FROM metrics")}
    assert {"gpu_util", "gpu_power_w", "gpu_temp_c", "gpu_memory_total_mb"} <= names
    assert rows(store, "SELECT count(*) FROM steps WHERE loss IS NOT NULL") == [(5,)]
    out = "\n".join(explain(root / "run-a" / "gpu.jsonl"))
    assert "telemetry: 5 records for 2 GPUs, joined to run run-a" in out


def test_telemetry_alone_is_no_run_and_verbose_says_why(tmp_path, capsys):
    root = tmp_path / "runs"
    (root / "monitor").mkdir(parents=True)
    gpu = jsonl(root / "monitor" / "gpu.jsonl", [flat(T0 + i, i % 2, 100) for i in range(4)])
    sources, problems = discover(root)
    assert sources == [] and problems == []
    assert main(["ingest", str(root), "--cache-dir", str(tmp_path / "c"), "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "gpu.jsonl: GPU telemetry with no training log beside it: not a run by itself" in out
    store = Store.open(root, cache_dir=tmp_path / "c")
    assert rows(store, "SELECT count(*) FROM runs") == [(0,)]
    assert "not joined: no training log beside it" in "\n".join(explain(gpu))


def test_a_run_without_timestamps_is_not_joined_and_the_read_says_so(tmp_path):
    root = tmp_path / "runs"
    train_log(root / "run-b", times=False)
    gpu = jsonl(root / "run-b" / "gpu.jsonl", [flat(T0 + i, 0, 100) for i in range(3)])
    store = Store.open(root, cache_dir=tmp_path / "cache")
    assert rows(store, "SELECT count(*) FROM metrics WHERE name LIKE 'gpu_%'") == [(0,)]
    assert rows(store, "SELECT count(*) FROM steps") == [(5,)]
    said = [str(p) for p in store.last_report.problems]
    assert f"{gpu}: telemetry not joined: the run's log metrics.jsonl has no timestamps" in (
        "\n".join(said)
    )
    assert "not joined: the run's log metrics.jsonl has no timestamps" in "\n".join(explain(gpu))


def test_datasets_and_configs_with_similar_numbers_are_not_telemetry(tmp_path):
    no_index = jsonl(
        tmp_path / "a.jsonl", [{"time": T0, "memory_used_mb": 5, "utilization": 3}] * 3
    )
    no_time = jsonl(tmp_path / "b.jsonl", [{"gpu": 0, "memory_used_mb": 5, "power_w": 9}] * 3)
    only_temp = jsonl(tmp_path / "c.jsonl", [{"time": T0, "gpu": 0, "temperature_c": 70}] * 3)
    dataset = jsonl(tmp_path / "d.jsonl", [{"text": "hi", "index": i, "time": 3} for i in range(3)])
    a_log = jsonl(tmp_path / "e.jsonl", [{**flat(T0, 0, 5), "step": 1, "loss": 2.0}] * 3)
    for path in (no_index, no_time, only_temp, dataset, a_log):
        assert not is_telemetry(path), path.name
    assert is_telemetry(jsonl(tmp_path / "f.jsonl", [flat(T0, 0, 5)]))


def test_nan_garbage_and_bad_times_are_skip_lines_and_good_records_kept(tmp_path):
    root = tmp_path / "runs"
    train_log(root / "run-c")
    gpu = root / "run-c" / "gpu.jsonl"
    lines = [
        json.dumps(flat(T0 + 12, 0, 100)),
        '{"time": 1717000013, "gpu": 0, "memory_used_mb": NaN, "utilization": 50}',
        "\x00\x01garbage{{",
        json.dumps(flat(T0 * 1000, 0, 100)),  # milliseconds
        json.dumps({**flat(T0 + 14, 0, 100), "power_w": "hot"}),
        json.dumps(flat(T0 + 40, 1, 300)),
        '{"time": 17170000',  # a line still being written
    ]
    gpu.write_text("\n".join(lines))
    store = Store.open(root, cache_dir=tmp_path / "cache")
    got = rows(
        store,
        "SELECT rank, step, ts, name, round(value, 3) FROM metrics WHERE name IN "
        "('gpu_memory_used_mb', 'gpu_util', 'gpu_power_w') ORDER BY ts, rank, name",
    )
    # one value per GPU, step and name: memory's peak, the mean of the rest
    assert got == [
        (0, 1, T0 + 14, "gpu_memory_used_mb", 100.0),
        (0, 1, T0 + 14, "gpu_power_w", 312.4),
        (0, 1, T0 + 14, "gpu_util", 81.333),  # (97 + 50 + 97) / 3
        (1, 4, T0 + 40, "gpu_memory_used_mb", 300.0),
        (1, 4, T0 + 40, "gpu_power_w", 312.4),
        (1, 4, T0 + 40, "gpu_util", 97.0),
    ]
    said = "\n".join(str(p) for p in store.last_report.problems)
    assert f"{gpu}:2: memory_used_mb 'nan' on GPU 0 is not a number; skipped" in said
    assert f"{gpu}:3: malformed JSON" in said
    assert f"{gpu}:4: time '1717000000000.0' is not a time in seconds since the epoch" in said
    assert f"{gpu}:5: power_w 'hot' on GPU 0 is not a number; skipped" in said


def test_samples_of_one_step_combine_as_memory_peak_and_mean_of_the_rest(tmp_path):
    root = tmp_path / "runs"
    train_log(root / "run-d")
    jsonl(root / "run-d" / "gpu.jsonl", [
        {**flat(T0 + 21, 0, 700), "utilization": 40},
        {**flat(T0 + 22, 0, 500), "utilization": 60},
    ])  # fmt: skip
    store = Store.open(root, cache_dir=tmp_path / "cache")
    got = rows(
        store,
        "SELECT rank, step, ts, name, value FROM metrics "
        "WHERE name IN ('gpu_memory_used_mb', 'gpu_util') ORDER BY name",
    )
    assert got == [
        (0, 2, T0 + 22, "gpu_memory_used_mb", 700.0),
        (0, 2, T0 + 22, "gpu_util", 50.0),
    ]
