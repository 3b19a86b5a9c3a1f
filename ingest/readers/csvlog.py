"""Reader for metric CSVs: Lightning's ``CSVLogger`` ``metrics.csv`` and plain
CSVs with a step column and a loss column.

Lightning writes one row per ``log`` call: training rows (``train_loss``,
``train_loss_step``...) and validation rows (``val_loss``) for the same step
with blank cells between, plus ``*_epoch`` aggregates. Rows of one step are
merged. Each fit writes a new ``version_N/``; a version whose steps continue
the previous version's (a resume from a checkpoint) belongs to the same run,
the folder that holds the ``lightning_logs``-like folder; a version that starts
again from the beginning is a run of its own.

The loss column is the first of: the configured loss key, ``loss``,
``train/loss``, ``train_loss``, ``train_loss_step``, any other ``*loss*``
column that is not an evaluation column (``val_``, ``eval_``, ``test_``).
"""

from __future__ import annotations

import csv
import io
import math
import re
import threading
from pathlib import Path
from typing import Any

from tunescope.ingest.live.tail import read_new_lines
from tunescope.ingest.readers.foreign import (
    QUIET_END,
    KeyMap,
    as_int,
    infer_logging_steps,
    keymap_for,
    no_loss_problem,
    number,
)
from tunescope.ingest.readers.vocabulary import EVAL_PREFIXES
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder

VERSION_DIR = re.compile(r"^version_(\d+)$")
_HEAD = 64 << 10


# The csv module refuses a cell longer than its (process-wide) field limit and
# with it the whole line. Such a cell is never a number: it is dropped, the
# rest of its row kept. The limit is raised only for that line, under a lock.
CELL_LIMIT = csv.field_size_limit()
_LIMIT_LOCK = threading.Lock()


def _cells(line: bytes) -> tuple[list[str], list[int]]:
    """The cells of one CSV line, and the indexes of cells over
    ``CELL_LIMIT`` characters (left blank)."""
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    try:
        return next(csv.reader(io.StringIO(text)), []), []
    except csv.Error:
        pass
    with _LIMIT_LOCK:
        old = csv.field_size_limit(len(text) + 1)
        try:
            cells = next(csv.reader(io.StringIO(text)), [])
        except csv.Error:
            cells = []  # malformed beyond the length: the caller sees no cells
        finally:
            csv.field_size_limit(old)
    long = [i for i, c in enumerate(cells) if len(c) > CELL_LIMIT]
    return [c if len(c) <= CELL_LIMIT else "" for c in cells], long


def _split(line: bytes) -> list[str]:
    return _cells(line)[0]


def columns(header: list[str], keys: KeyMap) -> tuple[str | None, str | None]:
    """(step column, loss column) of a header."""
    names = [h.strip() for h in header]
    step = next((k for k in keys.step if k in names), None)
    loss = next((k for k in keys.loss if k in names), None)
    if loss is None and "train_loss_step" in names:
        loss = "train_loss_step"
    if loss is None:
        loss = next(
            (n for n in names if "loss" in n.lower() and not n.lower().startswith(EVAL_PREFIXES)),
            None,
        )
    return step, loss


def _header(path: Path) -> list[str]:
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if b"\x00" in head[:4096]:
        return []
    return _split(head.split(b"\n", 1)[0])


def _steps_span(path: Path, keys: KeyMap) -> tuple[int | None, int | None]:
    """(first step, last step) of a CSV, reading its head and tail only."""
    header = _header(path)
    step_col, _ = columns(header, keys)
    if step_col is None:
        return None, None
    i = [h.strip() for h in header].index(step_col)
    with open(path, "rb") as f:
        head = f.read(_HEAD).split(b"\n")[1:-1]
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - _HEAD))
        tail = f.read().split(b"\n")[1:]

    def step_of(lines: list[bytes]) -> int | None:
        for line in lines:
            cells = _split(line)
            n = number(cells[i]) if i < len(cells) else None
            if n is not None and math.isfinite(n):
                return int(n)
        return None

    return step_of(head), step_of(list(reversed(tail)))


