"""Decoding and validating event lines, shared by the writer and by ingest.

This is the one place that knows how a line of ``rank-N.jsonl`` maps to the
schema: which fields are envelope, which canonical metrics, which extras.
It imports neither torch nor duckdb.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tunescope.schema import ENVELOPE_NAMES, KINDS, METRIC_NAMES, SCHEMA_VERSION

_METRICS = frozenset(METRIC_NAMES)
_ENVELOPE = frozenset(ENVELOPE_NAMES)
_NOT_PAYLOAD = frozenset(("v", "kind", "rank", "step", "ts"))


class LineError(ValueError):
    """A line that cannot be used; the message is the reason, for a user."""


@dataclass
class Event:
    """One validated event. ``metrics`` holds canonical numeric fields,
    ``extras`` other numeric fields, ``other`` the remaining (non-numeric) ones."""

    kind: str
    rank: int | None
    step: int | None
    ts: float | None
    run: str | None
    metrics: dict[str, float]
    extras: dict[str, float]
    other: dict[str, Any]
    problems: list[str]
    raw: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The event's own fields as written (without v, kind, rank, step, ts),
        for the ``events`` view; keeps ``run`` and the original value types."""
        return {k: v for k, v in self.raw.items() if k not in _NOT_PAYLOAD}


def _const(token: str) -> float:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[token]


def loads(raw: bytes | str) -> Any:
    """``json.loads`` that accepts NaN/Infinity and rejects, with a reason, bad
    UTF-8 and text that is not Unicode (an unpaired surrogate escape such as
    ``"\\ud800"``, which no UTF-8 column can store)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LineError(f"not UTF-8 text (byte {e.start})") from None
    try:
        value = json.loads(raw, parse_constant=_const)
    except json.JSONDecodeError as e:
        raise LineError(f"malformed JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise LineError("malformed JSON: nested too deeply") from None
    except ValueError:  # an integer literal longer than Python converts: a float then
        try:
            value = json.loads(raw, parse_constant=_const, parse_int=_long_int)
        except ValueError as e:
            raise LineError(f"malformed JSON: {e}") from None
    # A surrogate can only come from a \uD800-\uDFFF escape (their UTF-8 bytes
    # fail the decode above); json joins a proper pair into one character.
    if may_hold_surrogates(raw) and has_lone_surrogate(value):
        raise LineError("not Unicode text: an unpaired surrogate escape (\\ud800-\\udfff)")
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def may_hold_surrogates(text: str) -> bool:
    """False when the JSON ``text`` cannot decode to a lone surrogate (it has
    no \\uD800-\\uDFFF escape): a quick test before ``has_lone_surrogate``."""
    return "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None


def has_lone_surrogate(value: Any) -> bool:
    """True when a decoded JSON value holds text with an unpaired surrogate,
    which no UTF-8 column can store. Walks with a stack of its own, not by
    recursion: a value nested as deep as ``json`` decodes is checked whole."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item) is not None:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _long_int(text: str) -> int | float:
    return int(text) if len(text) < 4000 else float(text)


def as_number(value: Any, strings: bool = False) -> float | None:
    """A JSON value as a float: numbers and booleans (and, with ``strings``,
    numeric text such as "2.5" or "NaN"); ``None`` for anything else."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range is infinite
            return math.inf if value > 0 else -math.inf
    if strings and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


INT64_MAX = 2**63 - 1
RANK_MAX = 2**31 - 1
# Plausible wall-clock times in seconds since the epoch (1970 to year 5138);
# anything else is usually milli- or nanoseconds.
TS_MAX = 1e11


def epoch_seconds(value: float | None) -> float | None:
    """``value`` when it is a plausible wall-clock time in seconds since the
    epoch (finite, 0 to TS_MAX), else None. Every reader bounds its times with
    this: one value out of range must not reach the store, where turning it
    into a timestamp fails for every run."""
    if value is None or not 0 <= value < TS_MAX:  # NaN fails the comparison too
        return None
    return float(value)


def time_problem(what: str, value: Any) -> str:
    """The reason of a skip for a time :func:`epoch_seconds` refused."""
    return (
        f"{what} {_short(value)} is not a time in seconds since the epoch "
        "(milli- or nanoseconds?); the row is kept without it"
    )


def as_int(value: Any, limit: int = INT64_MAX) -> int | None:
    """A JSON value as a non-negative-or-not integer within ``limit``; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and -limit <= value <= limit:
        return value
    return None


def parse_event(obj: Any) -> Event:
    """Validate one decoded line. Envelope problems raise :class:`LineError`;
    a bad metric value is dropped and noted in ``problems`` (the rest is kept)."""
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    v = obj.get("v", SCHEMA_VERSION)
    version = as_int(v)
    if version is None or version > SCHEMA_VERSION:
        raise LineError(f"unsupported schema version {v!r} (this tunescope reads v1)")
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise LineError("missing 'kind'")
    if kind not in KINDS:
        raise LineError(f"unknown kind {kind!r}")
    step = obj.get("step")
    step_i = as_int(step) if step is not None else None
    if step is not None and (step_i is None or step_i < 0):
        raise LineError(f"'step' must be a non-negative integer, got {step!r}")
    if kind in ("step", "eval") and step_i is None:
        raise LineError(f"a {kind} event needs 'step'")
    rank = obj.get("rank")
    rank_i = as_int(rank, RANK_MAX) if rank is not None else None
    if rank is not None and (rank_i is None or rank_i < 0):
        raise LineError(f"'rank' must be a non-negative integer, got {rank!r}")
    ts = obj.get("ts")
    ts_f = as_number(ts) if ts is not None else None
    problems: list[str] = []
    if ts is not None and (ts_f is None or not math.isfinite(ts_f)):
        problems.append(f"'ts' must be a finite number, got {_short(ts)}; ignored")
        ts_f = None
    elif ts_f is not None and epoch_seconds(ts_f) is None:
        problems.append(
            f"'ts' must be seconds since the epoch, got {_short(ts)} "
            "(milli- or nanoseconds?); ignored"
        )
        ts_f = None
    run = obj.get("run")
    if run is not None and not isinstance(run, str):
        run = str(run)

    metrics: dict[str, float] = {}
    extras: dict[str, float] = {}
    other: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _ENVELOPE:
            continue
        if key in _METRICS:
            if value is None:
                continue
            num = as_number(value, strings=True)
            if num is None:
                problems.append(f"'{key}' must be a number, got {_short(value)}; ignored")
                continue
            metrics[key] = num
            continue
        num = as_number(value)
        if num is not None:
            extras[key] = num
        elif value is not None:
            other[key] = value
    return Event(kind, rank_i, step_i, ts_f, run, metrics, extras, other, problems, obj)


def _short(value: Any) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def dumps(event: dict[str, Any]) -> str:
    """One event as a JSON line body (no newline). NaN and ±Inf are written as
    ``NaN``/``Infinity``; numpy scalars and other ``.item()`` values are unwrapped."""
    try:
        return json.dumps(event, allow_nan=True, separators=(",", ":"))
    except TypeError:
        return json.dumps(_plain(event), allow_nan=True, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
