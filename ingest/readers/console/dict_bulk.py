"""The Hugging Face Trainer's printed dicts read as columns.

A training log prints one dict per logging step, all with the same keys in
the same order (``{'loss': 1.2, 'grad_norm': 0.5, 'learning_rate': 1e-05,
'epoch': 0.1}``), among thousands of progress-bar redraws. The first
training dict is the template: a dict with the same text between its values,
and plain numbers as values, is one row; its step is the dict's own or the
training bar's just before it, as the dict-by-dict path finds it. Every
other dict (evaluations, the summary, a config, a dict of another shape) is
read by that path.
"""

from __future__ import annotations

import re
from typing import Any

from tunescope.ingest.readers.console import pydict
from tunescope.ingest.readers.console.items import _BAR_LOOKBACK, _DICT_SKIP, bar_step, dict_item

# a plain value: what the dict-by-dict path reads with ``float`` (else the
# dict is read that way)
_VALUE = rb"([^,}'\"{\n\r\x1b]*)"


def bulk(data: bytes, keys: Any, total: int | None) -> tuple[Any, list[Any], int | None] | None:
    """(the training dicts as columns, the other dicts' items, the training
    bar's total after them); None when some training dict is not laid out
    like the first, or has no step (then every dict is read one by one)."""
    import numpy as np

    from tunescope.ingest.readers.console.megatron import Bulk

    if b"{" not in data:
        return None
    items: list[tuple[int, str, Any]] = []
    first = None
    for m in pydict.dicts(data):
        item = dict_item(m.group(), keys)
        if item is None:
            continue
        if item[0] == "dict-train":
            first = (m, item[1])
            break
        items.append((m.start(), *item))
    if first is None:
        return None
    m, item = first
    plan = _layout(m.group(), keys)
    if plan is None or "elapsed" in item:
        return None
    layout, names, steps_from, columns = plan
    pos: list[int] = []
    rows: list[tuple[bytes, ...]] = []
    # every "{" from the first training dict on: a dict laid out like it
    # (which ends at the first "}", as DICT's match does), or any other dict
    i = m.start()
    while i >= 0:
        got = layout.match(data, i)
        if got is not None and got.end() - i <= pydict.LONGEST:
            pos.append(i)
            rows.append(got.groups())
            i = data.find(b"{", got.end())
            continue
        d = pydict.DICT.match(data, i)
        if d is None:
            i = data.find(b"{", i + 1)
            continue
        i = data.find(b"{", d.end())
        other = dict_item(d.group(), keys)
        if other is None:
            continue
        if other[0] == "dict-train":
            return None  # a training dict of another shape: dict by dict
        items.append((d.start(), *other))
    try:
        cols = [np.fromiter(map(float, c), np.float64, len(pos)) for c in zip(*rows, strict=True)]
    except ValueError:
        return None  # a value that is not a number: dict by dict
    values = dict(zip(names, cols, strict=True))
    if steps_from is not None:
        raw = values[steps_from]
        steps = _counts(raw)
        if steps is None:
            return None
        from_ = "log"
    else:
        steps, total = _bar_steps(data, pos, items, total)
        if steps is None:
            return None
        from_ = "progress bar"
    canon = {c: values[k] * s if s != 1.0 else values[k] for c, (k, s) in columns[0].items()}
    extras = {k: values[k] for k in columns[1]}
    at = np.array(pos, np.int64)
    lines = Bulk(at, steps, (total or 0) if from_ != "log" else 0, canon, extras, source=from_)
    items.sort(key=lambda it: it[0])
    return lines, items, total


def _layout(raw: bytes, keys: Any) -> tuple[Any, list[str], str | None, Any] | None:
    """(a regex for dicts laid out like ``raw``, its keys, the key that holds
    the step (None: the progress bar's), where ``keys.canon`` puts each)."""
    if b"\x1b" in raw or b"\r" in raw:
        return None
    pairs = list(pydict._PAIR.finditer(raw))
    if not pairs or any(p.group(5) is None for p in pairs):
        return None  # a quoted value: dict by dict
    names = [pydict._key(p.group(1) or p.group(2)) for p in pairs]
    if len(set(names)) != len(names):
        return None
    pattern = b""
    at = 0
    for p in pairs:
        pattern += re.escape(raw[at : p.start(5)]) + _VALUE
        at = p.end(5)
    pattern += re.escape(raw[at:])
    columns = keys.columns(names, skip=_DICT_SKIP)
    if columns is None or "global_step/max_steps" in names:
        return None
    step_key = next((k for k in keys.step if k in names), None)
    return re.compile(pattern), names, step_key, columns


def _counts(raw: Any) -> Any:
    """Whole non-negative numbers as int64, as the dict's step (None if one is not)."""
    import numpy as np

    fine = np.isfinite(raw) & (raw >= 0) & (raw < 2.0**63)
    fine &= np.floor(np.where(fine, raw, 0.0)) == np.where(fine, raw, 0.0)
    return raw.astype(np.int64) if fine.all() else None


def _bar_steps(
    data: bytes, pos: list[int], items: list[tuple[int, str, Any]], total: int | None
) -> tuple[Any, int | None]:
    """Each dict's step from the training bar drawn just before it (after the
    item before it), as :func:`.items.bar_step` takes it for one dict; None
    if a dict has no bar before it."""
    import numpy as np

    at = np.array(pos, np.int64)
    # the item before each dict: the dict before it, or another item after that
    before = np.sort(np.array([p for p, _, _ in items] + pos, np.int64))
    k = np.searchsorted(before, at) - 1
    lo = np.where(k >= 0, before[np.maximum(k, 0)], 0)
    out = np.empty(len(pos), np.int64)
    start = 0
    if total is None:  # the first dict tells the training bar's total
        got = bar_step(data, int(lo[0]), pos[0], None)
        if got is None:
            return None, total
        out[0], total = got
        start = 1
    # the rest: the last "N/total [" before each dict, within its lookback
    needle = b"/%d [" % total
    low = np.maximum(lo, at - _BAR_LOOKBACK)
    found = np.array(
        [data.rfind(needle, a, b) for a, b in zip(low[start:].tolist(), pos[start:], strict=True)],
        np.int64,
    )
    if len(found) and (found < 0).any():
        return None, total
    # the digits just before each: at most 18 (an int64), none before the lookback
    width = 19
    buf = np.frombuffer(data, np.uint8)
    back = found[:, None] - np.arange(1, width + 1)
    digit = (back >= low[start:, None]) & (back >= 0)
    byte = buf[np.maximum(back, 0)]
    digit &= (byte >= 48) & (byte <= 57)
    run = np.cumprod(digit, axis=1).sum(axis=1)
    if len(run) and ((run == 0) | (run == width)).any():
        return None, total
    value = np.where(np.arange(width) < run[:, None], byte.astype(np.int64) - 48, 0)
    power = np.where(np.arange(width) < run[:, None], 10 ** np.arange(width, dtype=np.int64), 0)
    out[start:] = (value * power).sum(axis=1)
    return out, total
