"""JSON and JSONL read by their shape: records with a counter and a loss,
nested dicts flattened (``{"train": {"loss": 2.3}}`` is ``train/loss``), a
list of records anywhere in a JSON document (within four levels), names
mapped through the vocabulary. The file is re-read whole when it changes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tunescope.ingest.readers.epoch_steps import global_step
from tunescope.ingest.readers.foreign import infer_logging_steps, number
from tunescope.ingest.readers.general_text import (
    Shape,
    emit_records,
    is_count,
    judge,
    read_changed,
)
from tunescope.ingest.readers.vocabulary import HIGH, Meaning, meaning
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder

_MAX_BYTES = 256 << 20


def flatten(obj: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Nested dicts as one level, names joined with ``/``."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 4:
            out.update(flatten(v, name + "/", depth + 1))
        else:
            out[name] = v
    return out


def _records_in(obj: Any, depth: int = 0) -> list[dict[str, Any]] | None:
    """The first list of dicts within four levels (the longest at one level)."""
    if isinstance(obj, list):
        recs = [r for r in obj if isinstance(r, dict)]
        return recs if len(recs) >= max(1, len(obj) // 2) and recs else None
    if isinstance(obj, dict) and depth < 4:
        best = None
        for v in obj.values():
            got = _records_in(v, depth + 1)
            if got is not None and (best is None or len(got) > len(best)):
                best = got
        return best
    return None


def _parse(data: bytes, whole: bool) -> tuple[str, list[dict[str, Any]], list[tuple[int, str]]]:
    """(kind, records, bad lines) of a JSON document or JSONL text."""
    bad: list[tuple[int, str]] = []
    text = data.decode("utf-8", errors="replace")
    if text.lstrip().startswith("[") or (whole and "\n" not in text.strip()):
        try:
            return "json", _records_in(json.loads(text)) or [], bad
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            pass
    out = []
    lines = text.split("\n")
    if not whole:
        lines = lines[:-1]
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append((i, f"not JSON: {e.msg}"))
            continue
        except ValueError as e:
            bad.append((i, f"not JSON: {e}"))
            continue
        except RecursionError:
            bad.append((i, "not JSON: nested too deep"))
            continue
        if isinstance(obj, dict):
            out.append(obj)
    if whole and (len(out) <= 1 or len(bad) > len(out)):  # one document, pretty-printed
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            doc = None
        if doc is not None:
            return "json", _records_in(doc) or [], []
    return "jsonl", out, bad


def _split(
    rec: dict[str, Any], names: dict[str, Meaning]
) -> tuple[int | None, float | None, dict[str, float], dict[str, float], dict[str, float]]:
    """(step, epoch, canonical, other, evals) of one flattened record."""
    step = None
    epoch = None
    canon: dict[str, float] = {}
    extras: dict[str, float] = {}
    evals: dict[str, float] = {}
    for key, raw in rec.items():
        value = number(raw) if not isinstance(raw, bool) else None
        if value is None:
            continue
        m = names.get(key)
        if m is None:
            m = names[key] = meaning(key)
        if m.kind == "step":
            if step is None and is_count(value):
                step = int(value)
        elif m.column == "epoch":
            epoch = value
            canon.setdefault("epoch", value)
        elif m.kind == "eval":
            evals[m.column] = value
        elif m.kind == "column" and (m.confidence >= HIGH or m.column == "loss"):
            if m.column not in canon or m.confidence >= HIGH:
                canon[m.column] = (
                    (1.0 / value if value else math.nan) if m.scale == -1 else value * m.scale
                )
        else:
            extras[key] = value
    return step, epoch, canon, extras, evals


def infer(data: bytes, whole: bool, fixed: dict[str, Meaning] | None = None) -> Shape:
    kind, recs, _ = _parse(data, whole)
    if not recs:
        return Shape("none", reason="JSON without records (a settings or results document)")
    names: dict[str, Meaning] = dict(fixed or {})
    steps: list[int] = []
    epochs: list[float] = []
    n = 0
    step_name = None
    local: dict[str, Any] = {}  # an epoch-local counter is judged as the steps it gives
    for rec in recs:
        flat = flatten(rec)
        step, epoch, canon, _, _ = _split(flat, names)
        if "loss" not in canon:
            continue
        n += 1
        if step is not None:
            steps.append(global_step(local, step, None, epoch)[0])
            step_name = step_name or next(
                (k for k in flat if k in names and names[k].kind == "step"), None
            )
        elif epoch is not None:
            epochs.append(epoch)
    return judge(
        Shape(kind, records=n, keys=dict(names)),
        n,
        steps,
        epochs,
        step_name,
        no_loss="records, but none with a value named like a loss",
        no_counter="records with a loss but no step, iteration or epoch that rises",
    )


def read(
    path: Path, shape: Shape, state: dict[str, Any] | None, fixed: dict[str, Meaning]
) -> ReadResult:
    got = read_changed(path, state, _MAX_BYTES, "too big to read whole", torn=shape.kind == "jsonl")
    if isinstance(got, ReadResult):
        return got
    data, sig = got
    kind, recs, bad = _parse(data, whole=True)
    problems = [Problem(str(path), line, why) for line, why in bad]
    names: dict[str, Meaning] = dict(fixed)
    rows = RowBuilder()
    epochs: dict[float, int] = {}
    local: dict[str, Any] = {}  # an epoch-local counter's offset so far
    merged: dict[int, list[Any]] = {}
    for i, rec in enumerate(recs, start=1):
        step, epoch, canon, extras, evals = _split(flatten(rec), names)
        if shape.step == "epoch":
            if step is not None or epoch is None:
                continue
            step = epochs.setdefault(epoch, len(epochs) + 1)
        elif step is None:
            continue
        else:
            step, _ = global_step(local, step, None, epoch)
        slot = merged.setdefault(step, [i, {}, {}, {}])
        slot[0] = i
        slot[1].update(canon)
        slot[2].update(extras)
        slot[3].update(evals)
    inferred = shape.step == "epoch"

    def start(steps: list[int]) -> dict[str, Any]:
        return {
            "format": "general",
            "family": "general-" + kind,
            "source": str(path),
            "logging_steps": infer_logging_steps(steps[:32]) or 1,
            "per_rank": False,
            "steps_from": "epoch" if inferred else "log",
            "steps_inferred": inferred,
            "loss_averaging": "as the log wrote it",
            "inferred": shape.describe(),
        }

    if not emit_records(rows, merged, start, len(recs) + 1):
        problems.append(Problem(str(path), None, f"{len(recs):,} records, none with a loss"))
    return rows.result({"sig": sig}, problems, replace=True)
