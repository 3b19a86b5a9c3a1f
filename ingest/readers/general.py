"""The general reader: any file with a loss in it that no specific reader claimed.

It infers the structure of the file from its head
(:func:`~tunescope.ingest.readers.general_shape.shape_of`: text
lines or blocks, a table, JSON or JSONL records) and maps its names through
the vocabulary. It claims a file only on evidence: a loss-like name, a
counter that rises (a step, iteration, batch or rollout; else the epochs,
whose order then gives the steps), and three records or more. A config dump,
a dataset with a ``loss`` field but no counter, a results table or a
one-row summary is not a run.

Text logs are read incrementally with the console reader's machinery: a
counter that starts again from the beginning is a new run in the file
(``train.log#2``), one that goes back to a later step a resume; a counter
that restarts when the epoch changes is epoch-local and counted on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunescope.ingest.readers import general_bulk, general_json, general_table, general_text
from tunescope.ingest.readers.console.bulk import take_with
from tunescope.ingest.readers.console.detect import beside_structured
from tunescope.ingest.readers.console.reader import ConsoleReader
from tunescope.ingest.readers.console.run import Walk
from tunescope.ingest.readers.epoch_steps import global_step
from tunescope.ingest.readers.general_shape import overrides, shape_of
from tunescope.ingest.readers.vocabulary import Meaning, is_eval_measure
from tunescope.ingest.rows import ReadResult


class GeneralReader(ConsoleReader):
    """Any log with a loss in it, read by its shape."""

    format = "general"

    def detect(self, path: Path) -> bool:
        if beside_structured(path) is not None:
            return False
        return shape_of(path).reason is None

    def run_dir(self, path: Path) -> Path:
        """The folder, unless another log sits in it: then a run named after the file."""
        try:
            others = [p for p in path.parent.iterdir() if p != path and p.is_file()]
        except OSError:
            others = []
        if any(shape_of(p).reason is None for p in others[:64]):
            return path.parent / path.name
        return path.parent

    def read(self, path: Path, state: dict[str, Any] | None) -> ReadResult:
        shape = shape_of(path)
        if shape.kind == "table":
            return general_table.read(path, shape, state, overrides(path))
        if shape.kind in ("json", "jsonl"):
            return general_json.read(path, shape, state, overrides(path))
        return super().read(path, state)

    # ---- text: the console reader's runs, resumes and endings --------------------

    def _family(self, path: Path, data: bytes) -> str | None:
        return "general-" + shape_of(path).kind

    def _start_extra(self, path: Path) -> dict[str, Any]:
        return {"inferred": shape_of(path).describe(), "loss_averaging": "as the log printed it"}

    def _items(
        self, path: Path, fam: str | None, data: bytes, base: int, walk: Walk
    ) -> list[tuple[int, str, Any]]:
        """The chunk's records as items; lines that share one layout are taken
        as columns when nothing in them needs a line-by-line look (then only
        the records between them are items)."""
        by_epoch = shape_of(path).step == "epoch"
        fixed = overrides(path)
        if fam == "general-lines" and not walk.extra.get("epoch_local") and not fixed:
            got = general_bulk.bulk(data)
            if got is not None:
                lines, leftovers = got
                rest = [
                    (off + pos, kind, payload)
                    for off, text in leftovers
                    for pos, kind, payload in self._record_items(
                        text, dict(walk.extra), by_epoch, fixed
                    )
                ]
                if take_with(walk, lines, rest, data, base):
                    # where the counter stands, as reading the records one by one leaves it
                    last = int(lines.steps[-1])
                    offset = walk.extra.get("offset", 0)
                    walk.extra.update(
                        epoch=lines.epoch, local=last, offset=offset, last=last + offset
                    )
                    return rest
        return self._record_items(data, walk.extra, by_epoch, fixed)

    def _record_items(
        self, data: bytes, ex: dict[str, Any], by_epoch: bool, fixed: dict[str, Meaning]
    ) -> list[tuple[int, str, Any]]:
        """Items of the records of ``data`` one by one. A record with a loss
        but no counter is left out (a summary line), unless the log counts
        epochs only (``by_epoch``): then the epochs' order gives the steps."""
        names: dict[str, Meaning] = dict(fixed)
        out: list[tuple[int, str, Any]] = []
        for rec in general_text.records(data):
            step, total, epoch, canon, extras = general_text.split(rec, names)
            if "loss" not in canon:
                evals = {k: v for k, v in extras.items() if is_eval_measure(k)}
                if evals:
                    out.append((rec.pos, "eval", {"step": step, "metrics": evals}))
                elif step is not None and set(canon) - {"epoch"}:
                    # the same step's other line (DeepSpeed prints lr apart from the
                    # loss): its columns join the step's row
                    step, _ = global_step(dict(ex), step, None, epoch)
                    cols = {k: v for k, v in canon.items() if k != "epoch"}
                    out.append((rec.pos, "mem", (rec.rank, step, cols, {})))
                continue
            item: dict[str, Any] = {"canon": canon, "extras": extras, "from": "log"}
            if step is None:
                if not by_epoch or epoch is None:
                    continue
                item.update(step=None, total=total)
                item["from"] = "epoch"
            else:
                step, total = global_step(ex, step, total, epoch)
                item.update(step=step, total=total)
            if rec.rank:
                item["canon"] = {}
                item["extras"] = {}
                if step is not None:
                    out.append((rec.pos, "mem", (rec.rank, step, canon, extras)))
                continue
            out.append((rec.pos, "train", item))
            evals = {k: extras.pop(k) for k in [k for k in extras if is_eval_measure(k)]}
            if evals:  # "val_loss" beside the loss: an evaluation at the same step
                out.append((rec.pos, "eval", {"step": item["step"], "metrics": evals}))
        return out
