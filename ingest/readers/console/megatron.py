"""Megatron-LM, Megatron-DeepSpeed and NeMo console lines.

An iteration line::

     iteration      120/  500000 | consumed samples: 3840 | elapsed time per iteration (ms): 612.3 |
     learning rate: 4.687E-06 | global batch size: 32 | lm loss: 3.010825E+00 | loss scale: 1.0 |
     grad norm: 2.948 | number of skipped iterations: 0 | number of nan iterations: 0 |

a per-rank memory line::

    [Rank 3] (after 10 iterations) memory (MB) | allocated: 7024.9 | max allocated: 17050.5 |
    reserved: 17548.0 | max reserved: 17548.0

and a validation line::

    validation loss at iteration 200 | lm loss value: 2.91E+00 | lm loss PPL: 1.84E+01 |

Fields map onto the canonical columns (``lm loss`` -> loss, ``learning rate``
-> lr, ``grad norm`` -> grad_norm, ``elapsed time per iteration (ms)`` ->
step_time_s, memory -> mem_*_mb); the rest become metrics with the names in
:data:`EXTRA_NAMES` (other fields: lower case, spaces as underscores).
"""

from __future__ import annotations

import re
from typing import Any

ITERATION = re.compile(rb"iteration\s+(\d+)\s*/\s*(\d+)\s*\|([^\n\r]*)")
MEMORY = re.compile(rb"\[Rank (\d+)\]\s*\(after (\d+) iterations?\)\s*memory \(MB\)\s*\|([^\n\r]*)")
VALIDATION = re.compile(rb"validation loss at iteration (\d+)\s*(?:on [^|]*)?\|([^\n\r]*)")
_FIELD = re.compile(rb"\s*([^|:]+?)\s*:\s*([^|]+?)\s*(?:\||$)")

# Megatron field -> (canonical column, scale)
CANONICAL: dict[str, tuple[str, float]] = {
    "lm loss": ("loss", 1.0),
    "loss": ("loss", 1.0),
    "reduced_train_loss": ("loss", 1.0),
    "learning rate": ("lr", 1.0),
    "lr": ("lr", 1.0),
    "grad norm": ("grad_norm", 1.0),
    "elapsed time per iteration (ms)": ("step_time_s", 0.001),
    "train_step_timing in s": ("step_time_s", 1.0),
}
# Megatron field -> metric name, for the fields the detectors read.
EXTRA_NAMES: dict[str, str] = {
    "number of skipped iterations": "skipped_iterations",
    "number of nan iterations": "nan_iterations",
    "loss scale": "loss_scale",
    "consumed samples": "consumed_samples",
    "consumed tokens": "consumed_tokens",
    "global batch size": "global_batch_size",
    "num zeros": "num_zeros",
    "params norm": "params_norm",
    "tokens per gpu per second (tgs)": "tokens_per_gpu_s",
}
MEMORY_FIELDS: dict[str, str] = {
    "allocated": "mem_allocated_mb",
    "max allocated": "mem_peak_mb",
    "reserved": "mem_reserved_mb",
}


def _name(key: str) -> str:
    return EXTRA_NAMES.get(key) or re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")


def _value(raw: bytes) -> float | None:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return float(raw.split()[0]) if raw.strip() else None
    except ValueError:
        return None


_KEYS: dict[bytes, tuple[str, str | None, float]] = {}


def _key(raw: bytes) -> tuple[str, str | None, float]:
    """(field name, canonical column or None, scale) of a raw field name (cached)."""
    got = _KEYS.get(raw)
    if got is None:
        key = raw.decode("utf-8", "replace").strip().lower()
        # Megatron-DeepSpeed spells the fields with hyphens ("lm-loss")
        target = CANONICAL.get(key) or CANONICAL.get(key.replace("-", " "))
        got = (key, target[0], target[1]) if target else (_name(key), None, 1.0)
        if len(_KEYS) < 1024:
            _KEYS[raw] = got
    return got


def fields(rest: bytes) -> dict[str, float]:
    """``{field: value}`` of the ``| key: value |`` part of a line (numeric values only)."""
    out: dict[str, float] = {}
    for k, v in _FIELD.findall(rest):
        value = _value(v)
        if value is not None:
            out[k.decode("utf-8", "replace").strip().lower()] = value
    return out


