"""Finding the items of a console log chunk: step dicts, Megatron iteration
and memory lines, step lines, and the markers (tracebacks, banners, return
codes) that end or start a run. Each item is ``(offset, kind, payload)``."""

from __future__ import annotations

import math
import re
from typing import Any

from tunescope.ingest.readers.console import lines, megatron, pydict
from tunescope.ingest.readers.foreign import as_int, parse_duration, parse_fraction

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
    (b"Watchdog caught collective operation timeout", "end", "failed"),
    (b"terminate called after throwing an instance of", "end", "failed"),
    (b"Fatal Python error", "end", "failed"),
    (b"No space left on device", "end", "failed"),
    (b"ChildFailedError", "end", "failed"),
    (b"Exited with exit code", "end", "failed"),
    (b"death signal, shutting down workers", "end", "interrupted"),
    (b"***** Running training *****", "banner", ""),
    (b"[before the start of training step]", "banner", ""),
)
_ERROR_LINE = re.compile(rb"(?m)^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b[^\n\r]{0,300})")
_RETURN_CODE = re.compile(rb"exits with return code = (-?\d+)")


def markers(data: bytes, lo: int, hi: int) -> list[tuple[int, str, Any]]:
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


def bar_step(data: bytes, lo: int, pos: int, total: int | None) -> tuple[int, int] | None:
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


def dict_items(data: bytes, keys: Any) -> list[tuple[int, str, Any]]:
    out: list[tuple[int, str, Any]] = []
    if b"{" not in data:
        return out
    for m in pydict.dicts(data):
        item = dict_item(m.group(), keys)
        if item is not None:
            out.append((m.start(), *item))
    return out


def dict_item(raw: bytes, keys: Any) -> tuple[str, Any] | None:
    """(kind, payload) of one printed dict: an evaluation, the run's summary,
    a training log; None for any other dict (a config)."""
    d = pydict.parse(raw)
    if not d:
        return None
    evals = {k: v for k, v in d.items() if k.startswith("eval_") and v is not None}
    if evals:
        metrics = {k: v for k, v in evals.items() if isinstance(v, float)}
        step = _dict_step(d, keys)[0]
        return ("eval", {"step": step, "metrics": metrics}) if metrics else None
    has_loss = keys.loss_key(d) is not None and keys.loss_key(d) != "train_loss"
    if not has_loss and any(k in d for k in _SUMMARY_KEYS):
        summary = {
            k: v
            for k, v in d.items()
            if isinstance(v, float) and k not in _DICT_SKIP and k != "epoch"
        }
        return "summary", summary
    if not (has_loss or any(k in d for k in _TRAIN_KEYS)):
        return None  # a config dict, not a log
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
    return "dict-train", item


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


def megatron_items(
    data: bytes, iterations: bool = True, spans: list[tuple[int, int]] | None = None
) -> list[tuple[int, str, Any]]:
    """Iteration, memory and validation lines as items; with ``spans`` (the
    lines left over by :func:`megatron.bulk`) memory lines are looked for in
    those only (a validation line's pattern may run on over lines, so it is
    looked for in all of ``data`` once one is seen)."""
    out: list[tuple[int, str, Any]] = []
    for m in megatron.ITERATION.finditer(data) if iterations else ():
        step, total, canon, extras = megatron.iteration(m)
        if not canon and not extras:
            continue
        item = {"step": step, "total": total, "canon": canon, "extras": extras, "from": "log"}
        out.append((m.start(), "train", item))
    parts = [(0, len(data))] if spans is None else spans
    for a, b in parts:
        if data.find(b"memory (MB)", a, b) >= 0:
            for m in megatron.MEMORY.finditer(data, a, b):
                out.append((m.start(), "mem", megatron.memory(m)))
    if any(data.find(b"validation loss at iteration", a, b) >= 0 for a, b in parts):
        for m in megatron.VALIDATION.finditer(data):
            step, metrics = megatron.validation(m)
            if metrics:
                out.append((m.start(), "eval", {"step": step, "metrics": metrics}))
    return out


def line_items(data: bytes) -> list[tuple[int, str, Any]]:
    out: list[tuple[int, str, Any]] = []
    for m in lines.STEP_LINE.finditer(data):
        step, total, canon, extras = lines.step_line(m)
        evals = {k: extras.pop(k) for k in [k for k in extras if k.startswith("eval_")]}
        item = {"step": step, "total": total, "canon": canon, "extras": extras, "from": "log"}
        out.append((m.start(), "train", item))
        if evals:  # "train loss 2.58, val loss 2.79": an evaluation at the same step
            out.append((m.start(), "eval", {"step": step, "metrics": evals}))
    if b"|Loss: " in data:
        for m in lines.TORCHTUNE_BAR.finditer(data):
            step, canon = lines.torchtune_bar(m)
            item = {"step": step, "total": None, "canon": canon, "extras": {}, "from": "log"}
            out.append((m.start(), "train", item))
    return out
