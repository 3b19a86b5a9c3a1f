"""Readers for MLflow tracking stores: the ``mlruns/`` file store and the
``mlflow.db`` SQLite store. One tunescope run per MLflow run.

File store, per run ``mlruns/<experiment>/<run>/``: ``meta.yaml`` (name,
status, start and end times), ``params/<name>`` and ``tags/<name>`` (the file
holds the value; names with ``/`` are sub-folders), ``metrics/<name>`` with one
point per line: ``timestamp value step`` (older files ``timestamp value``, newer
ones add ``dataset_name dataset_digest``). The run's ``meta.yaml`` is the
source: the run is read whole when it changes (at the start and the end of a
run; points logged in between are picked up then, or on the next ingest after
it).

SQLite store (``mlflow.db``, read with the standard library, read-only):
tables ``runs``, ``metrics`` (``key, value, timestamp, step, is_nan``),
``params`` and ``tags``. The file holds many runs: discovery lists one source
per run (``parts``), each read with ``read_part`` when the file changes.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunescope.eventlog import epoch_seconds, time_problem
from tunescope.ingest.readers.foreign import (
    CANONICAL,
    add_step_times,
    infer_logging_steps,
    metric_table,
    step_table,
)
from tunescope.ingest.readers.tensorboard import metric_name
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder

META = "meta.yaml"
DB_NAME = "mlflow.db"
SQLITE_MAGIC = b"SQLite format 3\x00"
STATUS = {  # RunStatus: numbers in meta.yaml, names in SQLite
    1: "running",
    2: "running",
    3: "completed",
    4: "failed",
    5: "interrupted",
    "RUNNING": "running",
    "SCHEDULED": "running",
    "FINISHED": "completed",
    "FAILED": "failed",
    "KILLED": "interrupted",
}
FLOAT_MAX = 1.7976931348623157e308  # MLflow's SQL store writes +-inf as +-this


def canonical(name: str) -> tuple[str, bool, float]:
    """(name, canonical?, scale) of an MLflow metric key."""
    hit = CANONICAL.get(name)
    if hit is not None:
        return hit[0], True, hit[1]
    mapped, is_canon = metric_name(name)
    return mapped, is_canon, 1.0


def build_rows(
    points: Iterable[tuple[str, int, float | None, float]],
    info: dict[str, Any],
    fmt: str,
) -> tuple[Any, Any, Any]:
    """Step, metric and event tables of one run from ``(key, step, ts, value)``
    points and what is known about the run (name, status, times, params,
    tags; times already bounded, see :func:`run_time`)."""
    steps: dict[int, list[Any]] = {}
    metrics: list[tuple[int, float | None, str, float]] = []
    for key, step, ts, value in points:
        name, is_canon, scale = canonical(key)
        if is_canon:
            slot = steps.get(step)
            if slot is None:
                slot = steps[step] = [ts, {}]
            slot[1][name] = value * scale
        else:
            metrics.append((step, ts, name, value))
    params = info.get("params", {})
    loss_steps = [s for s, (_, c) in steps.items() if "loss" in c] or list(steps)
    payload: dict[str, Any] = {
        "format": fmt,
        "run": info.get("name"),
        "mlflow_run_id": info.get("run_id"),
        "experiment_id": info.get("experiment_id"),
        "logging_steps": infer_logging_steps(loss_steps),
        "per_rank": False,
        "config": params,
    }
    for key in ("max_steps", "total_steps"):
        if str(params.get(key, "")).isdigit() and int(params[key]) > 0:
            payload["total_steps"] = int(params[key])
            break
    for key in ("model_name_or_path", "model", "base_model"):
        if params.get(key):
            payload["model"] = params[key]
            break
    if info.get("tags"):
        payload["tags"] = info["tags"]
    rows = RowBuilder()
    rows.event(0, None, info.get("start_time"), "run_start", payload)
    status = STATUS.get(info.get("status"))
    if status in ("completed", "failed", "interrupted"):
        last = max(steps) if steps else (max(m[0] for m in metrics) if metrics else None)
        rows.event(0, last, info.get("end_time"), "run_end", {"status": status})
    _, _, events = rows.tables()
    step_rows = [(s, ts, c) for s, (ts, c) in sorted(steps.items())]
    add_step_times(step_rows, [])
    return step_table(step_rows), metric_table(metrics), events


def run_time(
    ms: Any, what: str, where: str, problems: list[Problem], line: int | None = None
) -> float | None:
    """An MLflow time (milliseconds since the epoch) in seconds; None, with a
    problem naming ``where``, when it is not a plausible time."""
    if ms is None or isinstance(ms, bool) or not isinstance(ms, int | float) or not ms:
        return None
    ts = epoch_seconds(ms / 1000.0)
    if ts is None:
        problems.append(Problem(where, line, time_problem(f"{what} (ms)", ms)))
    return ts


# ---- file store -----------------------------------------------------------------


def _read_tree(folder: Path) -> dict[str, str]:
    """name -> file text for every file under ``folder`` (names keep their ``/``)."""
    out: dict[str, str] = {}
    if not folder.is_dir():
        return out
    for root, _, files in os.walk(folder):
        for f in files:
            p = Path(root) / f
            try:
                out[p.relative_to(folder).as_posix()] = p.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                continue
    return out


def parse_metric_file(path: Path, key: str, problems: list[Problem]) -> list[tuple]:
    points: list[tuple] = []
    try:
        data = path.read_bytes()
    except OSError as e:
        problems.append(Problem(str(path), None, f"cannot read: {e.strerror or e}"))
        return points
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) not in (2, 3, 5):
                raise ValueError(f"expected 'timestamp value step', got {len(parts)} fields")
            ms = int(parts[0])
            value = float(parts[1])
            step = int(parts[2]) if len(parts) >= 3 else 0
            if step < 0:
                raise ValueError("negative step")
        except ValueError as e:
            problems.append(Problem(str(path), lineno, f"bad metric line: {e}"))
            continue
        ts = run_time(ms, "timestamp", str(path), problems, lineno) if ms else 0.0
        points.append((key, step, ts, value))
    return points


def _signature(run: Path) -> list[list[Any]]:
    sig = []
    for root, _, files in os.walk(run):
        if Path(root).name == "artifacts" or "artifacts" in Path(root).relative_to(run).parts:
            continue
        for f in sorted(files):
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            sig.append([os.path.join(root, f), st.st_size, st.st_mtime_ns])
    return sorted(sig)


class MLflowFileReader:
    """MLflow file store run directories (``mlruns/<experiment>/<run>/meta.yaml``)."""

    format = "mlflow"

    def detect(self, path: Path) -> bool:
        if path.name != META or not (path.parent / "metrics").is_dir():
            return False
        with open(path, "rb") as f:
            head = f.read(4096)
        return b"run_id:" in head or b"run_uuid:" in head

    def run_dir(self, path: Path) -> Path:
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        import yaml

        run = path.parent
        sig = {"files": _signature(run)}
        problems: list[Problem] = []
        if state == sig:
            return RowBuilder().result(sig)
        try:
            meta = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            problems.append(Problem(str(path), None, f"unreadable meta.yaml: {e}"))
            meta = {}
        if not isinstance(meta, dict):
            problems.append(Problem(str(path), None, "meta.yaml is not a mapping"))
            meta = {}
        tags = _read_tree(run / "tags")
        info = {
            "name": tags.get("mlflow.runName") or meta.get("run_name") or run.name,
            "run_id": meta.get("run_id") or meta.get("run_uuid") or run.name,
            "experiment_id": str(meta.get("experiment_id", run.parent.name)),
            "status": meta.get("status"),
            "start_time": run_time(_int(meta.get("start_time")), "start_time", str(path), problems),
            "end_time": run_time(_int(meta.get("end_time")), "end_time", str(path), problems),
            "params": _read_tree(run / "params"),
            "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")},
        }
        points: list[tuple] = []
        metrics_dir = run / "metrics"
        for root, dirs, files in os.walk(metrics_dir):
            dirs.sort()  # a stable order: names that map to one metric resolve the same way
            for f in sorted(files):
                p = Path(root) / f
                points.extend(parse_metric_file(p, p.relative_to(metrics_dir).as_posix(), problems))
        steps, metrics, events = build_rows(points, info, self.format)
        return ReadResult(steps, metrics, events, sig, problems, replace=True)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# ---- SQLite store ---------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)


class MLflowDBReader:
    """MLflow SQLite tracking store (``mlflow.db``): one tunescope run per MLflow run."""

    format = "mlflow"

    def detect(self, path: Path) -> bool:
        if path.name != DB_NAME:
            return False
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC

    def run_dir(self, path: Path) -> Path:
        return path.parent / path.name

    def parts(self, path: Path) -> list[tuple[str, Path]]:
        """(MLflow run id, tunescope run dir) of every run that is not deleted."""
        con = _connect(path)
        try:
            rows = con.execute(
                "SELECT run_uuid FROM runs WHERE coalesce(lifecycle_stage, '') <> 'deleted' "
                "ORDER BY start_time, run_uuid"
            ).fetchall()
        finally:
            con.close()
        return [(r[0], path.parent / path.name / r[0]) for r in rows]

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        return RowBuilder().result(
            state or {},
            [Problem(str(path), None, "an mlflow.db holds several runs; read each with read_part")],
        )

    def read_part(self, path: Path, part: str, state: dict[str, Any] | None) -> ReadResult:
        st = os.stat(path)
        sig = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if state == sig:
            return RowBuilder().result(sig)
        problems: list[Problem] = []
        con = _connect(path)
        try:
            run = con.execute(
                "SELECT name, status, start_time, end_time, experiment_id FROM runs "
                "WHERE run_uuid = ?",
                (part,),
            ).fetchone()
            if run is None:
                return RowBuilder().result(sig, [Problem(str(path), None, f"run {part} is gone")])
            params = dict(
                con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (part,)).fetchall()
            )
            tags = dict(
                con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (part,)).fetchall()
            )
            cols = {r[1] for r in con.execute("PRAGMA table_info(metrics)").fetchall()}
            nan_col = "is_nan" if "is_nan" in cols else "0"
            step_col = "step" if "step" in cols else "0"
            raw = con.execute(
                f"SELECT key, {step_col}, timestamp, value, {nan_col} FROM metrics "
                "WHERE run_uuid = ? ORDER BY timestamp, rowid",
                (part,),
            ).fetchall()
        finally:
            con.close()
        points = []
        where = str(path)
        for n, (key, step, ms, value, is_nan) in enumerate(raw, start=1):
            if not isinstance(key, str) or not isinstance(value, int | float) or value is None:
                problems.append(Problem(str(path), None, f"run {part} metric row {n}: bad value"))
                continue
            if is_nan:
                value = math.nan
            elif abs(value) >= FLOAT_MAX:
                value = math.copysign(math.inf, value)
            step = step if isinstance(step, int) and step >= 0 else 0
            ts = run_time(ms, f"run {part} metric row {n}: timestamp", where, problems)
            points.append((key, step, 0.0 if ms == 0 else ts, value))
        name, status, start, end, exp = run
        info = {
            "name": tags.get("mlflow.runName") or name or part,
            "run_id": part,
            "experiment_id": str(exp),
            "status": status,
            "start_time": run_time(start, f"run {part}: start_time", where, problems),
            "end_time": run_time(end, f"run {part}: end_time", where, problems),
            "params": params,
            "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")},
        }
        steps, metrics, events = build_rows(points, info, self.format)
        return ReadResult(steps, metrics, events, sig, problems, replace=True)
