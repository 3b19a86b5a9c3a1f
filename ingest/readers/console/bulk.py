"""Taking a chunk's record lines read as columns (:class:`.megatron.Bulk`)
into the run being read, when that gives what reading them one by one gives."""

from __future__ import annotations

from typing import Any

from tunescope.ingest.readers.console import megatron
from tunescope.ingest.readers.console.items import markers
from tunescope.ingest.readers.console.run import Run, Walk


def take_with(
    walk: Walk,
    lines: megatron.Bulk,
    rest: list[tuple[int, str, Any]],
    data: bytes,
    base: int,
    after: tuple[str, ...] = (),
) -> bool:
    """Take the columns when the chunk's other items (``rest``, in order) are
    evaluations, or of a kind in ``after`` and past the last row: an
    evaluation without a step gets the step of the row before it. False
    (nothing taken) otherwise: the caller reads the chunk item by item."""
    last = int(lines.pos[-1])
    for pos, kind, _ in rest:
        if kind != "eval" and not (kind in after and pos > last):
            return False
    for pos, kind, payload in rest:
        if kind == "eval" and payload["step"] is None:
            i = int(lines.pos.searchsorted(pos)) - 1
            payload["step"] = int(lines.steps[i]) if i >= 0 else (walk.run.last or 0)
    if not take_bulk(walk.run, lines, data, base):
        return False
    walk.scanned = last
    walk.typical = walk.run.gap
    return True


def take_bulk(run: Run, lines: megatron.Bulk, data: bytes, base: int) -> bool:
    """Take the chunk's record lines as columns when nothing in them needs
    a line-by-line look: the steps rise past the run's last one, the run has
    not ended, and no crash or banner sits before them or in an unusually long
    gap between them. Otherwise the caller reads the lines one by one."""
    import numpy as np

    steps, pos = lines.steps, lines.pos
    if run.ended is not None or run.pending is not None:
        return False
    if run.last is not None and steps[0] <= run.last:
        return False
    if len(steps) > 1 and not bool(np.all(np.diff(steps) > 0)):
        return False
    if run.n and markers(data, 0, int(pos[0])):
        return False
    gaps = np.diff(pos)
    typical = float(np.median(gaps)) if len(gaps) else 0.0
    for i in np.flatnonzero(gaps > max(4096.0, 4 * typical)):
        if markers(data, int(pos[i]), int(pos[i + 1])):
            return False
    run.bulk = lines
    run.bulk_seq = pos + (base + 1)
    run.gap = typical
    n = len(steps)
    run.first = int(steps[0]) if run.first is None else min(run.first, int(steps[0]))
    run.last = int(steps[-1])
    run.n += n
    run.total = lines.total or run.total
    run.steps_from = run.steps_from or lines.source
    run.banner = False
    epoch = lines.canon.get("epoch")
    if epoch is not None:  # the last row's, as reading them one by one leaves it
        run.epoch = float(epoch[-1])
    if not run.started:
        run.first_steps.extend(int(s) for s in steps[:32])
    return True
