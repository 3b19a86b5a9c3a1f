"""Reader for saved console output: ``nohup.out``, ``train.log``, SLURM ``*.out``.

Three families of step lines, one per file (told apart by the first lines
that carry metrics):

- ``dicts``: the Hugging Face Trainer's printed log dicts (TRL, LLaMA-Factory,
  Unsloth, ms-swift, the DeepSpeed launcher's output; see :mod:`.pydict`).
  The step is the dict's own (``global_step/max_steps``, ``step``), else the
  training progress bar's ``N/M`` just before it, else the dict's order in
  the run (the run's ``run_start`` then says ``steps_from: "order"``);
- ``megatron``: Megatron-LM / Megatron-DeepSpeed / NeMo iteration lines, per-rank
  memory lines as rank rows, validation lines as evals (see :mod:`.megatron`);
- ``lines``: torchtune, DeepSpeed and hand-written ``step N loss X`` lines
  (see :mod:`.console_lines`).

What the end of a run says sets its status: the Trainer's summary dict or a
last step equal to the total is ``completed``; a traceback that no step
follows is ``failed`` (``interrupted`` for ``KeyboardInterrupt`` or a SLURM
cancel). A step counter that starts again from the beginning is a new run in
the same file (``train.log#2``); one that goes back to a later step, or goes
on after a crash, is a resume of the same run.

Only new bytes are read each time; a torn last line waits for its newline.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from operator import itemgetter
from pathlib import Path
from typing import Any

from tunescope.ingest import console_lines, megatron, pydict
from tunescope.ingest.foreign import (
    QUIET_END,
    Deltas,
    as_int,
    infer_logging_steps,
    keymap_for,
    no_loss_problem,
    parse_duration,
    parse_fraction,
)
from tunescope.ingest.rows import METRIC_SCHEMA, STEP_SCHEMA, Problem, ReadResult, RowBuilder
from tunescope.ingest.tail import read_new_lines
from tunescope.schema import METRIC_NAMES

SUFFIXES = (".log", ".out", ".txt", ".err", ".stdout", ".stderr")
NAMES = ("nohup.out", "stdout", "stderr", "output", "console")
SNIFF_HEAD = 1 << 20  # metric lines usually start within the first MiB...
SNIFF_TAIL = 64 << 10  # ...else the end of the file shows them
# Structured logs of the same run: a console log beside one is not read again.
STRUCTURED = ("trainer_state.json", "trainer_log.jsonl", "logging.jsonl")

_DICT_HINT = re.compile(
    rb"\{['\"](?:loss|eval_[\w/]*|train_runtime|learning_rate|grad_norm|epoch)['\"]\s*:"
)
FAMILIES: tuple[tuple[str, re.Pattern[bytes]], ...] = (
    ("megatron", megatron.ITERATION),
    ("dicts", _DICT_HINT),
    ("lines", console_lines.STEP_LINE),
    ("lines", console_lines.TORCHTUNE_BAR),
)
_BAR_COUNTER = re.compile(rb"(\d+)/(\d+) \[")
_BAR_LOOKBACK = 4096
_TRAIN_KEYS = ("loss", "grad_norm", "learning_rate", "lr")
_SUMMARY_KEYS = ("train_runtime", "train_steps_per_second", "train_samples_per_second")
_DICT_SKIP = (
    "global_step/max_steps",
    "step",
    "global_step",
    "percentage",
    "elapsed_time",
    "remaining_time",
)
# Markers that end or start a run: (bytes, kind, status)
MARKERS: tuple[tuple[bytes, str, str], ...] = (
    (b"Traceback (most recent call last)", "end", "failed"),
    (b"KeyboardInterrupt", "end", "interrupted"),
    (b"DUE TO TIME LIMIT", "end", "interrupted"),
    (b"CANCELLED AT", "end", "interrupted"),
    (b"torch.OutOfMemoryError", "end", "failed"),
    (b"CUDA out of memory", "end", "failed"),
    (b"exits with return code = ", "end", "failed"),
    (b"***** Running training *****", "banner", ""),
    (b"[before the start of training step]", "banner", ""),
)
_ERROR_LINE = re.compile(rb"(?m)^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b[^\n\r]{0,300})")
_RETURN_CODE = re.compile(rb"exits with return code = (-?\d+)")


# ---- detection ---------------------------------------------------------------------


def log_name(path: Path) -> bool:
    """Names that console output is saved under."""
    name = path.name.lower()
    return name.endswith(SUFFIXES) or name in NAMES or name.startswith("slurm-")


def is_binary(head: bytes) -> bool:
    """NUL bytes, or mostly bytes that are not text, in the first 4 KiB."""
    sample = head[:4096]
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    text = sum(1 for b in sample if b >= 32 or b in (9, 10, 13, 27))
    return text < 0.9 * len(sample)


def family_of(data: bytes) -> str | None:
    """The step-line family whose lines occur in ``data`` first (None: none)."""
    best: tuple[int, str] | None = None
    for fam, pattern in FAMILIES:
        m = pattern.search(data, 0, len(data) if best is None else best[0] + 1)
        if m is not None and (best is None or m.start() < best[0]):
            best = (m.start(), fam)
    return best[1] if best else None


_SNIFFED: dict[str, tuple[tuple[int, int], str]] = {}


def kind_of(path: Path) -> str:
    """What a file holds, from its first MiB and last 64 KiB (cached by size
    and modification time): a step-line family, ``"binary"`` or ``"text"``
    (no step lines). Never reads more than about a MiB, whatever the size."""
    try:
        st = path.stat()
    except OSError:
        return "text"
    sig = (st.st_size, st.st_mtime_ns)
    hit = _SNIFFED.get(str(path))
    if hit is not None and hit[0] == sig:
        return hit[1]
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_HEAD)
            if is_binary(head):
                kind = "binary"
            else:
                kind = family_of(head) or "text"
                if kind == "text" and st.st_size > SNIFF_HEAD:
                    f.seek(max(SNIFF_HEAD, st.st_size - SNIFF_TAIL))
                    kind = family_of(f.read()) or "text"
    except OSError:
        kind = "text"
    if len(_SNIFFED) > 4096:
        _SNIFFED.clear()
    _SNIFFED[str(path)] = (sig, kind)
    return kind


def sniff(path: Path) -> str | None:
    """The step-line family of a file; None for binary files and files without step lines."""
    kind = kind_of(path)
    return None if kind in ("binary", "text") else kind


def beside_structured(path: Path) -> str | None:
    """The structured log of the same run beside this console log, if any:
    ``trainer_state.json`` and friends, or the ``.wandb`` file next to W&B's
    ``files/output.log``."""
    folder = path.parent
    for name in STRUCTURED:
        if (folder / name).is_file():
            return name
    if path.name == "output.log" and folder.name == "files":
        try:
            for entry in os.scandir(folder.parent):
                if entry.name.endswith(".wandb"):
                    return entry.name
        except OSError:
            return None
    return None


def hint(path: Path) -> str | None:
    """Why a file named like a log was not read (for ``ingest --verbose``),
    None when its name does not look like a log."""
    if not log_name(path):
        return None
    other = beside_structured(path)
    if other is not None:
        return f"the same run as {other} beside it, read from there"
    if kind_of(path) == "binary":
        return "binary data, not a text log"
    return (
        "looks like a log, but no metric lines in its first MiB or last 64 KiB "
        "(loss dicts, Megatron iteration lines, step/loss lines)"
    )


# ---- the reader --------------------------------------------------------------------


class Run:
    """One run inside the file, while it is being read: what crosses reads."""

    def __init__(self, idx: int, saved: dict[str, Any] | None = None) -> None:
        s = saved or {}
        self.idx = idx
        self.first: int | None = s.get("first")
        self.last: int | None = s.get("last")
        self.n: int = s.get("n", 0)
        self.total: int | None = s.get("total")
        self.ended: str | None = s.get("ended")
        self.pending: list[Any] | None = s.get("pending")
        self.banner: bool = s.get("banner", False)
        self.started: bool = s.get("started", False)
        self.first_steps: list[int] = list(s.get("first_steps", []))
        self.steps_from: str | None = s.get("steps_from")
        self.epoch: float | None = s.get("epoch")
        self.deltas = Deltas(s)
        # rows of this read
        self.steps: dict[tuple[int, int], list[Any]] = {}
        self.metrics: list[tuple[int, int, str, float, int]] = []
        self.events: list[tuple[int | None, str, dict[str, Any], int]] = []
        self.bulk: megatron.Bulk | None = None  # iteration lines read as columns
        self.bulk_seq: Any = None
        self.gap = 0.0

    def dump(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "n": self.n,
            "total": self.total,
            "ended": self.ended,
            "pending": self.pending,
            "banner": self.banner,
            "started": self.started,
            "first_steps": [] if self.started else self.first_steps[:32],
            "steps_from": self.steps_from,
            "epoch": self.epoch,
            "prev": self.deltas.dump(),
        }

    def step_row(self, rank: int, step: int, canon: dict[str, float], seq: int) -> None:
        key = (rank, step)
        row = self.steps.get(key)
        if row is None:
            self.steps[key] = [seq, dict(canon)]
        else:
            row[0] = seq
            row[1].update(canon)

    def metric_rows(self, step: int, extras: dict[str, float], seq: int, rank: int = 0) -> None:
        for name, value in extras.items():
            self.metrics.append((rank, step, name, value, seq))


class ConsoleReader:
    """Console output saved to a file (HF Trainer dicts, Megatron, step lines)."""

    format = "console"

    def detect(self, path: Path) -> bool:
        if not log_name(path) or beside_structured(path) is not None:
            return False
        return sniff(path) is not None

    def run_dir(self, path: Path) -> Path:
        """The folder, when this is the only console log in it; else a run of
        its own named after the file (``logs/job-1.out``)."""
        try:
            others = [
                Path(e.path)
                for e in os.scandir(path.parent)
                if e.name != path.name and e.is_file() and log_name(Path(e.path))
            ]
        except OSError:
            others = []
        if any(sniff(p) is not None for p in others):
            return path.parent / path.name
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        chunk = read_new_lines(path, state)
        old = {} if (state is None or chunk.restarted) else dict(state)
        keys = keymap_for(path)
        fam = old.get("family") or sniff(path) or family_of(chunk.data[:SNIFF_HEAD])
        idx = int(old.get("run", 1))
        run = Run(idx, old.get("cur"))
        done: list[Run] = []
        train_total = old.get("bar_total")
        problems: list[Problem] = []
        data = chunk.data
        base = chunk.start

        typical = float(old.get("gap", 0.0))
        scanned = 0  # the previous step item: markers before it were looked at
        items: list[tuple[int, str, Any]] = []
        if fam == "dicts":
            items = _dict_items(data, keys)
        elif fam == "megatron":
            lines = megatron.bulk(data)
            if lines is not None and _take_bulk(run, lines, data, base):
                scanned = int(lines.pos[-1])
                typical = run.gap
                items = _megatron_items(data, iterations=False)
            else:
                items = _megatron_items(data)
            items.sort(key=itemgetter(0))
        elif fam == "lines":
            items = _line_items(data)

        # Markers (tracebacks, banners) are looked for only where they can
        # matter: before the first item, in gaps much longer than usual (a
        # crash and a relaunch print a lot), before a step that goes back, and
        # after the last item. A full pass per marker would cost more than
        # finding the step lines.
        prev = 0  # the previous item
        for pos, kind, payload in items:
            seq = base + pos + 1
            if kind == "dict-train" and payload["step"] is None:
                got = _bar_step(data, prev, pos, train_total)
                if got is not None:
                    payload["step"], train_total = got
                    payload["total"] = train_total
                    payload["from"] = "progress bar"
            if kind in ("dict-train", "train"):
                gap = pos - scanned
                if scanned == 0 or gap > max(4096, 4 * typical) or _goes_back(run, payload):
                    for _, mkind, mpayload in _markers(data, scanned, pos):
                        run = self._marker(run, mkind, mpayload)
                if scanned:
                    typical = gap if not typical else 0.9 * typical + 0.1 * gap
                scanned = pos
                run = self._train(path, run, done, payload, seq)
            elif kind == "eval":
                step = payload["step"] if payload["step"] is not None else (run.last or 0)
                run.metric_rows(step, payload["metrics"], seq)
                run.events.append((step, "eval", payload["metrics"], seq))
            elif kind == "summary":
                step = run.last or 0
                run.metric_rows(step, payload, seq)
                if run.ended is None:
                    run.events.append((step, "run_end", {"status": "completed", **payload}, seq))
                    run.ended = "completed"
                    run.pending = None
            elif kind == "mem":
                rank, step, canon, extras = payload
                run.step_row(rank, step, canon, seq)
                run.metric_rows(step, extras, seq, rank)
            prev = pos
        for _, mkind, mpayload in _markers(data, scanned, len(data)):
            run = self._marker(run, mkind, mpayload)

        # the end of what was read: a crash that no step followed ends the run
        end_seq = base + len(data)
        for r in [*done, run]:
            if r.pending is not None and r.ended is None:
                status, error = r.pending
                payload = {"status": status}
                if error:
                    payload["error"] = error
                r.events.append((r.last, "run_end", payload, end_seq))
                r.ended, r.pending = status, None
            elif r.ended is None and r.total and r.last is not None and r.last >= r.total:
                r.events.append((r.last, "run_end", {"status": "completed"}, end_seq))
                r.ended = "completed"
            elif r.ended is None and r.n and (r is not run or not old):
                # an earlier run of the file, or a first read that shows no end
                r.events.append((r.last, "run_end", dict(QUIET_END), end_seq))
                r.ended = "interrupted"
            self._start(path, r, fam)

        n_runs = run.idx
        any_rows = run.n or any(r.n for r in done) or old.get("had_rows")
        lines_total = 0
        if not any_rows and not old.get("warned"):
            lines_total = chunk.lines
            if lines_total:
                problems.append(no_loss_problem(path, lines_total, "lines"))
        new_state = {
            **chunk.position,
            "family": fam,
            "run": n_runs,
            "cur": run.dump(),
            "bar_total": train_total,
            "gap": typical,
            "had_rows": bool(any_rows),
            "warned": bool(old.get("warned") or (not any_rows and lines_total)),
        }
        first = next((r for r in [*done, run] if r.idx == 1), None) or Run(1)
        result = _result(first, new_state, problems, chunk.restarted)
        result.subruns = [
            (f"#{r.idx}", _result(r, {}, [], chunk.restarted)) for r in [*done, run] if r.idx > 1
        ]
        return result

    def _marker(self, run: Run, kind: str, payload: Any) -> Run:
        if kind == "banner":
            if run.n:
                run.banner = True
        else:
            status, error = payload
            # the first marker of a crash says the most (the traceback's last
            # line); the ones after it belong to the same crash
            if status and run.n and run.ended is None and run.pending is None:
                run.pending = [status, error]
        return run

    def _train(self, path: Path, run: Run, done: list[Run], item: dict[str, Any], seq: int) -> Run:
        step: int | None = item["step"]
        epoch = item["canon"].get("epoch")
        if step is None:  # no step anywhere: the dict's order in the run
            restart = run.n and (
                run.banner or (epoch is not None and run.epoch is not None and epoch < run.epoch)
            )
            if restart:
                run = self._new_run(run, done)
            elif run.ended:
                run.events.append((run.last, "resume", {"from_step": run.last}, seq))
                run.ended = None
            run.pending = None  # training went on after the traceback
            step = (run.last or 0) + 1
            run.steps_from = "order"
        else:
            if run.n and run.last is not None and run.first is not None:
                if step < run.last and step <= run.first:
                    run = self._new_run(run, done)
                elif step < run.last or run.ended or (run.pending and run.banner):
                    # a resume: from an earlier checkpoint, or after a crash
                    run.events.append(
                        (step, "resume", {"from_step": step, "last_step": run.last}, seq)
                    )
                    run.ended = None
                    run.pending = None
                elif run.pending:
                    run.pending = None  # the traceback did not end training
            run.steps_from = run.steps_from or item.get("from", "log")
        if item.get("total"):
            run.total = item["total"]
        canon = item["canon"]
        extras = item["extras"]
        elapsed = item.get("elapsed")
        if elapsed is not None:
            extras["elapsed_s"] = elapsed
            per_step = run.deltas.rate("elapsed", step, elapsed)
            if per_step is not None:
                canon.setdefault("step_time_s", per_step)
        run.step_row(0, step, canon, seq)
        run.metric_rows(step, extras, seq)
        run.first = step if run.first is None else min(run.first, step)
        run.last = step
        run.n += 1
        run.banner = False
        if epoch is not None:
            run.epoch = epoch
        if not run.started:
            run.first_steps.append(step)
        return run

    def _new_run(self, run: Run, done: list[Run]) -> Run:
        done.append(run)
        return Run(run.idx + 1)

    def _start(self, path: Path, run: Run, fam: str | None) -> None:
        if run.started or not run.first_steps:
            return
        if len(run.first_steps) < 3 and run.ended is None:
            return
        payload: dict[str, Any] = {
            "format": self.format,
            "family": fam,
            "source": str(path),
            "logging_steps": infer_logging_steps(run.first_steps) or 1,
            "per_rank": False,
            "steps_from": run.steps_from,
            "steps_inferred": run.steps_from == "order",
            "loss_averaging": (
                "mean over the log interval's iterations and data-parallel ranks"
                if fam == "megatron"
                else "as the trainer printed it (HF: mean over logging_steps and all ranks)"
            ),
        }
        if run.idx > 1:
            payload["run_in_file"] = run.idx
        if run.total:
            payload["total_steps"] = run.total
        run.events.append((None, "run_start", payload, 0))
        run.started = True


def _result(run: Run, state: dict[str, Any], problems: list[Problem], replace: bool) -> ReadResult:
    """The rows of one run as tables, built a column at a time (a console log
    can hold hundreds of thousands of steps)."""
    import pyarrow as pa

    bulk_steps = bulk_metrics = None
    if run.bulk is not None:
        bulk_steps, bulk_metrics = _bulk_tables(run)
    items = list(run.steps.items())
    seqs = [v[0] for _, v in items]
    if any(b < a for a, b in itertools.pairwise(seqs)):
        items.sort(key=lambda kv: kv[1][0])
    n = len(items)
    canons = [v[1] for _, v in items]
    present: set[str] = set()
    for c in canons[:64]:
        present.update(c)
    if n > 64:
        present = present.union(*canons[64:])
    cols: dict[str, Any] = {
        "rank": pa.array([k[0] for k, _ in items], pa.int32()),
        "step": pa.array([k[1] for k, _ in items], pa.int64()),
        "ts": pa.nulls(n, pa.float64()),
    }
    for name in METRIC_NAMES:
        if name in present:
            cols[name] = pa.array([c.get(name) for c in canons], pa.float64())
        else:
            cols[name] = pa.nulls(n, pa.float64())
    cols["sample_ids"] = pa.nulls(n, pa.string())
    cols["seq"] = pa.array([v[0] for _, v in items], pa.int64())
    steps = pa.table(cols, schema=STEP_SCHEMA)
    m = run.metrics
    metrics = pa.table(
        {
            "rank": pa.array([r[0] for r in m], pa.int32()),
            "step": pa.array([r[1] for r in m], pa.int64()),
            "ts": pa.nulls(len(m), pa.float64()),
            "name": pa.array([r[2] for r in m], pa.string()),
            "value": pa.array([r[3] for r in m], pa.float64()),
            "seq": pa.array([r[4] for r in m], pa.int64()),
        },
        schema=METRIC_SCHEMA,
    )
    if bulk_steps is not None:
        steps = pa.concat_tables([bulk_steps, steps])
        metrics = pa.concat_tables([bulk_metrics, metrics])
    rows = RowBuilder()
    for step, kind, payload, seq in run.events:
        rows.event(0, step, None, kind, payload, seq=seq)
    events = rows.tables()[2]
    return ReadResult(steps, metrics, events, state, problems, replace)


def _bulk_tables(run: Run) -> tuple[Any, Any]:
    """Step and metric tables of the iteration lines read as columns; rank-0
    rows of the same steps (memory lines) are merged into them and leave
    ``run.steps``."""
    import numpy as np
    import pyarrow as pa

    b = run.bulk
    assert b is not None
    n = len(b.steps)
    canon = {k: np.array(v, dtype=np.float64) for k, v in b.canon.items()}
    for (rank, step), (_, values) in list(run.steps.items()):
        if rank != 0:
            continue
        i = int(np.searchsorted(b.steps, step))
        if i < n and b.steps[i] == step:
            for name, value in values.items():
                col = canon.setdefault(name, np.full(n, np.nan))
                col[i] = value
            del run.steps[(rank, step)]
    cols: dict[str, Any] = {
        "rank": pa.array(np.zeros(n, np.int32)),
        "step": pa.array(b.steps),
        "ts": pa.nulls(n, pa.float64()),
    }
    for name in METRIC_NAMES:
        got = canon.get(name)
        cols[name] = pa.nulls(n, pa.float64()) if got is None else pa.array(got)
    cols["sample_ids"] = pa.nulls(n, pa.string())
    cols["seq"] = pa.array(run.bulk_seq.astype(np.int64))
    steps = pa.table(cols, schema=STEP_SCHEMA)
    parts = []
    for name, values in b.extras.items():
        parts.append(
            pa.table(
                {
                    "rank": pa.array(np.zeros(n, np.int32)),
                    "step": pa.array(b.steps),
                    "ts": pa.nulls(n, pa.float64()),
                    "name": pa.DictionaryArray.from_arrays(
                        pa.array(np.zeros(n, np.int32)), pa.array([name])
                    ).cast(pa.string()),
                    "value": pa.array(values),
                    "seq": pa.array(run.bulk_seq.astype(np.int64)),
                },
                schema=METRIC_SCHEMA,
            )
        )
    metrics = pa.concat_tables(parts) if parts else METRIC_SCHEMA.empty_table()
    return steps, metrics


# ---- finding items in a chunk ------------------------------------------------------


def _markers(data: bytes, lo: int, hi: int) -> list[tuple[int, str, Any]]:
    """The end and banner markers in ``data[lo:hi]``, in order."""
    out: list[tuple[int, str, Any]] = []
    for needle, kind, status in MARKERS:
        pos = data.find(needle, lo, hi)
        while pos >= 0:
            if kind == "banner":
                out.append((pos, kind, None))
            else:
                out.append((pos, kind, _ending(data, pos, needle, status)))
            pos = data.find(needle, pos + len(needle), hi)
    out.sort(key=lambda it: it[0])
    return out


def _goes_back(run: Run, item: Any) -> bool:
    """A step item that may start a new run or resume this one."""
    if not run.n:
        return False
    step = item["step"]
    if step is not None:
        return run.last is not None and step <= run.last
    epoch = item["canon"].get("epoch")
    return epoch is not None and run.epoch is not None and epoch <= run.epoch


def _bar_step(data: bytes, lo: int, pos: int, total: int | None) -> tuple[int, int] | None:
    """(step, total) of the training progress bar last drawn before ``pos``
    (and after ``lo``): the last ``N/total [`` when the total is known, else
    the last counter of any bar, whose total is then the training total."""
    start = max(lo, pos - _BAR_LOOKBACK)
    if total is None:
        found = _BAR_COUNTER.findall(data, start, pos)
        return (int(found[-1][0]), int(found[-1][1])) if found else None
    needle = b"/%d [" % total
    i = data.rfind(needle, start, pos)
    if i < 0:
        return None
    j = i
    while j > start and 48 <= data[j - 1] <= 57:
        j -= 1
    return (int(data[j:i]), total) if j < i else None


def _ending(data: bytes, pos: int, needle: bytes, status: str) -> tuple[str, str | None]:
    """(status, error text) of an end marker at ``pos``."""
    if needle.startswith(b"exits with return code"):
        m = _RETURN_CODE.match(data, pos)
        if m and m.group(1) == b"0":
            return "", None
        return status, data[pos : data.find(b"\n", pos)].decode("utf-8", "replace")[:300]
    if needle.startswith(b"Traceback"):
        m = _ERROR_LINE.search(data, pos + len(needle), pos + (64 << 10))
        if m is not None:
            text = m.group(1).decode("utf-8", "replace").strip()
            if text.startswith("KeyboardInterrupt"):
                return "interrupted", text
            return status, text
        return status, None
    line_end = data.find(b"\n", pos)
    return status, data[pos : line_end if line_end >= 0 else None].decode("utf-8", "replace")[:300]


def _dict_items(data: bytes, keys: Any) -> list[tuple[int, str, Any]]:
    out: list[tuple[int, str, Any]] = []
    if b"{" not in data:
        return out
    for m in pydict.DICT.finditer(data):
        d = pydict.parse(m.group())
        if not d:
            continue
        evals = {k: v for k, v in d.items() if k.startswith("eval_") and v is not None}
        if evals:
            metrics = {k: v for k, v in evals.items() if isinstance(v, float)}
            step = _dict_step(d, keys)[0]
            if metrics:
                out.append((m.start(), "eval", {"step": step, "metrics": metrics}))
            continue
        has_loss = keys.loss_key(d) is not None and keys.loss_key(d) != "train_loss"
        if not has_loss and any(k in d for k in _SUMMARY_KEYS):
            summary = {
                k: v
                for k, v in d.items()
                if isinstance(v, float) and k not in _DICT_SKIP and k != "epoch"
            }
            out.append((m.start(), "summary", summary))
            continue
        if not (has_loss or any(k in d for k in _TRAIN_KEYS)):
            continue  # a config dict, not a log
        step, total = _dict_step(d, keys)
        canon, extras = keys.canon(d, skip=_DICT_SKIP)
        item = {"step": step, "total": total, "canon": canon, "extras": extras, "from": "log"}
        elapsed = parse_duration(d["elapsed_time"]) if "elapsed_time" in d else None
        if elapsed is None and step is not None and "train_speed(s/it)" in d:
            speed = d.get("train_speed(s/it)")
            elapsed = speed * step if isinstance(speed, float) else None
        if elapsed is not None:
            item["elapsed"] = elapsed
            extras.pop("train_speed(s/it)", None)
        out.append((m.start(), "dict-train", item))
    return out


def _dict_step(d: dict[str, Any], keys: Any) -> tuple[int | None, int | None]:
    if "global_step/max_steps" in d:
        n, total = parse_fraction(d["global_step/max_steps"])
        if n is not None:
            return n, total
    if d.keys().isdisjoint(keys.step):
        return None, None
    for key in keys.step:
        if key in d:
            v = d[key]
            n = as_int(v) if not isinstance(v, float) or math.isfinite(v) else None
            if n is not None:
                return n, None
    return None, None


def _take_bulk(run: Run, lines: megatron.Bulk, data: bytes, base: int) -> bool:
    """Take the chunk's iteration lines as columns when nothing in them needs
    a line-by-line look: the steps rise past the run's last one, the run has
    not ended, and no crash or banner sits before them or in an unusually long
    gap between them. Otherwise the caller reads the lines one by one."""
    import numpy as np

    steps, pos = lines.steps, lines.pos
    if run.ended is not None or run.pending is not None:
        return False
    if run.last is not None and steps[0] <= run.last:
        return False
    if len(steps) > 1 and not bool(np.all(np.diff(steps) > 0)):
        return False
    if run.n and _markers(data, 0, int(pos[0])):
        return False
    gaps = np.diff(pos)
    typical = float(np.median(gaps)) if len(gaps) else 0.0
    for i in np.flatnonzero(gaps > max(4096.0, 4 * typical)):
        if _markers(data, int(pos[i]), int(pos[i + 1])):
            return False
    run.bulk = lines
    run.bulk_seq = pos + (base + 1)
    run.gap = typical
    n = len(steps)
    run.first = int(steps[0]) if run.first is None else min(run.first, int(steps[0]))
    run.last = int(steps[-1])
    run.n += n
    run.total = lines.total or run.total
    run.steps_from = run.steps_from or "log"
    run.banner = False
    if not run.started:
        run.first_steps.extend(int(s) for s in steps[:32])
    return True


def _megatron_items(data: bytes, iterations: bool = True) -> list[tuple[int, str, Any]]:
    out: list[tuple[int, str, Any]] = []
    for m in megatron.ITERATION.finditer(data) if iterations else ():
        step, total, canon, extras = megatron.iteration(m)
        if not canon and not extras:
            continue
        item = {"step": step, "total": total, "canon": canon, "extras": extras, "from": "log"}
        out.append((m.start(), "train", item))
    if b"memory (MB)" in data:
        for m in megatron.MEMORY.finditer(data):
            out.append((m.start(), "mem", megatron.memory(m)))
    if b"validation loss at iteration" in data:
        for m in megatron.VALIDATION.finditer(data):
            step, metrics = megatron.validation(m)
            if metrics:
                out.append((m.start(), "eval", {"step": step, "metrics": metrics}))
    return out


def _line_items(data: bytes) -> list[tuple[int, str, Any]]:
    out: list[tuple[int, str, Any]] = []
    for m in console_lines.STEP_LINE.finditer(data):
        step, total, canon, extras = console_lines.step_line(m)
        item = {"step": step, "total": total, "canon": canon, "extras": extras, "from": "log"}
        out.append((m.start(), "train", item))
    if b"|Loss: " in data:
        for m in console_lines.TORCHTUNE_BAR.finditer(data):
            step, canon = console_lines.torchtune_bar(m)
            item = {"step": step, "total": None, "canon": canon, "extras": {}, "from": "log"}
            out.append((m.start(), "train", item))
    return out
