"""Shared pieces of the readers for logs written by other tools.

Field names differ between tools; every reader maps them to the canonical
step metrics through one vocabulary (:mod:`.readers.vocabulary`). What is not
canonical stays a metric under the name the tool wrote.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from tunescope.eventlog import LineError, as_number, loads
from tunescope.eventlog import as_int as whole_number
from tunescope.ingest.readers.vocabulary import CANONICAL, LOSS_KEYS, MIB_PER_GIB, STEP_KEYS
from tunescope.ingest.rows import METRIC_SCHEMA, STEP_SCHEMA, Problem, ReadResult
from tunescope.schema import METRIC_NAMES

__all__ = ["CANONICAL", "LOSS_KEYS", "MIB_PER_GIB", "STEP_KEYS", "LineError", "loads"]

# Prefixes of evaluation / prediction fields.
EVAL_PREFIXES = ("eval_", "eval/", "test_", "predict_")

_HMS = re.compile(r"^\s*(?:(\d+)\s+days?,\s*)?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")
_UNITS = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s|ms)\b")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def number(value: Any) -> float | None:
    """A numeric JSON value, or numeric text ("2.5", "NaN", "12.5%"), as a float."""
    t = type(value)
    if t is float:
        return value
    if t is int or t is bool:
        return float(value)
    if t is str:
        text = value.strip().rstrip("%")
        if not text:
            return None
        try:
            return float(text)
        except ValueError:
            return None
    return as_number(value)


def parse_duration(value: Any) -> float | None:
    """Seconds from "H:MM:SS", "N days, H:MM:SS", "1m 30s", "10h 30m 51s" or a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    m = _HMS.match(value)
    if m:
        days, h, mi, s = m.groups()
        return int(days or 0) * 86400.0 + int(h) * 3600.0 + int(mi) * 60.0 + float(s)
    parts = _UNITS.findall(value)
    if parts and _UNITS.sub("", value).strip() == "":
        return sum(float(n) * _UNIT_S[u] for n, u in parts)
    return None


def parse_fraction(value: Any) -> tuple[int | None, int | None]:
    """ "N/M" -> (N, M); an integer -> (N, None)."""
    if isinstance(value, str) and "/" in value:
        a, _, b = value.partition("/")
        n, m = as_int(a), as_int(b)
        return (n, m) if n is not None and m is not None else (None, None)
    n = as_int(value)
    return n, None


def as_int(value: Any) -> int | None:
    """A non-negative integral number (or integral text) as int, else None.
    Beyond 2**63 - 1 (what the store's step columns hold) it is None too: the
    row is then reported as bad, as the native reader does, and the file's
    other rows are kept."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    n = whole_number(value)
    return n if n is not None and n >= 0 else None


def split_fields(
    record: dict[str, Any], skip: Iterable[str] = ()
) -> tuple[dict[str, float], dict[str, float]]:
    """(canonical metrics, other numeric fields) of one record. Non-numeric
    fields and the names in ``skip`` are left out."""
    skip = set(skip)
    canon: dict[str, float] = {}
    extras: dict[str, float] = {}
    mapping = CANONICAL
    for key, raw in record.items():
        if key in skip:
            continue
        value = raw if type(raw) is float else number(raw)
        if value is None:
            continue
        target = mapping.get(key)
        if target is not None:
            name, scale = target
            if name not in canon:
                canon[name] = value * scale if scale != 1.0 else value
        else:
            extras[key] = value
    return canon, extras


def is_eval_key(key: str) -> bool:
    return key.startswith(EVAL_PREFIXES)


def infer_logging_steps(steps: Iterable[int]) -> int | None:
    """How many optimizer steps one logged row covers: the most common gap
    between consecutive logged steps (a first row logged at step 1 and the
    last row at the end of training do not disturb it)."""
    ordered = sorted(set(steps))
    gaps = [b - a for a, b in itertools.pairwise(ordered) if b > a]
    if not gaps:
        return ordered[0] if len(ordered) == 1 and ordered[0] > 0 else None
    try:
        return int(statistics.mode(gaps))
    except statistics.StatisticsError:  # pragma: no cover - mode never fails on 3.8+
        return int(statistics.median(gaps))


class Deltas:
    """Per-step rates from cumulative counters (elapsed seconds, tokens seen):
    the difference to the previous logged row, divided by the steps between.
    The previous row lives in the reader's state between reads."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        self.prev: dict[str, list[float]] = dict((state or {}).get("prev", {}))

    def rate(self, name: str, step: int, total: float | None) -> float | None:
        if total is None or not math.isfinite(total):
            return None
        prev = self.prev.get(name)
        self.prev[name] = [step, total]
        if prev is None:
            return None
        p_step, p_total = prev
        if step <= p_step or total < p_total:
            return None
        return (total - p_total) / (step - p_step)

    def dump(self) -> dict[str, list[float]]:
        return self.prev