def _data_lines(path: Path) -> int:
    """Non-blank lines among the three after the header in the file's head:
    a CSV of one row is a summary, not a log of a run."""
    with open(path, "rb") as f:
        while True:  # past the header, however long it is (a name over the field limit)
            piece = f.readline(_HEAD)
            if not piece or piece.endswith(b"\n"):
                break
        head = f.read(_HEAD)
    return sum(1 for line in head.split(b"\n")[:3] if line.strip()) if head else 0


class CSVReader:
    """Lightning ``metrics.csv`` and plain step/loss CSVs."""

    format = "csv"

    def detect(self, path: Path) -> bool:
        if not path.name.endswith(".csv"):
            return False
        step, loss = columns(_header(path), keymap_for(path))
        return step is not None and loss is not None and _data_lines(path) >= 2

    def run_dir(self, path: Path) -> Path:
        m = VERSION_DIR.match(path.parent.name)
        if m is None:
            others = [p for p in path.parent.glob("*.csv") if p != path and self.detect(p)]
            return path.parent / path.name if others else path.parent
        experiment = path.parent.parent.parent
        prev = self._previous_version(path, int(m.group(1)))
        if prev is None:
            return experiment
        keys = keymap_for(path)
        first, _ = _steps_span(path, keys)
        _, last = _steps_span(prev, keys)
        if first is not None and last is not None and first > last:
            return experiment  # the step count goes on: a resume of the same run
        return path.parent

    def _previous_version(self, path: Path, n: int) -> Path | None:
        best: tuple[int, Path] | None = None
        for d in path.parent.parent.iterdir():
            m = VERSION_DIR.match(d.name)
            k = int(m.group(1)) if m else n
            if k < n and (best is None or k > best[0]) and (d / path.name).is_file():
                best = (k, d / path.name)
        return best[1] if best else None

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        chunk = read_new_lines(path, state)
        old = {} if (state is None or chunk.restarted) else state
        keys = keymap_for(path)
        lines = chunk.data.split(b"\n")[:-1]
        lineno = chunk.first_line - 1
        header: list[str] = list(old.get("header", []))
        problems: list[Problem] = []
        if not header and lines:
            cells, long = _cells(lines[0])
            header = [h.strip() for h in cells]
            problems.extend(
                Problem(
                    str(path),
                    lineno + 1,
                    f"column {i + 1}: a name over {CELL_LIMIT:,} characters; not read",
                )
                for i in long
            )
            lines = lines[1:]
            lineno += 1
        step_col, loss_col = columns(header, keys)
        if step_col is None or loss_col is None:
            return RowBuilder().result(
                {**chunk.state, "header": header},
                [Problem(str(path), 1, "no step column and loss column in the header")],
                replace=chunk.restarted,
            )
        merged, records = _merge_lines(
            path, lines, lineno, (header, step_col, loss_col), keys, problems
        )
        lineno += len(lines)
        records += int(old.get("records", 0))
        rows = RowBuilder()
        first_steps: list[int] = list(old.get("first_steps", []))
        started = bool(old.get("started"))
        n, quiet = _add_rows(rows, merged, old, first_steps, started)
        if not started and len(first_steps) >= 3:
            self._start(rows, path, step_col, loss_col, first_steps)
            started = True
        if not old and n:  # no end is ever written: interrupted until the file grows
            last = max(s for s, r in merged.items() if any(k != "epoch" for k in r[1]))
            rows.event(0, last, None, "run_end", dict(QUIET_END), seq=lineno + 1)
            quiet = True
        if n == 0 and records and not old.get("warned"):
            problems.append(no_loss_problem(path, records))
        new_state = {
            **chunk.state,
            "header": header,
            "records": records,
            "n": n,
            "started": started,
            "first_steps": [] if started else first_steps[:32],
            "warned": bool(n == 0 and records),
            "quiet": quiet,
        }
        return rows.result(new_state, problems, replace=chunk.restarted)

    def _start(
        self, rows: RowBuilder, path: Path, step_col: str, loss_col: str, first_steps: list[int]
    ) -> None:
        """The run's ``run_start`` (and a ``resume`` for a Lightning
        ``version_N`` folder after the first)."""
        payload: dict[str, Any] = {
            "format": self.format,
            "variant": "lightning" if VERSION_DIR.match(path.parent.name) else "plain",
            "source": str(path),
            "loss_column": loss_col,
            "step_column": step_col,
            "logging_steps": infer_logging_steps(first_steps) or 1,
            "per_rank": False,
            "loss_averaging": "as logged (Lightning: the step's value on rank 0)",
        }
        rows.event(0, None, None, "run_start", payload, seq=0)
        m = VERSION_DIR.match(path.parent.name)
        if m and self.run_dir(path) != path.parent and int(m.group(1)) > 0:
            rows.event(0, first_steps[0], None, "resume", {"from_step": first_steps[0]}, seq=0)


