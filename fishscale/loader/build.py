"""build_loader: one epoch of (images float32 [B,3,S,S], labels int64 [B]) for one rank.

    loader = build_loader(cfg, manifest, train=True, rank=r, world_size=w, epoch=e)
    for images, labels in loader: ...
    len(loader)          # batches this rank yields this epoch
    loader.sample_ids    # global sample ids in yield order (this rank)

Train: the sampler's epoch plan (fishscale.loader.sampler) cut into global batches of
``cfg.train.batch_size``; each rank takes its contiguous slice of every global batch, in
micro batches of ``batch_size`` (default global // (world_size * grad_accum)). Every batch is
full (the incomplete last global batch is dropped). ``start_batch`` counts GLOBAL batches
(optimizer steps) already consumed this epoch, so a resume replays the same order at any
world size. Eval: every sample once, manifest order, contiguous parts per rank, batches of
``batch_size`` (default ``cfg.eval.batch_size``), the last one short.

Backend by ``cfg.data.backend``: "dali" (fishscale.loader.dali_pipeline, imported lazily)
or "torch" (fishscale.loader.torch_backend); device by ``cfg.data.device``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from fishscale.config import Config
from fishscale.errors import FishscaleError
from fishscale.shards.manifest import Manifest
from fishscale.loader.sampler import check_batching, eval_batches, eval_rank_ids, plan_epoch, rank_batches

BACKENDS = ("dali", "torch")
DEVICES = ("cpu", "gpu")


class Loader:
    """One rank's epoch: iterate for (images, labels); len() batches; .sample_ids in order."""

    def __init__(self, cfg: Config, manifest: Manifest, batches: list[tuple[np.ndarray, np.ndarray]],
                 *, train: bool, epoch: int, rank: int):
        self.cfg, self.manifest, self.train, self.epoch, self.rank = cfg, manifest, train, epoch, rank
        self.batches = batches               # (positions in the epoch plan, sample ids) per batch
        self.batch_size = max((len(ids) for _, ids in batches), default=0)
        ids = [ids for _, ids in batches]
        self.sample_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
        all_labels = manifest.labels()
        self.labels = all_labels[self.sample_ids] if len(all_labels) else self.sample_ids

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.batches:
            return iter(())
        if self.cfg.data.backend == "dali":
            from fishscale.loader.dali_pipeline import dali_batches
            return dali_batches(self.cfg, self.manifest, self.batches, train=self.train,
                                epoch=self.epoch, rank=self.rank)
        from fishscale.loader.torch_backend import torch_batches
        return torch_batches(self.cfg, self.manifest, self.batches, train=self.train, epoch=self.epoch)


def check_backend(cfg: Config) -> None:
    """Valid backend/device; DALI importable when asked for (else say how to fall back)."""
    if cfg.data.backend not in BACKENDS:
        raise FishscaleError(f"data.backend: unknown {cfg.data.backend!r} (known: {', '.join(BACKENDS)})")
    if cfg.data.device not in DEVICES:
        raise FishscaleError(f"data.device: unknown {cfg.data.device!r} (known: {', '.join(DEVICES)})")
    if cfg.data.image_size < 8:
        raise FishscaleError(f"data.image_size must be >= 8, got {cfg.data.image_size}")
    if cfg.data.backend == "dali":
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise FishscaleError("data.backend=dali but NVIDIA DALI is not installed "
                                 "(pip install nvidia-dali-cuda120), or use data.backend=torch") from None


def train_batches(cfg: Config, manifest: Manifest, *, rank: int, world_size: int, epoch: int,
                  start_batch: int, batch_size: int | None, num_epochs: int | None
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    global_batch = cfg.train.batch_size
    if batch_size is None:
        if global_batch % (world_size * cfg.train.grad_accum):
            raise FishscaleError(f"train.batch_size {global_batch} is not divisible by world size "
                                 f"{world_size} x train.grad_accum {cfg.train.grad_accum}")
        batch_size = global_batch // (world_size * cfg.train.grad_accum)
    check_batching(global_batch, world_size, batch_size)
    if num_epochs is None:
        num_epochs = sum(phase.epochs for phase in cfg.phases)
    plan = plan_epoch(manifest, cfg.sampler, cfg.train.seed, epoch, num_epochs)
    if len(plan) < global_batch:
        raise FishscaleError(f"epoch of {len(plan)} samples (split {manifest.split!r}) is shorter than one "
                             f"global batch (train.batch_size {global_batch}); lower the batch size")
    positions = rank_batches(plan, global_batch, rank, world_size, batch_size)
    per_step = (global_batch // world_size) // batch_size
    if start_batch < 0 or start_batch * per_step > len(positions):
        raise FishscaleError(f"start_batch {start_batch} outside the epoch's {len(positions) // per_step} global batches")
    return [(pos, plan.sample_ids[pos]) for pos in positions[start_batch * per_step:]]


def build_loader(cfg: Config, manifest: Manifest, *, train: bool, rank: int = 0, world_size: int = 1,
                 epoch: int = 0, start_batch: int = 0, batch_size: int | None = None,
                 num_epochs: int | None = None) -> Loader:
    """One epoch's loader for one rank (see the module docstring)."""
    check_backend(cfg)
    if not 0 <= rank < world_size:
        raise FishscaleError(f"rank {rank} out of range for world size {world_size}")
    if train:
        batches = train_batches(cfg, manifest, rank=rank, world_size=world_size, epoch=epoch,
                                start_batch=start_batch, batch_size=batch_size, num_epochs=num_epochs)
    else:
        ids = eval_rank_ids(len(manifest.labels()), rank, world_size)
        batches = [(b, b) for b in eval_batches(ids, batch_size or cfg.eval.batch_size)]
    return Loader(cfg, manifest, batches, train=train, epoch=epoch, rank=rank)
