"""The part of TensorBoard's ``Event`` protobuf that carries scalars, decoded
without TensorFlow: ``Event{1: wall_time, 2: step, 5: Summary{1: Value{1: tag,
2: simple_value, 8: TensorProto, 9: SummaryMetadata}}}``.

PyTorch and tensorboardX write one ``simple_value`` per event, always with
the same layout: :func:`decode` reads every record of that layout at once
(numpy over the record offsets: the step varints, walls, tags and float32
values gathered as arrays). Any other record (TF2's scalar tensors
``float_val``, ``double_val``, ``int_val``, ``int64_val`` or
``tensor_content``, text summaries, plugin metadata, fields in another
order) goes through :func:`parse_event`, one record at a time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunescope.ingest.protobuf import skip_field, varint
from tunescope.ingest.tfrecord import Framed

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


# ---- the common layout, in bulk ---------------------------------------------------

_BLOCK = 1 << 18  # records decoded at once: bounds the gathered arrays (about 40 MB)
_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)

Event = tuple[float | None, int, list[tuple[str, float | None, Any]]]


@dataclass
class Decoded:
    """The events of a buffer's records. Records of the common layout (one
    ``simple_value`` each) are columns; the others are decoded one by one."""

    simple: np.ndarray  # int64: the item index of each common-layout record, ascending
    step: np.ndarray  # int64
    wall: np.ndarray  # float64, as written (range unchecked)
    tag: np.ndarray  # int64: an index into ``tags``
    value: np.ndarray  # float64 (written as float32)
    tags: list[str]
    others: list[tuple[int, Event | str]]  # (item, event or why it is undecodable), in order


def decode(data: bytes, framed: Framed) -> Decoded:
    """Decode every whole record of ``framed`` (damaged items are left out)."""
    good = np.ones(len(framed.starts), dtype=bool)
    good[list(framed.damage)] = False
    idx = np.flatnonzero(good)
    tags: dict[str, int] = {}
    parts: list[tuple[np.ndarray, ...]] = []
    simple_mask = np.zeros(len(framed.starts), dtype=bool)
    for lo in range(0, len(idx), _BLOCK):
        block = idx[lo : lo + _BLOCK]
        cols = _common(data, framed.starts[block] + 12, framed.ends[block] - 4, tags)
        ok = cols[0]
        simple_mask[block[ok]] = True
        parts.append((block[ok], *cols[1:]))
    others: list[tuple[int, Event | str]] = []
    for i in np.flatnonzero(good & ~simple_mask).tolist():
        try:
            others.append((i, parse_event(framed.body(data, i))))
        except (ValueError, IndexError, struct.error) as e:
            others.append((i, str(e)))

    def joined(k: int, dtype: Any) -> np.ndarray:
        return np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, dtype)

    return Decoded(
        joined(0, np.int64),
        joined(1, np.int64),
        joined(2, np.float64),
        joined(3, np.int64),
        joined(4, np.float64),
        list(tags),
        others,
    )


def _common(
    data: bytes, b: np.ndarray, e: np.ndarray, tags: dict[str, int]
) -> tuple[np.ndarray, ...]:
    """``(ok, step, wall, tag, value)`` of the bodies ``data[b:e]`` that hold
    ``09 wall(8) 10 step(varint) 2A S 0A V 0A T tag(T) 15 value(4)``, one
    value, every length one byte and consistent with the body's; ``ok``
    says which do (the other columns hold only those)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    last = len(buf) - 1

    def at(pos: np.ndarray) -> np.ndarray:
        return buf[np.minimum(pos, last)]

    raw = at(b[:, None] + 10 + np.arange(10))  # the step varint and what follows
    stops = raw < 0x80
    k = np.argmax(stops, axis=1) + 1  # the varint's length
    p = b + 10 + k
    size = e - b
    s_len, v_len, t_len = at(p + 1), at(p + 3), at(p + 5)
    ok = (
        (at(b) == 0x09)
        & (at(b + 9) == 0x10)
        & stops.any(axis=1)
        & (k <= 9)  # a step of 2**63 or more is negative: left to parse_event
        & (at(p) == 0x2A)
        & (at(p + 2) == 0x0A)
        & (at(p + 4) == 0x0A)
        & (s_len < 0x80)
        & (s_len == v_len.astype(np.int64) + 2)
        & (v_len == t_len.astype(np.int64) + 7)
        & (size == p - b + 2 + s_len)
        & (at(p + 6 + t_len) == 0x15)
    )
    b, p, t_len, raw, k = b[ok], p[ok], t_len[ok].astype(np.int64), raw[ok], k[ok]
    digits = (raw & 0x7F).astype(np.uint64) << _SHIFTS
    digits[np.arange(10) >= k[:, None]] = 0
    step = digits.sum(axis=1, dtype=np.uint64).astype(np.int64)
    wall = np.ascontiguousarray(at(b[:, None] + 1 + np.arange(8))).view("<f8").ravel()
    vpos = p + 7 + t_len
    value = np.ascontiguousarray(at(vpos[:, None] + np.arange(4))).view("<f4").ravel()
    tag = np.empty(len(b), dtype=np.int64)
    for n in np.unique(t_len).tolist():
        rows = np.flatnonzero(t_len == n)
        if n == 0:
            tag[rows] = tags.setdefault("", len(tags))
            continue
        names = np.ascontiguousarray(at((p[rows] + 6)[:, None] + np.arange(n)))
        uniq, inverse = np.unique(names.view(np.dtype((np.void, n))).ravel(), return_inverse=True)
        ids = [
            tags.setdefault(u.tobytes().decode("utf-8", errors="replace"), len(tags)) for u in uniq
        ]
        tag[rows] = np.array(ids, dtype=np.int64)[inverse.ravel()]
    return ok, step, wall, tag, value.astype(np.float64)
