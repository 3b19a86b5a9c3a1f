"""Reader for TensorBoard event files (``events.out.tfevents.*``), without
TensorFlow or the ``tensorboard`` package: the records are framed by
:mod:`~tunescope.ingest.readers.tfrecord` and their events decoded by
:mod:`~tunescope.ingest.readers.tfevent`, both in bulk (numpy over the record
offsets). PyTorch and tensorboardX write ``simple_value``; TF2's
``tf.summary.scalar`` writes a scalar tensor. Every point is kept. The
Trainer's ``args`` text summary (a JSON string tensor) gives
``logging_steps`` and ``max_steps``.

Files are append-only: a read continues at the byte after the last whole
record; a record cut short at the end is left for the next read. Every
record's header CRC (over its 8 length bytes) is checked: damaged bytes are
skipped up to the next record whose header checks out, and named with their
byte offset, so one bad record does not lose the rest of the file. The data
CRC is checked on request only (``verify_crc``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunescope.eventlog import TS_MAX, epoch_seconds, time_problem
from tunescope.ingest.readers.foreign import infer_logging_steps, resume_state, scalar_result
from tunescope.ingest.readers.tfevent import Decoded, decode, parse_event
from tunescope.ingest.readers.tfrecord import MAX_RECORD, frame, iter_records
from tunescope.ingest.readers.vocabulary import HIGH, TAGS, meaning
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder

__all__ = [
    "CANONICAL_TAGS",
    "FINAL_TAGS",
    "MAX_RECORD",
    "PREFIX",
    "TensorBoardReader",
    "add_scalar",
    "iter_records",
    "metric_name",
    "parse_event",
    "read_scalars",
    "twin",
]

PREFIX = "events.out.tfevents."


def read_scalars(
    path: str | Path, verify: bool = False
) -> list[tuple[str, int, float | None, float]]:
    """Every scalar point of a file as ``(tag, step, wall_time, value)``, in
    file order; for tools and the benchmark. Damaged records are left out;
    an undecodable one raises ``ValueError``."""
    data = Path(path).read_bytes()
    dec = decode(data, frame(data, 0, verify))
    skip: dict[str, int] = {}
    extra: list[tuple[int, int, float | None, str, float]] = []
    for i, event in dec.others:
        if isinstance(event, str):
            raise ValueError(f"{path}: record {i + 1}: undecodable event ({event})")
        wall, step, values = event
        for tag, value, kind in values:
            if isinstance(kind, str) and kind not in ("scalars", ""):
                skip.setdefault(tag, i)
            if value is not None and tag not in skip:
                extra.append((i, step, wall, tag, value))
    pts = _Points.of(dec, skip, extra)
    walls: list[float | None] = pts.wall.tolist()
    for i in np.flatnonzero(~pts.has_wall).tolist():
        walls[i] = None
    names = np.array(pts.tags, dtype=object)[pts.tag].tolist()
    return list(zip(names, pts.step.tolist(), walls, pts.value.tolist(), strict=True))


@dataclass
class _Points:
    """Scalar points in file order, as columns."""

    item: np.ndarray  # the record each comes from
    step: np.ndarray
    wall: np.ndarray  # NaN where ``has_wall`` is False
    has_wall: np.ndarray
    tag: np.ndarray  # an index into ``tags``
    value: np.ndarray
    tags: list[str]

    @classmethod
    def of(
        cls,
        dec: Decoded,
        skip: dict[str, int],
        extra: list[tuple[int, int, float | None, str, float]],
    ) -> _Points:
        """The common-layout points of ``dec`` whose tag was not marked a
        non-scalar (``skip``: tag -> the record that marked it) before them,
        merged in file order with ``extra``, the points of the other records
        as ``(item, step, wall, tag, value)``."""
        tags = list(dec.tags)
        never = np.iinfo(np.int64).max
        marked = np.array([skip.get(t, never) for t in tags], dtype=np.int64)
        keep = marked[dec.tag] > dec.simple
        pts = cls(
            dec.simple[keep],
            dec.step[keep],
            dec.wall[keep],
            np.ones(int(keep.sum()), dtype=bool),
            dec.tag[keep],
            dec.value[keep],
            tags,
        )
        if not extra:
            return pts
        ids = {t: i for i, t in enumerate(tags)}
        more = cls(
            np.array([e[0] for e in extra], dtype=np.int64),
            np.array([e[1] for e in extra], dtype=np.int64),
            np.array([np.nan if e[2] is None else e[2] for e in extra], dtype=np.float64),
            np.array([e[2] is not None for e in extra], dtype=bool),
            np.array([ids.setdefault(e[3], len(ids)) for e in extra], dtype=np.int64),
            np.array([e[4] for e in extra], dtype=np.float64),
            list(ids),
        )
        order = np.argsort(np.concatenate([pts.item, more.item]), kind="stable")

        def both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.concatenate([a, b])[order]

        return cls(
            both(pts.item, more.item),
            both(pts.step, more.step),
            both(pts.wall, more.wall),
            both(pts.has_wall, more.has_wall),
            both(pts.tag, more.tag),
            both(pts.value, more.value),
            more.tags,
        )


# ---- mapping ----------------------------------------------------------------------

CANONICAL_TAGS = TAGS
# Tags only the Trainer's end-of-training summary writes (train/train_runtime
# is also written with every log when input tokens are counted).
FINAL_TAGS = frozenset(("train/train_loss", "train/train_steps_per_second"))


def metric_name(tag: str) -> tuple[str, bool]:
    """(name, canonical) for a tag: canonical metric, ``eval_X`` for
    ``eval/X``, else the tag itself."""
    name = CANONICAL_TAGS.get(tag)
    if name is not None:
        return name, True
    if tag.startswith("lr-"):  # Lightning's LearningRateMonitor
        return "lr", True
    if tag.startswith("eval/"):
        return "eval_" + tag[5:], False
    if tag in FINAL_TAGS:
        return tag, False
    # Megatron's and home-made tags ("lm loss", "grad-norm", "learning-rate")
    # through the vocabulary; only names it knows for sure become columns
    known = meaning(tag)
    if known.confidence >= HIGH and known.kind == "column" and known.scale == 1.0:
        return known.column, True
    if known.kind == "eval" and tag != tag.strip().lower().replace(" ", "_"):
        return known.column, False
    return tag, False


def twin(tag: str) -> bool:
    """A tag Megatron writes twice, against samples or tokens (``lm loss vs
    samples``): the same values as the tag without the suffix, which is kept."""
    return tag.endswith((" vs samples", " vs tokens"))


def add_scalar(
    steps: dict[int, list[Any]],
    metric_rows: list[tuple[int, float | None, str, float]],
    step: int,
    ts: float | None,
    tag: str,
    value: float,
) -> bool:
    """Route one scalar by :func:`metric_name`: a canonical metric into
    ``steps[step]`` (``[ts, metrics]``, the first ``ts`` kept), any other into
    ``metric_rows``. True when it was canonical."""
    name, canonical = metric_name(tag)
    if canonical:
        slot = steps.get(step)
        if slot is None:
            slot = steps[step] = [ts, {}]
        slot[1][name] = value
    else:
        metric_rows.append((step, ts, name, value))
    return canonical


# ---- reader ------------------------------------------------------------------------


class TensorBoardReader:
    """TensorBoard event files: scalar summaries."""

    format = "tensorboard"

    def __init__(self, verify_crc: bool = False) -> None:
        self.verify_crc = verify_crc

    def detect(self, path: Path) -> bool:
        if not path.name.startswith(PREFIX):
            return False
        return not _has_trainer_log(path)

    def run_dir(self, path: Path) -> Path:
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        st = os.stat(path)
        state, offset, restarted = resume_state(st, state, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        scan = _Scan(
            record=int(state.get("record", 0)),
            skip=set(state.get("skip", [])),
            args=dict(state.get("args", {})),
        )
        pending = state.get("pending")  # the last step's canonical values, re-emitted
        if pending:
            scan.steps[int(pending[0])] = [pending[1], dict(pending[2])]
        consumed = self._scan(path, data, offset, scan)
        rows = RowBuilder()
        first = self._run_events(rows, state, scan)
        last = max(scan.steps) if scan.steps else None
        new_state = {
            **state,
            "offset": offset + consumed,
            "inode": st.st_ino,
            "record": scan.record,
            "skip": sorted(scan.skip),
            "args": scan.args,
            "first_steps": [] if state.get("started") else first,
            "pending": (
                [last, scan.steps[last][0], scan.steps[last][1]] if last is not None else None
            ),
        }
        _, _, events = rows.tables()
        return scalar_result(
            scan.steps, scan.metric_rows, events, state, new_state, scan.problems, restarted
        )

    def _scan(self, path: Path, data: bytes, offset: int, scan: _Scan) -> int:
        """Decode the whole records of ``data`` (read from byte ``offset``) into
        ``scan``; returns how many bytes they took."""
        framed = frame(data, 0, self.verify_crc)
        dec = decode(data, framed)
        first = scan.record
        scan.record += len(framed.starts)
        problems: list[tuple[int, str]] = [
            (i, f"{why}; skipped") for i, why in framed.damage.items()
        ]
        bad_wall = ~((dec.wall >= 0) & (dec.wall < TS_MAX))  # as epoch_seconds bounds it
        for i, wall in zip(dec.simple[bad_wall].tolist(), dec.wall[bad_wall].tolist(), strict=True):
            problems.append((i, time_problem("wall_time", wall)))
        skip = dict.fromkeys(scan.skip, -1)
        extra = []
        for i, event in dec.others:
            if isinstance(event, str):
                problems.append((i, f"undecodable event ({event}); skipped"))
                continue
            wall, step, values = event
            if wall is not None and epoch_seconds(wall) is None:
                problems.append((i, time_problem("wall_time", wall)))
                wall = None
            for tag, value, kind in values:
                if isinstance(kind, tuple):
                    if tag in ("args/text_summary", "args") and not scan.args:
                        scan.args = _hf_args(kind[1])
                    continue
                if isinstance(kind, str) and kind not in ("scalars", ""):
                    skip.setdefault(tag, i)
                if value is None or tag in skip or step < 0:
                    continue
                extra.append((i, step, wall, tag, value))
        scan.skip.update(skip)
        for i, what in sorted(problems, key=lambda p: p[0]):
            where = f"record {first + i + 1} at byte {offset + int(framed.starts[i])}"
            scan.problems.append(Problem(str(path), None, f"{where}: {what}"))
        _route(_Points.of(dec, skip, extra), scan)
        return framed.consumed

    def _run_events(self, rows: RowBuilder, state: dict[str, Any], scan: _Scan) -> list[int]:
        """Add the run's ``run_end`` (a final summary tag was seen) and, once
        the logging interval is known, its ``run_start``; returns the first
        steps kept to infer that interval from later."""
        if scan.ended_at is not None and not state.get("ended"):
            rows.event(0, scan.ended_at, None, "run_end", {"status": "completed"})
            state["ended"] = True
        first = list(state.get("first_steps", []))
        if state.get("started"):
            return first
        first = sorted(set(first) | {s for s, (_, c) in scan.steps.items() if "loss" in c})[:32]
        ls = scan.args.get("logging_steps")
        if ls is None and (len(first) >= 3 or (first and state.get("ended"))):
            ls = infer_logging_steps(first)
        if ls is not None:
            payload: dict[str, Any] = {
                "format": self.format,
                "logging_steps": ls,
                "per_rank": False,
            }
            if scan.args.get("max_steps"):
                payload["total_steps"] = scan.args["max_steps"]
            if scan.args.get("model"):
                payload["model"] = scan.args["model"]
            rows.event(0, None, None, "run_start", payload)
            state["started"] = True
        return first


@dataclass
class _Scan:
    """What the records read so far hold."""

    record: int  # records read from the start of the file
    skip: set[str]  # tags that are not scalars
    args: dict[str, Any]  # the Trainer's arguments, from its text summary
    steps: dict[int, list[Any]] = field(default_factory=dict)  # step -> [ts, canon]
    metric_rows: list[tuple[int, float | None, str, float]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ended_at: int | None = None


def _route(pts: _Points, scan: _Scan) -> None:
    """Route points as :func:`add_scalar` does, a column at a time: canonical
    metrics into ``scan.steps`` (a step's first time kept, a metric's last
    value), the others into ``scan.metric_rows`` in file order. Twins are
    left out; a final summary tag marks the run's end."""
    routes = [metric_name(t) for t in pts.tags]
    keep = ~np.array([twin(t) for t in pts.tags], dtype=bool)[pts.tag]
    timed = pts.has_wall & (pts.wall >= 0) & (pts.wall < TS_MAX)
    is_canon = np.array([c for _, c in routes], dtype=bool)[pts.tag]
    final = np.array(
        [not c and t in FINAL_TAGS for t, (_, c) in zip(pts.tags, routes, strict=True)], dtype=bool
    )
    ends = np.flatnonzero(keep & final[pts.tag])
    if len(ends):
        scan.ended_at = int(pts.step[ends[-1]])
    for canonical in (True, False):
        sel = np.flatnonzero(keep & (is_canon == canonical))
        if not len(sel):
            continue
        ts: list[float | None] = pts.wall[sel].tolist()
        for j in np.flatnonzero(~timed[sel]).tolist():
            ts[j] = None
        if not canonical:
            names = np.array([n for n, _ in routes], dtype=object)[pts.tag[sel]]
            scan.metric_rows.extend(
                zip(
                    pts.step[sel].tolist(), ts, names.tolist(), pts.value[sel].tolist(), strict=True
                )
            )
            continue
        kinds = list(dict.fromkeys(n for n, c in routes if c))
        kind_of = np.array([kinds.index(n) if c else -1 for n, c in routes], dtype=np.int64)
        _add_steps(scan.steps, pts.step[sel], ts, kind_of[pts.tag[sel]], kinds, pts.value[sel])


