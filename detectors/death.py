"""TS601 why-it-died: the cause of a run that ended in a crash, from the end of its log.

What it flags:
    A run whose last ``run_end`` is ``failed`` or ``interrupted`` and whose
    log says why: the error text of the ``run_end`` (the bundled trainer and
    callback write it) and the crash lines ingest kept from the end of console
    logs, SLURM outputs and W&B's ``files/output.log`` (``log_tail``). The
    causes, most specific first (a launcher's ``ChildFailedError`` follows
    every worker's death, so the worker's own error wins): CUDA out of memory
    (with the sizes of PyTorch's message, old and new forms); a non-finite
    loss assertion (``loss is nan``, ``found inf``, ``non-finite loss``); no
    space left on device; an NCCL timeout (the watchdog), a collective
    mismatch, another NCCL error; a SLURM time limit or preemption; an import
    error, a configuration (argument) error, a data loading or tokenisation
    error (also in a log that crashed before its first step line: ingest
    makes it a run with no steps); ``KeyboardInterrupt`` or a SLURM cancel
    (info); else a worker's exit code from the elastic launcher (``-9``:
    SIGKILL, most often the host's out-of-memory killer; ``-11`` a
    segmentation fault; ``-6`` an abort; ``-7`` a bus error; ``-15`` a
    SIGTERM), else the last exception the log shows. A run that
    went on after a caught error (a handled out-of-memory warning, a printed
    traceback) did not end there: ingest only keeps a crash that no step
    followed, and a run that completed is never judged.

Why it matters:
    A crashed run otherwise reads as "failed, step 2/30, no findings": the
    cause is somewhere in thousands of interleaved log lines, and the fix
    differs completely between an out-of-memory (a setting), an NCCL timeout
    (a node or a rank stuck elsewhere) and a time limit (resume).

Example:
    ``the run died of CUDA out of memory at step 2 (of 30): tried to allocate
    2.00 GiB with 0.51 GiB free of 79.15 GiB (76.20 GiB allocated by
    PyTorch); train.log line 18: torch.cuda.OutOfMemoryError: CUDA out of
    memory. ...`` with the fix "turn on gradient checkpointing (it is off)"
    when the run's config says it is off.

Suggestion:
    One per cause. For out-of-memory, the remedy the run's config
    (``run_start``: micro-batch, maximum length, gradient checkpointing,
    finetuning type, DeepSpeed stage) makes most likely to help comes first:
    the allocator's expandable segments when the reserved but unallocated
    memory would have held the allocation, gradient checkpointing when it is
    off, ZeRO-3 for a full finetune without it, half the micro-batch, a
    shorter maximum length, QLoRA for a 16-bit LoRA. Where memory was logged
    before an out-of-memory crash, the finding says whether TS401's forecast
    (the same function) would have seen it coming: a steady rise is a leak, a
    flat series is one allocation larger than usual.

Options:
    Listed below with their defaults.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from tunescope.detectors.base import Frames
from tunescope.detectors.scans import death_oom
from tunescope.detectors.scans.death_causes import (
    CAUSES,
    EXCEPTION_LINE,
    EXIT_CODE,
    FRAME_LINE,
    SIGNALS,
    TERMINATED,
)
from tunescope.findings import Finding, Severity

ID = "TS601"
NAME = "why-it-died"
_QUOTE = 240  # characters of the evidence line quoted in the message


@dataclass
class Options:
    evidence_lines: int = 20
    """Lines of the crash kept in the finding's evidence (the cause's line
    and the last lines of the log)."""
    min_memory_points: int = 50
    """Fewest memory points before an out-of-memory crash for a forecast
    (TS401's ``min_points``)."""
    p_value: float = 0.01
    """Significance of the memory rise before an out-of-memory crash."""

    def __post_init__(self) -> None:
        if self.evidence_lines < 1 or self.min_memory_points < 10:
            raise ValueError("evidence_lines must be >= 1 and min_memory_points >= 10")
        if not 0 < self.p_value < 1:
            raise ValueError(f"p_value must be in (0, 1), got {self.p_value}")


def run(ctx: Frames, opts: Options) -> list[Finding]:
    ends = _last_ends(ctx)
    if not ends:
        return []
    runs = {r["run_id"]: r for r in ctx.runs().iter_rows(named=True)}
    out = []
    for run_id, per_rank in ends.items():
        judged = []
        for rank, (step, p) in per_rank.items():
            cause = classify(_lines(p))
            if cause is not None:
                judged.append((cause, rank, step, p))
        if not judged:
            continue
        for cause, _, _, p in judged:
            # an interruption whose log names no cause is not a fault
            if cause["key"] == "unknown" and p.get("status") == "interrupted":
                cause["info"] = True
        # the most specific cause any rank shows (a rank's own error over another's exit code)
        got, rank, step, payload = min(judged, key=lambda j: (j[0]["order"], j[1]))
        row = runs.get(run_id, {})
        out.append(_finding(ctx, opts, run_id, rank, len(per_rank), step, payload, got, row))
    return out


def _last_ends(ctx: Frames) -> dict[str, dict[int, tuple[int | None, dict[str, Any]]]]:
    """Per run and rank, the last ``run_end`` of a run whose status is a
    failure or an interruption (a run that went on after a crash is not
    dead). Of two at the same step (a crash whose lines came over two reads),
    the one whose lines reach further into the log."""
    dead = {
        r["run_id"]
        for r in ctx.runs().iter_rows(named=True)
        if r.get("status") in ("failed", "interrupted")
    }
    last: dict[str, dict[int, tuple[int | None, dict[str, Any]]]] = {}
    for row in ctx.events(["run_end"]).iter_rows(named=True):
        if row["run_id"] not in dead:
            continue
        try:
            p = json.loads(row["payload"] or "{}")
        except ValueError:
            continue
        if not isinstance(p, dict):
            continue
        ranks = last.setdefault(row["run_id"], {})
        rank = int(row["rank"])
        prev = ranks.get(rank)
        if prev is not None and prev[0] == row["step"] and _reach(prev[1]) > _reach(p):
            continue
        ranks[rank] = (row["step"], p)
    return {
        run: {k: v for k, v in ranks.items() if v[1].get("status") in ("failed", "interrupted")}
        for run, ranks in last.items()
        if any(v[1].get("status") in ("failed", "interrupted") for v in ranks.values())
    }


def _reach(payload: dict[str, Any]) -> int:
    """The last line number of a run_end's ``log_tail`` (0 without one)."""
    numbers = [n for n, _ in _lines(payload) if n is not None]
    return max(numbers, default=0)


def _lines(payload: dict[str, Any]) -> list[tuple[int | None, str]]:
    """The crash lines of a run_end: its ``log_tail`` (numbered), then its error text."""
    out: list[tuple[int | None, str]] = []
    tail = payload.get("log_tail")
    if isinstance(tail, list):
        for item in tail:
            if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], str):
                n = item[0] if isinstance(item[0], int) and not isinstance(item[0], bool) else None
                out.append((n, item[1]))
    error = payload.get("error")
    if (
        isinstance(error, str)
        and error.strip()
        and not any(error.strip() in text for _, text in out)
    ):
        out.extend((None, line) for line in error.splitlines() if line.strip())
    if isinstance(payload.get("exit_code"), int) and payload["exit_code"] != 0:
        out.append((None, f"exit code: {payload['exit_code']}"))
    return out


