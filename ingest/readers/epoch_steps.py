"""Counters that start again each epoch (``iter 50`` of every epoch),
counted on into the run's steps."""

from __future__ import annotations

from typing import Any


def global_step(
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
