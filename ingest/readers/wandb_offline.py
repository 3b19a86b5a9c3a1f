"""Reader for W&B offline run files (``run-<id>.wandb``), without the wandb package.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, uint16 0xBEE1,
uint8 version), then 32 KiB blocks of chunks, each ``uint32 crc | uint16
length | uint8 type`` (1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST) and its bytes; fewer
than 7 bytes left in a block are padding. The CRC is zlib's CRC-32 of the type
byte and the data (checked; files whose CRCs are CRC-32C are accepted too).
A chunk that fails its check is reported with its byte offset and reading
resumes at the next block, as LevelDB readers do.

A whole record is a protobuf ``Record``; the few fields needed are decoded by
hand: ``history`` (2: items with ``key`` or ``nested_key`` and ``value_json``;
``_step``, ``_timestamp``, ``_runtime``; NaN written as a bare token),
``config`` (5), ``run`` (17: id, project, config, display name, host, start
time) and ``exit`` (18: exit code). A run that exited non-zero gets the crash
lines of its console output (``files/output.log``, which the console reader
leaves to this run) in its ``run_end``. System statistics (``stats``, per-GPU
memory and utilisation sampled by time, for every GPU of the host, including
ones other jobs use) are not read: they are not per training step and not
per rank of this run.

The step is the Trainer's ``train/global_step`` when the row has it, else
W&B's ``_step``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from tunescope.eventlog import epoch_seconds, time_problem
from tunescope.ingest.readers.crash_tail import file_tail
from tunescope.ingest.readers.foreign import (
    infer_logging_steps,
    number,
    resume_state,
    scalar_result,
)
from tunescope.ingest.readers.protobuf import crc32c, skip_field, varint
from tunescope.ingest.readers.tensorboard import add_scalar
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder

MAGIC = b":W&B"
FILE_HEADER = 7
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_CHUNK = struct.Struct("<IHB")
STEP_KEYS = ("train/global_step", "_step")
_NOT_METRICS = frozenset(("_step", "_timestamp", "train/global_step"))


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """Top-level (field, value) pairs of a message: ints for varints, bytes otherwise."""
    out: list[tuple[int, Any]] = []
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 2:
            ln, pos = varint(buf, pos)
            value = buf[pos : pos + ln]
            if len(value) != ln:
                raise ValueError("field runs past the end of the record")
            pos += ln
        else:
            end = skip_field(buf, pos, wire)
            value = buf[pos:end]
            pos = end
        out.append((field, value))
    if pos != n:
        raise ValueError("record ends inside a field")
    return out


def _items(buf: bytes) -> list[tuple[str, str]]:
    """(key, value_json) of the items (HistoryItem / ConfigItem) in a message's field 1."""
    out = []
    for field, item in _fields(buf):
        if field != 1 or not isinstance(item, bytes):
            continue
        key = None
        nested: list[str] = []
        value = None
        for f, v in _fields(item):
            if f == 1 and isinstance(v, bytes):
                key = v.decode("utf-8", errors="replace")
            elif f == 2 and isinstance(v, bytes):
                nested.append(v.decode("utf-8", errors="replace"))
            elif f == 16 and isinstance(v, bytes):
                value = v.decode("utf-8", errors="replace")
        name = key if key else ".".join(nested)
        if name and value is not None:
            out.append((name, value))
    return out


def _json(text: str) -> Any:
    try:
        return json.loads(text)  # NaN / Infinity tokens are accepted
    except ValueError:
        return None


