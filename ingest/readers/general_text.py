"""Text logs read by their shape: lines or short blocks of ``name<sep>number`` pairs.

A record is a line with at least two pairs (``iter 100: loss 2.3456, time
12.34ms``, ``step=10 | loss=2.3 | lr=1e-4``), read through the prefixes that
loggers and launchers put before it (timestamps, ``2024-05-01 12:00:01,123 -
INFO - train - ``, ``[rank3]:``, ``[default0]:``, ``0:``); or a block: a header
that carries the counter (``[batch=12/100]:``, ``Step 120:``, ``Epoch 2/10``)
with indented ``name: value`` lines below it (or the one line right below it:
Keras prints an epoch's metrics on the progress line after ``Epoch 2/10``).

Numbers may carry thousands separators (``1,004``), units (``12.3ms``,
``45.6 GiB``, ``3.2s/it``), quotes, or be ``nan``/``inf``. Names are mapped
through :mod:`.vocabulary`. :func:`records` finds the records of a chunk;
:func:`infer` decides from a file's head whether it is a log at all.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunescope.ingest.readers.epoch_steps import global_step
from tunescope.ingest.readers.foreign import QUIET_END
from tunescope.ingest.readers.vocabulary import CONFIGURED, HIGH, Meaning, is_eval_measure, meaning
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder

_NUM = (
    rb"[-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    rb"|[-+]?(?:nan|NaN|NAN|inf|Inf|INF|infinity|Infinity)"
)
_UNIT = rb"(?:ms/it|s/it|it/s|ms|s|GiB|GB|MiB|MB|KiB|KB|gib|gb|mib|mb|%)"
# name: value / name=value (a name may hold spaces and brackets), or "name value"
PAIR = re.compile(
    rb"(?:(?<=[\s,|;(\[{])|^)"
    rb"(?:([A-Za-z_][\w./()%\- ]{0,48}?)\s*[:=]\s*|([A-Za-z_][\w./\-]{0,40})[ \t]+)"
    rb"[\"'\[]?(" + _NUM + rb")(?:\s*/\s*(\d+))?[\"'\]]?[ \t]?(" + _UNIT + rb")?(?![\w.])"
)
# what loggers and launchers print before a record
PREFIX = re.compile(
    rb"^(?:\s*(?:\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\]?"
    rb"|\[?\d\d:\d\d:\d\d(?:[.,]\d+)?\]?"
    rb"|\[(?:default|rank|Rank )?\d+\]:?|\d{1,4}:(?=\s|\[)"
    rb"|[-|:]|\[?(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\]?:?"
    rb"|[A-Za-z_][\w.]*:(?=\s*[A-Za-z_][\w.]*:)"  # INFO:root: style
    rb"|[A-Za-z_][\w.]* -(?= )"  # the logger's name between dashes
    # a tab-separated host:rank or module:line field (a dot or a dash in its
    # name: "step:10<tab>" is a pair)
    rb"|[A-Za-z_]\w*[.\-][\w.\-]*:\d+(?=\t)"
    rb"))+\s*"
)
RANK = re.compile(rb"\[(?:default|rank|Rank )?(\d+)\]|^(\d{1,4}):(?=\s|\[)")
# the iteration within an epoch in brackets after it: mmcv's "Epoch [1][50/30045]",
# PyTorch's ImageNet example's "Epoch: [0][ 10/391]"
EPOCH_ITER = re.compile(rb"(?i)\bepoch\s*:?\s*\[\s*\d+\s*\]\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]")
# a block's header: the counter alone on its line
HEADER = re.compile(
    rb"^\s*\[?\s*(?:[A-Za-z_][\w ]{0,20}?\s*[|:]\s*)?"
    rb"(step|iter(?:ation)?|batch|epoch|rollout|update|it)\s*[=:#]?\s*(\d+)(?:\s*/\s*(\d+))?"
    rb"((?:\s*[,;]\s*[A-Za-z_][\w./]*\s*[=:]\s*[-+\w.]+)*)"  # more counters: ",epoch=0"
    rb"\s*\]?\s*:?\s*$",
    re.IGNORECASE,
)
_RATE = re.compile(rb"(?<![\w.=:])(\d+\.?\d*)\s?(s/it|it/s)\b")
MIN_RECORDS = 3


@dataclass
class Record:
    """One record: its byte offset, rank, named values (name, value, unit, total)."""

    pos: int
    rank: int
    pairs: list[tuple[str, float, str | None, int | None]]


@dataclass
class Shape:
    """What the general reader made of a file."""

    kind: str  # lines | blocks | table | json | jsonl | none
    records: int = 0
    step: str | None = None  # the step's name, "epoch" (ordinal), "order"
    keys: dict[str, Meaning] = field(default_factory=dict)
    reason: str | None = None  # why it is not a log (None: it is one)
    delimiter: str | None = None  # tables

    def describe(self) -> dict[str, Any]:
        return {
            "shape": self.kind,
            "records": self.records,
            "step": self.step,
            "keys": {k: [m.column, m.confidence] for k, m in self.keys.items()},
        }


STEP_MAX = 2**63 - 1  # what the store's step column holds


def is_count(value: float) -> bool:
    """A whole number from 0 to what the step column holds."""
    return math.isfinite(value) and 0 <= value <= STEP_MAX and value == int(value)


def value_of(text: bytes) -> float:
    t = text.replace(b",", b"")
    try:
        return float(t)
    except ValueError:
        return math.nan


def line_pairs(line: bytes) -> tuple[int, list[tuple[str, float, str | None, int | None]]]:
    """(rank, pairs) of one line, read through its prefixes."""
    rank = 0
    m = PREFIX.match(line)
    if m is not None and m.end():
        r = RANK.search(line, 0, m.end())
        if r is not None:
            rank = int(r.group(1) or r.group(2))
        line = line[m.end() :]
    pairs: list[tuple[str, float, str | None, int | None]] = []
    if b"/it" in line or b"it/s" in line:  # tqdm's bare "3.2s/it", "1.5it/s"
        for r in _RATE.finditer(line):
            pairs.append((r.group(2).decode(), value_of(r.group(1)), None, None))
    e = EPOCH_ITER.search(line) if b"][" in line else None
    if e is not None:
        pairs.append(("iter", float(e.group(1)), None, None))  # its total is the epoch's
    for p in PAIR.finditer(line):
        name = (p.group(1) or p.group(2)).decode("utf-8", "replace").strip()
        if not name or name.lower() == "rank" or name.endswith(".py"):
            continue  # DeepSpeed's "[Rank 0]", a logger's "[logging.py:96:log_dist]"
        unit = p.group(5).decode() if p.group(5) else None
        total = int(p.group(4)) if p.group(4) else None
        pairs.append((name, value_of(p.group(3)), unit, total))
    return rank, pairs


def records(data: bytes) -> list[Record]:
    """The records of ``data`` (whole lines): lines with two pairs or more, and
    blocks (a header with the counter, indented pairs below)."""
    out: list[Record] = []
    pos = 0
    block: Record | None = None
    below = 0  # the lines taken into the block so far
    for raw in data.split(b"\n"):
        start = pos
        pos += len(raw) + 1
        line = raw.rsplit(b"\r", 1)[-1] if b"\r" in raw else raw
        if not line.strip():
            continue
        # a block's lines: indented, or the one line right after a header alone
        # (Keras: "Epoch 2/10", then its progress line with the metrics)
        if block is not None and (line[:1] in (b" ", b"\t") or below == 0):
            _, pairs = line_pairs(line)
            if pairs:
                block.pairs.extend(pairs)
                below += 1
                continue
        if block is not None:
            if len(block.pairs) >= 2:
                out.append(block)
            block = None
        h = HEADER.match(_strip_prefix(line))
        if h is not None:
            rank = line_pairs(line)[0]
            total = int(h.group(3)) if h.group(3) else None
            name = h.group(1).decode().lower()
            block = Record(start, rank, [(name, float(h.group(2)), None, total)])
            if h.group(4):
                block.pairs.extend(line_pairs(b" " + h.group(4).lstrip(b",; "))[1])
            below = 0
            continue
        rank, pairs = line_pairs(line)
        if len(pairs) >= 2:
            out.append(Record(start, rank, pairs))
    if block is not None and len(block.pairs) >= 2:
        out.append(block)
    return out


def _strip_prefix(line: bytes) -> bytes:
    m = PREFIX.match(line)
    return line[m.end() :] if m is not None and m.end() and line[:1] not in (b" ", b"\t") else line


def split(
    rec: Record, names: dict[str, Meaning]
) -> tuple[int | None, int | None, float | None, dict[str, float], dict[str, float]]:
    """(step, total, epoch, canonical, other) of a record; ``names`` caches
    meanings. Without a step, ``total`` is the epochs' (``Epoch 2/10``)."""
    step = total = epochs = None
    epoch = None
    canon: dict[str, float] = {}
    extras: dict[str, float] = {}
    for name, value, unit, tot in rec.pairs:
        key = name if unit is None else f"{name}\0{unit}"
        m = names.get(key)
        if m is None:
            fixed = names.get(name)  # a configured name, whatever its unit
            m = names[key] = (
                fixed
                if fixed is not None and fixed.confidence >= CONFIGURED
                else meaning(name, unit)
            )
        if m.kind == "step":
            if step is None and is_count(value):
                step, total = int(value), tot
            continue
        if m.column == "epoch":
            epoch = value
            epochs = epochs or tot
            canon.setdefault("epoch", value)
            continue
        if m.kind == "column":
            v = (1.0 / value if value else math.nan) if m.scale == -1.0 else value * m.scale
            if m.confidence >= HIGH or m.column not in canon:
                canon[m.column] = v
        else:
            extras.setdefault(m.column, value)
    return step, total if step is not None else epochs, epoch, canon, extras