def _merge_lines(
    path: Path,
    lines: list[bytes],
    lineno: int,
    cols: tuple[list[str], str, str],
    keys: KeyMap,
    problems: list[Problem],
) -> tuple[dict[int, list[Any]], int]:
    """The rows of ``lines`` (the first numbered ``lineno + 1``) merged by
    step: step -> [seq, canon, extras, evals]; and how many records there were."""
    header, step_col, loss_col = cols
    merged: dict[int, list[Any]] = {}
    records = 0
    for line in lines:
        lineno += 1
        if not line.strip():
            continue
        records += 1
        cells, long = _cells(line)
        for i in long:
            name = header[i] if i < len(header) else f"cell {i + 1}"
            problems.append(
                Problem(
                    str(path), lineno, f"{name}: a cell over {CELL_LIMIT:,} characters; dropped"
                )
            )
        if len(cells) > len(header):
            problems.append(
                Problem(str(path), lineno, f"{len(cells)} cells for {len(header)} columns")
            )
            continue
        rec = {h: c for h, c in zip(header, cells, strict=False) if c.strip() != ""}
        step = as_int(rec.get(step_col))
        if step is None:
            n = number(rec.get(step_col))
            step = int(n) if n is not None and math.isfinite(n) and n >= 0 else None
        if step is None:
            problems.append(
                Problem(str(path), lineno, f"{step_col} is not a step: {rec.get(step_col)!r}")
            )
            continue
        row = merged.setdefault(step, [lineno, {}, {}, {}])
        row[0] = lineno
        for name, raw in rec.items():
            if name == step_col:
                continue
            value = number(raw)
            if value is None:
                continue
            if name == loss_col:
                row[1]["loss"] = value
            elif name.lower().startswith(EVAL_PREFIXES):
                row[3][name] = value
            else:
                canon, extras = keys.canon({name: value})
                if "loss" in canon and name != loss_col:
                    extras[name] = canon.pop("loss")
                row[1].update(canon)
                row[2].update(extras)
    return merged, records


def _add_rows(
    rows: RowBuilder,
    merged: dict[int, list[Any]],
    old: dict[str, Any],
    first_steps: list[int],
    started: bool,
) -> tuple[int, bool]:
    """Add the merged rows in step order (a ``resume`` first when the run had
    been ended quietly); returns the step count so far and whether the run
    still reads as ended quietly. Appends to ``first_steps`` until started."""
    n = int(old.get("n", 0))
    quiet = bool(old.get("quiet"))
    for step, (seq, canon, extras, evals) in sorted(merged.items()):
        if any(k != "epoch" for k in canon):
            if quiet:
                rows.event(0, step, None, "resume", {"from_step": step}, seq=seq)
                quiet = False
            rows.step(0, step, None, canon, seq=seq)
            n += 1
            if not started:
                first_steps.append(step)
        for name, value in {**extras, **evals}.items():
            rows.metric(0, step, None, name, value, seq=seq)
        if evals:
            rows.event(0, step, None, "eval", evals, seq=seq)
    return n, quiet
