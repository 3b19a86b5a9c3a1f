"""The lines of LLaMA-Factory's ``trainer_log.jsonl`` interpreted: the
classic and v1 schemas told apart by the first usable row, each line a
training, evaluation or progress :class:`Row`. The reader
(:mod:`tunescope.ingest.readers.llamafactory`) reads them incrementally; the
``trainer_state.json`` reader (:mod:`tunescope.ingest.readers.hf_state`) joins
a whole log's training rows by step (:func:`load_log`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunescope.ingest.readers.foreign import (
    Deltas,
    LineError,
    as_int,
    cached_parse,
    is_eval_key,
    loads,
    number,
    parse_duration,
    split_fields,
)

NAME = "trainer_log.jsonl"
_TRAIN_MARKERS = ("loss", "grad_norm", "lr", "learning_rate", "reward")
_SKIP = (
    "current_steps",
    "total_steps",
    "step",
    "percentage",
    "elapsed_time",
    "remaining_time",
    "total_tokens",
)


class Row:
    """One line, interpreted."""

    __slots__ = ("canon", "extras", "kind", "step", "total")

    def __init__(self, kind: str, step: int, total: int | None, canon=None, extras=None) -> None:
        self.kind = kind  # "train" | "eval" | "progress"
        self.step = step
        self.total = total
        self.canon = canon or {}
        self.extras = extras or {}


class Parser:
    """Line interpretation with the little state that crosses lines: the
    schema, and the previous cumulative counters for per-step rates."""

    def __init__(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.schema: str | None = state.get("schema")
        self.deltas = Deltas(state)

    def dump(self) -> dict[str, Any]:
        return {"schema": self.schema, "prev": self.deltas.dump()}

    def row(self, obj: Any) -> Row:
        if not isinstance(obj, dict):
            raise LineError(f"expected a JSON object, got {type(obj).__name__}")
        if self.schema is None:
            if "current_steps" in obj:
                self.schema = "classic"
            elif "step" in obj:
                self.schema = "v1"
            else:
                raise LineError("no current_steps or step field")
        key = "current_steps" if self.schema == "classic" else "step"
        step = as_int(obj.get(key))
        if step is None:
            raise LineError(f"{key} is not a step number: {obj.get(key)!r}")
        total = as_int(obj.get("total_steps"))
        # 2023 builds write "eval_loss": null, "predict_loss": null and
        # "reward": null on every row: a null is no value.
        evals = {k: v for k, v in obj.items() if is_eval_key(k) and v is not None}
        if evals:
            _, extras = split_fields(evals)
            return Row("eval", step, total, extras=extras)
        if not any(obj.get(k) is not None for k in _TRAIN_MARKERS):
            return Row("progress", step, total)
        canon, extras = split_fields(obj, skip=_SKIP)
        elapsed = parse_duration(obj.get("elapsed_time"))
        if elapsed is not None:
            extras["elapsed_s"] = elapsed
            per_step = self.deltas.rate("elapsed", step, elapsed)
            if per_step is not None:
                canon["step_time_s"] = per_step
        seen = number(obj.get("total_tokens"))
        if seen is not None:
            extras["total_tokens"] = seen
            tokens = self.deltas.rate("tokens", step, seen) if seen > 0 else None
            if tokens is not None:
                canon["tokens"] = tokens
        return Row("train", step, total, canon, extras)


_CACHE: dict[str, tuple[tuple[int, int], dict[int, tuple[dict, dict]]]] = {}


def load_log(path: Path) -> dict[int, tuple[dict[str, float], dict[str, float]]]:
    """Training rows of a whole log by step, (canonical, extras), as the
    incremental reader derives them; cached by size and modification time."""
    out = cached_parse(_CACHE, path, _parse_log)
    return {} if out is None else out


def _parse_log(data: bytes) -> dict[int, tuple[dict[str, float], dict[str, float]]]:
    parser = Parser(None)
    out: dict[int, tuple[dict, dict]] = {}
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            row = parser.row(loads(raw))
        except LineError:
            continue
        if row.kind == "train":
            out[row.step] = (row.canon, row.extras)
    return out
