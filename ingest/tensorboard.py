"""Reader for TensorBoard event files (``events.out.tfevents.*``), without
TensorFlow or the ``tensorboard`` package.

An event file is a sequence of TFRecords::

    uint64 length | uint32 masked_crc32c(length) | length bytes: Event | uint32 masked_crc32c(data)

and each ``Event`` is a protobuf message. Only the subset that carries
scalars is decoded: ``Event{1: wall_time, 2: step, 5: Summary{1: Value{1: tag,
2: simple_value, 8: TensorProto, 9: SummaryMetadata}}}``. PyTorch and
tensorboardX write ``simple_value``; TF2's ``tf.summary.scalar`` writes a scalar
tensor (``float_val``, ``double_val``, ``int_val``, ``int64_val`` or
``tensor_content``). Every point is kept. The Trainer's ``args`` text summary
(a JSON string tensor) gives ``logging_steps`` and ``max_steps``.

Files are append-only: a read continues at the byte after the last whole
record; a record cut short at the end is left for the next read. Every
record's header CRC (over its 8 length bytes) is checked: damaged bytes are
skipped up to the next record whose header checks out, and named with their
byte offset, so one bad record does not lose the rest of the file. The data
CRC is checked on request only (``verify_crc``: pure Python, slow).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunescope.eventlog import epoch_seconds, time_problem
from tunescope.ingest.foreign import infer_logging_steps, resume_state, scalar_result
from tunescope.ingest.protobuf import masked_crc32c, skip_field, varint
from tunescope.ingest.readers.vocabulary import HIGH, TAGS, meaning
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder

PREFIX = "events.out.tfevents."
MAX_RECORD = 256 * 1024 * 1024

# ---- TFRecord framing -----------------------------------------------------------

_HEADER = struct.Struct("<QI")
_U32 = struct.Struct("<I")


def iter_records(
    data: bytes, start: int = 0, verify: bool = False
) -> Iterator[tuple[int, int, bytes | None, str | None]]:
    """``(offset, end, payload, damage)`` of each whole record from ``start``.

    Every record's header CRC (8 bytes: cheap) is checked. A header that
    fails it is damage: the bytes up to the next record whose header checks
    out are skipped as one item with ``payload=None`` and ``damage`` saying
    why. A record whose data CRC fails (only checked with ``verify``: pure
    Python, slow) is skipped the same way. Stops at a record cut short."""
    n = len(data)
    pos = start
    unpack = _HEADER.unpack_from
    header_crc: dict[bytes, int] = {}  # few distinct lengths: each CRC computed once
    while pos + 12 <= n:
        length, len_crc = unpack(data, pos)
        head = data[pos : pos + 8]
        crc = header_crc.get(head)
        if crc is None:
            crc = header_crc[head] = masked_crc32c(head)
        if crc != len_crc:
            nxt = _resync(data, pos + 1)
            yield pos, nxt, None, f"{nxt - pos} damaged byte(s) (the record header fails its CRC)"
            pos = nxt
            continue
        end = pos + 12 + length + 4
        if end > n:
            return  # cut short: a writer is still at it
        body = data[pos + 12 : pos + 12 + length]
        if verify and masked_crc32c(body) != _U32.unpack_from(data, end - 4)[0]:
            yield pos, end, None, "data CRC mismatch"
        else:
            yield pos, end, body, None
        pos = end


def _resync(data: bytes, pos: int) -> int:
    """The next offset from ``pos`` where a record header checks out (its
    length CRC matches and the length is plausible), or the end of ``data``."""
    n = len(data)
    unpack = _HEADER.unpack_from
    while pos + 12 <= n:
        length, len_crc = unpack(data, pos)
        if length <= MAX_RECORD and masked_crc32c(data[pos : pos + 8]) == len_crc:
            return pos
        pos += 1
    return n


# ---- protobuf subset --------------------------------------------------------------

_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


# DataType enum values of numeric scalars and how tensor_content packs them.
_CONTENT = {1: ("<f", 4), 2: ("<d", 8), 3: ("<i", 4), 9: ("<q", 8), 19: ("<e", 2)}


def _tensor(buf: bytes, pos: int, end: int) -> tuple[float | None, str | None]:
    """A scalar TensorProto's value, or its first string (for text summaries)."""
    dtype = 0
    content = b""
    values: list[float] = []
    text = None
    while pos < end:
        key, pos = varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            dtype, pos = varint(buf, pos)
        elif field == 4 and wire == 2:
            ln, pos = varint(buf, pos)
            content = buf[pos : pos + ln]
            pos += ln
        elif field == 5 and wire == 2:  # packed float_val
            ln, pos = varint(buf, pos)
            values.extend(v for (v,) in struct.iter_unpack("<f", buf[pos : pos + ln]))
            pos += ln
        elif field == 5 and wire == 5:
            values.append(_F32.unpack_from(buf, pos)[0])
            pos += 4
        elif field == 6 and wire == 2:  # packed double_val
            ln, pos = varint(buf, pos)
            values.extend(v for (v,) in struct.iter_unpack("<d", buf[pos : pos + ln]))
            pos += ln
        elif field == 6 and wire == 1:
            values.append(_F64.unpack_from(buf, pos)[0])
            pos += 8
        elif field in (7, 10) and wire == 2:  # packed int_val / int64_val
            ln, pos = varint(buf, pos)
            stop = pos + ln
            while pos < stop:
                v, pos = varint(buf, pos)
                values.append(float(v - (1 << 64) if v >= 1 << 63 else v))
        elif field in (7, 10) and wire == 0:
            v, pos = varint(buf, pos)
            values.append(float(v - (1 << 64) if v >= 1 << 63 else v))
        elif field == 8 and wire == 2:  # string_val
            ln, pos = varint(buf, pos)
            if text is None:
                text = buf[pos : pos + ln].decode("utf-8", errors="replace")
            pos += ln
        else:
            pos = skip_field(buf, pos, wire)
    if values:
        return (values[0] if len(values) == 1 else None), text
    if content and dtype in _CONTENT:
        fmt, size = _CONTENT[dtype]
        if len(content) == size:
            return float(struct.unpack(fmt, content)[0]), text
    return None, text