def classify(lines: list[tuple[int | None, str]]) -> dict[str, Any] | None:
    """The cause the lines name: key, label, the line that names it (its
    number and text), a fix and whether it is only information; None when
    the lines hold no text at all."""
    if not lines:
        return None
    errors = [(n, t) for n, t in lines if _is_error(t)]
    traceback = [(n, t) for n, t in lines if _is_error(t) or FRAME_LINE.match(t.strip())]
    for order, cause in enumerate(CAUSES):
        # an exception line names a cause better than a line around it
        hit = _first(errors, cause.pattern) or _first(
            traceback if cause.in_traceback else lines, cause.pattern
        )
        if hit is not None:
            return {
                "order": order,
                "key": cause.key,
                "label": cause.label,
                "line": hit,
                "fix": cause.fix,
                "info": cause.info,
                "outside": cause.outside,
                "before_step_1": cause.before_step_1,
            }
    base = len(CAUSES)
    for n, text in lines:
        m = EXIT_CODE.search(text)
        if m is None:
            continue
        code = int(m.group(1)) if m.group(1) is not None else -int(m.group(2))
        if code in SIGNALS:
            label, what, fix = SIGNALS[code]
            key = "preemption" if code == -15 else f"exit-{-code}"
            got = _other(base, key, label, (n, text), fix, what=what, code=code)
            got["outside"] = code == -15
            return got
    hit = _first(lines, TERMINATED)
    if hit is not None:
        label, what, fix = SIGNALS[-15]
        got = _other(base + 1, "preemption", label, hit, fix, what=what)
        got["outside"] = True
        return got
    for n, text in reversed(lines):
        m = EXCEPTION_LINE.match(text.strip())
        if m and "ChildFailedError" not in m.group(1):
            name = m.group(1).rsplit(".", 1)[-1]
            return _other(
                base + 2,
                "exception",
                name,
                (n, text),
                "Read the traceback ending at the line named here; fix the code or input it "
                "names, then resume from the last checkpoint.",
            )
    code_hit = _first(lines, EXIT_CODE)
    label = "non-zero exit code" if code_hit else "an unnamed error"
    return _other(
        base + 3,
        "unknown",
        label,
        code_hit or _last_told(lines),
        "The log does not name the cause: look at the lines before the end of the log on "
        "every rank, and the scheduler's record of the job.",
    )


