"""``StepRecorder``: a framework's ``{name: value}`` metrics in, this rank's
schema-v1 events out (``RUN_DIR/events/rank-N.jsonl``, through
:class:`~tunescope.train.events.EventWriter`). The loggers for accelerate,
Lightning and torchtune are thin adapters over it.

What it does with each logged dict:

- Names go through the one vocabulary (:func:`tunescope.ingest.readers.vocabulary.meaning`):
  a name it knows for sure (``train_loss``, ``learning_rate``, ``lr-AdamW``,
  ``grad_norm``, ``epoch``, ``it/s``...) fills the canonical field (``loss``,
  ``lr``, ``grad_norm``...) in the field's unit; an evaluation's name
  (``val_loss``, ``eval/accuracy``) goes to an ``eval`` event as
  ``eval_loss``, ``eval_accuracy``; anything else is kept under its own name
  (an extra metric). ``names`` (per adapter, then per user) overrides the
  vocabulary: ``{"my_loss": "loss", "peak_gib": ("mem_peak_mb", 1024)}``.
- Values may be numbers, booleans, numpy scalars or one-element tensors; a
  NaN or an Inf is written as it is (it is the signal). Text is skipped.
- Everything logged for one step becomes one ``step`` event: a framework
  that logs a step in several calls (Lightning's learning-rate monitor, then
  the training metrics) would otherwise write the step twice, and the newest
  write of a step wins in the store. A step is written when a later step is
  logged (an evaluation alone does not close it), and at :meth:`finish` (or at exit, as ``interrupted`` or
  ``failed``, when the loop never called it).
- Measured here, when the framework did not log them: ``step_time_s`` (from
  the first value logged for the previous step to the first for this one:
  the loop's period) and memory (CUDA allocated and reserved on the current
  device; else the process RSS as ``mem_allocated_mb``, as the callback
  writes on CPU). No CUDA peak: resetting the peak counters would change what
  the user's own code measures.
- ``run_start`` (the configuration, world size, host and the fields the
  adapter and the user give) is written before the first step, or when the
  configuration arrives.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from tunescope.eventlog import as_number
from tunescope.ingest.readers.vocabulary import HIGH, meaning
from tunescope.schema import METRIC_NAMES
from tunescope.train.events import EventWriter

_MB = 1024 * 1024

Name = str | tuple[str, float]  # a canonical field, or (field, scale to its unit)


def scalar(value: Any) -> float | None:
    """A logged value as a float: numbers, booleans, numpy scalars and
    one-element tensors; None for text and anything else."""
    x = as_number(value)
    if x is not None:
        return x
    item = getattr(value, "item", None)
    if callable(item):
        numel = getattr(value, "numel", None)
        size = numel() if callable(numel) else getattr(value, "size", 1)
        if size == 1:
            try:
                return as_number(item())
            except (TypeError, ValueError, RuntimeError):
                return None
    return None


def plain_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration as JSON-friendly values: nested mappings kept, lists
    of plain values kept, anything else as its text."""
    out: dict[str, Any] = {}
    for key, v in values.items():
        if isinstance(v, Mapping):
            out[str(key)] = plain_config(v)
        elif v is None or isinstance(v, str | int | float | bool):
            out[str(key)] = v
        elif isinstance(v, list | tuple) and all(
            x is None or isinstance(x, str | int | float | bool) for x in v
        ):
            out[str(key)] = list(v)
        else:
            out[str(key)] = str(v)
    return out