def _plugin(buf: bytes, pos: int, end: int) -> str:
    """SummaryMetadata{1: PluginData{1: plugin_name}}."""
    while pos < end:
        key, pos = varint(buf, pos)
        if key == 0x0A:
            ln, pos = varint(buf, pos)
            stop = pos + ln
            while pos < stop:
                k2, pos = varint(buf, pos)
                if k2 == 0x0A:
                    ln2, pos = varint(buf, pos)
                    return buf[pos : pos + ln2].decode("utf-8", errors="replace")
                pos = skip_field(buf, pos, k2 & 7)
            return ""
        pos = skip_field(buf, pos, key & 7)
    return ""


def parse_event(buf: bytes) -> tuple[float | None, int, list[tuple[str, float | None, Any]]]:
    """(wall_time, step, values) of one Event. Each value is ``(tag, number,
    extra)`` where ``extra`` is a plugin name or a text (for non-scalars)."""
    wall = None
    step = 0
    values: list[tuple[str, float | None, Any]] = []
    pos = 0
    n = len(buf)
    while pos < n:
        key = buf[pos]
        pos += 1
        if key == 0x09:  # wall_time
            wall = _F64.unpack_from(buf, pos)[0]
            pos += 8
        elif key == 0x10:  # step
            step, pos = varint(buf, pos)
            if step >= 1 << 63:
                step -= 1 << 64
        elif key == 0x2A:  # summary
            ln, pos = varint(buf, pos)
            end = pos + ln
            while pos < end:
                k, pos = varint(buf, pos)
                if k != 0x0A:
                    pos = skip_field(buf, pos, k & 7)
                    continue
                vl, pos = varint(buf, pos)
                values.append(_value(buf, pos, pos + vl))
                pos += vl
        else:
            if key >= 0x80:
                key, pos = varint(buf, pos - 1)
            pos = skip_field(buf, pos, key & 7)
    return wall, step, values


def _value(buf: bytes, pos: int, end: int) -> tuple[str, float | None, Any]:
    tag = ""
    value = None
    extra: Any = None
    while pos < end:
        key = buf[pos]
        pos += 1
        if key == 0x0A:  # tag
            ln, pos = varint(buf, pos)
            tag = buf[pos : pos + ln].decode("utf-8", errors="replace")
            pos += ln
        elif key == 0x15:  # simple_value
            value = _F32.unpack_from(buf, pos)[0]
            pos += 4
        elif key == 0x42:  # tensor
            ln, pos = varint(buf, pos)
            value, text = _tensor(buf, pos, pos + ln)
            if text is not None:
                extra = ("text", text)
            pos += ln
        elif key == 0x4A:  # metadata
            ln, pos = varint(buf, pos)
            name = _plugin(buf, pos, pos + ln)
            if name and extra is None:
                extra = name
            pos += ln
        else:
            if key >= 0x80:
                key, pos = varint(buf, pos - 1)
            pos = skip_field(buf, pos, key & 7)
    return tag, value, extra


