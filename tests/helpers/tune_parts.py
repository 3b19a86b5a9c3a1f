"""Components for the torchtune recipe the tests run (named by ``_component_``
in its YAML; ``tune run`` finds this folder on PYTHONPATH)."""

from __future__ import annotations

import torch


class NanLoss(torch.nn.CrossEntropyLoss):
    """Cross entropy whose ``nan_at``-th call (counted from 1) returns NaN:
    with one micro-batch per step, the loss of optimizer step ``nan_at``."""

    def __init__(self, nan_at: int) -> None:
        super().__init__(ignore_index=-100)
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = super().forward(logits.float(), labels)
        return loss * float("nan") if self.calls == self.nan_at else loss
