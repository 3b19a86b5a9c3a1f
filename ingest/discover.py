"""Finding the log files under a runs root, at any depth, and the reader for each."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunescope.ingest.readers.console.reader import ConsoleReader
from tunescope.ingest.readers.csvlog import CSVReader
from tunescope.ingest.readers.general import GeneralReader
from tunescope.ingest.readers.hf_state import HFStateReader
from tunescope.ingest.readers.llamafactory import LlamaFactoryReader
from tunescope.ingest.readers.mlflow_store import MLflowDBReader, MLflowFileReader
from tunescope.ingest.readers.native.reader import NativeReader
from tunescope.ingest.readers.records import RecordsReader
from tunescope.ingest.readers.swift import SwiftReader
from tunescope.ingest.readers.telemetry import TelemetryReader
from tunescope.ingest.readers.tensorboard import TensorBoardReader
from tunescope.ingest.readers.wandb_offline import WandbOfflineReader
from tunescope.ingest.rows import Problem, Reader

# The readers of training logs, in the order they are asked. A plain list:
# adding a format means writing a module with a reader object and adding it here.
LOG_READERS: list[Reader] = [
    NativeReader(),
    HFStateReader(),
    LlamaFactoryReader(),
    SwiftReader(),
    TensorBoardReader(),
    MLflowFileReader(),
    MLflowDBReader(),
    WandbOfflineReader(),
    ConsoleReader(),
    CSVReader(),
    RecordsReader(),
    GeneralReader(),  # any file with a loss in it that no reader above claimed
]
# Every reader discovery asks: the log readers, then GPU telemetry, which joins
# the run whose log (as one of the log readers claims it) sits beside it.
READERS: list[Reader] = [*LOG_READERS, TelemetryReader(LOG_READERS)]

# Directories never descended into.
SKIP_DIRS = frozenset({".tunescope", ".git", "__pycache__", "node_modules", ".venv"})


@dataclass(frozen=True)
class Source:
    """One log file, the run it belongs to, and the reader that reads it."""

    path: Path
    run_dir: Path
    run_id: str
    reader: Reader
    part: str | None = None  # one run inside a file that holds several (mlflow.db)
    rel: str = ""  # the path relative to the runs root

    @property
    def key(self) -> str:
        """Identity in the cache: the same however the runs root is spelled."""
        base = self.rel or str(self.path)
        return base if self.part is None else f"{base}#{self.part}"


def run_id_for(root: Path, run_dir: Path, resolved_root: Path | None = None) -> str:
    """The run directory relative to the root, with ``/`` separators; the root's
    own name when the root is itself a run. ``resolved_root``: ``root.resolve()``,
    when the caller has it (resolving costs a system call per path part)."""
    base = resolved_root or root.resolve()
    try:
        rel = run_dir.resolve().relative_to(base)
    except ValueError:
        return run_dir.name
    text = rel.as_posix()
    return base.name if text in ("", ".") else text


def unclaimed_hint(path: Path) -> str | None:
    """Why no reader took a file that looks like a log (None: it does not look like one)."""
    from tunescope.ingest.readers import telemetry
    from tunescope.ingest.readers.console import detect

    if telemetry.is_telemetry(path):
        return telemetry.TELEMETRY_ALONE
    got = detect.hint(path)
    if got is not None:
        return got
    name = path.name.lower()
    if name.endswith(".csv"):
        return (
            "a CSV without a step column and a loss column, or of one row "
            "([tool.tunescope.ingest] names the columns)"
        )
    if name.endswith(".json"):
        from tunescope.ingest.readers.records import json_trouble

        trouble = json_trouble(path)
        if trouble is not None:
            return trouble
    if name.endswith((".jsonl", ".json")):
        return "no records with a step key and a loss key ([tool.tunescope.ingest] names them)"
    return None


def _holds_records(path: Path) -> bool:
    """A file in which the general reader found records of names and numbers
    (a run's file that was not read, and says why under ``--verbose``)."""
    from tunescope.ingest.readers.general_shape import shape_of

    shape = shape_of(path)
    return shape.kind != "none" and shape.records > 0


def discover(
    root: Path,
    readers: list[Reader] | None = None,
    on_dir: Callable[[int], None] | None = None,
    unclaimed: list[tuple[Path, str | None]] | None = None,
) -> tuple[list[Source], list[Problem]]:
    """Every file under ``root`` that some reader recognises.

    Unreadable directories are reported as problems, not raised; so is a
    binary file named like a log (one line, after reading its first 4 KiB).
    Files no reader takes go to ``unclaimed`` when given, with a hint.
    """
    readers = READERS if readers is None else readers
    sources: list[Source] = []
    problems: list[Problem] = []
    resolved = root.resolve()
    ids: dict[Path, str] = {}  # run dir -> run id, once per directory

    def rid_of(run_dir: Path) -> str:
        if run_dir not in ids:
            ids[run_dir] = run_id_for(root, run_dir, resolved)
        return ids[run_dir]

    stack = [root]
    seen_dirs = 0
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            problems.append(Problem(str(d), None, f"cannot read directory: {e.strerror or e}"))
            continue
        seen_dirs += 1
        if on_dir is not None:
            on_dir(seen_dirs)
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIP_DIRS:
                        subdirs.append(Path(entry.path))
                    continue
                if not entry.is_file():
                    continue
            except OSError:
                continue
            path = Path(entry.path)
            rel = Path(os.path.relpath(path, root)).as_posix()
            claimed = False
            for reader in readers:
                try:
                    hit = reader.detect(path)
                except OSError:
                    hit = False
                if hit:
                    claimed = True
                    parts = getattr(reader, "parts", None)
                    if parts is None:
                        run_dir = reader.run_dir(path)
                        rid = rid_of(run_dir)
                        sources.append(Source(path, run_dir, rid, reader, rel=rel))
                        break
                    # A file with several runs: one source per run, read with read_part.
                    try:
                        found = parts(path)
                    except Exception as e:
                        problems.append(Problem(str(path), None, f"cannot list runs: {e}"))
                        found = []
                    for part, run_dir in found:
                        rid = rid_of(run_dir)
                        sources.append(Source(path, run_dir, rid, reader, part, rel))
                    break
            if not claimed:
                why = unclaimed_hint(path)
                if why is not None and why.startswith("binary"):
                    problems.append(Problem(str(path), None, f"{why}; skipped"))
                if unclaimed is not None:
                    unclaimed.append((path, why))
        stack.extend(reversed(subdirs))
    # A run that writes tunescope's own logs is read from them alone: the
    # trainer_state.json or TensorBoard files beside them describe the same
    # steps, averaged and with less detail.
    native = {s.run_dir for s in sources if s.reader.format == "tunescope"}
    sources = [s for s in sources if s.reader.format == "tunescope" or s.run_dir not in native]
    if unclaimed:
        # Files inside a run that was read (checkpoint copies, MLflow's
        # per-metric files) are parts of it: listed only when they look like
        # a log of their own, or hold records the general reader refused.
        run_dirs = {s.run_dir for s in sources}
        unclaimed[:] = [
            (p, why)
            for p, why in unclaimed
            if (why is not None and not why.startswith("no records"))
            or not any(d in run_dirs for d in p.parents)
            or _holds_records(p)
        ]
    return sources, problems
