"""Per-GPU telemetry beside a training log: memory, utilisation, power and
temperature written one JSON record a line by GPU monitors and home-made loops.

A telemetry file holds no loss, so it is never a run by itself: it joins the
run whose log sits in the same folder, as per-device metrics
(``gpu_memory_used_mb``, ``gpu_util``, ``gpu_power_w``, ``gpu_temp_c``; the
rank is the GPU index). Each record's step is the run's step at or before
its time (the first step for a record before it); the samples of one step
are combined (memory as its peak, the rest as their mean), since the store
keeps one value per device, step and name. The step needs the run's
times: a run whose log has none is not joined, and the read says why.

Flat records (``{"time": ..., "gpu": 0, "memory_used_mb": ...}``, also
nvidia-smi's ``index``, ``memory.used [MiB]``, ``utilization.gpu [%]``,
``power.draw [W]``) and one record per sample with a list of GPUs
(``{"ts": ..., "gpus": [{...}, {...}]}``) are read.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunescope.eventlog import RANK_MAX, LineError, as_int, as_number, epoch_seconds, loads
from tunescope.ingest.rows import Problem, Reader, ReadResult, RowBuilder, empty_result

SUFFIXES = (".jsonl", ".ndjson", ".json")
HEAD = 64 << 10  # detection looks at the first 64 KiB...
HEAD_LINES = 32  # ...and at most this many records
MAX_BYTES = 256 << 20  # a bigger file is not read whole
TIME_KEYS = ("time", "ts", "timestamp", "_timestamp", "wall_time")
GPU_KEYS = ("gpu", "index", "gpu_index", "gpu_id", "device")
# Names a monitor writes (lower case) -> the metric's name in the store.
MEASURES = {
    **dict.fromkeys(
        ("memory_used_mb", "memory.used [mib]", "memory.used", "mem_used_mb", "memory_used_mib"),
        "gpu_memory_used_mb",
    ),
    **dict.fromkeys(
        ("memory_total_mb", "memory.total [mib]", "memory.total", "mem_total_mb"),
        "gpu_memory_total_mb",
    ),
    **dict.fromkeys(
        ("utilization", "utilization.gpu [%]", "utilization.gpu", "util", "gpu_util"), "gpu_util"
    ),
    **dict.fromkeys(("power_w", "power.draw [w]", "power.draw", "power_draw_w"), "gpu_power_w"),
    **dict.fromkeys(("temperature_c", "temperature.gpu", "temp_c", "temperature"), "gpu_temp_c"),
}
# A record is telemetry only with one of these (a temperature alone is not enough).
_CORE = frozenset({"gpu_memory_used_mb", "gpu_util", "gpu_power_w"})
_SEEN: dict[str, tuple[tuple[int, int], bool]] = {}


def _first(rec: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, Any] | None:
    for key in keys:
        if key in rec:
            return key, rec[key]
    return None


def samples(rec: Any) -> list[tuple[Any, dict[str, Any]]]:
    """(raw time, GPU record) for each GPU a decoded line describes; empty
    when the line is not telemetry."""
    if not isinstance(rec, dict):
        return []
    got = _first(rec, TIME_KEYS)
    if got is None:
        return []
    gpus = rec.get("gpus")
    if isinstance(gpus, list):
        out = []
        for i, g in enumerate(gpus):
            if isinstance(g, dict):
                out.append((got, g if _first(g, GPU_KEYS) else {**g, "gpu": i}))
        return out
    return [(got, rec)]


def _looks(gpu: dict[str, Any]) -> bool:
    names = {MEASURES.get(k.lower()) for k in gpu if isinstance(k, str)}
    return _first(gpu, GPU_KEYS) is not None and bool(names & _CORE)


def is_telemetry(path: Path) -> bool:
    """A JSONL file whose records carry a time, a GPU index and a memory,
    utilisation or power reading (and no loss); cached by size and mtime."""
    if not path.name.lower().endswith(SUFFIXES):
        return False
    try:
        st = path.stat()
        sig = (st.st_size, st.st_mtime_ns)
        hit = _SEEN.get(str(path))
        if hit is not None and hit[0] == sig:
            return hit[1]
        with open(path, "rb") as f:
            head = f.read(HEAD)
    except OSError:
        return False
    parsed = good = 0
    for raw in head.split(b"\n")[:HEAD_LINES]:
        if not raw.strip():
            continue
        try:
            rec = loads(raw)
        except LineError:
            continue
        parsed += 1
        if isinstance(rec, dict) and any("loss" in str(k).lower() for k in rec):
            good = -HEAD_LINES  # a training log, whatever else it holds
        got = samples(rec)
        if got and all(_looks(g) for _, g in got):
            good += 1
    verdict = good > 0 and good * 2 >= parsed
    if len(_SEEN) > 4096:
        _SEEN.clear()
    _SEEN[str(path)] = (sig, verdict)
    return verdict


def run_log(path: Path, readers: Sequence[Reader]) -> tuple[Path, Reader] | None:
    """The training log in the telemetry file's folder and the first of
    ``readers`` that claims it (the first log by name when there are
    several), or None."""
    try:
        others = sorted(p for p in path.parent.iterdir() if p != path and p.is_file())
    except OSError:
        return None
    for other in others[:64]:
        if is_telemetry(other):
            continue
        for reader in readers:
            if getattr(reader, "parts", None):
                continue
            try:
                if reader.detect(other):
                    return other, reader
            except OSError:
                continue
    return None


def timeline(log: Path, reader: Reader) -> list[tuple[float, int]]:
    """(time, step) of the run's rows that have a time, in time order: its
    steps' ``ts``, else (a JSONL log whose reader keeps no times) its
    records' own time field, by the step name the general reader infers."""
    result = reader.read(log, None)
    cols = result.steps.select(["ts", "step"]).to_pydict()
    pairs = [(t, s) for t, s in zip(cols["ts"], cols["step"], strict=True) if t is not None]
    if not pairs:
        pairs = _record_times(log)
    return sorted(pairs)


