"""Reader for the Hugging Face Trainer's ``trainer_state.json``.

The Trainer writes the file into every ``checkpoint-N/`` folder and, when
``save_state()`` is called, into the output directory. Each copy holds the
whole ``log_history`` up to its step, so a run is one output directory and
only its longest copy is read (by file size: later copies extend earlier ones).
When that copy changes (a new checkpoint), the old one stops being a source
and its rows go with it: no step is counted twice.

``log_history`` rows are of three kinds: training rows (``loss``,
``grad_norm``, ``learning_rate``, ``epoch``, ``step``), evaluation rows
(``eval_*``) and the final summary (``train_runtime``, ``train_loss``, ...).
The logged loss is averaged over ``logging_steps`` optimizer steps and over
all ranks, with NaN/Inf losses replaced by default
(``logging_nan_inf_filter``): the ``run_start`` event records that.

Directories that also hold LLaMA-Factory's ``trainer_log.jsonl`` are one run
with two files: this reader then adds only step and metric rows (joined with
the JSONL's extra fields, so whichever file was read last gives the same
rows) and leaves the events to the LLaMA-Factory reader. Directories with
ms-swift's ``logging.jsonl`` are left to the ms-swift reader, whose log holds
everything this file does and more.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from tunescope.eventlog import has_lone_surrogate, may_hold_surrogates
from tunescope.ingest.readers import llamafactory_log
from tunescope.ingest.readers.foreign import (
    Deltas,
    as_int,
    cached_parse,
    infer_logging_steps,
    is_eval_key,
    logging_steps_from_hf,
    number,
    split_fields,
)
from tunescope.ingest.readers.runconfig import side_config
from tunescope.ingest.rows import Problem, ReadResult, RowBuilder

NAME = "trainer_state.json"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
LF_LOG = llamafactory_log.NAME  # joined by step when it sits beside (LLaMA-Factory)
SWIFT_LOG = "logging.jsonl"

TRAIN_KEYS = ("loss", "grad_norm", "learning_rate")
# The end-of-training summary. (Training rows also carry ``train_runtime`` when
# input tokens are counted, so that key alone does not mark the summary.)
FINAL_KEYS = ("train_loss", "train_steps_per_second", "train_samples_per_second")
_NOT_TRAIN_METRICS = ("step", "num_input_tokens_seen")


def output_dir(path: Path) -> Path:
    """The run directory of a ``trainer_state.json`` (the output dir of its checkpoint)."""
    return path.parent.parent if CHECKPOINT_DIR.match(path.parent.name) else path.parent


def candidates(out: Path) -> list[Path]:
    """Every ``trainer_state.json`` of one output directory."""
    found = []
    top = out / NAME
    if top.is_file():
        found.append(top)
    try:
        entries = list(os.scandir(out))
    except OSError:
        return found
    for entry in entries:
        if CHECKPOINT_DIR.match(entry.name):
            p = Path(entry.path) / NAME
            if p.is_file():
                found.append(p)
    return found


def primary(out: Path) -> Path | None:
    """The copy with the longest history: the largest file; on a tie the
    output dir's own copy, then the highest checkpoint."""

    def key(p: Path) -> tuple[int, float]:
        try:
            size = p.stat().st_size
        except OSError:
            size = -1
        m = CHECKPOINT_DIR.match(p.parent.name) if p.parent != out else None
        return size, (int(m.group(1)) if m else math.inf)

    found = candidates(out)
    return max(found, key=key) if found else None


# ---- parsing -----------------------------------------------------------------


def _const(token: str) -> float:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[token]


_DECODER = json.JSONDecoder(parse_constant=_const)
_UNPAIRED = "not Unicode text: an unpaired surrogate escape (\\ud800-\\udfff)"
_HISTORY = re.compile(r'"log_history"\s*:\s*\[')


class State:
    """A parsed ``trainer_state.json``: the top-level fields and the history
    entries with the line each starts on."""

    def __init__(self) -> None:
        self.top: dict[str, Any] = {}
        self.history: list[tuple[int | None, Any]] = []
        self.problems: list[Problem] = []
        self.complete = True
        self.classified: tuple[list[Any], list[Problem]] | None = None
        self.text = ""
        self.start = 0
        self.surrogates = False  # the text has \uD800-\uDFFF escapes: check each entry
        self._lines: list[int] | None = None

    def line(self, i: int) -> int | None:
        """The line history entry ``i`` starts on."""
        got = self.history[i][0]
        if got is not None:
            return got
        if self._lines is None:
            self._lines = [line for line, _ in _walk(self.text, self.start)]
        return self._lines[i] if i < len(self._lines) else None


