"""TFRecord framing, the container of TensorBoard event files::

    uint64 length | uint32 masked_crc32c(length) | length bytes | uint32 masked_crc32c(data)

The records of a buffer are found in bulk: the lengths are followed from
record to record, thousands at a time where the record sizes repeat a cycle
(as writers' do), then every header CRC is checked at once (numpy, one table
lookup per header byte over all headers). A header that
fails its CRC is damage: the bytes up to the next offset whose header checks
out are one damaged item, so one bad record does not lose the rest. The data
CRCs, checked on request (``verify``), are summed in bulk the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from tunescope.ingest.readers.protobuf import masked_crc32c_rows, masked_crc32c_spans

MAX_RECORD = 256 * 1024 * 1024
_LENGTH = struct.Struct("<Q")
_WINDOW = 1 << 16  # candidate offsets tried at once when looking past damage


@dataclass
class Framed:
    """The items of a buffer, in order: a whole record, or damaged bytes."""

    starts: np.ndarray  # int64: where each item starts
    ends: np.ndarray  # int64: the byte after it
    damage: dict[int, str] = field(default_factory=dict)  # item -> why it was skipped
    consumed: int = 0  # bytes taken by whole items; the rest waits for a writer

    def body(self, data: bytes, i: int) -> bytes:
        """The payload of record ``i``."""
        return data[int(self.starts[i]) + 12 : int(self.ends[i]) - 4]


def frame(data: bytes, start: int = 0, verify: bool = False) -> Framed:
    """The whole records and damaged stretches of ``data`` from ``start``;
    stops before a record cut short (a writer is still at it)."""
    n = len(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    damage: dict[int, str] = {}
    count = 0
    pos = start
    while pos + 12 <= n:
        offs, nxt = _walk(data, buf, pos)
        heads = buf[offs[:, None] + np.arange(12)]
        stored = np.ascontiguousarray(heads[:, 8:]).view("<u4").ravel()
        bad = np.flatnonzero(masked_crc32c_rows(heads[:, :8]) != stored)
        k = int(bad[0]) if len(bad) else len(offs)
        stop = int(offs[k]) if k < len(offs) else nxt
        cut = k == len(offs) and stop > n  # the last record is not whole yet
        if cut:
            k -= 1
            stop = int(offs[k])
        item_ends = np.empty(k, dtype=np.int64)
        item_ends[:-1] = offs[1:k]
        if k:
            item_ends[-1] = stop
        starts.append(offs[:k])
        ends.append(item_ends)
        count += k
        pos = stop
        if k == len(offs) or cut:
            break
        after = resync(data, pos + 1)
        damage[count] = f"{after - pos} damaged byte(s) (the record header fails its CRC)"
        starts.append(np.array([pos], dtype=np.int64))
        ends.append(np.array([after], dtype=np.int64))
        count += 1
        pos = after
    out = Framed(
        np.concatenate(starts) if starts else np.zeros(0, np.int64),
        np.concatenate(ends) if ends else np.zeros(0, np.int64),
        damage,
        pos - start,
    )
    if verify:
        _check_data(data, out)
    return out


def _walk(data: bytes, buf: np.ndarray, pos: int) -> tuple[np.ndarray, int]:
    """The offsets reached by following the lengths from ``pos`` (unchecked)
    while a header fits, and the offset after the last. Writers repeat a
    cycle of record sizes (one per tag, while the step's varint keeps its
    width): once the last sizes repeat, the next thousands of offsets are
    predicted from the cycle and kept up to the first whose length differs,
    so the loop runs a few times per cycle change, not once per record."""
    n = len(data)
    unpack = _LENGTH.unpack_from
    parts: list[np.ndarray] = []
    walked: list[int] = []
    sizes: list[int] = []  # the last record sizes seen, for the cycle
    ahead = 1024
    while pos + 12 <= n:
        size = unpack(data, pos)[0] + 16
        walked.append(pos)
        sizes.append(size)
        pos += size
        if len(sizes) < 16:
            continue
        period = next((p for p in range(1, 9) if sizes[-p:] == sizes[-2 * p : -p]), 0)
        if not period:
            del sizes[:-16]
            continue
        guess = np.tile(np.array(sizes[-period:], dtype=np.int64), ahead // period + 1)[:ahead]
        at = pos + np.concatenate(([0], np.cumsum(guess[:-1])))
        room = int(np.searchsorted(at, n - 16, side="right"))  # two aligned words fit
        at, guess = at[:room], guess[:room]
        wrong = np.flatnonzero(words_at(buf, at).astype(np.int64) + 16 != guess)
        ok = int(wrong[0]) if len(wrong) else room
        if ok:
            parts.append(np.array(walked, dtype=np.int64))
            parts.append(at[:ok])
            walked = []
            pos = int(at[ok - 1] + guess[ok - 1])
            sizes = guess[max(0, ok - 16) : ok].tolist()
        else:
            sizes = []
        ahead = min(ahead * 4, 1 << 16) if ok == room else 1024
    parts.append(np.array(walked, dtype=np.int64))
    return np.concatenate(parts), pos


def words_at(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The 8 bytes at each offset in ``pos`` as a little-endian ``uint64``,
    from two aligned reads each (no byte matrix); every ``pos + 16`` must be
    within ``buf``."""
    words = buf[: len(buf) // 8 * 8].view("<u8")
    shift = ((pos & 7) * 8).astype(np.uint64)
    lo = words[pos >> 3] >> shift
    hi = words[(pos >> 3) + 1] << ((np.uint64(64) - shift) & np.uint64(63))
    return lo | np.where(shift == 0, np.uint64(0), hi)


def _check_data(data: bytes, framed: Framed) -> None:
    """Mark the records whose data CRC fails as damage."""
    ok = np.ones(len(framed.starts), dtype=bool)
    ok[list(framed.damage)] = False
    idx = np.flatnonzero(ok)
    if not len(idx):
        return
    s = framed.starts[idx] + 12
    ln = framed.ends[idx] - 4 - s
    buf = np.frombuffer(data, dtype=np.uint8)
    tails = buf[framed.ends[idx, None] - 4 + np.arange(4)]
    stored = np.ascontiguousarray(tails).view("<u4").ravel()
    for i in idx[masked_crc32c_spans(data, s, ln) != stored].tolist():
        framed.damage[i] = "data CRC mismatch"


def resync(data: bytes, pos: int) -> int:
    """The next offset from ``pos`` where a record header checks out (its
    length CRC matches and the length is plausible), or the end of ``data``;
    a window of candidate offsets at a time."""
    n = len(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    while pos + 12 <= n:
        stop = min(n, pos + _WINDOW + 11)
        heads = np.lib.stride_tricks.sliding_window_view(buf[pos:stop], 12)
        lengths = np.ascontiguousarray(heads[:, :8]).view("<u8").ravel()
        stored = np.ascontiguousarray(heads[:, 8:]).view("<u4").ravel()
        hits = np.flatnonzero(
            (lengths <= MAX_RECORD) & (masked_crc32c_rows(heads[:, :8]) == stored)
        )
        if len(hits):
            return pos + int(hits[0])
        pos += len(heads)
    return n


def iter_records(
    data: bytes, start: int = 0, verify: bool = False
) -> Iterator[tuple[int, int, bytes | None, str | None]]:
    """``(offset, end, payload, damage)`` of each item of :func:`frame`, one
    at a time: ``payload`` is None for damaged bytes, ``damage`` says why."""
    framed = frame(data, start, verify)
    for i, (s, e) in enumerate(zip(framed.starts.tolist(), framed.ends.tolist(), strict=True)):
        why = framed.damage.get(i)
        yield s, e, (None if why else data[s + 12 : e - 4]), why
