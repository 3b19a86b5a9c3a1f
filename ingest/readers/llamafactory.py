"""Reader for LLaMA-Factory's ``trainer_log.jsonl``.

Two schemas, told apart per file by the first usable row:

- classic (the default trainer): ``current_steps``, ``total_steps``, ``loss``,
  ``lr`` or ``learning_rate``, ``epoch``, ``percentage``, ``elapsed_time``
  ("H:MM:SS" or "N days, H:MM:SS"), ``remaining_time``, ``throughput``,
  ``total_tokens``, ``eval_*`` rows, and rows with progress only (evaluation
  progress, and the final summary written when training ends);
- v1 (``USE_V1=1``): ``step``, ``loss``, ``grad_norm``, ``learning_rate``,
  ``epoch``, ``total_steps`` plus preference-optimisation metrics.

The classic log has no gradient norm; the run's ``trainer_state.json`` (the
output dir's, or its longest checkpoint copy) has it, and is joined by step.
Both files then belong to one run: the step rows are the same whichever file
is read last (see :mod:`tunescope.ingest.readers.hf_state`), and the events come from
this reader only. The log grows while training: only new lines are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunescope.ingest.live.tail import read_new_lines
from tunescope.ingest.readers import hf_state
from tunescope.ingest.readers.foreign import infer_logging_steps, no_loss_problem
from tunescope.ingest.readers.llamafactory_log import NAME, Parser
from tunescope.ingest.readers.runconfig import side_config
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder, decoded_lines


def hf_train_rows(run_dir: Path) -> tuple[Path | None, hf_state.State | None, dict[int, Any]]:
    """The run's longest ``trainer_state.json`` and its training rows by step."""
    path = hf_state.primary(run_dir)
    if path is None:
        return None, None, {}
    parsed = hf_state.load_state(path)
    if parsed is None:
        return path, None, {}
    entries, _ = hf_state.classify(path, parsed)
    return path, parsed, {e.step: e for e in entries if e.kind == "train"}


class LlamaFactoryReader:
    """LLaMA-Factory ``trainer_log.jsonl`` (classic and v1 schemas)."""

    format = "llamafactory"

    def detect(self, path: Path) -> bool:
        return path.name == NAME

    def run_dir(self, path: Path) -> Path:
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        chunk = read_new_lines(path, state)
        old = {} if (state is None or chunk.restarted) else state
        parser = Parser(old)
        started = bool(old.get("started"))
        ended = bool(old.get("ended"))
        train_total = old.get("train_total")
        last_train = old.get("last_train")
        first_steps: list[int] = list(old.get("first_steps", []))

        hf_path, hf_parsed, hf_rows = hf_train_rows(path.parent)
        rows = RowBuilder()
        problems: list[Problem] = []
        new_train: list[int] = []
        seen = int(old.get("seen", 0))
        with_loss = int(old.get("with_loss", 0))
        for lineno, row in decoded_lines(path, chunk, problems, parser.row):
            seen += 1
            if row.kind == "train" and "loss" in row.canon:
                with_loss += 1
            if row.kind == "train":
                if train_total is None and row.total:
                    train_total = row.total
                _train_row(rows, row, hf_rows.get(row.step), lineno)
                last_train = row.step
                new_train.append(row.step)
            elif row.kind == "eval":
                for name, value in row.extras.items():
                    rows.metric(0, row.step, None, name, value, seq=lineno)
                rows.event(0, row.step, None, "eval", row.extras, seq=lineno)
            elif (
                not ended
                and last_train is not None
                and train_total is not None
                and row.total == train_total
                and row.step >= last_train
            ):
                # The summary logged when training ends carries no loss.
                rows.event(0, row.step, None, "run_end", {"status": "completed"}, seq=lineno)
                ended = True

        if not started:
            first_steps = (first_steps + new_train)[:32]
            ls = _logging_steps(hf_parsed, first_steps, ended)
            if ls is not None:
                payload: dict[str, Any] = {
                    "format": self.format,
                    "schema": parser.schema,
                    "source": str(path),
                    "logging_steps": ls,
                    "per_rank": False,
                    "loss_averaging": "mean over logging_steps optimizer steps and all ranks",
                }
                if train_total:
                    payload["total_steps"] = train_total
                if hf_path is not None:
                    payload["joined_with"] = str(hf_path)
                config = side_config(path.parent)
                if config:
                    payload["config"] = config
                rows.event(0, None, None, "run_start", payload, seq=0)
                started = True
        warned = bool(old.get("warned"))
        if seen and not with_loss and not warned:
            problems.append(no_loss_problem(path, seen))
            warned = True
        new_state = {
            **chunk.state,
            **parser.dump(),
            "seen": seen,
            "with_loss": with_loss,
            "warned": warned,
            "started": started,
            "ended": ended,
            "train_total": train_total,
            "last_train": last_train,
            "first_steps": first_steps if not started else [],
        }
        return rows.result(new_state, problems, replace=chunk.restarted)


def _train_row(rows: RowBuilder, row: Any, hf: Any, seq: int) -> None:
    """One training line's rows, joined with the same step of the HF
    ``trainer_state.json`` beside it (when there is one) for what it lacks."""
    canon = {**hf.canon, **row.canon} if hf else row.canon
    extras = {**hf.extras, **row.extras} if hf else row.extras
    rows.step(0, row.step, None, canon, seq=seq)
    for name, value in extras.items():
        rows.metric(0, row.step, None, name, value, seq=seq)


def _logging_steps(hf_parsed: Any, first_steps: list[int], ended: bool) -> int | None:
    """The logging interval: from the HF state beside the log, else inferred
    from the first steps once there are enough of them (or the run ended)."""
    ls = None
    if hf_parsed is not None:
        ls = hf_state.logging_steps_from_hf(
            hf_parsed.top.get("logging_steps"), hf_parsed.top.get("max_steps")
        )
    if ls is None and (len(first_steps) >= 2 or (first_steps and ended)):
        ls = infer_logging_steps(first_steps)
    return ls
