"""Tables read by their shape: CSV, TSV, ``;``/``|`` or space-separated, whatever
the file is called (a ``train.log`` that is a TSV table).

The delimiter is sniffed from the first lines: the one that splits the header
into two or more cells and most rows into as many. The step is a step-like
column (``step``, ``_step``, ``iter``, ``batch``...); else the epoch column,
whose order gives the steps (Keras' ``CSVLogger``, 0- or 1-based); else the
unnamed first column pandas writes for its index, as the row order. W&B's
exported CSVs (``run - train/loss``, with ``__MIN``/``__MAX`` twins) and sparse
rows of one step are merged. The file is re-read whole when it changes.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from tunescope.ingest.readers.foreign import infer_logging_steps
from tunescope.ingest.readers.general_text import (
    MIN_RECORDS,
    Shape,
    emit_records,
    is_count,
    read_changed,
    rises,
    value_of,
)
from tunescope.ingest.readers.vocabulary import HIGH, Meaning, meaning
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder

_DELIMITERS = (",", "\t", ";", "|", " ")
_INDEX = ("", "unnamed: 0", "index")
_MAX_BYTES = 256 << 20  # a metrics table is small; a bigger file is data, not a log


def cells(line: str, delimiter: str) -> list[str]:
    if delimiter == " ":
        return line.split()
    try:
        return [c.strip() for c in next(csv.reader(io.StringIO(line), delimiter=delimiter), [])]
    except csv.Error:  # a cell over the csv module's field limit: not a metrics table's
        return [c.strip() for c in line.split(delimiter)]


def _lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def sniff(lines: list[str]) -> str | None:
    """The delimiter that splits the header and most rows into the same number
    of cells (two or more)."""
    if len(lines) < 2:
        return None
    sample = lines[:50]
    for d in _DELIMITERS:
        if d != " " and d not in sample[0]:
            continue
        n = len(cells(sample[0], d))
        if n < 2:
            continue
        same = sum(1 for ln in sample[1:] if len(cells(ln, d)) == n)
        if same >= max(1, 0.8 * (len(sample) - 1)):
            return d
    return None


def column_name(header: str) -> str | None:
    """The metric a header names (W&B exports: ``run - train/loss``); None for
    the ``__MIN``/``__MAX`` twins."""
    if header.endswith(("__MIN", "__MAX", "__min", "__max")):
        return None
    if " - " in header:
        header = header.rsplit(" - ", 1)[1]
    return header


def _columns(
    header: list[str], index: list[int] | None = None, fixed: dict[str, Meaning] | None = None
) -> tuple[int | None, str | None, dict[int, tuple[str, Meaning]]]:
    """(step column index, step source, index -> (name, meaning)) of a header;
    ``index``: the first column's values, when they are all whole numbers
    (pandas' index column: 0, 1, 2...)."""
    mapped: dict[int, tuple[str, Meaning]] = {}
    step_i = None
    source = None
    epoch_i = None
    for i, h in enumerate(header):
        name = column_name(h)
        if name is None or not name.strip():
            continue
        m = (fixed or {}).get(name) or meaning(name)
        if m.kind == "step" and step_i is None:
            step_i, source = i, name
            continue
        if m.column == "epoch" and epoch_i is None:
            epoch_i = i
        mapped[i] = (name, m)
    if step_i is None and epoch_i is not None:
        step_i, source = epoch_i, "epoch"
    pandas_index = (
        index is not None
        and len(index) > 0
        and index == list(range(index[0], index[0] + len(index)))
    )
    if step_i is None and header and header[0].strip().lower() in _INDEX and pandas_index:
        step_i, source = 0, "order"
        mapped.pop(0, None)
    return step_i, source, mapped


def _loss_index(mapped: dict[int, tuple[str, Meaning]]) -> int | None:
    best = None
    for i, (_, m) in mapped.items():
        if m.column == "loss" and (best is None or m.confidence > mapped[best][1].confidence):
            best = i
    return best


def infer(data: bytes, fixed: dict[str, Meaning] | None = None) -> Shape:
    """The shape of a table from its head, or why it is not one."""
    lines = _lines(data)
    d = sniff(lines)
    if d is None:
        return Shape("none", reason="not a table (no delimiter splits the rows evenly)")
    header = cells(lines[0], d)
    if sum(1 for h in header if not _is_number(h)) < len(header) - 1:
        return Shape("none", reason="a table without a header row")
    rows = [cells(ln, d) for ln in lines[1:]]
    step_i, source, mapped = _columns(header, _index(rows), fixed)
    keys = {name: m for name, m in mapped.values()}
    loss_i = _loss_index(mapped)
    with_loss = [r for r in rows if loss_i is not None and loss_i < len(r) and r[loss_i] != ""]
    shape = Shape("table", records=len(with_loss), keys=keys, delimiter=d, step=source)
    if loss_i is None:
        shape.reason = "a table without a column named like a loss"
    elif step_i is None:
        shape.reason = "a table without a step, iteration or epoch column"
    elif len(with_loss) < MIN_RECORDS:
        shape.reason = f"only {len(with_loss)} row(s) with a loss (a log has {MIN_RECORDS} or more)"
    elif source != "order":
        steps = [value_of(r[step_i].encode()) for r in rows if step_i < len(r) and r[step_i]]
        if not rises([s for s in steps if not math.isnan(s)]):
            shape.reason = f"the {source} column does not rise"
    if shape.reason is not None:
        shape.step = None
    return shape


def _index(rows: list[list[str]]) -> list[int] | None:
    """The first column as whole numbers, None when one is not."""
    out = []
    for r in rows:
        if not r or not r[0].isdigit():
            return None
        out.append(int(r[0]))
    return out


def _is_number(text: str) -> bool:
    return not math.isnan(value_of(text.strip("\"'").encode())) or text.strip().lower() == "nan"


def read(
    path: Path, shape: Shape, state: dict[str, Any] | None, fixed: dict[str, Meaning]
) -> ReadResult:
    """The whole table as one run (re-read whole when the file changes)."""
    problems: list[Problem] = []
    got = read_changed(path, state, _MAX_BYTES, "too big for a metrics table")
    if isinstance(got, ReadResult):
        return got
    data, sig = got
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()
    d = shape.delimiter or ","
    header_at = next(
        (i for i, ln in enumerate(text) if ln.strip() and not ln.startswith("#")), None
    )
    if header_at is None:  # emptied since it was looked at
        return RowBuilder().result(
            {"sig": sig}, [Problem(str(path), None, "no rows")], replace=True
        )
    header = cells(text[header_at], d)
    body = [cells(ln, d) for ln in text[header_at + 1 :] if ln.strip() and not ln.startswith("#")]
    step_i, source, mapped = _columns(header, _index(body), fixed)
    loss_i = _loss_index(mapped)
    merged: dict[int, list[Any]] = {}  # step -> [line, canon, extras, evals]
    order = 0
    seen_epochs: dict[float, int] = {}
    for lineno, line in enumerate(text[header_at + 1 :], start=header_at + 2):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        row = cells(line, d)
        if len(row) > len(header):
            problems.append(
                Problem(str(path), lineno, f"{len(row)} cells for {len(header)} columns")
            )
            continue
        order += 1
        raw = row[step_i] if step_i is not None and step_i < len(row) else ""
        counter = value_of(raw.strip("\"'").encode()) if raw else math.nan
        if source == "order":
            step = order
        elif not is_count(counter):
            problems.append(Problem(str(path), lineno, f"{source} is not a count: {raw!r}"))
            continue
        elif source == "epoch":
            step = seen_epochs.setdefault(counter, len(seen_epochs) + 1)
        else:
            step = int(counter)
        slot = merged.setdefault(step, [lineno, {}, {}, {}])
        slot[0] = lineno
        if source == "epoch":
            slot[1]["epoch"] = counter
        for i, (name, m) in mapped.items():
            if i >= len(row) or row[i] == "" or i == step_i:
                continue
            value = value_of(row[i].strip("\"'").encode())
            if math.isnan(value) and row[i].strip("\"'").lower() not in ("nan", "-nan"):
                continue  # text, not a number
            if i == loss_i:
                slot[1]["loss"] = value
            elif m.kind == "eval":
                slot[3][m.column] = value
            elif m.kind == "column" and (m.confidence >= HIGH) and m.column != "loss":
                slot[1][m.column] = (
                    (1.0 / value if value else math.nan) if m.scale == -1 else value * m.scale
                )
            else:
                slot[2][m.column if m.confidence >= HIGH else name] = value
    rows = RowBuilder()
    if not emit_records(
        rows, merged, lambda steps: _start(path, shape, source, steps), len(text) + 1
    ):
        problems.append(Problem(str(path), None, f"{order:,} rows, none with a loss; nothing read"))
    return rows.result({"sig": sig}, problems, replace=True)


def _start(path: Path, shape: Shape, source: str | None, steps: list[int]) -> dict[str, Any]:
    inferred = source in ("epoch", "order")
    return {
        "format": "general",
        "family": "general-table",
        "source": str(path),
        "logging_steps": infer_logging_steps(steps[:32]) or 1,
        "per_rank": False,
        "steps_from": source if inferred else "log",
        "steps_inferred": inferred,
        "loss_averaging": "as the log wrote it",
        "inferred": shape.describe(),
    }