def _add_steps(
    slots: dict[int, list[Any]],
    steps: np.ndarray,
    ts: list[float | None],
    kind: np.ndarray,
    names: list[str],
    values: np.ndarray,
) -> None:
    """Canonical points (in file order; ``kind`` indexes ``names``) into
    ``slots`` (step -> ``[ts, metrics]``): a new step's time is its first
    point's, a metric's value its last write; a step already there keeps
    its time."""
    uniq, firsts = np.unique(steps, return_index=True)
    columns = []  # per metric: its last value at each step it has, and where
    for k, name in enumerate(names):
        mine = np.flatnonzero(kind == k)[::-1]  # newest first: the last write wins
        if not len(mine):
            continue
        at, lasts = np.unique(steps[mine], return_index=True)
        columns.append((name, values[mine][lasts].tolist(), np.searchsorted(uniq, at)))
    full = [c for c in columns if len(c[2]) == len(uniq)]
    keys = [c[0] for c in full]
    metrics: list[dict[str, float]] = (
        [dict(zip(keys, row, strict=True)) for row in zip(*(c[1] for c in full), strict=True)]
        if full
        else [{} for _ in range(len(uniq))]
    )
    for name, vals, where in columns:
        if len(where) < len(uniq):
            for i, v in zip(where.tolist(), vals, strict=True):
                metrics[i][name] = v
    ulist = uniq.tolist()
    for i in [i for i, step in enumerate(ulist) if step in slots] if slots else []:
        slots[ulist[i]][1].update(metrics[i])
    for step, j, m in zip(ulist, firsts.tolist(), metrics, strict=True):
        if step not in slots:
            slots[step] = [ts[j], m]


