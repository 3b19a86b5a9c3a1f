"""The shape of a file for the general reader: text lines or blocks, a table,
JSON or JSONL records, inferred from its head (and from its tail when a long
preamble hides the records), with the names it holds mapped through the
vocabulary; or why it is not a log. The console reader, discovery and the
telemetry join ask it too, without the general reader itself.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tunescope.ingest.readers import general_bulk, general_json, general_table, general_text
from tunescope.ingest.readers.console.detect import is_binary
from tunescope.ingest.readers.foreign import keymap_for
from tunescope.ingest.readers.general_text import Shape
from tunescope.ingest.readers.vocabulary import LOSS_KEYS, STEP_KEYS, Meaning, configured

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