def infer(
    data: bytes, fixed: dict[str, Meaning] | None = None, recs: list[Record] | None = None
) -> Shape:
    """The shape of a text log from its head, or why it is not one; ``fixed``:
    the meanings the configuration gives names; ``recs``: the head's records
    when the caller has them."""
    recs = records(data) if recs is None else recs
    if not recs:
        return Shape("none", reason="no line or block with two name/number pairs")
    names: dict[str, Meaning] = dict(fixed or {})
    train: list[tuple[Record, int | None, float | None]] = []
    evals: list[tuple[Record, int | None, float | None]] = []
    for rec in recs:
        step, _, epoch, canon, extras = split(rec, names)
        if "loss" in canon:
            train.append((rec, step, epoch))
        elif step is not None and any(k.endswith("loss") and is_eval_measure(k) for k in extras):
            evals.append((rec, step, epoch))
    # a log that prints only an evaluation's loss (every few hundred steps):
    # that is its curve, read as evaluations
    chosen = train or evals
    kind = "blocks" if any(_is_header(data, r) for r, _, _ in chosen[:8]) else "lines"
    steps: list[int] = []
    epochs: list[float] = []
    with_loss = len(chosen)
    step_name = None
    seen: dict[str, Meaning] = {}
    local: dict[str, Any] = {}  # an epoch-local counter is judged as the steps it gives
    for rec, step, epoch in chosen:
        for n, _, u, _ in rec.pairs:
            seen.setdefault(n, names[n if u is None else f"{n}\0{u}"])
        if step is not None:
            steps.append(global_step(local, step, None, epoch)[0])
            step_name = step_name or next(
                n for n, _, _, _ in rec.pairs if names.get(n, meaning(n)).kind == "step"
            )
        elif epoch is not None:
            epochs.append(epoch)
    return judge(
        Shape(kind, records=with_loss, keys=seen),
        with_loss,
        steps,
        epochs,
        step_name,
        no_loss="pairs of names and numbers, but none named like a loss",
        no_counter="no step, iteration or epoch counter that rises",
    )


