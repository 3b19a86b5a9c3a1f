"""Lines of one layout read as columns, with no Python step per line.

A template is one record line and where its values are. The bytes just
before its values (``=`` in ``loss=1.2 lr=3e-4``; ``:`` and ``/`` in
Megatron's iteration lines), with the newline, are its *pivots*: they cut the
line into segments, each holding literal text and at most one value. Every
line of a chunk with the same pivots in the same order is cut the same way,
and is read here when it matches the template everywhere but in its values:

- literal text byte for byte (in the logger's prefix, a timestamp's digits
  may differ: ``free`` bytes at the start of the template);
- each value a number that Arrow's cast reads (a subset of what Python's
  ``float`` reads, to the same double), optionally with spaces and tabs
  around it (``trim``: Megatron pads its numbers).

Any other line (another layout, extra text, a value that is not a number) is
left to the caller's line-by-line path, so a line read here gives what that
path gives. Costs: one numpy pass for the pivots and newlines, a gather per
literal piece, one Arrow cast for all the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_SPACE = b" \t"
# what Arrow's string -> double cast reads, and Python's float too
_NUMBER = r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?(?:nan|inf|infinity)$"
_GROUPED = r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$"  # 1,004.5: thousands separators


@dataclass(frozen=True)
class Slot:
    """A value of the template line: its bytes ``[start, end)``; ``count``:
    digits only, read as int64 (else a float64); ``spaced``: at least one
    space or tab must come before it (``iteration   12``)."""

    start: int
    end: int
    count: bool = False
    spaced: bool = False


@dataclass
class Columns:
    """The lines read: their offsets in the chunk, a column per slot (int64
    for counts, float64 otherwise), and the ``[start, end)`` spans of the
    lines between them that were not read."""

    starts: Any
    values: list[Any]
    other: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class _Piece:
    """Fixed bytes of a segment, anchored at its start or at its end."""

    text: bytes
    at: int  # offset from the segment's start (>= 0) or from its end (< 0)
    free: bool  # digits may differ (a logger's prefix)


@dataclass
class _Segment:
    pieces: list[_Piece]
    slot: int | None  # which slot sits in it
    left: int  # fixed bytes before the slot (or the segment's whole length)
    right: int  # fixed bytes after the slot, the pivot included


class Layout:
    """A template line cut at its pivots, ready to read a chunk's lines."""

    def __init__(
        self,
        line: bytes,
        slots: list[Slot],
        pivots: bytes,
        free: int = 0,
        trim: bool = False,
        grouped: bool = False,
        words: frozenset[str] | None = None,
    ) -> None:
        line = line.rstrip(b"\n") + b"\n"
        self.slots = slots
        self.trim = trim
        self.grouped = grouped  # "1,004" is a number (the general reader's grammar)
        self.words = words  # the spellings of nan and inf read (None: any)
        self.pivots = bytes(sorted(set(pivots) | {10}))
        regions = []
        for s in slots:
            a, b = s.start, s.end
            if trim:  # the spaces before a value are its padding
                while a > 0 and line[a - 1] in _SPACE:
                    a -= 1
            regions.append((a, b))
        self.cuts = [i for i, c in enumerate(line) if c in self.pivots]
        self.bytes = bytes(line[i] for i in self.cuts)
        self.segments: list[_Segment] = []
        self.valid = True
        lo = 0
        for hi in self.cuts:
            inside = [i for i, (a, b) in enumerate(regions) if a >= lo and b <= hi]
            crossing = [i for i, (a, b) in enumerate(regions) if a < hi + 1 and b > lo]
            if len(inside) > 1 or len(crossing) != len(inside):
                self.valid = False
                break
            # (the pivot byte itself is checked with the others: no piece holds it)
            if inside:
                a, b = regions[inside[0]]
                pieces = self._pieces(line, lo, a, free, lo, anchor_end=None)
                pieces += self._pieces(line, b, hi, free, lo, anchor_end=hi + 1)
                seg = _Segment(pieces, inside[0], a - lo, hi + 1 - b)
            else:
                seg = _Segment(self._pieces(line, lo, hi, free, lo, None), None, hi - lo, 0)
            self.segments.append(seg)
            lo = hi + 1
        # values in the order of the line, none empty (the offsets must rise)
        bounds = [x for region in regions for x in region]
        self.valid = self.valid and bool(slots) and all(a < b for a, b in regions)
        self.valid = self.valid and bounds == sorted(bounds)
        if self.valid:
            import numpy as np

            by_slot = sorted(
                (seg.slot, j) for j, seg in enumerate(self.segments) if seg.slot is not None
            )
            segs = [self.segments[j] for _, j in by_slot]
            self._slot_segments = (
                np.array([j for _, j in by_slot]),
                np.array([sg.left for sg in segs]),
                np.array([sg.right for sg in segs]),
            )
            plain = [j for j, seg in enumerate(self.segments) if seg.slot is None]
            self._plain: tuple[Any, Any] | None = (
                (np.array(plain), np.array([self.segments[j].left for j in plain]))
                if plain
                else None
            )
            self._fixed = [(j, pc) for j, seg in enumerate(self.segments) for pc in seg.pieces]

    @staticmethod
    def _pieces(
        line: bytes, a: int, b: int, free: int, seg_start: int, anchor_end: int | None
    ) -> list[_Piece]:
        """The fixed bytes ``line[a:b]`` as pieces: the part in the free
        prefix apart from the rest."""
        out = []
        for lo, hi, is_free in ((a, min(b, free), True), (max(a, free), b, False)):
            if lo < hi:
                at = lo - seg_start if anchor_end is None else lo - anchor_end
                out.append(_Piece(line[lo:hi], at, is_free))
        return out

    def read(self, data: bytes, block: int = 1 << 21) -> Columns | None:
        """The lines of ``data`` (whole lines) laid out like the template, as
        columns; None when the template cannot cut lines or a value defeats
        the cast (then read them one by one). Read ``block`` bytes of lines
        at a time: each check then finds its lines' bytes in the CPU's cache."""
        import numpy as np

        if not self.valid or not data:
            return None
        if len(data) <= block:
            return self._read(data)
        view = memoryview(data)
        parts: list[tuple[int, Columns]] = []
        lo = 0
        while lo < len(data):
            hi = data.rfind(b"\n", lo, lo + block) + 1 if lo + block < len(data) else len(data)
            if hi <= lo:  # one line longer than a block
                hi = data.find(b"\n", lo + block) + 1 or len(data)
            got = self._read(view[lo:hi])
            if got is None:
                return None
            parts.append((lo, got))
            lo = hi
        other: list[tuple[int, int]] = []
        for at, got in parts:
            for a, b in got.other:
                if other and other[-1][1] == a + at:
                    other[-1] = (other[-1][0], b + at)
                else:
                    other.append((a + at, b + at))
        starts = np.concatenate([got.starts + at for at, got in parts])
        values = [
            np.concatenate([got.values[i] for _, got in parts if len(got.values)])
            if any(len(got.values) for _, got in parts)
            else np.empty(0)
            for i in range(len(self.slots))
        ]
        return Columns(starts, values, other)

    def _read(self, data: Any) -> Columns | None:
        import numpy as np

        buf = np.frombuffer(data, np.uint8)
        at = _positions(buf, self.pivots)  # every pivot and newline, in order
        kinds = buf[at]
        nl = np.flatnonzero(kinds == 10)  # which of them end lines
        if not len(nl):
            return Columns(np.empty(0, np.int64), [], [(0, len(data))])
        ends = at[nl]
        k = len(self.cuts)  # pivots per line, the newline included
        cand = np.flatnonzero(np.diff(nl, prepend=-1) == k)
        if not len(cand):
            return Columns(ends[:0], [], _other(ends, cand, len(data)))
        # (n, k + 1): each line's pivots, after the newline before it (-1 for the first)
        at = np.concatenate(([-1], at))
        idx = nl[cand][:, None] + np.arange(1 - k, 2)
        cuts = at[idx]
        if len(self.pivots) > 2:  # which pivot where (with one kind, the count tells)
            ok = (kinds[idx[:, 1:] - 1] == np.frombuffer(self.bytes, np.uint8)).all(axis=1)
        else:
            ok = np.ones(len(cand), bool)
        # segment j runs from cuts[:, j] + 1 to cuts[:, j + 1] (its pivot);
        # each slot after its segment's fixed bytes on the left, before those on the right
        seg, left, right = self._slot_segments
        a = cuts[:, seg] + (1 + left)
        b = cuts[:, seg + 1] + (1 - right)
        ok &= (b > a).all(axis=1)
        if self._plain is not None:  # segments without a value: as long as the template's
            plain, size = self._plain
            ok &= (cuts[:, plain + 1] - cuts[:, plain] - 1 == size).all(axis=1)
        # now each row's pieces and values lie in order inside its line
        fixed = []
        for j, piece in self._fixed:
            pos = cuts[:, j if piece.at >= 0 else j + 1] + (1 + piece.at)
            if piece.free:
                ok &= _same_free(buf, pos, piece.text)
            else:
                fixed.append((pos, piece.text))
        starts = cuts[:, 0] + 1
        ok &= _same(data, fixed, ok, starts)
        for i, slot in enumerate(self.slots):
            if slot.spaced:
                first = buf[np.minimum(a[:, i], len(buf) - 1)]
                ok &= (first == 32) | (first == 9)
        values = self._values(data, a, b, ok, starts)
        if values is None:
            return None
        if ok.all():
            return Columns(starts, values, _other(ends, cand, len(data)))
        return Columns(starts[ok], [v[ok] for v in values], _other(ends, cand[ok], len(data)))

    def _values(self, data: bytes, a: Any, b: Any, ok: Any, line: Any) -> Any:
        """Each slot's values (``a``, ``b``: their bytes per row and slot); a
        row whose value is not a number is marked in ``ok``."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        n, m = a.shape
        offsets = np.empty((n, 2 * m), np.int64)
        offsets[:, 0::2] = a
        offsets[:, 1::2] = b
        # the values and the bytes between them, as one array of strings whose
        # in-between entries are null; a row that failed a check gets empty
        # spans at its line's start, so that the offsets still rise
        offsets[~ok] = line[~ok, None]
        flat = offsets.ravel()
        count = len(flat) - 1
        valid = np.zeros(len(flat), bool)
        valid[0::2] = np.repeat(ok, m)
        texts = pa.Array.from_buffers(
            pa.large_utf8(),
            count,
            [
                pa.py_buffer(np.packbits(valid[:count], bitorder="little")),
                pa.py_buffer(flat),
                pa.py_buffer(data),
            ],
        )
        if self.trim:
            texts = pc.ascii_ltrim(texts, " \t")
        floats = self._floats(texts, ok, m)
        if floats is None:
            return None
        out = [floats[:, i] for i in range(m)]
        counts = [i for i, slot in enumerate(self.slots) if slot.count]
        if counts:  # digits only, below 2**63: an exact int64
            at = (np.arange(n)[:, None] * (2 * m) + 2 * np.array(counts)).ravel()
            picked = texts.take(pa.array(at))
            digits = pc.fill_null(pc.ascii_is_decimal(picked), False)
            ok &= digits.to_numpy(zero_copy_only=False).reshape(n, len(counts)).all(axis=1)
            for c, i in enumerate(counts):
                whole = np.where(ok, out[i], 0.0)
                if (whole < 2.0**53).all():  # exact as a double
                    out[i] = whole.astype(np.int64)
                    continue
                ok &= whole < 2.0**63
                texts_c = picked.take(pa.array(np.arange(c, len(at), len(counts))))
                exact = pc.cast(pc.if_else(pa.array(ok), texts_c, "0"), pa.int64())
                out[i] = exact.to_numpy()
        return out

    def _floats(self, texts: Any, ok: Any, m: int) -> Any:
        """The values as an (n, m) float64 array; a row with a value that is
        not a number is marked in ``ok`` (its values read as NaN)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        n = len(ok)
        try:
            got = pc.cast(texts, pa.float64())
        except pa.ArrowInvalid:
            # some value is not a number (rare): find which, null them, cast again
            good = pc.match_substring_regex(texts, _NUMBER, ignore_case=True)
            if self.grouped:
                grouped = pc.match_substring_regex(texts, _GROUPED)
                texts = pc.if_else(grouped, pc.replace_substring(texts, ",", ""), texts)
                good = pc.or_(good, grouped)
            good = pc.fill_null(good, True)
            texts = pc.if_else(good, texts, pa.scalar(None, texts.type))
            try:
                got = pc.cast(texts, pa.float64())
            except pa.ArrowInvalid:
                return None
            ok &= good.to_numpy(zero_copy_only=False)[0::2].reshape(n, m).all(axis=1)
        # the doubles as they lie in Arrow's buffer (the null entries between
        # the values are never read)
        raw = np.frombuffer(got.buffers()[1], np.float64, len(got), got.offset * 8)
        values = raw[0::2].reshape(n, m)
        if self.words is not None:
            odd = np.flatnonzero(~np.isfinite(values).all(axis=1) & ok)
            if len(odd):  # nan and inf: only the spellings the line-by-line path reads
                for r in odd.tolist():
                    cells = texts[2 * m * r : 2 * m * r + 2 * m : 2].to_pylist()
                    if any(
                        not np.isfinite(v) and (c or "").lstrip("+-") not in self.words
                        for v, c in zip(values[r], cells, strict=True)
                    ):
                        ok[r] = False
        return values


