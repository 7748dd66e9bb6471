"""Softmax focal loss (Lin et al. 2017), from log-softmax so it is stable in bf16 and at huge logits.

    FL(z, y) = -alpha_y * (1 - p_y)^gamma * log p_y,   log p = log_softmax(z)

gamma = 0 and no alpha is cross-entropy. ``reduction="mean"`` averages over samples (not over
the alpha weights, unlike torch's weighted cross_entropy).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fishscale.errors import FishscaleError

REDUCTIONS = ("mean", "sum", "none")


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | torch.Tensor | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        if not gamma >= 0:
            raise FishscaleError(f"config: loss.gamma must be >= 0, got {gamma}")
        if reduction not in REDUCTIONS:
            raise FishscaleError(f"focal loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.gamma = float(gamma)
        self.reduction = reduction
        alpha_tensor = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        if alpha_tensor is not None and (alpha_tensor.ndim != 1 or bool((alpha_tensor < 0).any())):
            raise FishscaleError("config: loss.alpha weights must be a 1-D tensor of values >= 0")
        self.register_buffer("alpha", alpha_tensor)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # fp32 inside: bf16's 8-bit mantissa makes (1 - p)^gamma and log p too coarse
        log_p = F.log_softmax(logits.float(), dim=-1).gather(-1, labels[:, None]).squeeze(-1)
        # 1 - p = -expm1(log p) is exact near p = 1; the floor keeps the pow gradient finite
        # for gamma < 1 where 1 - p rounds to 0
        one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(torch.float32).tiny)
        loss = -(one_minus_p ** self.gamma) * log_p if self.gamma else -log_p
        if self.alpha is not None:
            loss = loss * self.alpha[labels]
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss

    def set_epoch(self, epoch: int) -> None:
        """No epoch-dependent behaviour (LDAM-DRW has some); here for one calling convention."""

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={'per-class' if self.alpha is not None else None}, reduction={self.reduction}"