def _record_times(log: Path) -> list[tuple[float, int]]:
    from tunescope.ingest.readers.general_shape import shape_of

    shape = shape_of(log)
    if shape.kind != "jsonl" or shape.step in (None, "epoch", "order"):
        return []
    out = []
    try:
        data = log.read_bytes()[:MAX_BYTES]
    except OSError:
        return []
    for raw in data.split(b"\n"):
        try:
            rec = loads(raw) if raw.strip() else None
        except LineError:
            continue
        if not isinstance(rec, dict):
            continue
        step = as_int(rec.get(shape.step))
        got = _first(rec, TIME_KEYS)
        ts = epoch_seconds(as_number(got[1])) if got else None
        if step is not None and ts is not None:
            out.append((ts, step))
    return out


def read_records(path: Path, problems: list[Problem]) -> list[tuple[float, int, dict[str, float]]]:
    """(time, GPU index, metrics) of every sample; what cannot be used is a
    problem naming its line."""
    where = str(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            problems.append(Problem(where, None, f"over {MAX_BYTES >> 20} MiB: not read"))
            return []
        data = path.read_bytes()
    except OSError as e:
        problems.append(Problem(where, None, f"cannot read: {e.strerror or e}"))
        return []
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]  # a line still being written waits for its newline
    out = []
    for lineno, raw in enumerate(data.split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            rec = loads(raw)
        except LineError as e:
            problems.append(Problem(where, lineno, f"{e}; skipped"))
            continue
        got = samples(rec)
        if not got:
            problems.append(Problem(where, lineno, "not a telemetry record (no time); skipped"))
            continue
        for (key, raw_ts), gpu in got:
            ts = epoch_seconds(as_number(raw_ts, strings=True))
            if ts is None:
                problems.append(Problem(where, lineno, f"{key} {str(raw_ts)[:40]!r} is not a time "
                                        "in seconds since the epoch; skipped"))  # fmt: skip
                break
            found = _first(gpu, GPU_KEYS)
            index = as_int(found[1], RANK_MAX) if found else None
            if index is None or index < 0:
                problems.append(Problem(where, lineno, "no GPU index; skipped"))
                continue
            values: dict[str, float] = {}
            for name, raw_v in gpu.items():
                metric = MEASURES.get(name.lower()) if isinstance(name, str) else None
                if metric is None:
                    continue
                v = as_number(raw_v, strings=True)
                if v is None or v != v or v in (float("inf"), float("-inf")):
                    problems.append(Problem(where, lineno, f"{name} {str(raw_v)[:40]!r} "
                                            f"on GPU {index} is not a number; skipped"))  # fmt: skip
                    continue
                values[metric] = v
            if values:
                out.append((ts, index, values))
    return out


def no_times(log: Path) -> str:
    return (
        f"telemetry not joined: the run's log {log.name} has no timestamps "
        "to match the records' times to steps"
    )


TELEMETRY_ALONE = (
    "GPU telemetry with no training log beside it: not a run by itself "
    "(it joins the run whose log sits in its folder)"
)


class TelemetryReader:
    """GPU telemetry, joined to the run whose log sits beside it; ``logs``:
    the readers that may claim that log (discovery's, less this one)."""

    format = "telemetry"

    def __init__(self, logs: Sequence[Reader]) -> None:
        self.logs = list(logs)

    def detect(self, path: Path) -> bool:
        return is_telemetry(path) and run_log(path, self.logs) is not None

    def run_dir(self, path: Path) -> Path:
        found = run_log(path, self.logs)
        return path.parent if found is None else found[1].run_dir(found[0])

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        found = run_log(path, self.logs)
        if found is None:
            return empty_result(dict(state or {}))
        log, reader = found
        try:
            sig = [
                *(lambda s: [s.st_size, s.st_mtime_ns])(path.stat()),
                *(lambda s: [s.st_size, s.st_mtime_ns])(log.stat()),
            ]
        except OSError as e:
            return empty_result(dict(state or {}), [Problem(str(path), None, str(e))])
        if state and state.get("sig") == sig:
            return empty_result(state)
        problems: list[Problem] = []
        times = timeline(log, reader)
        if not times:
            return empty_result({"sig": sig}, [Problem(str(path), None, no_times(log))])
        records = read_records(path, problems)
        stamps = [t for t, _ in times]
        # the store keeps one value per (rank, step, name): the samples of a
        # step are combined, memory as its peak and the rest as their mean
        buckets: dict[tuple[int, int], tuple[float, dict[str, list[float]]]] = {}
        for ts, index, values in records:
            i = bisect.bisect_right(stamps, ts) - 1
            key = (index, times[max(i, 0)][1])
            last, seen = buckets.get(key, (ts, {}))
            for name, value in values.items():
                seen.setdefault(name, []).append(value)
            buckets[key] = (max(last, ts), seen)
        rows = RowBuilder()
        for (index, step), (ts, seen) in buckets.items():
            seq = rows.next_seq()
            for name, vals in seen.items():
                value = max(vals) if name.startswith("gpu_memory") else sum(vals) / len(vals)
                rows.metric(index, step, ts, name, value, seq=seq)
        return rows.result({"sig": sig}, problems, replace=True)

    def explain(self, path: Path) -> str:
        """``telemetry: N records for G GPUs, joined to run X``, or why not."""
        if not is_telemetry(path):
            return "  telemetry: not its format"
        problems: list[Problem] = []
        records = read_records(path, problems)
        gpus = len({index for _, index, _ in records})
        head = f"  telemetry: {len(records):,} records for {gpus} GPU{'s' if gpus != 1 else ''}"
        found = run_log(path, self.logs)
        if found is None:
            return (
                head + ", not joined: no training log beside it (telemetry is not a run by itself)"
            )
        log, reader = found
        if not timeline(log, reader):
            return head + ", not joined: " + no_times(log).split(": ", 1)[1]
        return head + f", joined to run {reader.run_dir(log).name}"