def judge(
    shape: Shape,
    with_loss: int,
    steps: list[int],
    epochs: list[float],
    step_name: str | None,
    no_loss: str,
    no_counter: str,
) -> Shape:
    """A shape's verdict from its records with a loss: enough of them, and a
    counter that rises (the steps, else the epochs); else ``shape.reason``
    says which is missing (``no_loss``, ``no_counter`` in the reader's words)."""
    if not with_loss:
        shape.reason = no_loss
    elif with_loss < MIN_RECORDS:
        shape.reason = f"only {with_loss} record(s) with a loss (a log has {MIN_RECORDS} or more)"
    elif steps and rises(steps):
        shape.step = step_name
    elif not steps and epochs and rises(epochs):
        shape.step = "epoch"
    else:
        shape.reason = no_counter
    return shape


def read_changed(
    path: Path, state: dict[str, Any] | None, limit: int, too_big: str, torn: bool = True
) -> tuple[bytes, list[int]] | ReadResult:
    """A file read whole when it changed since ``state`` (its bytes, without
    a last line still being written when ``torn``, and its signature), or the
    result to return instead: nothing new, or the one problem why it cannot
    be read (a file over ``limit`` bytes is ``too_big``)."""
    try:
        st = path.stat()
        if st.st_size > limit:
            raise OSError(f"{st.st_size:,} bytes: {too_big}")
        data = path.read_bytes()
    except OSError as e:
        return RowBuilder().result(dict(state or {}), [Problem(str(path), None, str(e))])
    sig = [st.st_size, st.st_mtime_ns]
    if state and state.get("sig") == sig:
        return RowBuilder().result(state)
    if torn and not data.endswith(b"\n") and b"\n" in data:
        data = data[: data.rfind(b"\n") + 1]  # a line still being written waits for its newline
    return data, sig


def _is_header(data: bytes, rec: Record) -> bool:
    end = data.find(b"\n", rec.pos)
    line = data[rec.pos : end if end >= 0 else None]
    return HEADER.match(_strip_prefix(line)) is not None


def rises(values: list[Any]) -> bool:
    """Mostly rising: more steps up than down, and at least two up."""
    up = sum(1 for a, b in itertools.pairwise(values) if b > a)
    down = sum(1 for a, b in itertools.pairwise(values) if b < a)
    return up >= 2 and up > 2 * down


def emit_records(
    rows: RowBuilder,
    merged: Mapping[int, Sequence[Any]],
    start: Callable[[list[int]], dict[str, Any]],
    end_seq: int,
) -> bool:
    """Write records merged per step (``seq``, step columns, other metrics,
    evals) as rows between a ``run_start`` (``start(steps with a loss)``) and a
    quiet ``run_end``; False, and nothing but metrics written, when no step
    holds a loss."""
    steps = [s for s, v in sorted(merged.items()) if "loss" in v[1]]
    if steps:
        rows.event(0, None, None, "run_start", start(steps), seq=0)
    for step, (seq, canon, extras, evals) in sorted(merged.items()):
        if canon:
            rows.step(0, step, None, canon, seq=seq)
        for name, value in {**extras, **evals}.items():
            rows.metric(0, step, None, name, value, seq=seq)
        if evals:
            rows.event(0, step, None, "eval", evals, seq=seq)
    if steps:
        rows.event(0, steps[-1], None, "run_end", dict(QUIET_END), seq=end_seq)
    return bool(steps)
