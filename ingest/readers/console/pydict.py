"""Metric dicts printed as Python literals in console output.

The Hugging Face Trainer (and TRL, LLaMA-Factory, Unsloth, ms-swift on top of
it) prints each log as ``{'loss': 1.23, 'grad_norm': 0.5, 'epoch': 0.1}``,
anywhere in a line: after a tqdm bar, between ANSI colour codes, with values
as strings (ms-swift: ``'loss': '7.948'``), as ``nan``/``inf`` tokens, or as
reprs such as ``tensor(1.23, device='cuda:0')`` and ``np.float64(1.2)``.

This module finds such dicts in raw bytes and turns one into ``{key: value}``
with numbers as floats and other values as text. It never evaluates code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# A dict literal that starts with a quoted key and holds no nested braces, at
# most 8 KiB long (a long line with an unclosed brace costs one bounded scan).
# ``\r`` may occur inside: a tqdm redraw written into the middle of the line.
DICT = re.compile(rb"\{['\"][^\n{}]{0,8192}\}")
LONGEST = 8195  # bytes in a DICT match, at most: "{", a quote, 8192, "}"


def dicts(data: bytes) -> Iterator[re.Match[bytes]]:
    """The dict literals of ``data`` in order, as ``DICT.finditer`` finds them,
    but a dict's ``{`` is found with ``bytes.find`` (memchr: several times
    quicker than the regex engine's scan over the bytes between dicts)."""
    i = data.find(b"{")
    while i >= 0:
        m = DICT.match(data, i)
        if m is not None:
            yield m
            i = data.find(b"{", m.end())
        else:
            i = data.find(b"{", i + 1)


_PAIR = re.compile(
    rb"""(?:'([^'\\]*(?:\\.[^'\\]*)*)'|"([^"\\]*(?:\\.[^"\\]*)*)")\s*:\s*"""
    rb"""(?:'([^'\\]*(?:\\.[^'\\]*)*)'|"([^"\\]*(?:\\.[^"\\]*)*)"|([^,}]*))"""
)
# tensor(1.23, device='cuda:0'), np.float64(1.2), torch.tensor(nan), Decimal('1')
_WRAPPED = re.compile(rb"^[A-Za-z_][\w.]*\(\s*['\"]?([^,)'\"]*)")
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
# A tqdm bar segment: "... 10%|###   | 10/100 [00:10<00:50, 1.2it/s]"
_BAR = re.compile(rb"[^\r]*\|[^\r]*\d+/\d+\s*\[[^\]\r]*\]")


def _num(raw: bytes) -> float | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    low = raw.lower()
    if low in (b"true", b"false"):
        return 1.0 if low == b"true" else 0.0
    m = _WRAPPED.match(raw)
    if m and m.group(1).strip():
        try:
            return float(m.group(1).strip())
        except ValueError:
            return None
    if low.rstrip(b"%") != low:
        return _num(low.rstrip(b"%"))
    return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def clean(raw: bytes) -> bytes:
    """A dict's bytes without ANSI codes and without tqdm redraws that were
    written into its middle (pieces between ``\\r`` that are progress bars)."""
    if b"\x1b" in raw:
        raw = _ANSI.sub(b"", raw)
    if b"\r" in raw:
        raw = b"".join(p for p in raw.split(b"\r") if not _BAR.fullmatch(p))
    return raw


_KEYS: dict[bytes, str] = {}


def _key(raw: bytes) -> str:
    key = _KEYS.get(raw)
    if key is None:
        key = _text(raw)
        if len(_KEYS) < 4096:
            _KEYS[raw] = key
    return key


def parse(raw: bytes) -> dict[str, Any]:
    """``{key: value}`` of one dict literal (the bytes from ``{`` to ``}``).
    Numeric values (numbers, numeric strings, ``nan``, ``inf``, wrapped reprs)
    become floats; other values stay text; ``None`` stays None."""
    out: dict[str, Any] = {}
    if b"\x1b" in raw or b"\r" in raw:
        raw = clean(raw)
    for k1, k2, s1, s2, bare in _PAIR.findall(raw):
        key = _key(k1 or k2)
        value = s1 or s2 or bare
        try:
            out[key] = float(value)
            continue
        except ValueError:
            pass
        value = value.strip()
        if value == b"None" and bare:
            out[key] = None
            continue
        number = _num(value)
        out[key] = number if number is not None else _text(value)
    return out
