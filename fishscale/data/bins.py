"""Frequency bins by number of training images per class.

Default edges (10, 100, 500) give fish-vista's four bins:
ultra-rare < 10, minority 10-99, neutral 100-499, majority >= 500.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fishscale.errors import FishscaleError

DEFAULT_BIN_EDGES: tuple[int, ...] = (10, 100, 500)
DEFAULT_BIN_NAMES: tuple[str, ...] = ("ultra-rare", "minority", "neutral", "majority")
UNSEEN_BIN = "unseen-in-train"


def check_edges(edges: Sequence[int], names: Sequence[str] | None = None) -> tuple[list[int], list[str]]:
    """Validate bin edges (strictly increasing positive ints) and return (edges, names)."""
    edges = [int(e) for e in edges]
    if not edges or any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise FishscaleError(f"bin edges must be strictly increasing positive integers, got {edges}")
    if names is None:
        names = list(DEFAULT_BIN_NAMES) if len(edges) == 3 else bin_labels(edges)
    names = list(names)
    if len(names) != len(edges) + 1:
        raise FishscaleError(f"{len(edges)} bin edges need {len(edges) + 1} bin names, got {names}")
    return edges, names


def bin_labels(edges: Sequence[int]) -> list[str]:
    """Generic names for custom edges, e.g. [10, 100] -> ['<10', '10-99', '>=100']."""
    labels = [f"<{edges[0]}"]
    labels += [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])]
    labels.append(f">={edges[-1]}")
    return labels


def bin_index(counts: Sequence[int] | np.ndarray, edges: Sequence[int] = DEFAULT_BIN_EDGES) -> np.ndarray:
    """Bin number of each class: count < edges[0] -> 0, edges[0] <= count < edges[1] -> 1, ..."""
    return np.searchsorted(np.asarray(edges), np.asarray(counts), side="right").astype(np.int64)


def assign_bins(counts: Sequence[int], edges: Sequence[int] = DEFAULT_BIN_EDGES,
                names: Sequence[str] | None = None) -> list[str]:
    """Bin name of each class from its training count."""
    edges, names = check_edges(edges, names)
    return [names[i] for i in bin_index(counts, edges)]
