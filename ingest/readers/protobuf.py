"""The parts of the protobuf wire format and of CRC-32C that the binary log
readers share (TensorBoard's TFRecords, W&B's ``.wandb`` records), in pure
Python: no protobuf or tensorflow package is needed.

A protobuf message is a sequence of ``key`` varints (``field << 3 | wire``),
each followed by its value: a varint (wire 0), 8 bytes (1), a varint length and
that many bytes (2), or 4 bytes (5). The readers walk the fields they know and
:func:`skip_field` the rest.
"""

from __future__ import annotations

import numpy as np

# ---- CRC-32C (Castagnoli) ------------------------------------------------------


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``crc``."""
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """CRC-32C masked as TFRecord headers store it."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- wire format ----------------------------------------------------------------


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the offset after it."""
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def skip_field(buf: bytes, pos: int, wire: int) -> int:
    """The offset after the value at ``pos`` of a field of wire type ``wire``."""
    if wire == 0:
        _, pos = varint(buf, pos)
        return pos
    if wire == 1:
        return pos + 8
    if wire == 2:
        ln, pos = varint(buf, pos)
        return pos + ln
    if wire == 5:
        return pos + 4
    raise ValueError(f"unsupported wire type {wire}")


# ---- CRC-32C in bulk -------------------------------------------------------------

_CRC_ARRAY = np.array(_CRC_TABLE, dtype=np.uint32)
_BULK_MIN = 64  # spans still being summed below which the rest go byte by byte


def _masked(crc: np.ndarray) -> np.ndarray:
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)


def masked_crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """:func:`masked_crc32c` of each row of a 2-D ``uint8`` array: one table
    lookup per column over every row at once (a record header is 8 bytes)."""
    crc = np.full(rows.shape[0], 0xFFFFFFFF, dtype=np.uint32)
    for j in range(rows.shape[1]):
        crc = _CRC_ARRAY[(crc ^ rows[:, j]) & 0xFF] ^ (crc >> np.uint32(8))
    return _masked(crc ^ np.uint32(0xFFFFFFFF))


def masked_crc32c_spans(data: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """:func:`masked_crc32c` of ``data[start : start + length]`` for each span:
    byte ``j`` of every span at least ``j + 1`` long in one table lookup; the
    last few long spans (a text summary among scalars) byte by byte."""
    buf = np.frombuffer(data, dtype=np.uint8)
    order = np.argsort(-lengths, kind="stable")
    s = starts[order].astype(np.int64)
    ln = lengths[order].astype(np.int64)
    crc = np.full(len(s), 0xFFFFFFFF, dtype=np.uint32)
    neg = -ln  # ascending: the spans longer than j are a prefix
    j = 0
    while len(s):
        active = int(np.searchsorted(neg, -j, side="left"))  # spans with length > j
        if active == 0:
            break
        if active < _BULK_MIN:
            for i in range(active):
                tail = data[int(s[i]) + j : int(s[i] + ln[i])]
                crc[i] = crc32c(tail, int(crc[i]) ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
            break
        head = crc[:active]
        crc[:active] = _CRC_ARRAY[(head ^ buf[s[:active] + j]) & 0xFF] ^ (head >> np.uint32(8))
        j += 1
    out = np.empty_like(crc)
    out[order] = _masked(crc ^ np.uint32(0xFFFFFFFF))
    return out