def read_scalars(
    path: str | Path, verify: bool = False
) -> list[tuple[str, int, float | None, float]]:
    """Every scalar point of a file as ``(tag, step, wall_time, value)``, in
    file order; for tools and the benchmark."""
    data = Path(path).read_bytes()
    out = []
    skip: set[str] = set()
    for _, _, body, _ in iter_records(data, 0, verify):
        if body is None:
            continue
        wall, step, values = parse_event(body)
        for tag, value, extra in values:
            if isinstance(extra, str) and extra not in ("scalars", ""):
                skip.add(tag)
            if value is not None and tag not in skip:
                out.append((tag, step, wall, value))
    return out


# ---- mapping ----------------------------------------------------------------------

CANONICAL_TAGS = TAGS
# Tags only the Trainer's end-of-training summary writes (train/train_runtime
# is also written with every log when input tokens are counted).
FINAL_TAGS = frozenset(("train/train_loss", "train/train_steps_per_second"))


def metric_name(tag: str) -> tuple[str, bool]:
    """(name, canonical) for a tag: canonical metric, ``eval_X`` for
    ``eval/X``, else the tag itself."""
    name = CANONICAL_TAGS.get(tag)
    if name is not None:
        return name, True
    if tag.startswith("lr-"):  # Lightning's LearningRateMonitor
        return "lr", True
    if tag.startswith("eval/"):
        return "eval_" + tag[5:], False
    if tag in FINAL_TAGS:
        return tag, False
    # Megatron's and home-made tags ("lm loss", "grad-norm", "learning-rate")
    # through the vocabulary; only names it knows for sure become columns
    known = meaning(tag)
    if known.confidence >= HIGH and known.kind == "column" and known.scale == 1.0:
        return known.column, True
    if known.kind == "eval" and tag != tag.strip().lower().replace(" ", "_"):
        return known.column, False
    return tag, False


def twin(tag: str) -> bool:
    """A tag Megatron writes twice, against samples or tokens (``lm loss vs
    samples``): the same values as the tag without the suffix, which is kept."""
    return tag.endswith((" vs samples", " vs tokens"))


def add_scalar(
    steps: dict[int, list[Any]],
    metric_rows: list[tuple[int, float | None, str, float]],
    step: int,
    ts: float | None,
    tag: str,
    value: float,
) -> bool:
    """Route one scalar by :func:`metric_name`: a canonical metric into
    ``steps[step]`` (``[ts, metrics]``, the first ``ts`` kept), any other into
    ``metric_rows``. True when it was canonical."""
    name, canonical = metric_name(tag)
    if canonical:
        slot = steps.get(step)
        if slot is None:
            slot = steps[step] = [ts, {}]
        slot[1][name] = value
    else:
        metric_rows.append((step, ts, name, value))
    return canonical


# ---- reader ------------------------------------------------------------------------


