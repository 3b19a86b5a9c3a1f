"""W&B offline run files built by hand: protobuf fields and the LevelDB-log
framing W&B writes, for tests of what real files do not show."""

from __future__ import annotations

import struct
import zlib


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return varint(num << 3) + varint(payload)
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def item(key: str | tuple[str, ...], value: str) -> bytes:
    keys = (
        field(1, key.encode())
        if isinstance(key, str)
        else b"".join(field(2, k.encode()) for k in key)
    )
    return keys + field(16, value.encode())


def history(items: dict) -> bytes:
    return field(2, b"".join(field(1, item(k, v)) for k, v in items.items()))


def wandb_file(records: list[bytes]) -> bytes:
    """LevelDB-log framing as W&B writes it (zlib CRC-32 of type + data)."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for rec in records:
        first = True
        while True:
            left = 32768 - len(out) % 32768
            if left < 7:
                out += b"\x00" * left
                continue
            n = min(len(rec), left - 7)
            last = n == len(rec)
            typ = (1 if last else 2) if first else (4 if last else 3)
            crc = zlib.crc32(bytes((typ,)) + rec[:n])
            out += struct.pack("<IHB", crc, n, typ) + rec[:n]
            rec = rec[n:]
            first = False
            if last:
                break
    return bytes(out)
