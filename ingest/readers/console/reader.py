"""Reader for saved console output: ``nohup.out``, ``train.log``, SLURM ``*.out``.

Three families of step lines, one per file (told apart by the first lines
that carry metrics):

- ``dicts``: the Hugging Face Trainer's printed log dicts (TRL, LLaMA-Factory,
  Unsloth, ms-swift, the DeepSpeed launcher's output; see :mod:`.pydict`).
  The step is the dict's own (``global_step/max_steps``, ``step``), else the
  training progress bar's ``N/M`` just before it, else the dict's order in
  the run (the run's ``run_start`` then says ``steps_from: "order"``);
- ``megatron``: Megatron-LM / Megatron-DeepSpeed / NeMo iteration lines, per-rank
  memory lines as rank rows, validation lines as evals (see :mod:`.megatron`);
- ``lines``: torchtune, DeepSpeed and hand-written ``step N loss X`` lines
  (see :mod:`.lines`).

What the end of a run says sets its status: the Trainer's summary dict or a
last step equal to the total is ``completed``; a traceback that no step
follows is ``failed`` (``interrupted`` for ``KeyboardInterrupt`` or a SLURM
cancel). A step counter that starts again from the beginning is a new run in
the same file (``train.log#2``); one that goes back to a later step, or goes
on after a crash, is a resume of the same run.

Only new bytes are read each time; a torn last line waits for its newline.
"""

from __future__ import annotations

import os
from operator import itemgetter
from pathlib import Path
from typing import Any

from tunescope.ingest.live.tail import Chunk, read_new_lines
from tunescope.ingest.readers.console import dict_bulk, megatron
from tunescope.ingest.readers.console.bulk import take_bulk, take_with
from tunescope.ingest.readers.console.detect import (
    SNIFF_HEAD,
    beside_structured,
    family_of,
    log_name,
    sniff,
)
from tunescope.ingest.readers.console.items import (
    bar_step,
    dict_items,
    line_items,
    markers,
    megatron_items,
)
from tunescope.ingest.readers.console.run import Run, Walk, run_result
from tunescope.ingest.readers.crash_tail import REGION, crash_lines, torn_line
from tunescope.ingest.readers.foreign import (
    QUIET_END,
    infer_logging_steps,
    keymap_for,
    no_loss_problem,
)
from tunescope.ingest.rows import Problem, ReadResult

# ---- the reader --------------------------------------------------------------------


