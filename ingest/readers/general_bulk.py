"""The fast path of the general reader: the record lines of a chunk that share
one layout, read as columns with no Python step per line.

The layout is the first record's: its names, in order, and the text between
its values. Two ways, cheaper first:

- a regex per name, when every line is a record (each name found once a line);
- one regex for the whole layout, when other lines sit between the records
  (those lines are handed back to be read one by one).

Anything else (a launcher's rank, quotes, tqdm's bare rates, a different
layout) is left to the line-by-line path.
"""

from __future__ import annotations

import re
from typing import Any

from tunescope.ingest.readers.general_text import PAIR, PREFIX, RANK, records
from tunescope.ingest.readers.vocabulary import HIGH, meaning

# a value in the fast path: the characters numbers are written with (a
# thousands comma, a trailing list comma, removed when converting), or nan/inf;
# one character class is a third cheaper to scan than a number's grammar, and
# what is not a number fails the conversion (then records are read one by one)
_VALUE = rb"([-+\d.,eE]+|[-+]?(?:nan|NaN|NAN|inf|Inf|INF|infinity|Infinity))"


def bulk(data: bytes) -> tuple[Any, list[tuple[int, bytes]]] | None:
    """The record lines of ``data`` as columns when they share the layout of
    the first one (its names and the text between its values, behind any
    prefix), with the text between them as ``(offset, bytes)``; None when
    there is no such layout, or the first line carries a launcher's rank,
    quotes or tqdm rates (then records are read one by one). One regex pass
    and a numpy conversion per column: no Python per line."""
    import numpy as np

    from tunescope.ingest.readers.console.megatron import Bulk

    recs = [r for r in records(_head_lines(data, 8192)) if len(r.pairs) >= 2]
    if not recs:
        return None
    # the layout of the first record with a loss (an evaluation's line may come first)
    first = next(
        (r for r in recs if any(meaning(n, u).column == "loss" for n, _, u, _ in r.pairs)),
        recs[0],
    )
    end = data.find(b"\n", first.pos)
    line = data[first.pos : end if end >= 0 else len(data)]
    m = PREFIX.match(line)
    if m is not None and m.end() and RANK.search(line, 0, m.end()) is not None:
        return None
    body = line[m.end() :] if m is not None else line
    if b"/it" in body or b"it/s" in body or b'"' in body or b"'" in body:
        return None
    pairs = list(PAIR.finditer(body))
    names = [((p.group(1) or p.group(2)).decode("utf-8", "replace").strip(), p) for p in pairs]
    if len(names) < 2 or len({n for n, _ in names}) != len(names):
        return None
    if any(not n or n.lower() == "rank" or n.endswith(".py") for n, _ in names):
        return None
    literals = [re.escape(body[pairs[0].start() : pairs[0].start(3)])]
    pattern = literals[0]
    for (_, p), (_, nxt) in zip(names, [*names[1:], (None, None)], strict=True):
        if nxt is None:
            pattern += _VALUE + re.escape(p.group(5) or b"") + rb"(?=[\s,|;]|$)"
        else:
            literal = re.escape(body[p.end(3) : nxt.start(3)])
            literals.append(literal)
            pattern += _VALUE + literal
    starts = _line_starts(data)
    leftovers: list[tuple[int, bytes]] = []
    cols: list[Any] = []
    # every line a record: a column per literal, each found once a line
    for literal in literals:
        col = re.findall(literal + _VALUE, data)
        if len(col) != len(starts):
            cols = []
            break
        cols.append(col)
    if len(cols) == len(literals) and len(starts) >= 2:
        pos = starts
    else:  # other lines between the records: where each record is, and what is between
        layout = re.compile(pattern, re.MULTILINE)
        rows = layout.findall(data)
        if len(rows) < 2:
            return None
        pos_list: list[int] = []
        prev = 0
        for hit in layout.finditer(data):
            start = data.rfind(b"\n", prev, hit.start()) + 1
            if start > prev:
                leftovers.append((prev, data[prev:start]))
            pos_list.append(start)
            prev = data.find(b"\n", hit.end()) + 1 or len(data)
        if prev < len(data):
            leftovers.append((prev, data[prev:]))
        pos = np.array(pos_list, np.int64)
        if len(pos) != len(rows):
            return None
        cols = list(zip(*rows, strict=True))
    meanings = [meaning(n, p.group(5).decode() if p.group(5) else None) for n, p in names]
    step_i = next((i for i, mm in enumerate(meanings) if mm.kind == "step"), None)
    if step_i is None or any(mm.kind == "eval" for mm in meanings):
        return None  # evaluations on the record's line: line by line, as events
    canon: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    raw_steps = cols[step_i]
    if any(b"/" in v for v in raw_steps[:1]):
        return None  # "N/M": read line by line
    try:
        steps = np.fromiter(map(int, raw_steps), np.int64, len(raw_steps))
    except (OverflowError, ValueError):
        return None  # a step beyond int64, or not whole: line by line
    try:
        if np.any(steps < 0):
            return None
        for i, mm in enumerate(meanings):
            if i == step_i:
                continue
            raw = cols[i]
            values = _floats(raw)
            if mm.kind == "column":
                if mm.scale == -1.0:
                    with np.errstate(divide="ignore"):
                        values = np.where(values != 0, 1.0 / values, np.nan)
                elif mm.scale != 1.0:
                    values = values * mm.scale
                if mm.confidence >= HIGH or mm.column not in canon:
                    canon[mm.column] = values
            else:
                extras.setdefault(mm.column, values)
    except ValueError:
        return None
    if "loss" not in canon:
        return None
    return Bulk(pos, steps, 0, canon, extras), leftovers


def _head_lines(data: bytes, size: int) -> bytes:
    """The whole lines of ``data`` within its first ``size`` bytes (at least one)."""
    if len(data) <= size:
        return data
    cut = data.rfind(b"\n", 0, size)
    return data[: cut + 1] if cut >= 0 else data[: data.find(b"\n") + 1 or len(data)]


def _line_starts(data: bytes) -> Any:
    """Byte offsets of the non-blank lines of ``data`` (which ends with a newline)."""
    import numpy as np

    buf = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], nl[:-1] + 1)).astype(np.int64)
    return starts[nl - starts > 0] if len(nl) else starts[:0]


def _floats(raw: tuple[bytes, ...]) -> Any:
    """Numeric text as float64 (``1,004`` as 1004); ValueError when one is not a number."""
    import numpy as np

    try:
        return np.fromiter(map(float, raw), np.float64, len(raw))
    except ValueError:
        return np.fromiter((float(v.replace(b",", b"") or "x") for v in raw), np.float64, len(raw))
