"""Exact data skipping for guard rewinds in the bundled trainer.

After a rewind the batches from the onset of the incident to its detection are
never trained again, on every rank and after any later resume:
:class:`SkipList` holds their positions in the data stream (saved as
``guard-skips.json`` beside the checkpoints) and :func:`guarded_trainer` makes
transformers' ``Trainer`` draw and drop them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunescope.files import write_whole


class SkipList:
    """Micro-batch positions never trained: ``(epoch, position in the epoch's
    stream)``, the same on every rank. Saved beside the checkpoints so that a
    later resume skips them too (``guard-skips.json`` in the output directory)."""

    NAME = "guard-skips.json"

    def __init__(self, items: list[tuple[int, int]] | None = None) -> None:
        self.items: set[tuple[int, int]] = set(items or [])

    @classmethod
    def load(cls, out: str | Path) -> SkipList:
        p = Path(out) / cls.NAME
        if not p.is_file():
            return cls()
        try:
            data = json.loads(p.read_text())
            return cls([(int(e), int(k)) for e, k in data.get("skip", [])])
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{p}: not a guard skip list ({e})") from None

    def save(self, out: str | Path) -> None:
        p = Path(out) / self.NAME
        write_whole(p, json.dumps({"skip": sorted(self.items)}) + "\n")

    def position_of(self, kept: int, per_epoch: int) -> tuple[int, int]:
        """(epoch, raw position) of the ``kept``-th micro-batch trained (0-based
        count of batches already trained), given ``per_epoch`` raw batches."""
        epoch = 0
        while True:
            gone = sorted(k for e, k in self.items if e == epoch and k < per_epoch)
            if kept < per_epoch - len(gone):
                pos = kept
                for k in gone:
                    if k <= pos:
                        pos += 1
                return epoch, pos
            kept -= per_epoch - len(gone)
            epoch += 1


def guarded_trainer(base: type, skips: Any) -> type:
    """``base`` (transformers' ``Trainer``) with exact data skipping for guard
    rewinds: micro-batches at the positions in ``skips`` are drawn and dropped,
    and a resume lands on the true position in the data stream (the Trainer
    alone would count skipped batches as trained). ``positions[step]`` records
    the (epoch, position) of each micro-batch a step trained."""

    class GuardedTrainer(base):
        positions: dict[int, list[tuple[int, int]]]

        def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, **kw):
            if not hasattr(self, "positions"):
                self.positions = {}
            self._epoch, self._raw, self._until = epoch, 0, (epoch, 0)
            resumed = kw.get("resume_from_checkpoint") is not None
            if resumed and epoch == kw.get("epochs_trained") and not self.args.ignore_data_skip:
                self._raw = kw.get("steps_trained_in_current_epoch") or 0  # skipped by the Trainer
            if resumed and skips.items:
                kept = self.state.global_step * self.args.gradient_accumulation_steps
                self._until = skips.position_of(kept, steps_in_epoch)
            return super()._run_epoch(model, epoch, train_dataloader, steps_in_epoch, **kw)

        def set_initial_training_values(self, args, dataloader):
            values = list(super().set_initial_training_values(args, dataloader))
            if skips.items:  # skipped batches need that many more to reach max_steps
                per_epoch = max(1, len(dataloader))
                values[0] += -(-len(skips.items) // per_epoch)
            return tuple(values)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            out, where = [], []
            while len(out) < num_batches:
                try:
                    batch = next(epoch_iterator)
                except StopIteration:
                    break
                pos = (self._epoch, self._raw)
                self._raw += 1
                if pos < self._until or pos in skips.items:
                    continue
                out.append(batch)
                where.append(pos)
            step = self.state.global_step + 1
            self.positions[step] = where
            self.positions.pop(step - 20_000, None)  # a rewind never reaches that far back
            return out, self._get_num_items_in_batch(out, device)

    return GuardedTrainer
