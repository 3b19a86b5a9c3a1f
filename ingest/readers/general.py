"""The general reader: any file with a loss in it that no specific reader claimed.

It infers the structure of the file from its head (:func:`shape_of`: text
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

import csv
from pathlib import Path
from typing import Any

from tunescope.ingest.readers import general_bulk, general_json, general_table, general_text
from tunescope.ingest.readers.console.bulk import take_with
from tunescope.ingest.readers.console.detect import beside_structured, is_binary
from tunescope.ingest.readers.console.reader import ConsoleReader, Walk
from tunescope.ingest.readers.foreign import keymap_for
from tunescope.ingest.readers.general_text import Shape
from tunescope.ingest.readers.vocabulary import (
    LOSS_KEYS,
    STEP_KEYS,
    Meaning,
    configured,
    is_eval_measure,
)
from tunescope.ingest.rows import ReadResult

HEAD = 256 << 10  # the shape is inferred from the first 256 KiB...
TEXT_HEAD = 64 << 10  # ...and from the first 64 KiB of a text log
# Never logs: code, documents, settings, and the files of other tools' stores.
NOT_LOGS = (
    ".py", ".md", ".rst", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".html", ".htm",
    ".ipynb", ".sh", ".js", ".css", ".c", ".h", ".cpp", ".rs", ".go", ".java", ".xml",
    ".lock", ".pdf", ".png", ".jpg", ".svg", ".parquet", ".pt", ".bin", ".safetensors",
    ".db", ".sqlite", ".gz", ".zip", ".tar", ".npy", ".npz", ".pkl", ".wandb",
)  # fmt: skip
NOT_LOG_NAMES = ("requirements", "license", "readme", "labels", "provenance", "changelog",
                 "config", "tokenizer", "vocab", "merges", "package", "setup")  # fmt: skip
# Files a specific reader owns wherever they are: a copy it did not take (a
# checkpoint's trainer_state.json) is the same run, not another one.
OWNED = ("trainer_state.json", "trainer_log.jsonl", "logging.jsonl", "all_results.json",
         "train_results.json", "eval_results.json", "args.json", "sft_args.json",
         "training_args.json", "adapter_config.json", "wandb-summary.json",
         "wandb-metadata.json", "wandb-history.jsonl")  # fmt: skip
_SHAPES: dict[str, tuple[tuple[int, int], Shape]] = {}


def _head(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(HEAD)
    except OSError:
        return None


def _tail(path: Path) -> bytes:
    """The whole lines of the file's last 64 KiB."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - TEXT_HEAD))
            data = f.read()
    except OSError:
        return b""
    return data[data.find(b"\n") + 1 :]


def shape_of(path: Path) -> Shape:
    """The shape of a file (cached by size and modification time), or why it
    is not a log; never reads more than its first 256 KiB and last 64 KiB."""
    try:
        st = path.stat()
    except OSError as e:
        return Shape("none", reason=f"cannot read: {e.strerror or e}")
    sig = (st.st_size, st.st_mtime_ns)
    hit = _SHAPES.get(str(path))
    if hit is not None and hit[0] == sig:
        return hit[1]
    try:
        shape = _infer(path)
    except (ValueError, RecursionError, csv.Error, OSError) as e:
        # looking never fails an ingest: a file that cannot be parsed is no log
        shape = Shape("none", reason=f"cannot be parsed: {str(e).splitlines()[0][:200]}")
    if len(_SHAPES) > 4096:
        _SHAPES.clear()
    _SHAPES[str(path)] = (sig, shape)
    return shape


def overrides(path: Path) -> dict[str, Meaning]:
    """What ``[tool.tunescope.ingest]`` (found walking up from the file's
    folder) says names mean: above the vocabulary's guesses."""
    keys = keymap_for(path)
    if not keys.configured:
        return {}
    step = keys.step[: len(keys.step) - len(STEP_KEYS)]
    loss = keys.loss[: len(keys.loss) - len(LOSS_KEYS)]
    return configured(step, loss, keys.metrics)


def _infer(path: Path) -> Shape:
    name = path.name.lower()
    stem = name.split(".", 1)[0]
    if name.endswith(NOT_LOGS) or stem in NOT_LOG_NAMES or name.startswith("."):
        return Shape("none", reason="named like code, a document or settings, not a log")
    if name in OWNED or name.startswith("events.out.tfevents."):
        return Shape("none", reason="a file another reader owns (a copy of a run it read)")
    head = _head(path)
    if head is None:
        return Shape("none", reason="cannot read")
    if not head.strip():
        return Shape("none", reason="empty")
    if is_binary(head):
        return Shape("none", reason="binary data, not a text log")
    whole = len(head) < HEAD
    if not whole:  # cut at the last whole line
        head = head[: head.rfind(b"\n") + 1] or head
    lead = head.lstrip()[:64].replace(b" ", b"").replace(b"\n", b"").replace(b"\r", b"")
    fixed = overrides(path)
    if lead[:1] == b"{" or lead[:2] in (b"[{", b"[]", b"[\t"):
        return general_json.infer(head, whole=whole, fixed=fixed)
    table = general_table.infer(head, fixed)
    if table.reason is None:
        return table
    cut = len(head) > TEXT_HEAD
    if cut:
        head = head[: head.rfind(b"\n", 0, TEXT_HEAD) + 1] or head[:TEXT_HEAD]
    text = general_text.infer(head, fixed, general_bulk.records_fast(head))
    if text.reason is None:
        return text
    if cut:  # a long preamble (a config dump, a model summary): the end shows the records
        end = _tail(path)
        tail = general_text.infer(end, fixed, general_bulk.records_fast(end))
        if tail.reason is None:
            return tail
    # the closer miss says more
    return table if table.records > text.records else text


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
                    step, _ = _global_step(dict(ex), step, None, epoch)
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
                step, total = _global_step(ex, step, total, epoch)
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


def _global_step(
    ex: dict[str, Any], local: int, total: int | None, epoch: float | None
) -> tuple[int, int | None]:
    """A counter that starts again when the epoch changes is epoch-local: it is
    counted on from the previous epoch's last step (``ex`` keeps where)."""
    prev_epoch, prev_step, offset = ex.get("epoch"), ex.get("local"), ex.get("offset", 0)
    if epoch is not None and prev_epoch is not None and epoch < prev_epoch:
        offset = 0  # a new run in the file
        ex["epoch_local"] = False
    elif (
        epoch is not None
        and prev_epoch is not None
        and prev_step is not None
        and epoch > prev_epoch
        and local <= prev_step
    ):
        offset = ex.get("last", 0) + 1 - local
        ex["epoch_local"] = True
    ex.update(epoch=epoch, local=local, offset=offset, last=local + offset)
    if ex.get("epoch_local"):
        return local + offset, None  # a total per epoch is not the run's
    return local, total
