"""The parts of the protobuf wire format and of CRC-32C that the binary log
readers share (TensorBoard's TFRecords, W&B's ``.wandb`` records), in pure
Python: no protobuf or tensorflow package is needed.

A protobuf message is a sequence of ``key`` varints (``field << 3 | wire``),
each followed by its value: a varint (wire 0), 8 bytes (1), a varint length and
that many bytes (2), or 4 bytes (5). The readers walk the fields they know and
:func:`skip_field` the rest.
"""

from __future__ import annotations

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