def _has_trainer_log(path: Path) -> bool:
    """An event file in the Trainer's default place, ``OUT/runs/NAME/``, of an
    output dir whose own log (``trainer_state.json``, LLaMA-Factory's or
    ms-swift's) is read: the same run, so the event file is left out rather
    than counted as a second run. It is read while no such log exists yet."""
    if path.parent.parent.name != "runs":
        return False
    from tunescope.ingest.readers import hf_state

    out = path.parent.parent.parent
    return (
        (out / hf_state.LF_LOG).is_file()
        or (out / hf_state.SWIFT_LOG).is_file()
        or hf_state.primary(out) is not None
    )


def _hf_args(text: str) -> dict[str, Any]:
    """``logging_steps``, ``max_steps`` and the model from the Trainer's args text."""
    try:
        obj = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(obj, dict):
        return {}
    out: dict[str, Any] = {}
    ls = obj.get("logging_steps")
    if isinstance(ls, int | float) and not isinstance(ls, bool) and ls >= 1:
        out["logging_steps"] = int(ls)
    ms = obj.get("max_steps")
    if isinstance(ms, int) and not isinstance(ms, bool) and ms > 0:
        out["max_steps"] = ms
    for key in ("model_name_or_path", "_name_or_path", "run_name"):
        if isinstance(obj.get(key), str) and key != "run_name":
            out["model"] = obj[key]
            break
    return out