def iteration(m: re.Match[bytes]) -> tuple[int, int, dict[str, float], dict[str, float]]:
    """(iteration, total, canonical metrics, other metrics) of an ITERATION match."""
    canon: dict[str, float] = {}
    extras: dict[str, float] = {}
    for k, v in _FIELD.findall(m.group(3)):
        value = _value(v)
        if value is None:
            continue
        name, column, scale = _key(k)
        if column is not None:
            if column not in canon:
                canon[column] = value * scale if scale != 1.0 else value
        else:
            extras[name] = value
    return int(m.group(1)), int(m.group(2)), canon, extras


def memory(m: re.Match[bytes]) -> tuple[int, int, dict[str, float], dict[str, float]]:
    """(rank, iteration, canonical memory metrics, other memory metrics) of a MEMORY match."""
    canon: dict[str, float] = {}
    extras: dict[str, float] = {}
    for key, value in fields(m.group(3)).items():
        if key in MEMORY_FIELDS:
            canon[MEMORY_FIELDS[key]] = value
        else:
            extras["mem_" + _name(key) + "_mb"] = value
    return int(m.group(1)), int(m.group(2)), canon, extras


def validation(m: re.Match[bytes]) -> tuple[int, dict[str, Any]]:
    """(iteration, eval metrics) of a VALIDATION match: ``lm loss value`` ->
    ``eval_lm_loss``, ``lm loss PPL`` -> ``eval_lm_loss_ppl``."""
    out: dict[str, Any] = {}
    for key, value in fields(m.group(2)).items():
        name = _name(key.removesuffix(" value"))
        out["eval_" + name] = value
    return int(m.group(1)), out


class Bulk:
    """Every iteration line of a chunk at once, when they all share one layout
    (the usual case): columns as numpy arrays, parsed without a Python step
    per line."""

    def __init__(
        self,
        pos,
        steps,
        total: int,
        canon: dict,
        extras: dict,
        other: list[tuple[int, int]] | None = None,
        source: str = "log",
    ) -> None:
        self.pos = pos  # byte offset of each line in the chunk
        self.steps = steps
        self.total = total
        self.canon = canon  # column -> values
        self.extras = extras  # metric name -> values
        # [start, end) of the chunk's other lines (None: not known, look everywhere)
        self.other = other
        self.source = source  # where the steps come from: "log", "progress bar"
        self.epoch: float | None = None  # the last row's epoch counter (the general reader's)


def bulk(data: bytes) -> Bulk | None:
    """The iteration lines of ``data`` as columns, or None when one of them
    is not laid out like the first (its fields, in its order, with numbers;
    the caller then reads them one by one). No Python step per line: see
    :mod:`..text_columns`."""
    import numpy as np

    from tunescope.ingest.readers.text_columns import Layout, Slot

    first = ITERATION.search(data)
    if first is None:
        return None
    start = data.rfind(b"\n", 0, first.start()) + 1
    line = data[start : data.find(b"\n", first.end())]
    prefix = first.start() - start
    if b"\r" in line or b"iteration" in line[:prefix]:
        return None
    rest = first.start(3) - start
    fields = list(_FIELD.finditer(first.group(3)))
    if not fields:
        return None
    slots = [
        Slot(first.start(1) - start, first.end(1) - start, count=True, spaced=True),
        Slot(first.start(2) - start, first.end(2) - start, count=True),
    ]
    slots += [Slot(rest + f.start(2), rest + f.end(2)) for f in fields]
    got = Layout(line, slots, b":/", free=prefix, trim=True).read(data)
    if got is None or not len(got.starts):
        return None
    # an iteration line left out (another layout, a value that is not a
    # number) would come after the columns: read them all one by one
    for a, b in got.other:
        if b"iteration" in data[a:b] and ITERATION.search(data, a, b):
            return None
    canon: dict[str, object] = {}
    extras: dict[str, object] = {}
    for f, col in zip(fields, got.values[2:], strict=True):
        name, column, scale = _key(f.group(1))
        if column is not None:
            canon.setdefault(column, col * scale if scale != 1.0 else col)
        else:
            extras[name] = col
    steps, totals = got.values[0], got.values[1]
    pos = np.asarray(got.starts, np.int64) + prefix
    # a memory line's pattern could take in an iteration line only if the
    # template held its words: then look for memory lines everywhere
    other = None if b"memory" in line or b"[Rank" in line else got.other
    return Bulk(pos, steps, int(totals[-1]), canon, extras, other)
