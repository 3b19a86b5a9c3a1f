"""Reader for ms-swift's ``logging.jsonl`` (and Megatron-SWIFT's).

Each line is the Trainer's log dict plus ms-swift's fields:
``global_step/max_steps`` as "N/M" (older builds: ``global_step`` as a number;
Megatron-SWIFT: ``iteration`` as "N/M"), ``memory(GiB)`` (peak reserved
memory), ``train_speed(s/it)`` or, in older builds, ``train_speed(iter/s)``
(both averaged since the start), ``elapsed_time`` as "1m 30s" and
``percentage``. Evaluation lines carry ``eval_*`` fields. When training ends
one more line holds the whole ``log_history`` again: it marks completion and
adds no rows. Lines written twice (by two processes) are read once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunescope.ingest.live.tail import read_new_lines
from tunescope.ingest.readers.foreign import (
    Deltas,
    as_int,
    infer_logging_steps,
    is_eval_key,
    number,
    parse_duration,
    parse_fraction,
    split_fields,
)
from tunescope.ingest.readers.runconfig import side_config
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder, decoded_lines

NAME = "logging.jsonl"
STEP_KEYS = ("global_step/max_steps", "iteration", "global_step", "step")
_SKIP = (
    *STEP_KEYS,
    "percentage",
    "elapsed_time",
    "remaining_time",
    "consumed_samples",
)
_FINAL_KEYS = ("log_history", "last_model_checkpoint")
_RECENT = 16  # (kind, step) keys remembered to drop lines written twice
_SNIFF = (b'"global_step', b'"iteration"', b'"log_history"', b'"memory(GiB)"', b'"train_speed(')


def _is_summary(obj: dict[str, Any]) -> bool:
    """The Trainer's end-of-training log (not a training row with runtime fields)."""
    keys = ("train_loss", "train_steps_per_second", "train_samples_per_second")
    return "loss" not in obj and any(k in obj for k in keys)


def _step_of(obj: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    for key in STEP_KEYS:
        if key in obj:
            n, m = parse_fraction(obj[key])
            return key, n, m
    return None, None, None


class SwiftReader:
    """ms-swift ``logging.jsonl`` (Trainer and Megatron variants)."""

    format = "ms-swift"

    def detect(self, path: Path) -> bool:
        if path.name != NAME:
            return False
        with open(path, "rb") as f:
            head = f.read(4096)
        return any(s in head for s in _SNIFF)

    def run_dir(self, path: Path) -> Path:
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        chunk = read_new_lines(path, state)
        old = {} if (state is None or chunk.restarted) else state
        deltas = Deltas(old)
        recent: list[list[Any]] = [list(k) for k in old.get("recent", [])]
        started = bool(old.get("started"))
        ended = bool(old.get("ended"))
        total = old.get("total")
        variant = old.get("variant")
        first_steps: list[int] = list(old.get("first_steps", []))
        rows = RowBuilder()
        problems: list[Problem] = []
        for lineno, obj in decoded_lines(path, chunk, problems):
            if not isinstance(obj, dict):
                problems.append(
                    Problem(str(path), lineno, f"expected a JSON object, got {type(obj).__name__}")
                )
                continue
            if any(k in obj for k in _FINAL_KEYS):
                if not ended:
                    step = as_int(obj.get("global_step"))
                    rows.event(0, step, None, "run_end", _final_payload(obj), seq=lineno)
                    ended = True
                continue
            key, step, of = _step_of(obj)
            if step is None:
                what = f"{key} is not a step: {obj.get(key)!r}" if key else "no global_step field"
                problems.append(Problem(str(path), lineno, what))
                continue
            if variant is None:
                variant = "megatron" if key == "iteration" else "trainer"
            if of and not total:
                total = of
            evals = {k: v for k, v in obj.items() if is_eval_key(k)}
            kind = "eval" if evals else "final" if _is_summary(obj) else "train"
            ident = [kind, step]
            if ident in recent:
                continue  # the same line written again by another process
            recent = [*recent, ident][-_RECENT:]
            if kind == "eval":
                _, extras = split_fields(evals)
                for name, value in extras.items():
                    rows.metric(0, step, None, name, value, seq=lineno)
                rows.event(0, step, None, "eval", extras, seq=lineno)
                continue
            if kind == "final":
                ended = _final_row(rows, obj, step, lineno, ended)
                continue
            canon, extras = split_fields(obj, skip=_SKIP)
            elapsed = _elapsed(obj, step)
            if elapsed is not None:
                extras["elapsed_s"] = elapsed
                per_step = deltas.rate("elapsed", step, elapsed)
                if per_step is not None:
                    canon["step_time_s"] = per_step
            rows.step(0, step, None, canon, seq=lineno)
            for name, value in extras.items():
                rows.metric(0, step, None, name, value, seq=lineno)
            if not started:
                first_steps.append(step)

        if not started and (len(first_steps) >= 3 or (first_steps and ended)):
            payload = self._start(path, variant, total, first_steps)
            rows.event(0, None, None, "run_start", payload, seq=0)
            started = True
        new_state = {
            **chunk.state,
            "prev": deltas.dump(),
            "recent": recent,
            "started": started,
            "ended": ended,
            "total": total,
            "variant": variant,
            "first_steps": [] if started else first_steps[:32],
        }
        return rows.result(new_state, problems, replace=chunk.restarted)

    def _start(
        self, path: Path, variant: str | None, total: int | None, first_steps: list[int]
    ) -> dict[str, Any]:
        """The run's ``run_start`` payload."""
        payload: dict[str, Any] = {
            "format": self.format,
            "variant": variant,
            "source": str(path),
            "logging_steps": infer_logging_steps(first_steps),
            "per_rank": False,
            "loss_averaging": "mean over logging_steps optimizer steps and all ranks",
        }
        if total:
            payload["total_steps"] = total
        config = side_config(path.parent)
        if config:
            payload["config"] = config
        return payload


def _final_payload(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``run_end`` of the trainer's last line (best and last checkpoints)."""
    payload: dict[str, Any] = {"status": "completed"}
    for k in ("global_step", "best_model_checkpoint", "last_model_checkpoint"):
        if obj.get(k) is not None:
            payload[k] = obj[k]
    best = number(obj.get("best_metric"))
    if best is not None:
        payload["best_metric"] = best
    return payload


def _final_row(rows: RowBuilder, obj: dict[str, Any], step: int, seq: int, ended: bool) -> bool:
    """The training summary line: its figures as metrics, and the run's end
    unless it ended already; returns whether it has ended."""
    _, extras = split_fields(obj, skip=(*_SKIP, "epoch"))
    for name, value in extras.items():
        rows.metric(0, step, None, name, value, seq=seq)
    if not ended:
        rows.event(0, step, None, "run_end", {"status": "completed", **extras})
    return True


def _elapsed(obj: dict[str, Any], step: int) -> float | None:
    """Seconds since the start: the elapsed time, else from the speed."""
    elapsed = parse_duration(obj.get("elapsed_time"))
    if elapsed is not None:
        return elapsed
    speed = number(obj.get("train_speed(s/it)"))
    if speed is not None:
        return speed * step
    rate = number(obj.get("train_speed(iter/s)"))
    return step / rate if rate else None