def _int32(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def iter_records(data: bytes, start: int) -> Any:
    """``(offset, end, record bytes or None, problem)`` from ``start`` (a record
    boundary). Stops before a record that is not complete yet."""
    pos = start
    n = len(data)
    parts: list[bytes] = []
    rec_start = None
    while True:
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:
            if pos + left > n:
                return
            pos += left
            continue
        if pos + CHUNK_HEADER > n:
            return
        crc, ln, typ = _CHUNK.unpack_from(data, pos)
        if typ == 0 and ln == 0:  # zero padding to the block's end
            if pos + left > n:
                return
            pos += left
            continue
        end = pos + CHUNK_HEADER + ln
        if end > n:
            return  # being written
        body = data[pos + CHUNK_HEADER : end]
        bad = None
        if ln > left - CHUNK_HEADER or typ not in (FULL, FIRST, MIDDLE, LAST):
            bad = f"byte {pos}: bad chunk header (type {typ}, length {ln})"
        elif zlib.crc32(bytes((typ,)) + body) != crc and crc32c(bytes((typ,)) + body) != crc:
            bad = f"byte {pos}: chunk fails its CRC"
        if bad is not None:
            parts, rec_start = [], None
            pos = pos + left  # resynchronise at the next block
            yield pos - left, min(pos, n), None, bad + "; skipped to the next block"
            continue
        if typ == FULL:
            if parts:
                yield rec_start, pos, None, f"byte {rec_start}: record without its last chunk"
            parts, rec_start = [], None
            yield pos, end, body, None
        elif typ == FIRST:
            parts, rec_start = [body], pos
        elif typ == MIDDLE and parts:
            parts.append(body)
        elif typ == LAST and parts:
            yield rec_start, end, b"".join(parts) + body, None
            parts, rec_start = [], None
        else:
            yield pos, end, None, f"byte {pos}: chunk without a first chunk; skipped"
        pos = end


class WandbOfflineReader:
    """W&B offline run files: history rows, run config and exit code."""

    format = "wandb"

    def detect(self, path: Path) -> bool:
        if not (path.name.startswith("run-") and path.name.endswith(".wandb")):
            return False
        with open(path, "rb") as f:
            return f.read(4) == MAGIC

    def run_dir(self, path: Path) -> Path:
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        st = os.stat(path)
        state, offset, restarted = resume_state(st, state, FILE_HEADER)
        with open(path, "rb") as f:
            data = f.read()
        problems: list[Problem] = []
        if offset == FILE_HEADER and len(data) >= FILE_HEADER and data[:4] != MAGIC:
            problems.append(Problem(str(path), None, "not a W&B run file (bad header)"))
            return RowBuilder().result({"offset": len(data), "inode": st.st_ino}, problems)
        record = int(state.get("record", 0))
        run: dict[str, Any] = dict(state.get("run", {}))
        config: dict[str, Any] = dict(state.get("config", {}))
        steps: dict[int, list[Any]] = {}
        pending = state.get("pending")
        if pending:
            steps[int(pending[0])] = [pending[1], dict(pending[2])]
        metric_rows: list[tuple[int, float | None, str, float]] = []
        rows = RowBuilder()
        consumed = offset
        for pos, end, body, bad in iter_records(data, offset):
            consumed = end
            if body is None:
                problems.append(Problem(str(path), None, bad))
                continue
            record += 1
            try:
                fields = _fields(body)
                for field, value in fields:
                    if field == 2 and isinstance(value, bytes):
                        bad_ts = self._history(value, steps, metric_rows)
                        if bad_ts is not None:
                            problems.append(
                                Problem(
                                    str(path),
                                    None,
                                    f"record {record} at byte {pos}: {time_problem('_timestamp', bad_ts)}",
                                )
                            )
                    elif field == 5 and isinstance(value, bytes):
                        config.update(_config(value))
                    elif field == 17 and isinstance(value, bytes):
                        run.update(_run(value, config))
                        if "start" in run and epoch_seconds(run["start"]) is None:
                            problems.append(
                                Problem(
                                    str(path),
                                    None,
                                    f"record {record} at byte {pos}: {time_problem('start_time', run.pop('start'))}",
                                )
                            )
                    elif field == 18 and isinstance(value, bytes):
                        last = max(steps) if steps else state.get("last_step")
                        rows.event(0, last, None, "run_end", _exit(value, path))
                        state["ended"] = True
            except (ValueError, IndexError, struct.error) as e:
                problems.append(
                    Problem(str(path), None, f"record {record} at byte {pos}: undecodable ({e})")
                )
        first = list(state.get("first_steps", []))
        if not state.get("started"):
            first = sorted(set(first) | {s for s, (_, c) in steps.items() if "loss" in c})[:32]
            ls = number(config.get("logging_steps"))
            ls = int(ls) if ls is not None and math.isfinite(ls) and ls >= 1 else None
            if ls is None and (len(first) >= 3 or (first and state.get("ended"))):
                ls = infer_logging_steps(first)
            if ls is not None and run:
                payload = self._start(run, config, ls)
                rows.event(0, None, run.get("start"), "run_start", payload)
                state["started"] = True
        _, _, events = rows.tables()
        last = max(steps) if steps else None
        new_state = {
            **state,
            "offset": consumed,
            "inode": st.st_ino,
            "record": record,
            "run": run,
            "config": config if not state.get("started") else {},
            "first_steps": [] if state.get("started") else first,
            "pending": [last, steps[last][0], steps[last][1]] if last is not None else None,
            "last_step": last if last is not None else state.get("last_step"),
        }
        return scalar_result(steps, metric_rows, events, state, new_state, problems, restarted)

    def _start(self, run: dict[str, Any], config: dict[str, Any], ls: int) -> dict[str, Any]:
        """The run's ``run_start`` payload, from its run record and config."""
        payload: dict[str, Any] = {
            "format": self.format,
            "run": run.get("name") or run.get("run_id"),
            "wandb_run_id": run.get("run_id"),
            "project": run.get("project"),
            "logging_steps": ls,
            "per_rank": False,
        }
        if run.get("host"):
            payload["host"] = run["host"]
        total = number(config.get("max_steps"))
        if total and total > 0:
            payload["total_steps"] = int(total)
        model = config.get("_name_or_path") or config.get("model_name_or_path")
        if isinstance(model, str) and model:
            payload["model"] = model
        payload["config"] = config
        return payload

    @staticmethod
    def _history(buf: bytes, steps: dict, metric_rows: list) -> Any:
        """Add a history record's values; returns its ``_timestamp`` when
        that is not a plausible time (the values are kept without it)."""
        values: dict[str, Any] = {}
        for key, text in _items(buf):
            values[key] = _json(text)
        step = None
        for key in STEP_KEYS:
            v = values.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
                step = int(v)
                break
        if step is None:
            return None
        raw = number(values.get("_timestamp"))
        ts = epoch_seconds(raw)
        for key, value in values.items():
            if key in _NOT_METRICS:
                continue
            v = number(value) if not isinstance(value, str) else None
            if v is None:
                continue
            add_scalar(steps, metric_rows, step, ts, key, v)
        return raw if raw is not None and ts is None else None


def _exit(buf: bytes, path: Path) -> dict[str, Any]:
    """The ``run_end`` payload of an exit record: its status and exit code;
    for a failed run, the crash lines of the console output W&B saved beside
    it (``files/output.log``)."""
    code = 0
    for f, v in _fields(buf):
        if f == 1 and isinstance(v, int):
            code = _int32(v)
    payload: dict[str, Any] = {"status": "completed" if code == 0 else "failed", "exit_code": code}
    output = path.parent / "files" / "output.log"
    if code != 0 and output.is_file():
        tail = file_tail(output)
        if tail:
            payload["log_tail"] = tail
            payload["log_file"] = str(output)
    return payload


def _config(buf: bytes) -> dict[str, Any]:
    out = {}
    for key, text in _items(buf):
        value = _json(text)
        if isinstance(value, dict) and set(value) == {"value"}:
            value = value["value"]  # config.yaml style {"value": ...}
        out[key] = value
    out.pop("_wandb", None)
    return out


def _run(buf: bytes, config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in _fields(buf):
        if not isinstance(value, bytes):
            continue
        if field == 1:
            out["run_id"] = value.decode("utf-8", errors="replace")
        elif field == 3:
            out["project"] = value.decode("utf-8", errors="replace")
        elif field == 4:
            config.update(_config(value))
        elif field == 8:
            out["name"] = value.decode("utf-8", errors="replace")
        elif field == 13:
            out["host"] = value.decode("utf-8", errors="replace")
        elif field == 17:
            secs = dict(_fields(value)).get(1)
            if isinstance(secs, int):
                out["start"] = float(secs)
    return out
