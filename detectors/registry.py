"""The detectors ``tunescope analyze`` runs: a plain list of detector modules.

Adding a detector: write ``detectors/my_detector.py`` (``ID``, ``NAME``,
``Options``, ``run``; see ``detectors/base.py``), import it here and append it.
A detector that judges runs against each other sets ``ACROSS_RUNS = True``:
the engine then runs it once over every run of the store, not per batch.
"""

from __future__ import annotations

from tunescope.detectors import (
    adapter_grads,
    capacity,
    death,
    divergence,
    grad_spike,
    loss_spike,
    memory_growth,
    nonfinite,
    overfit,
    plateau,
    resume_jump,
    sibling_gap,
    straggler,
    throughput,
)
from tunescope.detectors.base import DetectorModule

DETECTORS: list[DetectorModule] = [
    nonfinite,  # TS001
    loss_spike,  # TS101
    divergence,  # TS102
    plateau,  # TS103
    overfit,  # TS104
    grad_spike,  # TS105
    resume_jump,  # TS106
    adapter_grads,  # TS201
    straggler,  # TS301
    throughput,  # TS302
    memory_growth,  # TS401
    sibling_gap,  # TS501: judged against the run's siblings (ACROSS_RUNS)
    capacity,  # TS502
    death,  # TS601: why a crashed run died, from the end of its log
]
