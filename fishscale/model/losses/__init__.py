"""Long-tail classification losses, built by name from ``cfg.loss`` and the training class counts.

    loss_fn = build_loss(cfg.loss, manifest.train_class_counts).to(device)
    loss = loss_fn(logits, labels)          # logits [B, C] (any float dtype), labels int64 [B]
    loss_fn.set_epoch(epoch)                # every loss has it; only LDAM-DRW uses it

Names: ``focal`` (alpha: none | fishvista | effective-number), ``ce`` (label smoothing,
class_weights), ``logit-adjusted`` (tau; 1 = balanced softmax), ``ldam`` (margins, scale,
deferred re-weighting from ``drw_epoch``). Formulas and advice: docs/losses.md.
Each loss computes in fp32 from log-softmax, returns a scalar (mean over the batch) and
keeps its constant tensors as buffers, so ``.to(device)`` moves them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from fishscale.config import LossConfig
from fishscale.errors import FishscaleError
from fishscale.model.losses.cross_entropy import CrossEntropyLoss
from fishscale.model.losses.focal import FocalLoss
from fishscale.model.losses.ldam import DRW_BETA, LDAMLoss
from fishscale.model.losses.logit_adjusted import LogitAdjustedLoss
from fishscale.model.losses.weights import (WEIGHT_MODES, class_weights, effective_number_weights,
                                      fishvista_alpha)

LOSS_NAMES = ("focal", "ce", "logit-adjusted", "ldam")

__all__ = ["build_loss", "LOSS_NAMES", "WEIGHT_MODES", "FocalLoss", "CrossEntropyLoss", "LogitAdjustedLoss",
           "LDAMLoss", "DRW_BETA", "fishvista_alpha", "effective_number_weights", "class_weights"]

# which optional keys each loss reads; a non-default value for a key the loss ignores is an error
_USES = {
    "focal": {"alpha"},
    "ce": {"class_weights", "label_smoothing"},
    "logit-adjusted": {"label_smoothing"},
    "ldam": {"drw_epoch"},
}
_UNUSED_DEFAULTS = {"alpha": "none", "class_weights": "none", "label_smoothing": 0.0, "drw_epoch": None}


def build_loss(loss_cfg: LossConfig, class_counts: Sequence[int] | np.ndarray) -> nn.Module:
    """The loss ``loss_cfg.name`` for training class counts ``class_counts`` (index order)."""
    if loss_cfg.name not in LOSS_NAMES:
        raise FishscaleError(f"config: loss.name must be one of {', '.join(LOSS_NAMES)}, got {loss_cfg.name!r}")
    _reject_unused(loss_cfg)
    return _BUILDERS[loss_cfg.name](loss_cfg, class_counts)


def _reject_unused(loss_cfg: LossConfig) -> None:
    for key, default in _UNUSED_DEFAULTS.items():
        if key not in _USES[loss_cfg.name] and getattr(loss_cfg, key) != default:
            users = [name for name, keys in _USES.items() if key in keys]
            raise FishscaleError(f"config: loss.{key}={getattr(loss_cfg, key)!r} has no effect with "
                                 f"loss.name={loss_cfg.name} (used by: {', '.join(users)})")


def _tensor(weights: np.ndarray | None) -> torch.Tensor | None:
    return None if weights is None else torch.tensor(weights, dtype=torch.float32)


def _focal(cfg: LossConfig, counts: Sequence[int] | np.ndarray) -> nn.Module:
    alpha = class_weights(cfg.alpha, counts, cfg.beta, key="loss.alpha")
    return FocalLoss(gamma=cfg.gamma, alpha=_tensor(alpha))


def _ce(cfg: LossConfig, counts: Sequence[int] | np.ndarray) -> nn.Module:
    weight = class_weights(cfg.class_weights, counts, cfg.beta, key="loss.class_weights")
    return CrossEntropyLoss(label_smoothing=cfg.label_smoothing, weight=_tensor(weight))


def _logit_adjusted(cfg: LossConfig, counts: Sequence[int] | np.ndarray) -> nn.Module:
    return LogitAdjustedLoss(counts, tau=cfg.tau, label_smoothing=cfg.label_smoothing)


def _ldam(cfg: LossConfig, counts: Sequence[int] | np.ndarray) -> nn.Module:
    return LDAMLoss(counts, max_margin=cfg.ldam_max_margin, scale=cfg.ldam_scale, drw_epoch=cfg.drw_epoch)


_BUILDERS = {"focal": _focal, "ce": _ce, "logit-adjusted": _logit_adjusted, "ldam": _ldam}
