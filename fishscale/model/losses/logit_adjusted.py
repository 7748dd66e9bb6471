"""Logit-adjusted cross-entropy (Menon et al. 2021); tau = 1 is the balanced softmax.

    LA(z, y) = CE(z + tau * log pi, y),   pi_c = n_c / N  (training class prior)

Only the loss sees the adjusted logits: the model's raw logits ``z`` are what evaluation and
export use, and for tau = 1 argmax z is the balanced (class-prior-free) prediction. tau = 0 is
plain cross-entropy.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fishscale.errors import FishscaleError
from fishscale.model.losses.weights import as_counts


class LogitAdjustedLoss(nn.Module):
    def __init__(self, class_counts: Sequence[int] | np.ndarray, tau: float = 1.0,
                 label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        if not np.isfinite(tau):
            raise FishscaleError(f"config: loss.tau must be a finite number, got {tau}")
        if not 0.0 <= label_smoothing < 1.0:
            raise FishscaleError(f"config: loss.label_smoothing must be in [0, 1), got {label_smoothing}")
        counts = as_counts(class_counts)
        self.tau = float(tau)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        log_prior = np.log(counts / counts.sum())
        self.register_buffer("adjustment", torch.tensor(self.tau * log_prior, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.adjustment, labels,
                               label_smoothing=self.label_smoothing, reduction=self.reduction)

    def set_epoch(self, epoch: int) -> None:
        """No epoch-dependent behaviour (LDAM-DRW has some); here for one calling convention."""

    def extra_repr(self) -> str:
        return f"tau={self.tau}, label_smoothing={self.label_smoothing}"
