"""Per-class weights from training class counts (for focal alpha, CE weights and LDAM-DRW).

Both schemes return float64 numpy arrays normalized to sum to C (the number of classes), so a
balanced dataset gets weight 1 everywhere and the loss scale stays comparable to unweighted CE.
A class with 0 training images is treated as having 1 (the rarest possible).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fishscale.errors import FishscaleError

WEIGHT_MODES = ("none", "fishvista", "effective-number")


def as_counts(class_counts: Sequence[int] | np.ndarray, key: str = "class_counts") -> np.ndarray:
    """Validated float64 counts (1-D, non-empty, finite, >= 0); zeros become 1."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise FishscaleError(f"{key}: need a non-empty 1-D list of per-class counts, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise FishscaleError(f"{key}: per-class counts must be finite and >= 0")
    return np.maximum(counts, 1.0)


def normalize_to_num_classes(weights: np.ndarray) -> np.ndarray:
    return weights * (weights.size / weights.sum())


def fishvista_alpha(class_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """The fish-vista reference alpha: w_c = ln(1 + N / (n_c * C)), normalized to sum to C."""
    counts = as_counts(class_counts)
    inverse = counts.sum() / (counts * counts.size)
    return normalize_to_num_classes(np.log1p(inverse))


def effective_number_weights(class_counts: Sequence[int] | np.ndarray, beta: float) -> np.ndarray:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^n_c), normalized to sum to C."""
    if not 0.0 <= beta < 1.0:
        raise FishscaleError(f"config: loss.beta must be in [0, 1), got {beta}")
    counts = as_counts(class_counts)
    # 1 - beta^n = -expm1(n * ln beta): exact for beta close to 1 and large n
    effective = -np.expm1(counts * np.log(beta)) if beta > 0 else np.ones_like(counts)
    return normalize_to_num_classes((1.0 - beta) / effective)


def class_weights(mode: str, class_counts: Sequence[int] | np.ndarray, beta: float, key: str) -> np.ndarray | None:
    """Weights for ``mode`` (none | fishvista | effective-number); ``key`` names the config key."""
    if mode == "none":
        as_counts(class_counts)
        return None
    if mode == "fishvista":
        return fishvista_alpha(class_counts)
    if mode == "effective-number":
        return effective_number_weights(class_counts, beta)
    raise FishscaleError(f"config: {key} must be one of {', '.join(WEIGHT_MODES)}, got {mode!r}")
