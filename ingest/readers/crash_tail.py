"""The lines that show why a run ended, for the ``run_end`` event's ``log_tail``.

A crash prints its cause in a few places: the lines just before it (an NCCL
watchdog, a scheduler's notice), the first lines of the traceback, its last
line (``torch.OutOfMemoryError: CUDA out of memory. Tried to allocate ...``)
and the launcher's summary after it (``ChildFailedError`` with an exit code).
This module keeps those lines of a crash region, each with its line number in
the file, bounded (:data:`MAX_LINES` lines, :data:`MAX_BYTES` bytes) and with
anything that looks like a credential masked. It reads no run and judges
nothing: the detectors name the cause.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from tunescope.ingest.live.tail import count_byte

MAX_LINES = 60
MAX_BYTES = 8 << 10
MAX_LINE = 400  # characters kept of one line
HEAD_LINES = 12  # lines kept from the start of the region (context included)
LAST_LINES = 30  # lines kept from its end
CONTEXT_LINES = 6  # lines before the first marker of the crash
REGION = 256 << 10  # bytes of a crash region looked at, at most
FILE_TAIL = 256 << 10  # bytes of a file's end looked at by :func:`file_tail`

# Lines worth keeping from the middle of a long crash region: error lines,
# launcher and scheduler notices, memory and collective messages.
_KEY = re.compile(
    rb"(?i)error|exception|exitcode|exit code|killed|cancelled|out of memory|tried to allocate"
    rb"|watchdog|nccl|timed? ?out|no space left|sigterm|sigkill|signal|preempt|time limit"
    rb"|loss is nan|non-finite|found inf|is not finite"
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# What a credential looks like in a log: tokens with a known prefix, bearer
# headers, ``key=value`` pairs whose key names a secret, and URL user info.
_SECRETS = (
    re.compile(r"\b(?:hf|sk|ghp|gho|ghs|xox[abpr])[-_][A-Za-z0-9_\-]{16,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-+/=]{8,}"),
    re.compile(
        r"(?i)\b([\w.-]*(?:token|secret|password|passwd|api[_-]?key|access[_-]?key))"
        r"(\s*[=:]\s*|\"\s*:\s*\"|'\s*:\s*')([^\s'\",;]{8,})"
    ),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``<redacted>``."""
    for i, pattern in enumerate(_SECRETS):
        if i == 3:
            text = pattern.sub(lambda m: m.group(1) + m.group(2) + "<redacted>", text)
        else:
            text = pattern.sub("<redacted>", text)
    return text


def _clean(raw: bytes) -> str:
    """One line for people: the last redraw of a progress bar (after its last
    carriage return), no colour codes, bounded, secrets masked."""
    raw = raw.rstrip(b"\r")
    if b"\r" in raw:
        raw = raw.rsplit(b"\r", 1)[1]
    text = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip()
    if len(text) > MAX_LINE:
        text = text[: MAX_LINE - 1] + "…"
    return redact(text)


def crash_lines(data: bytes, lo: int, hi: int, first_line: int) -> list[list[Any]]:
    """The lines that tell a crash, as ``[line number, text]`` pairs.

    ``data[lo:hi]`` is the crash region (``lo`` at its first marker);
    ``first_line`` is the line number of ``data[0]`` in its file. A few lines
    before ``lo`` are kept for context; then the first lines of the region,
    its error and notice lines, and its last lines, at most :data:`MAX_LINES`
    lines and :data:`MAX_BYTES` bytes."""
    lo = max(0, min(lo, len(data)))
    hi = max(lo, min(hi, len(data)))
    start = data.rfind(b"\n", 0, lo) + 1
    for _ in range(CONTEXT_LINES):
        if start == 0:
            break
        prev = data.rfind(b"\n", max(0, start - 4096), start - 1)
        if prev < 0 and start - 1 > 4096:
            break
        start = prev + 1
    if hi - start > REGION:  # the start and the end of a huge region
        head_end = data.find(b"\n", start + REGION // 4)
        tail_start = data.find(b"\n", hi - REGION // 2)
        parts = [(start, head_end + 1), (tail_start + 1, hi)]
    else:
        parts = [(start, hi)]
    numbered: list[tuple[int, bytes]] = []
    for a, b in parts:
        line_no = first_line + data.count(b"\n", 0, a)
        for raw in data[a:b].split(b"\n"):
            if raw.strip():
                numbered.append((line_no, raw))
            line_no += 1
    return _pick(numbered)


def _pick(numbered: list[tuple[int, bytes]]) -> list[list[Any]]:
    n = len(numbered)
    keep = set(range(min(HEAD_LINES, n))) | set(range(max(0, n - LAST_LINES), n))
    room = MAX_LINES - len(keep)
    for i in range(HEAD_LINES, max(HEAD_LINES, n - LAST_LINES)):
        if room <= 0:
            break
        if _KEY.search(numbered[i][1]):
            keep.add(i)
            room -= 1
    picked = [(numbered[i][0], _clean(numbered[i][1])) for i in sorted(keep)]
    # the byte bound drops lines from the middle first: the start and the end say most
    while len(picked) > 2 and sum(len(t) + 8 for _, t in picked) > MAX_BYTES:
        del picked[len(picked) // 2]
    return [[n, t] for n, t in picked]


def torn_line(path: Path, offset: int, number: int) -> list[list[Any]]:
    """The line at byte ``offset`` of ``path`` that has no newline yet, as a
    one-item list (``[number, text]``), else an empty list. A process that
    dies often writes its last line (the exception) without a newline; a
    reader that waits for the newline would lose the one line that names the
    cause, so a crash's tail keeps it now and is read again if the line grows."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read(MAX_LINE * 4)
    except OSError:
        return []
    raw = raw.split(b"\n", 1)[0]
    return [[number, _clean(raw)]] if raw.strip() else []


def lines_before(path: Path, offset: int) -> int:
    """How many newlines ``path`` holds before byte ``offset`` (counted in
    blocks; only asked when a crash was found, so the common read never pays)."""
    if offset <= 0:
        return 0
    n = 0
    with open(path, "rb") as f:
        left = offset
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            n += count_byte(block, b"\n")
            left -= len(block)
    return n


def file_tail(path: Path) -> list[list[Any]] | None:
    """The crash lines at the end of a text file (W&B's ``files/output.log``):
    from the first crash marker (a traceback, a launcher's error) in its last
    :data:`FILE_TAIL` bytes, else its last lines; None when it cannot be read
    or holds no text."""
    from tunescope.ingest.readers.console.items import markers

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            seek = max(0, size - FILE_TAIL)
            f.seek(seek)
            data = f.read(FILE_TAIL)
        before = lines_before(path, seek)
    except OSError:
        return None
    if seek:  # the first line of the tail may be cut: start after it
        cut = data.find(b"\n") + 1
        data, before = data[cut:], before + 1
    if not data.strip():
        return None
    ends = [
        pos for pos, kind, payload in markers(data, 0, len(data)) if kind == "end" and payload[0]
    ]
    if ends:
        lo = ends[0]
    else:  # no marker: the last lines
        lo = len(data.rstrip(b"\n"))
        for _ in range(LAST_LINES):
            lo = data.rfind(b"\n", 0, lo)
            if lo < 0:
                break
        lo += 1
    return crash_lines(data, lo, len(data), before + 1)
