"""Cross-entropy with label smoothing and optional per-class weights.

    CE(z, y) = -sum_c q_c log softmax(z)_c,   q = (1 - eps) onehot(y) + eps / C

With weights, ``reduction="mean"`` is torch's: sum_i w_{y_i} l_i / sum_i w_{y_i}.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fishscale.errors import FishscaleError


class CrossEntropyLoss(nn.Module):
    def __init__(self, label_smoothing: float = 0.0, weight: Sequence[float] | torch.Tensor | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise FishscaleError(f"config: loss.label_smoothing must be in [0, 1), got {label_smoothing}")
        if reduction not in ("mean", "sum", "none"):
            raise FishscaleError(f"cross-entropy: reduction must be mean, sum or none, got {reduction!r}")
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.weight,
                               label_smoothing=self.label_smoothing, reduction=self.reduction)

    def set_epoch(self, epoch: int) -> None:
        """No epoch-dependent behaviour (LDAM-DRW has some); here for one calling convention."""