def parse_state(path: Path, text: str) -> State:
    """Parse the file; a truncated or damaged file still gives the history
    entries before the damage, and a problem that says where it starts."""
    out = State()
    m = _HISTORY.search(text)
    try:
        top = _DECODER.decode(text)
    except (json.JSONDecodeError, RecursionError) as e:
        out.complete = False
        line = getattr(e, "lineno", None)
        reason = getattr(e, "msg", "nested too deeply")
        out.problems.append(
            Problem(str(path), line, f"damaged JSON ({reason}); read what precedes it")
        )
        top = None
    out.surrogates = may_hold_surrogates(text)
    if isinstance(top, dict):
        out.top = {k: v for k, v in top.items() if k != "log_history"}
        for key in [k for k, v in out.top.items() if out.surrogates and has_lone_surrogate([k, v])]:
            del out.top[key]
            out.problems.append(Problem(str(path), None, f"{_UNPAIRED} in field {key!r}; ignored"))
    elif top is not None:
        out.problems.append(Problem(str(path), 1, "not a JSON object; not a trainer_state.json"))
        return out
    if m is None:
        if top is not None:
            out.problems.append(Problem(str(path), None, "no log_history: nothing to read"))
        return out
    if isinstance(top, dict) and not isinstance(top.get("log_history"), list):
        out.problems.append(Problem(str(path), None, "log_history is not a list"))
        return out
    if isinstance(top, dict):
        # Lines are found only if a problem needs one (see State.line).
        out.history = [(None, entry) for entry in top["log_history"]]
        out.text, out.start = text, m.end()
        return out
    out.history = list(_walk(text, m.end()))
    return out


def _walk(text: str, pos: int):
    """``(line, entry)`` of each whole entry of the array starting at ``pos``,
    up to the end or the first damage."""
    line = text.count("\n", 0, pos) + 1
    last = pos
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            return
        line += text.count("\n", last, pos)
        last = pos
        try:
            entry, end = _DECODER.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):
            return  # the damage was reported by the caller
        yield line, entry
        pos = end


_CACHE: dict[str, tuple[tuple[int, int], State]] = {}


def load_state(path: Path) -> State | None:
    """Parsed file, cached by size and modification time (the LLaMA-Factory
    reader joins with it on every read of its growing log)."""
    return cached_parse(
        _CACHE, path, lambda data: parse_state(path, data.decode("utf-8", errors="replace"))
    )


class Entry:
    """One classified ``log_history`` row."""

    __slots__ = ("canon", "extras", "index", "kind", "raw", "step")

    def __init__(self, kind: str, step: int, index: int, canon, extras, raw) -> None:
        self.kind = kind  # "train" | "eval" | "final" | "other"
        self.step = step
        self.index = index  # position in log_history
        self.canon = canon
        self.extras = extras
        self.raw = raw


def classify(path: Path, state: State) -> tuple[list[Entry], list[Problem]]:
    """The history's rows, classified (computed once per parsed file)."""
    if state.classified is None:
        state.classified = _classify(path, state)
    return state.classified


def _classify(path: Path, state: State) -> tuple[list[Entry], list[Problem]]:
    entries: list[Entry] = []
    problems: list[Problem] = []
    deltas = Deltas(None)
    for i, (_, raw) in enumerate(state.history):
        where = f"log_history[{i}]"
        if not isinstance(raw, dict):
            problems.append(Problem(str(path), state.line(i), f"{where} is not an object; skipped"))
            continue
        if state.surrogates and has_lone_surrogate(raw):
            problems.append(Problem(str(path), state.line(i), f"{where}: {_UNPAIRED}; skipped"))
            continue
        step = as_int(raw.get("step"))
        if step is None:
            problems.append(
                Problem(
                    str(path),
                    state.line(i),
                    f"{where} has no valid step ({raw.get('step')!r}); skipped",
                )
            )
            continue
        if any(k in raw for k in FINAL_KEYS) and "loss" not in raw:
            _, extras = split_fields(raw, skip=("step", "epoch"))
            entries.append(Entry("final", step, i, {}, extras, raw))
            continue
        evals = {k: v for k, v in raw.items() if is_eval_key(k)}
        if evals:
            _, extras = split_fields(evals)
            entries.append(Entry("eval", step, i, {}, extras, raw))
            raw = {k: v for k, v in raw.items() if k not in evals}
            if not any(k in raw for k in TRAIN_KEYS):
                continue
        canon, extras = split_fields(raw, skip=_NOT_TRAIN_METRICS)
        seen = number(raw.get("num_input_tokens_seen"))
        if seen is not None:
            extras["num_input_tokens_seen"] = seen
            tokens = deltas.rate("tokens", step, seen)
            if tokens is not None:
                canon["tokens"] = tokens
        kind = "train" if any(k in raw for k in TRAIN_KEYS) else "other"
        if kind == "other":
            extras.pop("epoch", None)
            canon.pop("epoch", None)
            if not extras:
                continue
        entries.append(Entry(kind, step, i, canon, extras, raw))
    return entries, problems