class TensorBoardReader:
    """TensorBoard event files: scalar summaries."""

    format = "tensorboard"

    def __init__(self, verify_crc: bool = False) -> None:
        self.verify_crc = verify_crc

    def detect(self, path: Path) -> bool:
        if not path.name.startswith(PREFIX):
            return False
        return not _has_trainer_log(path)

    def run_dir(self, path: Path) -> Path:
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        st = os.stat(path)
        state, offset, restarted = resume_state(st, state, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        scan = _Scan(
            record=int(state.get("record", 0)),
            skip=set(state.get("skip", [])),
            args=dict(state.get("args", {})),
        )
        pending = state.get("pending")  # the last step's canonical values, re-emitted
        if pending:
            scan.steps[int(pending[0])] = [pending[1], dict(pending[2])]
        consumed = self._scan(path, data, offset, scan)
        rows = RowBuilder()
        first = self._run_events(rows, state, scan)
        last = max(scan.steps) if scan.steps else None
        new_state = {
            **state,
            "offset": offset + consumed,
            "inode": st.st_ino,
            "record": scan.record,
            "skip": sorted(scan.skip),
            "args": scan.args,
            "first_steps": [] if state.get("started") else first,
            "pending": (
                [last, scan.steps[last][0], scan.steps[last][1]] if last is not None else None
            ),
        }
        _, _, events = rows.tables()
        return scalar_result(
            scan.steps, scan.metric_rows, events, state, new_state, scan.problems, restarted
        )

    def _scan(self, path: Path, data: bytes, offset: int, scan: _Scan) -> int:
        """Decode the whole records of ``data`` (read from byte ``offset``) into
        ``scan``; returns how many bytes they took."""
        consumed = 0
        for pos, end, body, damage in iter_records(data, 0, self.verify_crc):
            consumed = end
            scan.record += 1
            where = f"record {scan.record} at byte {offset + pos}"
            if body is None:
                scan.problems.append(Problem(str(path), None, f"{where}: {damage}; skipped"))
                continue
            try:
                wall, step, values = parse_event(body)
            except (ValueError, IndexError, struct.error) as e:
                scan.problems.append(
                    Problem(str(path), None, f"{where}: undecodable event ({e}); skipped")
                )
                continue
            if wall is not None and epoch_seconds(wall) is None:
                scan.problems.append(
                    Problem(str(path), None, f"{where}: {time_problem('wall_time', wall)}")
                )
                wall = None
            for tag, value, extra in values:
                if isinstance(extra, tuple):
                    if tag in ("args/text_summary", "args") and not scan.args:
                        scan.args = _hf_args(extra[1])
                    continue
                if isinstance(extra, str) and extra not in ("scalars", ""):
                    scan.skip.add(tag)
                if value is None or tag in scan.skip or step < 0 or twin(tag):
                    continue
                canonical = add_scalar(scan.steps, scan.metric_rows, step, wall, tag, value)
                if not canonical and tag in FINAL_TAGS:
                    scan.ended_at = step
        return consumed

    def _run_events(self, rows: RowBuilder, state: dict[str, Any], scan: _Scan) -> list[int]:
        """Add the run's ``run_end`` (a final summary tag was seen) and, once
        the logging interval is known, its ``run_start``; returns the first
        steps kept to infer that interval from later."""
        if scan.ended_at is not None and not state.get("ended"):
            rows.event(0, scan.ended_at, None, "run_end", {"status": "completed"})
            state["ended"] = True
        first = list(state.get("first_steps", []))
        if state.get("started"):
            return first
        first = sorted(set(first) | {s for s, (_, c) in scan.steps.items() if "loss" in c})[:32]
        ls = scan.args.get("logging_steps")
        if ls is None and (len(first) >= 3 or (first and state.get("ended"))):
            ls = infer_logging_steps(first)
        if ls is not None:
            payload: dict[str, Any] = {
                "format": self.format,
                "logging_steps": ls,
                "per_rank": False,
            }
            if scan.args.get("max_steps"):
                payload["total_steps"] = scan.args["max_steps"]
            if scan.args.get("model"):
                payload["model"] = scan.args["model"]
            rows.event(0, None, None, "run_start", payload)
            state["started"] = True
        return first


@dataclass
class _Scan:
    """What the records read so far hold."""

    record: int  # records read from the start of the file
    skip: set[str]  # tags that are not scalars
    args: dict[str, Any]  # the Trainer's arguments, from its text summary
    steps: dict[int, list[Any]] = field(default_factory=dict)  # step -> [ts, canon]
    metric_rows: list[tuple[int, float | None, str, float]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ended_at: int | None = None


def _has_trainer_log(path: Path) -> bool:
    """An event file in the Trainer's default place, ``OUT/runs/NAME/``, of an
    output dir whose own log (``trainer_state.json``, LLaMA-Factory's or
    ms-swift's) is read: the same run, so the event file is left out rather
    than counted as a second run. It is read while no such log exists yet."""
    if path.parent.parent.name != "runs":
        return False
    from tunescope.ingest import hf_state

    out = path.parent.parent.parent
    return (
        (out / hf_state.LF_LOG).is_file()
        or (out / hf_state.SWIFT_LOG).is_file()
        or hf_state.primary(out) is not None
    )


def _hf_args(text: str) -> dict[str, Any]:
    """``logging_steps``, ``max_steps`` and the model from the Trainer's args text."""
    try:
        obj = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(obj, dict):
        return {}
    out: dict[str, Any] = {}
    ls = obj.get("logging_steps")
    if isinstance(ls, int | float) and not isinstance(ls, bool) and ls >= 1:
        out["logging_steps"] = int(ls)
    ms = obj.get("max_steps")
    if isinstance(ms, int) and not isinstance(ms, bool) and ms > 0:
        out["max_steps"] = ms
    for key in ("model_name_or_path", "_name_or_path", "run_name"):
        if isinstance(obj.get(key), str) and key != "run_name":
            out["model"] = obj[key]
            break
    return out