def logging_steps_from_hf(value: Any, max_steps: Any) -> int | None:
    """``TrainerState.logging_steps``: an int, or a ratio of the total steps when below 1."""
    ls = number(value)
    if ls is None or not math.isfinite(ls) or ls <= 0:
        return None
    if ls < 1:
        total = as_int(max_steps)
        return max(1, math.ceil(ls * total)) if total else None
    return int(ls)


def step_table(rows: list[tuple[int, float | None, dict[str, float]]]) -> pa.Table:
    """Step rows ``(step, ts, canonical metrics)`` of rank 0 as a table, for
    readers with many rows (columns built directly, not row by row)."""
    n = len(rows)
    cols: dict[str, Any] = {
        "rank": pa.array([0] * n, pa.int32()),
        "step": pa.array([r[0] for r in rows], pa.int64()),
        "ts": pa.array([r[1] for r in rows], pa.float64()),
    }
    for name in METRIC_NAMES:
        cols[name] = pa.array([r[2].get(name) for r in rows], pa.float64())
    cols["sample_ids"] = pa.nulls(n, pa.string())
    cols["seq"] = pa.array(range(1, n + 1), pa.int64())
    return pa.table(cols, schema=STEP_SCHEMA)


def metric_table(rows: list[tuple[int, float | None, str, float]], seq0: int = 0) -> pa.Table:
    """Metric rows ``(step, ts, name, value)`` of rank 0 as a table."""
    n = len(rows)
    return pa.table(
        {
            "rank": pa.array([0] * n, pa.int32()),
            "step": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([r[1] for r in rows], pa.float64()),
            "name": pa.array([r[2] for r in rows], pa.string()),
            "value": pa.array([r[3] for r in rows], pa.float64()),
            "seq": pa.array(range(seq0 + 1, seq0 + n + 1), pa.int64()),
        },
        schema=METRIC_SCHEMA,
    )


def add_step_times(
    step_rows: list[tuple[int, float | None, dict[str, float]]], known: list[list[float]]
) -> list[list[float]]:
    """Set ``step_time_s`` on rows that have a wall-clock time: the time since
    the previous logged step divided by the steps between (so it includes
    whatever ran in between, evaluation too). ``step_rows`` are in step order;
    ``known`` holds ``[step, ts]`` of the last rows of earlier reads; the
    return value is the new ``known``."""
    earlier = sorted((int(s), float(t)) for s, t in known)
    k = 0
    prev: tuple[int, float] | None = None
    tail: dict[int, float] = dict(earlier)
    for step, ts, canon in step_rows:
        while k < len(earlier) and earlier[k][0] < step:
            prev = earlier[k] if prev is None or earlier[k][0] > prev[0] else prev
            k += 1
        if ts is None or not math.isfinite(ts):
            continue
        if prev is not None and prev[0] < step:
            dt = ts - prev[1]
            if dt >= 0:
                canon.setdefault("step_time_s", dt / (step - prev[0]))
        prev = (step, ts)
        tail[step] = ts
    last = sorted(tail)[-2:]
    return [[s, tail[s]] for s in last]


def scalar_result(
    steps: dict[int, list[Any]],
    metric_rows: list[tuple[int, float | None, str, float]],
    events: pa.Table,
    state: dict[str, Any],
    new_state: dict[str, Any],
    problems: list[Problem],
    restarted: bool,
) -> ReadResult:
    """The result of a scalar-log reader (TensorBoard, W&B): ``steps`` maps a
    step to ``[ts, canonical metrics]``; ``step_time_s`` is derived with the
    step times remembered in ``state`` (stored in ``new_state['times']``)."""
    step_rows = [(s, ts, canon) for s, (ts, canon) in sorted(steps.items())]
    new_state["times"] = add_step_times(step_rows, state.get("times", []))
    return ReadResult(
        step_table(step_rows),
        metric_table(metric_rows),
        events,
        new_state,
        problems,
        replace=restarted,
    )


T = TypeVar("T")


def cached_parse(
    cache: dict[str, tuple[tuple[int, int], Any]], path: Path, parse: Callable[[bytes], T]
) -> T | None:
    """``parse`` of the file's bytes, kept in ``cache`` by size and modification
    time (at most 64 files; it is emptied when it holds more); None when the
    file cannot be read."""
    try:
        st = path.stat()
        sig = (st.st_size, st.st_mtime_ns)
        hit = cache.get(str(path))
        if hit and hit[0] == sig:
            return hit[1]
        data = path.read_bytes()
    except OSError:
        return None
    value = parse(data)
    if len(cache) > 64:
        cache.clear()
    cache[str(path)] = (sig, value)
    return value


