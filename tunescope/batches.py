"""Items in consecutive batches of bounded size, so memory follows one batch.

The detectors analyse runs a batch of step rows at a time
(:func:`tunescope.detectors.engine.run_batches`), and a mirror fetches log
objects a batch of bytes at a time (:mod:`tunescope.ingest.store.mirror`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def size_batches(
    items: Iterable[T],
    size: Callable[[T], int],
    limit: int,
    max_items: int | None = None,
) -> list[list[T]]:
    """``items`` in order, in batches whose ``size`` sums to at most ``limit``
    (and of at most ``max_items`` items); an item larger than ``limit`` is a
    batch of its own. No items: no batch."""
    out: list[list[T]] = []
    batch: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        full = max_items is not None and len(batch) >= max_items
        if batch and (full or total + n > limit):
            out.append(batch)
            batch, total = [], 0
        batch.append(item)
        total += n
    if batch:
        out.append(batch)
    return out