def hf_logging_steps(state: State, entries: list[Entry]) -> int | None:
    return logging_steps_from_hf(state.top.get("logging_steps"), state.top.get("max_steps")) or (
        infer_logging_steps(e.step for e in entries if e.kind == "train")
    )


def run_start_payload(path: Path, state: State, entries: list[Entry]) -> dict[str, Any]:
    top = state.top
    payload: dict[str, Any] = {
        "format": HFStateReader.format,
        "source": str(path),
        "logging_steps": hf_logging_steps(state, entries),
        "per_rank": False,
        "loss_averaging": (
            "mean over logging_steps optimizer steps and all ranks; NaN/Inf losses "
            "replaced by the recent mean when logging_nan_inf_filter is on (the default)"
        ),
    }
    total = as_int(top.get("max_steps"))
    if total:
        payload["total_steps"] = total
    for key in ("num_train_epochs", "train_batch_size", "eval_steps", "save_steps", "global_step"):
        if key in top and top[key] is not None:
            payload[key] = top[key]
    if top.get("best_model_checkpoint"):
        payload["best_model_checkpoint"] = top["best_model_checkpoint"]
    config = side_config(output_dir(path))
    if config:
        payload["config"] = config
    return payload


# ---- reader ------------------------------------------------------------------


def _sig(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


class HFStateReader:
    """Hugging Face Trainer ``trainer_state.json`` (output dir and checkpoint copies)."""

    format = "hf_trainer_state"

    def detect(self, path: Path) -> bool:
        if path.name != NAME:
            return False
        out = output_dir(path)
        if (out / SWIFT_LOG).is_file():
            return False
        return primary(out) == path

    def run_dir(self, path: Path) -> Path:
        return output_dir(path)

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        sig = _sig(path)
        rows = RowBuilder()
        if state == sig:
            return rows.result(sig)
        parsed = load_state(path)
        if parsed is None:
            return rows.result(sig, [Problem(str(path), None, "cannot read file")], replace=True)
        entries, problems = classify(path, parsed)
        problems = parsed.problems + problems
        out = output_dir(path)
        lf_path = out / LF_LOG
        if lf_path.is_file():
            lf = llamafactory_log.load_log(lf_path)
            for e in entries:
                if e.kind == "train":
                    got = lf.get(e.step)
                    canon, extras = (got[0], got[1]) if got else ({}, {})
                    rows.step(0, e.step, None, {**e.canon, **canon})
                    for name, value in {**e.extras, **extras}.items():
                        rows.metric(0, e.step, None, name, value)
                else:
                    for name, value in e.extras.items():
                        rows.metric(0, e.step, None, name, value)
            _checkpoints(rows, out)
            return rows.result(sig, problems, replace=True)

        rows.event(0, None, None, "run_start", run_start_payload(path, parsed, entries))
        for e in entries:
            if e.kind == "train":
                rows.step(0, e.step, None, e.canon)
            for name, value in e.extras.items():
                rows.metric(0, e.step, None, name, value)
            if e.kind == "eval":
                rows.event(0, e.step, None, "eval", e.extras)
            elif e.kind == "final":
                rows.event(0, e.step, None, "run_end", {"status": "completed", **e.extras})
        _checkpoints(rows, out)
        return rows.result(sig, problems, replace=True)


def _checkpoints(rows: RowBuilder, out: Path) -> None:
    """A ``checkpoint`` event for each ``checkpoint-N/`` that holds a state file."""
    for ckpt in sorted(candidates(out)):
        m = CHECKPOINT_DIR.match(ckpt.parent.name)
        if m and ckpt.parent.parent == out:
            rows.event(0, int(m.group(1)), None, "checkpoint", {"path": str(ckpt.parent)})