class ConsoleReader:
    """Console output saved to a file (HF Trainer dicts, Megatron, step lines)."""

    format = "console"

    def detect(self, path: Path) -> bool:
        if not log_name(path) or beside_structured(path) is not None:
            return False
        kind = sniff(path)
        if kind == "crash":
            # a log that ends in a crash but whose records are in a shape the
            # general reader knows: the general reader keeps the crash too
            from tunescope.ingest.readers.general_shape import shape_of

            return shape_of(path).reason is not None
        return kind is not None

    def run_dir(self, path: Path) -> Path:
        """The folder, when this is the only console log in it; else a run of
        its own named after the file (``logs/job-1.out``)."""
        try:
            others = [
                Path(e.path)
                for e in os.scandir(path.parent)
                if e.name != path.name and e.is_file() and log_name(Path(e.path))
            ]
        except OSError:
            others = []
        if any(sniff(p) is not None for p in others):
            return path.parent / path.name
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        chunk = read_new_lines(path, state)
        old = {} if (state is None or chunk.restarted) else dict(state)
        known = old.get("family")
        if known == "crash":  # a log that crashed early may go on (a relaunch): look again
            known = None
        fam = known or self._family(path, chunk.data)
        walk = Walk(
            run=Run(int(old.get("run", 1)), old.get("cur")),
            train_total=old.get("bar_total"),
            typical=float(old.get("gap", 0.0)),
            extra=dict(old.get("extra", {})),
            path=path,
            start=chunk.start,
            crash_family=fam == "crash",
        )
        items = self._items(path, fam, chunk.data, chunk.start, walk)
        self._take_items(path, chunk.data, chunk.start, items, walk)
        self._crash_goes_on(path, walk, chunk)
        self._end_runs(path, fam, walk, chunk.start + len(chunk.data), first_read=not old)
        return self._finish(path, chunk, old, fam, walk)

    def _family(self, path: Path, data: bytes) -> str | None:
        return sniff(path) or family_of(data[:SNIFF_HEAD])

    def _crash_goes_on(self, path: Path, walk: Walk, chunk: Chunk) -> None:
        """A crash still being written when the last read ended (its lines
        ran to the end): with no step since, the new lines belong to it, and
        the run gets a fuller ``run_end`` (the error line often comes last)."""
        run = walk.run
        if run.crash is None or not chunk.data or chunk.restarted or walk.new_crash:
            return
        if run.ended is None or run.pending is not None:
            run.crash = None  # training went on, or a new crash took over
            return
        at, line, status = run.crash
        end = chunk.start + len(chunk.data)
        if end - at > REGION:
            run.crash = None  # long enough: what is kept already tells it
            return
        try:
            with open(path, "rb") as f:
                f.seek(at)
                data = f.read(end - at)
        except OSError:
            return
        ends = [p for _, kind, p in markers(data, 0, len(data)) if kind == "end" and p[0]]
        payload: dict[str, Any] = {"status": status}
        error = ends[0][1] if ends else None
        if error:
            payload["error"] = error
        payload["log_tail"] = crash_lines(data, 0, len(data), line) + torn_line(
            path, end, line + data.count(b"\n")
        )
        payload["log_file"] = str(path)
        run.events.append((run.last, "run_end", payload, end))

    def _items(
        self, path: Path, fam: str | None, data: bytes, base: int, walk: Walk
    ) -> list[tuple[int, str, Any]]:
        """The chunk's items (step lines, evals, summaries, memory lines) in
        the order they occur. Megatron iteration lines and the Trainer's
        training dicts are taken as columns when they are regular enough
        (then only the other lines are items)."""
        if fam == "dicts":
            keys = keymap_for(path)
            got = dict_bulk.bulk(data, keys, walk.train_total)
            if got is not None:
                lines, rest, total = got
                if take_with(walk, lines, rest, data, base, after=("summary",)):
                    walk.train_total = total
                    return rest
            return dict_items(data, keys)
        if fam == "lines":
            return line_items(data)
        if fam != "megatron":
            return []
        lines = megatron.bulk(data)
        if lines is not None and take_bulk(walk.run, lines, data, base):
            walk.scanned = int(lines.pos[-1])
            walk.typical = walk.run.gap
            items = megatron_items(data, iterations=False, spans=lines.other)
        else:
            items = megatron_items(data)
        items.sort(key=itemgetter(0))
        return items

    def _take_items(
        self, path: Path, data: bytes, base: int, items: list[tuple[int, str, Any]], walk: Walk
    ) -> None:
        """Turn the items into the rows of the run they belong to.

        Markers (tracebacks, banners) are looked for only where they can
        matter: before the first item, in gaps much longer than usual (a
        crash and a relaunch print a lot), before a step that goes back, and
        after the last item. A full pass per marker would cost more than
        finding the step lines."""
        prev = 0  # the previous item
        for pos, kind, payload in items:
            seq = base + pos + 1
            run = walk.run
            if kind == "dict-train" and payload["step"] is None:
                got = bar_step(data, prev, pos, walk.train_total)
                if got is not None:
                    payload["step"], walk.train_total = got
                    payload["total"] = walk.train_total
                    payload["from"] = "progress bar"
            if kind in ("dict-train", "train"):
                gap = pos - walk.scanned
                if (
                    walk.scanned == 0
                    or gap > max(4096, 4 * walk.typical)
                    or _goes_back(run, payload)
                ):
                    for mpos, mkind, mpayload in markers(data, walk.scanned, pos):
                        run = self._marker(run, mkind, mpayload, walk, data, mpos, pos)
                if walk.scanned:
                    walk.typical = gap if not walk.typical else 0.9 * walk.typical + 0.1 * gap
                walk.scanned = pos
                walk.run = self._train(path, run, walk.done, payload, seq)
            elif kind == "eval":
                step = payload["step"] if payload["step"] is not None else (run.last or 0)
                run.metric_rows(step, payload["metrics"], seq)
                run.events.append((step, "eval", payload["metrics"], seq))
            elif kind == "summary":
                step = run.last or 0
                run.metric_rows(step, payload, seq)
                if run.ended is None:
                    run.events.append((step, "run_end", {"status": "completed", **payload}, seq))
                    run.ended = "completed"
                    run.pending = None
            elif kind == "mem":
                rank, step, canon, extras = payload
                run.step_row(rank, step, canon, seq)
                run.metric_rows(step, extras, seq, rank)
            prev = pos
        for mpos, mkind, mpayload in markers(data, walk.scanned, len(data)):
            walk.run = self._marker(walk.run, mkind, mpayload, walk, data, mpos, len(data))

    def _end_runs(
        self, path: Path, fam: str | None, walk: Walk, end_seq: int, first_read: bool
    ) -> None:
        """The end of what was read: a crash that no step followed ends the
        run, as does reaching the total; an earlier run of the file (or a
        first read that shows no end) ended quietly."""
        for r in [*walk.done, walk.run]:
            if r.pending is not None and r.ended is None:
                status, error, *tail = r.pending
                payload: dict[str, Any] = {"status": status}
                if error:
                    payload["error"] = error
                if tail and tail[0]:
                    payload["log_tail"] = tail[0]
                    payload["log_file"] = str(path)
                r.events.append((r.last, "run_end", payload, end_seq))
                r.ended, r.pending = status, None
            elif r.ended is None and r.total and r.last is not None and r.last >= r.total:
                r.events.append((r.last, "run_end", {"status": "completed"}, end_seq))
                r.ended = "completed"
            elif r.ended is None and r.n and (r is not walk.run or first_read):
                r.events.append((r.last, "run_end", dict(QUIET_END), end_seq))
                r.ended = "interrupted"
                r.quiet = True
            self._start(path, r, fam)

    def _finish(
        self, path: Path, chunk: Chunk, old: dict[str, Any], fam: str | None, walk: Walk
    ) -> ReadResult:
        """The first run's rows and the state for the next read; the file's
        further runs as subruns."""
        run, done = walk.run, walk.done
        problems: list[Problem] = []
        # steps, or an evaluation's metrics (a log may print only those)
        any_rows = any(
            r.n or any(m[2].startswith("eval_") for m in r.metrics) for r in (run, *done)
        ) or old.get("had_rows")
        lines_total = 0
        if not any_rows and not old.get("warned") and fam != "crash":
            lines_total = chunk.lines
            if lines_total:
                problems.append(no_loss_problem(path, lines_total, "lines"))
        new_state = {
            **chunk.position,
            "family": fam,
            "run": run.idx,
            "cur": run.dump(),
            "bar_total": walk.train_total,
            "gap": walk.typical,
            "had_rows": bool(any_rows),
            "warned": bool(old.get("warned") or (not any_rows and lines_total)),
            "extra": walk.extra,
        }
        first = next((r for r in [*done, run] if r.idx == 1), None) or Run(1)
        result = run_result(first, new_state, problems, chunk.restarted)
        result.subruns = [
            (f"#{r.idx}", run_result(r, {}, [], chunk.restarted)) for r in [*done, run] if r.idx > 1
        ]
        return result

    def _marker(
        self, run: Run, kind: str, payload: Any, walk: Walk, data: bytes, pos: int, hi: int
    ) -> Run:
        """A banner or an end marker at ``pos``; the crash region it opens
        runs to ``hi`` (the next step item, or the end of what was read)."""
        if kind == "banner":
            if run.n:
                run.banner = True
        else:
            status, error = payload
            # the first marker of a crash says the most (the traceback's last
            # line); the ones after it belong to the same crash
            live = run.n or walk.crash_family
            # a log that stopped quietly at the last read may go on to crash
            open_ = run.ended is None or (run.quiet and run.ended == "interrupted")
            if status and live and open_ and run.pending is None:
                tail = crash_lines(data, pos, hi, walk.line0())
                if hi == len(data) and walk.path is not None:  # the crash runs to the end
                    end, n = walk.start + len(data), walk.line0() + data.count(b"\n")
                    tail += torn_line(walk.path, end, n)
                run.pending = [status, error, tail]
                run.ended, run.quiet = None, False
                start = data.rfind(b"\n", 0, pos) + 1
                line = walk.line0() + data.count(b"\n", 0, start)
                run.crash = [walk.start + start, line, status] if hi == len(data) else None
                walk.new_crash = True
        return run

    def _train(self, path: Path, run: Run, done: list[Run], item: dict[str, Any], seq: int) -> Run:
        step: int | None = item["step"]
        epoch = item["canon"].get("epoch")
        if step is None:  # no step anywhere: the dict's order in the run
            restart = run.n and (
                run.banner or (epoch is not None and run.epoch is not None and epoch < run.epoch)
            )
            if restart:
                run = self._new_run(run, done)
            elif run.ended:
                run.events.append((run.last, "resume", {"from_step": run.last}, seq))
                run.ended = None
            run.pending = None  # training went on after the traceback
            step = (run.last or 0) + 1
            run.steps_from = "order" if item.get("from", "log") == "log" else item["from"]
        else:
            last, first_step = run.last, run.first
            if run.n and last is not None and first_step is not None:
                if step < last and step <= first_step:
                    run = self._new_run(run, done)
                elif step < last or run.ended or (run.pending and run.banner):
                    # a resume: from an earlier checkpoint, or after a crash
                    run.events.append(
                        (step, "resume", {"from_step": step, "last_step": run.last}, seq)
                    )
                    run.ended = None
                    run.pending = None
                elif run.pending:
                    run.pending = None  # the traceback did not end training
            run.steps_from = run.steps_from or item.get("from", "log")
        if item.get("total"):
            run.total = item["total"]
        canon = item["canon"]
        extras = item["extras"]
        elapsed = item.get("elapsed")
        if elapsed is not None:
            extras["elapsed_s"] = elapsed
            per_step = run.deltas.rate("elapsed", step, elapsed)
            if per_step is not None:
                canon.setdefault("step_time_s", per_step)
        run.step_row(0, step, canon, seq)
        run.metric_rows(step, extras, seq)
        run.first = step if run.first is None else min(run.first, step)
        run.last = step
        run.n += 1
        run.banner = False
        if epoch is not None:
            run.epoch = epoch
        if not run.started:
            run.first_steps.append(step)
        return run

    def _start_extra(self, path: Path) -> dict[str, Any]:
        """More for the ``run_start`` payload (a subclass says what it inferred)."""
        return {}

    def _new_run(self, run: Run, done: list[Run]) -> Run:
        done.append(run)
        return Run(run.idx + 1)

    def _start(self, path: Path, run: Run, fam: str | None) -> None:
        crashed_early = fam == "crash" and run.ended is not None
        if run.started or not (run.first_steps or crashed_early):
            return
        if len(run.first_steps) < 3 and run.ended is None:
            return
        payload: dict[str, Any] = {
            "format": self.format,
            "family": fam,
            "source": str(path),
            "logging_steps": infer_logging_steps(run.first_steps) or 1,
            "per_rank": False,
            "steps_from": run.steps_from,
            "steps_inferred": run.steps_from in ("order", "epoch"),
            "loss_averaging": (
                "mean over the log interval's iterations and data-parallel ranks"
                if fam == "megatron"
                else "as the trainer printed it (HF: mean over logging_steps and all ranks)"
            ),
            **self._start_extra(path),
        }
        if run.idx > 1:
            payload["run_in_file"] = run.idx
        if run.total:
            payload["total_steps"] = run.total
        run.events.append((None, "run_start", payload, 0))
        run.started = True


def _goes_back(run: Run, item: Any) -> bool:
    """A step item that may start a new run or resume this one."""
    if not run.n:
        return False
    step = item["step"]
    if step is not None:
        return run.last is not None and step <= run.last
    epoch = item["canon"].get("epoch")
    return epoch is not None and run.epoch is not None and epoch <= run.epoch
