"""Reading only the new, complete lines of a growing file.

A line-oriented source remembers the byte offset after its last complete line
and how many lines came before it. A partial last line (a run still being
written, or a process killed mid-write) is left for the next read, never
half-read. A file that shrank, or was replaced by another file, is read again
from the start and its earlier rows are superseded.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FINGERPRINT = 64  # bytes before the offset that must not have changed
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, written by some editors and Windows tools


@dataclass
class Chunk:
    """New complete lines of a file: ``data`` starts at byte ``start`` and line
    ``first_line`` (1-based) and ends just after a newline."""

    data: bytes
    start: int
    end: int
    first_line: int
    restarted: bool  # True when the file was re-read from the start
    partial_tail: int  # bytes after the last newline, left for next time
    inode: int
    prefix: bytes = b""  # the bytes just before ``start`` (for the fingerprint)
    more: bool = False  # True when a limit stopped the read: lines remain after ``end``

    @functools.cached_property
    def lines(self) -> int:
        """How many complete lines ``data`` holds (it always ends with a newline)."""
        return count_byte(self.data, b"\n")

    @property
    def whole_file(self) -> bool:
        """True when ``data`` is the whole file (but for a byte order mark)."""
        return (
            not self.more
            and self.partial_tail == 0
            and self.start == len(self.prefix)
            and self.prefix in (b"", BOM)
        )

    @property
    def state(self) -> dict[str, Any]:
        return {**self.position, "line": self.first_line - 1 + self.lines}

    @property
    def position(self) -> dict[str, Any]:
        """The state without the line count (for readers that need no line
        numbers: counting lines is a pass over the bytes)."""
        tail = self.data[-FINGERPRINT:] if len(self.data) >= FINGERPRINT else None
        if tail is None:
            tail = self.prefix[-(FINGERPRINT - len(self.data)) :] + self.data
        return {"offset": self.end, "inode": self.inode, "fp": tail.hex()}


def count_byte(data: bytes, byte: bytes) -> int:
    """How often one byte occurs in ``data``: numpy, several times quicker than
    ``bytes.count`` on large buffers and without holding the GIL."""
    if len(data) < 4096:
        return data.count(byte)
    import numpy as np

    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == byte[0]))


def read_new_lines(
    path: Path,
    state: dict[str, Any] | None,
    limit: int | None = None,
    max_lines: int | None = None,
) -> Chunk:
    """The bytes of ``path`` after ``state['offset']`` up to the last newline.

    ``state`` also carries ``inode`` and ``size``: a different inode, or a size
    below the remembered offset, means the file was replaced or truncated.

    With ``limit`` (bytes) or ``max_lines``, at most that much is read (but
    always one whole line, however long) and ``Chunk.more`` says whether lines
    were left: a reader then returns the rows so far, and is called again from
    the chunk's state. What a reader decodes stays bounded by what it reads.
    """
    st = os.stat(path)
    offset = int(state.get("offset", 0)) if state else 0
    line = int(state.get("line", 0)) if state else 0
    restarted = False
    if state and (state.get("inode") not in (None, st.st_ino) or st.st_size < offset):
        offset, line, restarted = 0, 0, True
    with open(path, "rb") as f:
        prefix = b""
        if offset:
            # The bytes before the offset must be those we read last time: a file
            # truncated and rewritten in place (same inode, now longer) is not.
            back = min(offset, FINGERPRINT)
            f.seek(offset - back)
            prefix = f.read(back)
            if state and state.get("fp") not in (None, prefix[-FINGERPRINT:].hex()):
                offset, line, restarted, prefix = 0, 0, True, b""
        f.seek(offset)
        data = f.read() if limit is None else _read_limited(f, limit)
    more = limit is not None and offset + len(data) < st.st_size
    if offset == 0 and data.startswith(BOM):  # not part of the first line
        offset, prefix, data = len(BOM), BOM, data[len(BOM) :]
    cut = data.rfind(b"\n") + 1
    if max_lines is not None and max_lines > 0:
        at = _after_line(data, max_lines)
        if at < cut:
            cut, more = at, True
    tail = len(data) - cut
    if more and cut == 0:
        more = False  # no whole line left: nothing to read until the writer ends one
    return Chunk(
        data[:cut], offset, offset + cut, line + 1, restarted, tail, st.st_ino, prefix, more
    )


def _read_limited(f: Any, limit: int) -> bytes:
    """About ``limit`` bytes, more only to finish a line begun within them."""
    data = f.read(limit)
    if len(data) < limit or b"\n" in data:
        return data
    parts = [data]
    while True:  # one line longer than the limit: read on to its end
        block = f.read(limit)
        parts.append(block)
        if len(block) < limit or b"\n" in block:
            return b"".join(parts)


def _after_line(data: bytes, n: int) -> int:
    """The offset just after the ``n``-th newline of ``data`` (its length when
    it has fewer)."""
    at = 0
    for _ in range(n):
        nl = data.find(b"\n", at)
        if nl < 0:
            return len(data)
        at = nl + 1
    return at