def _other(
    order: int,
    key: str,
    label: str,
    line: tuple[int | None, str],
    fix: str,
    what: str | None = None,
    code: int | None = None,
) -> dict[str, Any]:
    got = {"order": order, "key": key, "label": label, "line": line, "fix": fix, "info": False}
    got["before_step_1"] = False
    if what:
        got["what"] = what
    if code is not None:
        got["exit_code"] = code
    return got


def _last_told(lines: list[tuple[int | None, str]]) -> tuple[int | None, str]:
    """The last line that is not a traceback's source code: a frame line
    (``File "..."``), the code line under it, or its ``^^^`` marker line say
    where the error was raised, never what it was."""
    code: set[int] = set()
    for i, (_, text) in enumerate(lines):
        if FRAME_LINE.match(text.strip()):
            code.update((i, i + 1))
        elif set(text.strip()) <= set("^~ ") and text.strip():
            code.add(i)
    told = [line for i, line in enumerate(lines) if i not in code]
    return told[-1] if told else lines[-1]


def _is_error(text: str) -> bool:
    return EXCEPTION_LINE.match(text.strip()) is not None


def _first(
    lines: list[tuple[int | None, str]], pattern: re.Pattern[str]
) -> tuple[int | None, str] | None:
    return next(((n, t) for n, t in lines if pattern.search(t)), None)


def _finding(
    ctx: Frames,
    opts: Options,
    run_id: str,
    rank: int,
    n_ranks: int,
    end_step: int | None,
    payload: dict[str, Any],
    got: dict[str, Any],
    row: dict[str, Any],
) -> Finding:
    last = row.get("last_step")
    step = int(last) if last is not None else (int(end_step) if end_step is not None else None)
    total = row.get("total_steps")
    n, text = got["line"]
    where = _where(payload, n)
    quoted = text.strip()
    if len(quoted) > _QUOTE:
        quoted = quoted[: _QUOTE - 1] + "…"
    at = (
        "before step 1" if not step else f"at step {step:,}" + (f" (of {total:,})" if total else "")
    )
    ev: dict[str, Any] = {
        "cause": got["key"],
        "label": got["label"],
        "status": payload.get("status"),
        "last_step": step,
        "line": n,
        "text": text,
        "file": payload.get("log_file"),
        "log_tail": _evidence(payload, n, opts.evidence_lines),
    }
    if got.get("exit_code") is not None:
        ev["exit_code"] = got["exit_code"]
    detail = got.get("what") or ""
    sug = got["fix"]
    extra = ""
    if got["key"] == "cuda-oom":
        numbers = death_oom.parse(" ".join(t for _, t in _lines(payload)))
        ev["memory"] = numbers
        detail = death_oom.numbers_text(numbers)
        start = ctx.run_start(run_id)
        settings = death_oom.settings(start)
        ev["settings"] = settings
        ev["likely_fix"], sug = death_oom.fix(numbers, settings)
        extra, info = _forecast(ctx, opts, run_id, rank, numbers, step, start)
        ev["forecast"] = info
    elif got["before_step_1"] and not step:
        detail = "nothing was trained"
    else:
        facts = _facts(got["key"], _lines(payload), step, total)
        if facts:
            ev["facts"] = facts
            sug = f"{facts}. {sug}"
    sev = (
        Severity.INFO if got["info"] else Severity.WARNING if got.get("outside") else Severity.ERROR
    )
    ranks = f" on rank {rank}" if n_ranks > 1 or rank else ""
    verb = "was stopped" if got["info"] or got.get("outside") else "died"
    msg = f"The run {verb} {at}{ranks}: {got['label']}" + (f", {detail}" if detail else "") + "."
    msg += f" {where}: {quoted}"
    if extra:
        msg += f" {extra}"
    return Finding(run_id, ID, NAME, sev, step, step, msg, sug, rank=None, evidence=ev)


