"""The fast path of the general reader: the record lines of a chunk that share
one layout, read as columns with no Python step per line.

The layout is the first record's (with a loss): its names, in order, and the
text between its values, behind its logger's prefix (whose digits may
differ: a timestamp). :mod:`.text_columns` cuts every line of that layout
into its values; the other lines are handed back to be read one by one.

A first record that carries a launcher's rank or tqdm's bare rates, or holds
an evaluation's measure, is left to the line-by-line path, as is a chunk in
which a header of a block sits among the other lines.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from tunescope.ingest.readers.general_text import (
    HEADER,
    PAIR,
    PREFIX,
    RANK,
    Record,
    _strip_prefix,
    records,
)
from tunescope.ingest.readers.vocabulary import HIGH, meaning

# the spellings of nan and inf the line-by-line path reads (general_text._NUM)
_WORDS = frozenset(("nan", "NaN", "NAN", "inf", "Inf", "INF", "infinity", "Infinity"))


@dataclass
class _Plan:
    """The template's layout, its pairs' names and units, and per pair the
    slot of its value and of its total (``N/M``)."""

    layout: Any
    names: list[str]
    units: list[str | None]
    where: list[tuple[int, int | None]]


def _plan(data: bytes) -> _Plan | None:
    """The layout of the first record with a loss (an evaluation's line may
    come first), from the first KiB when it is there; None when that record
    cannot be a template."""
    from tunescope.ingest.readers.text_columns import Layout, Slot

    for size in (1024, 8192):
        recs = [r for r in records(_head_lines(data, size)) if len(r.pairs) >= 2]
        first = next(
            (r for r in recs if any(meaning(n, u).column == "loss" for n, _, u, _ in r.pairs)),
            None,
        )
        if first is not None or len(data) <= size:
            break
    if not recs:
        return None
    first = first or recs[0]
    end = data.find(b"\n", first.pos)
    line = data[first.pos : end if end >= 0 else len(data)]
    m = PREFIX.match(line)
    if m is not None and m.end() and RANK.search(line, 0, m.end()) is not None:
        return None
    prefix = m.end() if m is not None else 0
    body = line[prefix:]
    if b"/it" in body or b"it/s" in body or b"\r" in line:
        return None
    pairs = list(PAIR.finditer(body))
    names = [(p.group(1) or p.group(2)).decode("utf-8", "replace").strip() for p in pairs]
    if len(names) < 2 or len(set(names)) != len(names):
        return None
    if any(not n or n.lower() == "rank" or n.endswith(".py") for n in names):
        return None
    slots: list[Slot] = []
    where: list[tuple[int, int | None]] = []
    for p in pairs:
        slots.append(Slot(prefix + p.start(3), prefix + p.end(3)))
        total = None
        if p.group(4):
            total = len(slots)
            slots.append(Slot(prefix + p.start(4), prefix + p.end(4), count=True))
        where.append((len(slots) - 1 - (total is not None), total))
    # a line like it that is a block's header takes in the line after it (a
    # value only narrows what the header's pattern takes: try each as "0")
    zeroed = line
    for slot in reversed(slots):
        zeroed = zeroed[: slot.start] + b"0" + zeroed[slot.end :]
    if HEADER.match(_strip_prefix(zeroed)):
        return None
    pivots = bytes({line[s.start - 1] for s in slots})
    layout = Layout(line, slots, pivots, free=prefix, grouped=True, words=_WORDS)
    units = [p.group(5).decode() if p.group(5) else None for p in pairs]
    return _Plan(layout, names, units, where)


def _columns(data: bytes) -> tuple[_Plan, Any, list[tuple[int, int]]] | None:
    """(the plan, the lines of its layout as columns, the spans of the other
    lines); None when there is no layout, or a block's header sits among
    the other lines (it takes in the line after it)."""
    plan = _plan(data)
    got = plan.layout.read(data) if plan is not None else None
    if plan is None or got is None or len(got.starts) < 2:
        return None
    if any(_has_header(data[a:b]) for a, b in got.other):
        return None
    return plan, got, got.other


def records_fast(data: bytes) -> list[Record]:
    """What :func:`.general_text.records` returns for ``data``, the lines of
    one layout read as columns (for the shape of a log's head)."""
    found = _columns(data)
    if found is None:
        return records(data)
    plan, got, other = found
    values = []
    for (value, total), unit in zip(plan.where, plan.units, strict=True):
        totals = got.values[total].tolist() if total is not None else [None] * len(got.starts)
        values.append(zip(got.values[value].tolist(), itertools.repeat(unit), totals))
    out = [
        Record(pos, 0, [(n, v, u, t) for n, (v, u, t) in zip(plan.names, row, strict=True)])
        for pos, row in zip(got.starts.tolist(), zip(*values, strict=True), strict=True)
    ]
    for a, b in other:
        for rec in records(data[a:b]):
            rec.pos += a
            out.append(rec)
    out.sort(key=lambda r: r.pos)
    return out


def bulk(data: bytes) -> tuple[Any, list[tuple[int, bytes]]] | None:
    """The record lines of ``data`` as columns when they share the layout of
    the first one with a loss, with the text between them as ``(offset,
    bytes)``; None when there is no such layout (then records are read one
    by one)."""
    import numpy as np

    from tunescope.ingest.readers.console.megatron import Bulk

    found = _columns(data)
    if found is None:
        return None
    plan, got, other = found
    names, where = plan.names, plan.where
    leftovers = [(a, data[a:b]) for a, b in other]
    meanings = [meaning(n, u) for n, u in zip(names, plan.units, strict=True)]
    step_i = next((i for i, mm in enumerate(meanings) if mm.kind == "step"), None)
    if step_i is None or any(mm.kind == "eval" for mm in meanings):
        return None  # evaluations on the record's line: line by line, as events
    raw = got.values[where[step_i][0]]
    whole = np.isfinite(raw) & (raw >= 0) & (raw <= 2.0**63 - 1)
    whole &= np.floor(np.where(whole, raw, 0.0)) == np.where(whole, raw, 0.0)
    if not whole.all():
        return None  # a step that is not a count: line by line
    steps = raw.astype(np.int64)
    total = 0
    total_slot = where[step_i][1]
    if total_slot is not None:
        totals = got.values[total_slot]
        nonzero = totals[totals != 0]
        total = int(nonzero[-1]) if len(nonzero) else 0
    canon: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    epoch = None
    for i, mm in enumerate(meanings):  # as general_text.split does for each record
        if mm.kind == "step":
            continue
        values = got.values[where[i][0]]
        if mm.column == "epoch":
            epoch = values
            canon.setdefault("epoch", values)
            continue
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
    if "loss" not in canon:
        return None
    pos = np.asarray(got.starts, np.int64)
    lines = Bulk(pos, steps, total, canon, extras)
    lines.epoch = float(epoch[-1]) if epoch is not None else None
    return lines, leftovers


def _has_header(text: bytes) -> bool:
    """A block's header among ``text``'s lines."""
    return any(HEADER.match(_strip_prefix(line)) for line in text.split(b"\n") if line.strip())


def _head_lines(data: bytes, size: int) -> bytes:
    """The whole lines of ``data`` within its first ``size`` bytes (at least one)."""
    if len(data) <= size:
        return data
    cut = data.rfind(b"\n", 0, size)
    return data[: cut + 1] if cut >= 0 else data[: data.find(b"\n") + 1 or len(data)]
