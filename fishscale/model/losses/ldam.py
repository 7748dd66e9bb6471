"""LDAM loss with deferred re-weighting (Cao et al. 2019, "LDAM-DRW").

    LDAM(z, y) = CE_w(s * (z - Delta_y onehot(y)), y),   Delta_c = m / n_c^{1/4}, max_c Delta_c = m

s is ``loss.ldam_scale``, m ``loss.ldam_max_margin``. The paper's s = 30 is meant for cosine
logits in [-1, 1]; with timm's plain linear head use a small scale (about 1). Deferred
re-weighting: from epoch ``drw_epoch`` on (as told by ``set_epoch``) the CE is weighted with
effective-number weights (beta = 0.9999, sum C); before that it is unweighted.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fishscale.errors import FishscaleError
from fishscale.model.losses.weights import as_counts, effective_number_weights

DRW_BETA = 0.9999


class LDAMLoss(nn.Module):
    def __init__(self, class_counts: Sequence[int] | np.ndarray, max_margin: float = 0.5, scale: float = 30.0,
                 drw_epoch: int | None = None, drw_beta: float = DRW_BETA, reduction: str = "mean") -> None:
        super().__init__()
        if not max_margin > 0:
            raise FishscaleError(f"config: loss.ldam_max_margin must be > 0, got {max_margin}")
        if not scale > 0:
            raise FishscaleError(f"config: loss.ldam_scale must be > 0, got {scale}")
        if drw_epoch is not None and drw_epoch < 0:
            raise FishscaleError(f"config: loss.drw_epoch must be >= 0 or null, got {drw_epoch}")
        counts = as_counts(class_counts)
        margins = counts ** -0.25
        self.register_buffer("margins", torch.tensor(margins * (max_margin / margins.max()), dtype=torch.float32))
        self.register_buffer("drw_weight", torch.tensor(effective_number_weights(counts, drw_beta),
                                                        dtype=torch.float32))
        self.scale = float(scale)
        self.drw_epoch = drw_epoch
        self.reduction = reduction
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tell the loss the (0-based, global) epoch; DRW is on from ``drw_epoch``."""
        self.epoch = int(epoch)

    @property
    def reweighting(self) -> bool:
        return self.drw_epoch is not None and self.epoch >= self.drw_epoch

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        margin = torch.zeros_like(logits).scatter_(-1, labels[:, None], self.margins[labels][:, None])
        weight = self.drw_weight if self.reweighting else None
        return F.cross_entropy(self.scale * (logits - margin), labels, weight=weight, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, max_margin={float(self.margins.max()):.3g}, drw_epoch={self.drw_epoch}"