def _positions(buf: Any, wanted: bytes, block: int = 1 << 18) -> Any:
    """Offsets of the bytes of ``buf`` that are one of ``wanted``, in order
    (a block at a time, so the masks stay in the CPU's cache)."""
    import numpy as np

    out = []
    hit = np.empty(min(block, len(buf)), bool)
    other = np.empty_like(hit)
    for start in range(0, len(buf), block):
        part = buf[start : start + block]
        h, o = hit[: len(part)], other[: len(part)]
        np.equal(part, wanted[0], out=h)
        for byte in wanted[1:]:
            np.equal(part, byte, out=o)
            h |= o
        out.append(np.flatnonzero(h) + start)
    return np.concatenate(out) if len(out) != 1 else out[0]


def _same(data: bytes, pieces: list[tuple[Any, bytes]], ok: Any, line: Any) -> Any:
    """Rows whose bytes at each piece's offsets are the piece's text (rows
    not ``ok`` come out False)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pieces:
        return ok
    n = len(ok)
    out = ok.copy()
    buffer = pa.py_buffer(data)
    for pos, text in pieces:
        offsets = np.empty((n, 2), np.int64)
        offsets[:, 0] = np.where(ok, pos, line)
        offsets[:, 1] = np.where(ok, pos + len(text), line)
        got = pa.Array.from_buffers(
            pa.large_binary(), 2 * n - 1, [None, pa.py_buffer(offsets.ravel()), buffer]
        )
        same = pc.equal(got, pa.scalar(text, pa.large_binary()))
        out &= same.to_numpy(zero_copy_only=False)[0::2]
    return out


def _same_free(buf: Any, pos: Any, text: bytes) -> Any:
    """Rows whose bytes at ``pos`` are ``text``, but that a digit may stand
    for a digit (a timestamp in a logger's prefix)."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    size = len(text)
    pos = np.clip(pos, 0, len(buf) - size)
    want = np.frombuffer(text, np.uint8)
    got = sliding_window_view(buf, size)[pos]
    digit = (want >= 48) & (want <= 57)
    same = got == want
    if digit.any():
        same |= digit & ((got - np.uint8(48)) < 10)
    return same.all(axis=1)


def _other(ends: Any, rows: Any, size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` spans of the lines between the rows read (``ends``:
    every line's newline; ``rows``: the lines read)."""
    import numpy as np

    if not len(rows):
        return [(0, size)] if size else []
    out = []
    first = int(rows[0])
    if first > 0:
        out.append((0, int(ends[first - 1]) + 1))
    for g in np.flatnonzero(np.diff(rows) > 1).tolist():
        out.append((int(ends[rows[g]]) + 1, int(ends[rows[g + 1] - 1]) + 1))
    last = int(ends[rows[-1]]) + 1
    if last < size:
        out.append((last, size))
    return out
