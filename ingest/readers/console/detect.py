"""Telling console output apart: which files look like saved console logs,
which family of step lines each holds (from its first MiB and last 64 KiB),
and why a file named like a log was not read."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tunescope.ingest.readers.console import lines, megatron

SUFFIXES = (".log", ".out", ".txt", ".err", ".stdout", ".stderr")
NAMES = ("nohup.out", "stdout", "stderr", "output", "console")
SNIFF_HEAD = 1 << 20  # metric lines usually start within the first MiB...
SNIFF_TAIL = 64 << 10  # ...else the end of the file shows them
# Structured logs of the same run: a console log beside one is not read again.
STRUCTURED = ("trainer_state.json", "trainer_log.jsonl", "logging.jsonl")

_DICT_HINT = re.compile(
    rb"\{['\"](?:loss|eval_[\w/]*|train_runtime|learning_rate|grad_norm|epoch)['\"]\s*:"
)
# A crash that ends a log, and the names that say the log is a training job's
_CRASH = re.compile(
    rb"Traceback \(most recent call last\)|ChildFailedError|CUDA out of memory"
    rb"|Watchdog caught collective operation timeout|CANCELLED AT"
)
_TRAINING = re.compile(
    rb"(?i)torchrun|torch\.distributed|deepspeed|accelerate launch|megatron|transformers"
    rb"|llamafactory|llama-factory|\bswift\b|\btrl\b|\bpeft\b|site-packages/torch/"
    rb"|\*\*\*\*\* Running training|\bjaxlib\b|\bflax\b|\boptax\b"
    # what a training script says while it sets up, whatever its library
    rb"|\bDDP\b|\bFSDP\b|DistributedDataParallel|number of (?:[\w-]+ )?parameters"
    rb"|\boptimi[sz]er\b|\blr[ _]scheduler\b|\bwarmup[ _]steps\b"
)
FAMILIES: tuple[tuple[str, re.Pattern[bytes]], ...] = (
    ("megatron", megatron.ITERATION),
    ("dicts", _DICT_HINT),
    ("lines", lines.STEP_LINE),
    ("lines", lines.TORCHTUNE_BAR),
)


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
                tail = head
                if kind == "text" and st.st_size > SNIFF_HEAD:
                    f.seek(max(SNIFF_HEAD, st.st_size - SNIFF_TAIL))
                    tail = f.read()
                    kind = family_of(tail) or "text"
                if kind == "text" and crashed_before_steps(head, tail[-SNIFF_TAIL:]):
                    kind = "crash"
    except OSError:
        kind = "text"
    if len(_SNIFFED) > 4096:
        _SNIFFED.clear()
    _SNIFFED[str(path)] = (sig, kind)
    return kind


def crashed_before_steps(head: bytes, tail: bytes) -> bool:
    """A training job's log that ends in a crash before any step line: a
    traceback or a launcher's error in its last 64 KiB, and a training
    library or launcher named in it (so any script's traceback is not a run)."""
    return _CRASH.search(tail) is not None and (
        _TRAINING.search(head) is not None or _TRAINING.search(tail) is not None
    )


def sniff(path: Path) -> str | None:
    """The step-line family of a file (``"crash"``: a training log that
    crashed before its first step line); None for binary files and files
    without step lines."""
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
