"""Finding the log files under a runs root, at any depth, and the reader for each."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunescope.ingest.hf_state import HFStateReader
from tunescope.ingest.llamafactory import LlamaFactoryReader
from tunescope.ingest.mlflow_store import MLflowDBReader, MLflowFileReader
from tunescope.ingest.native import NativeReader
from tunescope.ingest.rows import Problem, Reader
from tunescope.ingest.swift import SwiftReader
from tunescope.ingest.tensorboard import TensorBoardReader
from tunescope.ingest.wandb_offline import WandbOfflineReader

# The readers, in the order they are asked. A plain list: adding a format means
# writing a module with a reader object and adding it here.
READERS: list[Reader] = [
    NativeReader(),
    HFStateReader(),
    LlamaFactoryReader(),
    SwiftReader(),
    TensorBoardReader(),
    MLflowFileReader(),
    MLflowDBReader(),
    WandbOfflineReader(),
]

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


def run_id_for(root: Path, run_dir: Path) -> str:
    """The run directory relative to the root, with ``/`` separators; the root's
    own name when the root is itself a run."""
    try:
        rel = run_dir.resolve().relative_to(root.resolve())
    except ValueError:
        return run_dir.name
    text = rel.as_posix()
    return root.resolve().name if text in ("", ".") else text


def discover(
    root: Path,
    readers: list[Reader] | None = None,
    on_dir: Callable[[int], None] | None = None,
) -> tuple[list[Source], list[Problem]]:
    """Every file under ``root`` that some reader recognises.

    Unreadable directories are reported as problems, not raised.
    """
    readers = READERS if readers is None else readers
    sources: list[Source] = []
    problems: list[Problem] = []
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
            for reader in readers:
                try:
                    hit = reader.detect(path)
                except OSError:
                    hit = False
                if hit:
                    parts = getattr(reader, "parts", None)
                    if parts is None:
                        run_dir = reader.run_dir(path)
                        rid = run_id_for(root, run_dir)
                        sources.append(Source(path, run_dir, rid, reader, rel=rel))
                        break
                    # A file with several runs: one source per run, read with read_part.
                    try:
                        found = parts(path)
                    except Exception as e:
                        problems.append(Problem(str(path), None, f"cannot list runs: {e}"))
                        found = []
                    for part, run_dir in found:
                        rid = run_id_for(root, run_dir)
                        sources.append(Source(path, run_dir, rid, reader, part, rel))
                    break
        stack.extend(reversed(subdirs))
    # A run that writes tunescope's own logs is read from them alone: the
    # trainer_state.json or TensorBoard files beside them describe the same
    # steps, averaged and with less detail.
    native = {s.run_dir for s in sources if s.reader.format == "tunescope"}
    sources = [s for s in sources if s.reader.format == "tunescope" or s.run_dir not in native]
    return sources, problems