def resume_state(
    st: os.stat_result, state: dict[str, Any] | None, start: int
) -> tuple[dict[str, Any], int, bool]:
    """(state, offset, restarted) for a binary log read incrementally: a copy
    of the saved ``state`` and its ``offset`` (``start`` at first); an empty
    state, ``start`` and True when the file was replaced (another inode) or
    truncated below the saved offset."""
    state = dict(state or {})
    offset = int(state.get("offset", start))
    if state and (state.get("inode") not in (None, st.st_ino) or st.st_size < offset):
        return {}, start, True
    return state, offset, False


# ---- home-made logs: which key is the step, which the loss -------------------------


class KeyMap:
    """The step keys, loss keys and key -> column renames for one log: the
    defaults above, after what ``[tool.tunescope.ingest]`` says."""

    def __init__(self, table: dict[str, Any] | None = None) -> None:
        table = table or {}
        self.step = tuple(table.get("step", ())) + STEP_KEYS
        self.loss = tuple(table.get("loss", ())) + LOSS_KEYS
        self.metrics: dict[str, str] = dict(table.get("metrics", {}))
        self.configured = bool(table)

    def step_key(self, record: dict[str, Any]) -> str | None:
        for key in self.step:
            if key in record and record[key] is not None:
                return key
        return None

    def loss_key(self, record: dict[str, Any]) -> str | None:
        for key in self.loss:
            if key in record and record[key] is not None:
                return key
        return None

    def canon(self, record: dict[str, Any], skip: Iterable[str] = ()) -> tuple[dict, dict]:
        """(canonical metrics, other numeric fields) of a record: the loss
        key's value as ``loss``, configured renames, then :func:`split_fields`."""
        skip = set(skip)
        loss_key = self.loss_key(record)
        if loss_key is not None:
            skip.add(loss_key)
        canon, extras = split_fields(record, skip)
        if loss_key is not None:
            value = number(record[loss_key])
            if value is not None:
                canon["loss"] = value
        for key, column in self.metrics.items():
            if key in extras:
                canon[column] = extras.pop(key)
        return canon, extras

    def columns(
        self, names: list[str], skip: Iterable[str] = ()
    ) -> tuple[dict[str, tuple[str, float]], list[str]] | None:
        """Where :meth:`canon` puts the values of records with these keys, all
        of them numbers: canonical column -> (key, scale), and the keys kept
        as metrics (None if a column cannot be told). Asked of ``canon``
        itself, one key changed at a time, so that the two never disagree
        (for a log's records read as columns)."""
        ones = dict.fromkeys(names, 1.0)
        base, extras = self.canon(ones, skip)
        out: dict[str, tuple[str, float]] = {}
        for name in names:
            if name in extras:
                continue
            moved, _ = self.canon({**ones, name: 2.0}, skip)
            changed = [c for c, v in moved.items() if v != base.get(c)]
            if len(changed) == 1:
                out[changed[0]] = (name, base[changed[0]])
        if set(out) != set(base):
            return None
        return out, list(extras)


_KEYMAPS: dict[str, KeyMap] = {}


def keymap_for(path: Path) -> KeyMap:
    """The :class:`KeyMap` of a log: ``[tool.tunescope.ingest]`` of the config
    found walking up from its folder (defaults when none, or when it is broken:
    the CLI reports a broken config)."""
    folder = str(path.parent)
    hit = _KEYMAPS.get(folder)
    if hit is not None:
        return hit
    from tunescope.config import find_config, load_config
    from tunescope.errors import ConfigError

    try:
        found = find_config([path.parent])
        table = load_config(found).ingest if found is not None else {}
    except ConfigError:
        table = {}
    if len(_KEYMAPS) > 256:
        _KEYMAPS.clear()
    out = _KEYMAPS[folder] = KeyMap(table)
    return out


def no_loss_problem(path: Path, records: int, what: str = "rows") -> Problem:
    """The one line for a claimed file that gave no loss (never a silent empty run)."""
    return Problem(str(path), None, f"{records:,} {what}, none with a loss; nothing read")


# A log without a clock cannot say "still running" by its own timestamps, and
# a copied or freshly cloned file is new on disk: such a log that ends with no
# summary, no error and its steps short of the total is read as interrupted,
# and taken up again (a ``resume`` event) when it grows.
QUIET_END = {
    "status": "interrupted",
    "reason": "the log stops with no summary and no error before its last step, "
    "and has no clock to tell a live run; taken up again if the file grows",
}
