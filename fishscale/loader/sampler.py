"""The class-balanced shard sampler: each epoch's global sample order, and each rank's share.

    plan = plan_epoch(manifest, cfg.sampler, seed=0, epoch=3, num_epochs=30)
    batches = rank_batches(plan, global_batch=256, rank=1, world_size=4, micro_batch=32)

An epoch plan is a pure function of (manifest, sampler config, seed, epoch[, num_epochs]):

1. **Class quotas.** The strategy gives each class a share p_c of the epoch (instance: n_c,
   sqrt: sqrt(n_c), balanced: 1, repeat-factor: n_c * max(1, sqrt(t / f_c)), progressive:
   instance -> balanced). Quotas q_c = epoch_length * p_c are rounded systematically
   (random offset, classes in random order): every q_c is floor or ceil of its expectation,
   its mean is exact, and they sum to the epoch length.
2. **Class multiset.** Class c's q_c slots go to its samples as evenly as possible: every
   sample floor(q_c / n_c) times, a random subset of them once more (repeat-factor's
   per-epoch stochastic rounding; plain subsampling when q_c < n_c).
3. **Shard-local order.** Shards are put in a seeded order and cut into windows of
   ``window_shards``; the multiset is ordered window by window, shuffled inside each window.
   Reads stay within a window's few shards; class frequencies are untouched (step 3 only
   orders the multiset of step 2).

The global order does not depend on the world size: each global batch (a contiguous slice of
the plan) is cut into per-rank contiguous slices, each rank's slice into micro batches.
Resuming at (epoch, global batches consumed) replays the same order at any world size.
Eval plans take every sample once in manifest order, split contiguously over ranks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fishscale.errors import FishscaleError
from fishscale.shards.manifest import Manifest

STRATEGIES: tuple[str, ...] = ("instance", "sqrt", "balanced", "repeat-factor", "progressive")


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's global order of sample ids, and the window each position reads from."""
    sample_ids: np.ndarray      # int64 [epoch_length], global sample ids in read order
    windows: np.ndarray         # int64 [epoch_length], window number of each position
    epoch: int
    strategy: str
    class_probs: np.ndarray     # float64 [num labels present], target share of each class
    classes: np.ndarray         # int64, the labels class_probs refers to

    def __len__(self) -> int:
        return len(self.sample_ids)


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """Independent, reproducible random streams per (seed, epoch, purpose)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)])


def class_probabilities(strategy: str, counts: np.ndarray, *, repeat_threshold: float = 0.1,
                        epoch: int = 0, progressive_epochs: int | None = None) -> np.ndarray:
    """Target share of the epoch for each class with counts `counts` (all > 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    if strategy == "instance":
        weights = counts
    elif strategy == "sqrt":
        weights = np.sqrt(counts)
    elif strategy == "balanced":
        weights = np.ones_like(counts)
    elif strategy == "repeat-factor":
        if repeat_threshold <= 0:
            raise FishscaleError(f"sampler.repeat_threshold must be > 0, got {repeat_threshold}")
        freq = counts / counts.sum()
        weights = counts * repeat_factors(freq, repeat_threshold)
    elif strategy == "progressive":
        if not progressive_epochs or progressive_epochs < 1:
            raise FishscaleError("sampler.strategy=progressive needs sampler.progressive_epochs "
                                 "or the run's number of epochs (num_epochs)")
        alpha = min(1.0, epoch / max(1, progressive_epochs - 1))
        instance = counts / counts.sum()
        weights = (1.0 - alpha) * instance + alpha / len(counts)
    else:
        raise FishscaleError(f"sampler.strategy: unknown {strategy!r} (known: {', '.join(STRATEGIES)})")
    return weights / weights.sum()


def repeat_factors(class_freq: np.ndarray, threshold: float) -> np.ndarray:
    """LVIS repeat factors r_c = max(1, sqrt(t / f_c)), f_c = fraction of images of class c."""
    return np.maximum(1.0, np.sqrt(threshold / np.asarray(class_freq, dtype=np.float64)))


def systematic_round(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integers with the given means that sum to round(sum(expected)); each floor or ceil."""
    order = rng.permutation(len(expected))       # random class order: no class is favoured
    cumulative = np.concatenate([[0.0], np.cumsum(expected[order])])
    cumulative[-1] = round(cumulative[-1])      # float sums may miss the integer total by 1e-12
    edges = np.floor(cumulative + rng.random())
    counts = np.empty(len(expected), dtype=np.int64)
    counts[order] = np.diff(edges).astype(np.int64)
    return counts


def _spread(members: np.ndarray, quota: int, rng: np.random.Generator) -> np.ndarray:
    """`quota` draws from `members`: each floor(quota/n) times, a random subset once more."""
    full, extra = divmod(quota, len(members))
    picked = [np.tile(members, full)] if full else []
    if extra:
        picked.append(rng.choice(members, size=extra, replace=False))
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def epoch_multiset(labels: np.ndarray, probs: np.ndarray, classes: np.ndarray, length: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The epoch's sample ids (with repeats), unordered, following the class shares."""
    quotas = systematic_round(probs * length, rng)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], classes)
    ends = np.searchsorted(labels[order], classes, side="right")
    parts = [_spread(order[s:e], int(q), rng) for s, e, q in zip(starts, ends, quotas) if q]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def order_by_windows(sample_ids: np.ndarray, shard_of: np.ndarray, num_shards: int,
                     window_shards: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Order ids window by window (seeded shard order), shuffled inside each window."""
    if window_shards < 1:
        raise FishscaleError(f"sampler.window_shards must be >= 1, got {window_shards}")
    shard_rank = np.empty(num_shards, dtype=np.int64)
    shard_rank[rng.permutation(num_shards)] = np.arange(num_shards)
    window = shard_rank[shard_of[sample_ids]] // window_shards
    shuffled = rng.permutation(len(sample_ids))
    order = shuffled[np.argsort(window[shuffled], kind="stable")]   # random within a window
    return sample_ids[order], window[order]


def plan_epoch(manifest: Manifest, sampler_cfg, seed: int, epoch: int,
               num_epochs: int | None = None) -> EpochPlan:
    """The global sample order of one training epoch (see the module docstring)."""
    labels = manifest.labels()
    if len(labels) == 0:
        raise FishscaleError(f"manifest of split {manifest.split!r} holds no samples")
    length = sampler_cfg.epoch_length or len(labels)
    if length < 1:
        raise FishscaleError(f"sampler.epoch_length must be >= 1, got {length}")
    classes, counts = np.unique(labels, return_counts=True)
    probs = class_probabilities(
        sampler_cfg.strategy, counts, repeat_threshold=sampler_cfg.repeat_threshold, epoch=epoch,
        progressive_epochs=sampler_cfg.progressive_epochs or num_epochs)
    multiset = epoch_multiset(labels, probs, classes, length, _rng(seed, epoch, 1))
    shard_of, _ = manifest.shard_of_sample()
    ids, windows = order_by_windows(multiset, shard_of, len(manifest.shards),
                                    sampler_cfg.window_shards, _rng(seed, epoch, 2))
    return EpochPlan(ids, windows, epoch, sampler_cfg.strategy, probs, classes)


def rank_batches(plan: EpochPlan | np.ndarray, global_batch: int, rank: int = 0, world_size: int = 1,
                 micro_batch: int | None = None) -> list[np.ndarray]:
    """This rank's micro batches of positions in the plan, in order (train: full batches only).

    Global batch k is plan[k*G:(k+1)*G]; rank r takes its contiguous slice
    [r*G/W, (r+1)*G/W) of it, cut into micro batches. The incomplete last global batch is
    dropped, so every rank gets the same number of full batches.
    """
    length = len(plan)
    check_batching(global_batch, world_size, micro_batch)
    if not 0 <= rank < world_size:
        raise FishscaleError(f"rank {rank} out of range for world size {world_size}")
    per_rank = global_batch // world_size
    micro = micro_batch or per_rank
    batches = []
    for start in range(0, length - global_batch + 1, global_batch):
        mine = start + rank * per_rank
        batches.extend(np.arange(p, p + micro) for p in range(mine, mine + per_rank, micro))
    return batches


def check_batching(global_batch: int, world_size: int, micro_batch: int | None) -> None:
    """Global batch = micro batch x ranks x accumulation steps, all whole numbers."""
    if global_batch < 1 or world_size < 1:
        raise FishscaleError(f"global batch ({global_batch}) and world size ({world_size}) must be >= 1")
    if global_batch % world_size:
        raise FishscaleError(f"train.batch_size {global_batch} is not divisible by world size {world_size}")
    if micro_batch is not None and (micro_batch < 1 or (global_batch // world_size) % micro_batch):
        raise FishscaleError(f"micro batch {micro_batch} does not divide the per-rank batch "
                             f"{global_batch // world_size} (train.batch_size {global_batch} / {world_size} ranks)")


def eval_rank_ids(num_samples: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Eval: every sample once, manifest order; rank r takes the r-th contiguous part."""
    if not 0 <= rank < world_size:
        raise FishscaleError(f"rank {rank} out of range for world size {world_size}")
    bounds = [num_samples * r // world_size for r in range(world_size + 1)]
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)


def eval_batches(ids: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of `batch_size`; the last one may be short."""
    if batch_size < 1:
        raise FishscaleError(f"eval batch size must be >= 1, got {batch_size}")
    return [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
