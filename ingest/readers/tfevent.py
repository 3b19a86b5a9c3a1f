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

from tunescope.ingest.readers.protobuf import skip_field, varint
from tunescope.ingest.readers.tfrecord import Framed, words_at

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

_BLOCK = 1 << 18  # records decoded at once: bounds the gathered arrays
_REACH = 320  # bytes past a body's start that the layout test may look at
_HIGH_BITS = np.uint64(0x8080808080808080)
_DISTINCT = 8  # tags of one length told apart by comparison before sorting

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
    says which do (the other columns hold only those). A body within
    ``_REACH`` bytes of the end is left to :func:`parse_event`."""
    buf = np.frombuffer(data, dtype=np.uint8)

    ok = (b + _REACH <= len(buf)) & (e - b >= 22)
    if not ok.any():  # then the buffer may be shorter than _REACH: no gather below
        none = np.zeros(0, dtype=np.int64)
        return ok, none, none.astype(np.float64), none, none.astype(np.float64)
    b, e = np.where(ok, b, 0), np.where(ok, e, 0)  # every gather stays inside the buffer
    ok &= (buf[b] == 0x09) & (buf[b + 9] == 0x10)
    # the step varint, up to 8 bytes: the first byte without its high bit ends it
    raw = words_at(buf, b + 10)
    stops = ~raw & _HIGH_BITS
    ok &= stops != 0
    lowest = stops & (~stops + np.uint64(1))
    k = (np.log2(np.maximum(lowest, 1).astype(np.float64)).astype(np.int64) + 1) // 8
    p = b + 10 + k
    s_len, v_len, t_len = buf[p + 1], buf[p + 3], buf[p + 5].astype(np.int64)
    ok &= (
        (buf[p] == 0x2A)
        & (buf[p + 2] == 0x0A)
        & (buf[p + 4] == 0x0A)
        & (s_len < 0x80)
        & (s_len == v_len.astype(np.int64) + 2)
        & (v_len == t_len + 7)
        & (e - b == p - b + 2 + s_len)
        & (buf[p + 6 + t_len] == 0x15)
    )
    b, p, t_len, raw, k, lowest = b[ok], p[ok], t_len[ok], raw[ok], k[ok], lowest[ok]
    raw &= lowest | (lowest - np.uint64(1))  # the varint's bytes only
    step = np.zeros(len(b), dtype=np.uint64)
    for j in range(8):
        step |= ((raw >> np.uint64(8 * j)) & np.uint64(0x7F)) << np.uint64(7 * j)
    wall = words_at(buf, b + 1).view("<f8")
    value = (words_at(buf, p + 7 + t_len) & np.uint64(0xFFFFFFFF)).astype("<u4").view("<f4")
    tag = np.empty(len(b), dtype=np.int64)
    for n in np.unique(t_len).tolist():
        rows = np.flatnonzero(t_len == n)
        start = p[rows] + 6
        cols = [words_at(buf, start + i) for i in range(0, n, 8)]
        if n % 8:
            cols[-1] &= np.uint64((1 << (8 * (n % 8))) - 1)
        keys = np.stack(cols, axis=1) if cols else np.zeros((len(rows), 1), dtype=np.uint64)
        inverse, firsts = _distinct(keys)
        ids = [
            tags.setdefault(data[f : f + n].decode("utf-8", errors="replace"), len(tags))
            for f in start[firsts].tolist()
        ]
        tag[rows] = np.array(ids, dtype=np.int64)[inverse]
    return ok, step.astype(np.int64), wall, tag, value.astype(np.float64)


def _distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(inverse, firsts)`` of the distinct rows of ``keys``: each row's group
    and a row of each group. A few tags are told apart by comparing every row
    with one of each; more are sorted."""
    inverse = np.empty(len(keys), dtype=np.int64)
    left = np.arange(len(keys))
    firsts: list[int] = []
    while len(left) and len(firsts) < _DISTINCT:
        same = (keys[left] == keys[left[0]]).all(axis=1)
        inverse[left[same]] = len(firsts)
        firsts.append(int(left[0]))
        left = left[~same]
    if len(left):
        rest = np.ascontiguousarray(keys[left]).view(np.dtype((np.void, 8 * keys.shape[1])))
        _, first, inv = np.unique(rest.ravel(), return_index=True, return_inverse=True)
        inverse[left] = len(firsts) + inv.ravel()
        firsts.extend(left[first].tolist())
    return inverse, np.array(firsts, dtype=np.int64)