_TIMEOUT = re.compile(r"Timeout\(ms\)=(\d+)\)?\s*ran for (\d+) milliseconds")
_HOST = re.compile(r"^\s*host\s*:\s*(\S+)")
_PATH = re.compile(r"No space left on device: '([^']+)'|Disk quota exceeded: '([^']+)'")


def _facts(
    key: str, lines: list[tuple[int | None, str]], step: int | None, total: int | None
) -> str:
    """The run's own numbers for the fix: how long a collective waited, how
    far a cut-off run got, the file a full disk refused, the failed host."""
    text = "\n".join(t for _, t in lines)
    if key == "nccl-timeout":
        m = _TIMEOUT.search(text)
        if m:
            limit, ran = int(m.group(1)) / 1000, int(m.group(2)) / 1000
            return f"A collective waited {ran:,.0f} s against a {limit:,.0f} s timeout"
    if key in ("time-limit", "preemption", "cancelled") and step and total:
        return f"The run reached step {step:,} of {total:,} ({100 * step / total:.2g}%)"
    if key == "disk-full":
        m = _PATH.search(text)
        if m:
            return f"The write that failed was {m.group(1) or m.group(2)!r}"
    if key.startswith("exit-"):
        hosts = sorted({m.group(1) for _, t in lines if (m := _HOST.match(t))})
        if hosts:
            return f"The failed worker ran on {', '.join(hosts[:3])}"
    return ""


def _where(payload: dict[str, Any], line: int | None) -> str:
    src = payload.get("log_file")
    name = PurePath(src).name if isinstance(src, str) and src else "the run_end error"
    return f"{name} line {line:,}" if line is not None and src else name


def _evidence(payload: dict[str, Any], line: int | None, keep: int) -> list[list[Any]]:
    """The cause's line and the last lines of the crash, at most ``keep``."""
    tail = [list(t) for t in _lines(payload) if t[0] is not None]
    if len(tail) <= keep:
        return tail
    last = tail[-(keep - 1) :]
    mine = [t for t in tail if t[0] == line]
    return (mine if mine and mine[0] not in last else []) + last


def _forecast(
    ctx: Frames,
    opts: Options,
    run_id: str,
    rank: int,
    numbers: dict[str, float],
    step: int | None,
    start: dict[str, Any],
) -> tuple[str, dict[str, Any]]:
    df = ctx.steps()
    if df.height == 0:
        return "", {}
    import polars as pl

    part = df.filter((pl.col("run_id") == run_id) & (pl.col("rank") == rank))
    if part.height == 0:
        part = df.filter(pl.col("run_id") == run_id)
    cols = {}
    for name in ("step", "ts", "mem_peak_mb", "mem_allocated_mb"):
        col = part.get_column(name) if name in part.columns else None
        cols[name] = col.cast(float).to_numpy() if col is not None else np.full(part.height, np.nan)
    return death_oom.forecast_check(
        cols["step"],
        cols["ts"],
        cols["mem_peak_mb"],
        cols["mem_allocated_mb"],
        start,
        rank,
        numbers.get("total_gib"),
        step,
        opts.min_memory_points,
        opts.p_value,
    )