class StepRecorder:
    """This rank's event log, fed by a framework's metric dicts.

    Args:
        run_dir: the run directory (events go to ``run_dir/events/rank-N.jsonl``).
        run: run name in each event (default: the directory name).
        rank: global rank of this process.
        names: metric name -> canonical field (or ``(field, scale)``), before
            the vocabulary.
        run_start: fields for ``run_start`` (``model``, ``total_steps``,
            ``world_size``, ``per_rank``...).
        upload_to: a URL the run's files are shipped to (see ``EventWriter``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        run: str | None = None,
        *,
        rank: int = 0,
        names: Mapping[str, Name] | None = None,
        run_start: Mapping[str, Any] | None = None,
        upload_to: str | None = None,
    ) -> None:
        self.writer = EventWriter(run_dir, run, rank=rank, upload_to=upload_to)
        self.rank = rank
        self.names: dict[str, tuple[str, float]] = {
            k: (v, 1.0) if isinstance(v, str) else (v[0], float(v[1]))
            for k, v in (names or {}).items()
        }
        self.start_fields: dict[str, Any] = {"per_rank": True, "logging_steps": 1}
        self.start_fields.update(run_start or {})
        self.started = False
        self.ended = False
        self.last_step = 0  # the latest step written or pending
        self._step: int | None = None  # the step being gathered
        self._values: dict[str, float] = {}
        self._opened: float | None = None  # perf_counter when the gathered step began
        self._ts = 0.0  # wall time of the gathered step's latest value
        self._proc: Any = None
        atexit.register(self._atexit)

    # ---- what adapters call ------------------------------------------------

    def config(self, values: Mapping[str, Any]) -> None:
        """The run's configuration: written in ``run_start`` (when it comes
        after the first step, it is too late for that and is dropped)."""
        if self.started:
            return
        self.start_fields["config"] = plain_config(values)
        self._start()

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Metrics for ``step`` (default: one step after the latest)."""
        if self.ended:
            return
        fields, evals = self._split(values)
        if step is None:
            step = self.last_step + (1 if fields else 0)
        step = int(step)
        if evals:
            self._start()
            self.writer.eval(step, **evals)
        if not fields:
            return  # an evaluation alone leaves the step being gathered open
        if step != self._step:
            self.flush()
            self._begin(step)
        self._ts = time.time()
        for k, v in fields.items():
            self._values[k] = v  # a later call for the same step wins

    def flush(self) -> None:
        """Write the step being gathered (if any) as one ``step`` event."""
        if self._step is None:
            return
        step, values = self._step, self._values
        self._step, self._values = None, {}
        if not any(k not in _MEASURED for k in values):
            return  # nothing the framework logged: only what was measured here
        self._start()
        self.writer.step(step=step, ts=self._ts, **values)

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """Write the last step, ``run_end`` and close the log (once)."""
        if self.ended:
            return
        self.flush()
        self._start()
        self.ended = True
        atexit.unregister(self._atexit)
        self.writer.run_end(status, error)
        self.writer.close()

    # ---- inside ------------------------------------------------------------

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self.writer.run_start(**self.start_fields)

    def _begin(self, step: int) -> None:
        now = time.perf_counter()
        values: dict[str, float] = {}
        if self._opened is not None:
            values["step_time_s"] = now - self._opened
        values.update(self._memory())
        self._step, self._values, self._opened = step, values, now
        self.last_step = max(self.last_step, step)

    def _memory(self) -> dict[str, float]:
        torch = sys.modules.get("torch")  # imported by the framework when it uses CUDA
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_available() and cuda.is_initialized():
            dev = cuda.current_device()
            return {
                "mem_allocated_mb": cuda.memory_allocated(dev) / _MB,
                "mem_reserved_mb": cuda.memory_reserved(dev) / _MB,
            }
        if self._proc is None:
            import psutil

            self._proc = psutil.Process()
        return {"mem_allocated_mb": self._proc.memory_info().rss / _MB}

    def _split(self, values: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        """The step's fields (canonical, or extras under their own names) and
        the evaluation's, from one logged dict."""
        fields: dict[str, float] = {}
        evals: dict[str, float] = {}
        taken: set[str] = set()
        # exact canonical names first, so that an alias never takes their place
        ordered = sorted(values.items(), key=lambda kv: kv[0] not in METRIC_NAMES)
        for name, raw in ordered:
            x = scalar(raw)
            if x is None:
                continue
            target = self._target(name, x)
            if target is None:
                continue
            kind, column, value = target
            if kind == "eval":
                evals[column] = value
            elif column in METRIC_NAMES and column in taken:
                fields[name] = x  # a second name for a field already given
            else:
                if column in METRIC_NAMES:
                    taken.add(column)
                fields[column] = value
        return fields, evals

    def _target(self, name: str, x: float) -> tuple[str, str, float] | None:
        """(``step`` or ``eval``, the field, the value in its unit); None for a
        step counter."""
        given = self.names.get(name)
        if given is not None:
            column, scale = given
            return "step", column, x * scale
        m = meaning(name)
        if m.kind == "step":
            return None
        if m.kind == "eval":
            return "eval", m.column, x
        if m.confidence < HIGH:
            return "step", name, x
        if m.scale == -1.0:  # a rate per second: its inverse
            return "step", m.column, (1.0 / x if x else math.inf)
        return "step", m.column, x * m.scale

    def _atexit(self) -> None:
        if self.ended:
            return
        err = getattr(sys, "last_value", None)
        if err is not None and not isinstance(err, KeyboardInterrupt):
            self.finish("failed", f"{type(err).__name__}: {err}")
        else:
            self.finish("interrupted")


# fields the recorder measures itself: a step with only these was not logged
_MEASURED = frozenset({"step_time_s", "mem_allocated_mb", "mem_reserved_mb"})
